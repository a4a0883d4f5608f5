"""`legalkd run` end to end on tiny models: every step, the README table, and a second run that skips everything."""
import json, time

import yaml

from conftest import save_tiny
from legalkd.pipeline import load_preset, run_pipeline


def tiny_preset(tmp_path, tokenizer):
    teacher = save_tiny(tmp_path/"pretrained", tokenizer, layers=4)
    preset = dict(base="cpu",
                  train=dict(max_records=24, max_length=64, stride=16, batch_size=8, eval_batch_size=16, bf16=False),
                  teachers=[dict(experiment="teacher", model=str(teacher), epochs=1, seed=1),
                            dict(experiment="teacher-2", model=str(teacher), epochs=1, seed=2)],
                  student="from-teacher:2",
                  variants={"ce-only": {}, "kd-v1": {}, "multi-teacher": {}},
                  compress=dict(methods=["int8"]),
                  bench=dict(sentences=4, repeats=1, latency_sentences=2, rss=False, arch=False))
    path = tmp_path/"tiny.yaml"
    path.write_text(yaml.safe_dump(preset))
    return path


def test_preset_merges_over_base(tmp_path, tokenizer):
    p = load_preset(str(tiny_preset(tmp_path, tokenizer)))
    assert p["data"] == load_preset("cpu")["data"]
    assert list(p["variants"]) == ["ce-only", "kd-v1", "multi-teacher"]


def test_run_twice_second_run_skips(tmp_path, raw_dir, tokenizer):
    preset = tiny_preset(tmp_path, tokenizer)
    readme = tmp_path/"README.md"
    readme.write_text("# t\n<!-- results:start -->\nnone\n<!-- results:end -->\n")
    out, results = tmp_path/"outputs", tmp_path/"results"
    first = run_pipeline(raw_dir, str(preset), out, results, docs=False, readme=readme)
    names = sorted(p.stem for p in results.glob("*.json"))
    compressed = [n for n in names if n.endswith("-int8")]
    assert len(compressed) == 1
    assert sorted(set(names) - set(compressed)) == ["bench", "ce-only", "kd-v1", "multi-teacher", "run_tiny", "teacher", "teacher-2"]
    assert {"data", "teachers", "students", "compress", "bench", "figures", "readme", "total"} <= set(first["timings_s"])
    table = readme.read_text().split("<!-- results:start -->")[1]
    assert "teacher-2" in table
    assert "kd-v1" in table
    assert len(list((results/"figures").glob("*.png"))) >= 6
    stamps = {p.name: p.stat().st_mtime_ns for p in results.glob("*.json") if not p.name.startswith(("run_", "bench"))}
    t0 = time.time()
    second = run_pipeline(raw_dir, str(preset), out, results, docs=False, readme=readme)
    assert {p.name: p.stat().st_mtime_ns for p in results.glob("*.json") if p.name in stamps} == stamps
    assert second["timings_s"]["teachers"] + second["timings_s"]["students"] < 30
    assert json.loads((results/"run_tiny.json").read_text())["preset"] == "tiny"
    history = [json.loads(line) for line in (results/"runs_tiny.jsonl").read_text().splitlines()]
    assert [h["timings_s"]["total"] for h in history] == [first["timings_s"]["total"], second["timings_s"]["total"]]


def test_run_search_every_grid_point(tmp_path, raw_dir, tokenizer):
    from legalkd.pipeline import search_table
    preset = yaml.safe_load(tiny_preset(tmp_path, tokenizer).read_text())
    preset["search"] = dict(model=preset["teachers"][0]["model"], max_records=16, epochs=1, grid=dict(lr=[1e-3, 3e-3], max_length=[64]),
                            full_split=[dict(epochs=2)])
    path = tmp_path/"tiny.yaml"
    path.write_text(yaml.safe_dump(preset))
    out, results = tmp_path/"outputs", tmp_path/"results"
    run_pipeline(raw_dir, str(path), out, results, steps=["search"], docs=False, readme=None)
    assert sorted(p.stem for p in (results/"search").glob("*.json")) == ["search-full-epochs2", "search-lr0.001-maxlength64", "search-lr0.003-maxlength64"]
    assert not (results/"teacher.json").exists()
    assert not list((out/"search").glob("*/checkpoints"))
    table = search_table(results)
    assert sorted(table["lr"]) == [0.0002, 0.001, 0.003]  # the full-split point keeps the preset's learning rate
    full = table[table["epochs"] == 2].iloc[0]
    assert full["train records"] == 24  # the preset's own training split, capped at 24 records here
    assert full["val F1 ep 2"] == full["val F1 ep 2"]  # not NaN: both epochs were scored
    assert table["best val F1"].is_monotonic_decreasing


def test_cli_run_outside_repository(tmp_path, raw_dir, tokenizer, monkeypatch, capsys):
    from legalkd.cli import main
    preset = tiny_preset(tmp_path, tokenizer)
    work = tmp_path/"elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)
    main(["run", "--data", str(raw_dir), "--preset", str(preset)])
    assert (work/"results"/"tiny"/"teacher.json").exists()  # a preset other than cpu keeps to its own folders
    assert (work/"outputs"/"tiny"/"teacher"/"model").exists()
    assert not (work/"results"/"teacher.json").exists()
    assert not (work/"README.md").exists()
    assert "docs site is not built" in capsys.readouterr().out
