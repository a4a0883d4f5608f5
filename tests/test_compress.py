"""Tagging, compression and benchmark: offsets into raw text, runtime agreement, INT8 folders, results files, CLI."""
import argparse, io, json, sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch

from conftest import save_tiny
from legalkd.compress import (ARCH_SHAPES, Tagger, add_cli, compress_model, evaluate_compressed, export_onnx,
                              pareto_front, quantize_dynamic_int8, quantize_onnx_int8, read_marker, read_texts,
                              report_bench, run_bench, sensitivity_scan, write_tagged)
from legalkd.data import LABELS, DataError, convert_record, split_words, tokenize_words
from legalkd.results import RESULTS_SCHEMA, rescore_predictions

MIXED = "Hon'ble Justice Ṛṣi Kumar (R\u0323) of the\r\nHigh Court\tof Kerala … awarded ₹ 5,000 to\u200bthe petitioner 😀.\r\n"
LONG = " ".join(["The Court of the Additional Sessions Judge, Ernakulam, convicted the accused under Section 302 IPC."] * 300)
TINY_SHAPE = {"bert-tiny-shape": dict(arch="bert", layers=1, hidden=32, heads=2)}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tokenizer):
    "A tiny random BERT token classifier with the MiniLM tokenizer."
    return save_tiny(tmp_path_factory.mktemp("compress")/"tiny", tokenizer)


@pytest.fixture(scope="module")
def every_word_entity(tmp_path_factory, tokenizer):
    "A tiny model whose classifier bias makes every word a one-word PETITIONER entity, so each word's offsets show up in the output."
    from legalkd.models import tiny_model
    model = tiny_model("bert", vocab_size=len(tokenizer))
    with torch.no_grad(): model.classifier.bias[LABELS.index("B-PETITIONER")] = 100.0
    path = tmp_path_factory.mktemp("compress")/"biased"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def onnx_dir(tiny, tmp_path_factory):
    return export_onnx(tiny, tmp_path_factory.mktemp("compress")/"tiny-onnx")


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    "A prepared-data folder of a few hand-made records, in the layout `legalkd data prepare` writes."
    from datasets import Dataset, DatasetDict
    texts = [("The Supreme Court of India dismissed the appeal filed by Ramesh Kumar.", {"Supreme Court of India": "COURT", "Ramesh Kumar": "PETITIONER"}),
             ("Section 302 of the Indian Penal Code applies.", {"Section 302": "PROVISION", "Indian Penal Code": "STATUTE"}),
             ("Heard on 12 March 2019 before Justice A. K. Sikri.", {"12 March 2019": "DATE", "A. K. Sikri": "JUDGE"})]
    records = []
    for i, (text, entities) in enumerate(texts * 4):
        spans = [(text.index(e), text.index(e) + len(e), label) for e, label in entities.items()]
        source_type = "preamble" if i % 3 == 2 else "judgement"
        records.append(convert_record(dict(id=str(i), text=text, spans=spans, source="", source_type=source_type)))
    out = tmp_path_factory.mktemp("data")/"small"
    DatasetDict({k: Dataset.from_list(records) for k in ("train", "validation", "test")}).save_to_disk(out/"dataset")
    (out/"meta.json").write_text(json.dumps(dict(raw_hash="ab" * 32)))
    return out


def spans(entities):
    return [[(e["start"], e["end"], e["label"]) for e in ents] for ents in entities]


def parser():
    ap = argparse.ArgumentParser(prog="legalkd")
    add_cli(ap.add_subparsers())
    return ap


def run_cli(argv):
    args = parser().parse_args(argv)
    return args.func(args)


def test_tag_offsets_slice_mixed_text(every_word_entity):
    tagger = Tagger.from_pretrained(every_word_entity)
    (ents,) = tagger.tag([MIXED])
    words = split_words(MIXED)
    assert [(e["start"], e["end"]) for e in ents] == words
    for e in ents:
        assert MIXED[e["start"]:e["end"]] == e["text"]
        assert e["label"] == "PETITIONER"
        assert 0.99 < e["score"] <= 1.0
    assert {"Ṛṣi", "₹", "…", "\u0323", "\u200b", "😀"} <= {e["text"] for e in ents}


def test_tag_random_model_offsets_valid(tiny):
    (ents,) = Tagger.from_pretrained(tiny).tag([MIXED])
    assert ents, "the random tiny model is expected to find some entities"
    for e in ents:
        assert MIXED[e["start"]:e["end"]] == e["text"]
        assert set(e) == {"start", "end", "label", "text", "score"}


def test_tag_long_document_keeps_every_word(every_word_entity):
    tagger = Tagger.from_pretrained(every_word_entity, max_length=128, stride=32)
    words = split_words(LONG)
    n_pieces = len(tokenize_words([[LONG[s:e] for s, e in words]], tagger.tokenizer)[0][0])
    assert n_pieces > 5000
    (ents,) = tagger.tag([LONG])
    assert len(ents) == len(words)
    assert [(e["start"], e["end"]) for e in ents] == words
    for e in ents:
        assert 0 <= e["start"] < e["end"] <= len(LONG)
        assert LONG[e["start"]:e["end"]] == e["text"]


def test_tag_empty_and_whitespace_inputs(tiny):
    tagger = Tagger.from_pretrained(tiny)
    assert tagger.tag(["", " ", "\r\n\t \r\n"]) == [[], [], []]
    assert tagger.tag([]) == []


def test_tag_rejects_bare_string_and_non_str(tiny):
    tagger = Tagger.from_pretrained(tiny)
    with pytest.raises(TypeError, match="wrap a single text"):
        tagger.tag("The Supreme Court")
    with pytest.raises(TypeError, match="text must be a str"):
        tagger.tag([None])


def test_read_texts_non_utf8_names_file(tmp_path):
    bad = tmp_path/"judgment-cp1252.txt"
    bad.write_bytes("Court fee ".encode() + b"\x80 500")
    with pytest.raises(DataError, match=r"judgment-cp1252\.txt: not valid UTF-8 at byte offset 10"):
        read_texts(bad)


def test_read_texts_line_and_document_modes(tmp_path):
    f = tmp_path/"in.txt"
    f.write_bytes("\ufeffFirst line\r\nSecond\tline ₹\r\n\r\nlast".encode())
    assert [r["text"] for r in read_texts(f)] == ["First line", "Second\tline ₹", "", "last"]
    assert [r["id"] for r in read_texts(f)][0] == f"{f}:1"
    assert read_texts(f, document=True) == [dict(id=str(f), text="First line\r\nSecond\tline ₹\r\n\r\nlast")]


def test_read_texts_stdin(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("Delhi High Court\nBombay\n".encode())))
    assert [r["text"] for r in read_texts("-")] == ["Delhi High Court", "Bombay"]


def test_read_texts_labelstudio(tmp_path):
    f = tmp_path/"tasks.json"
    f.write_text(json.dumps([{"id": 3, "data": {"text": "Kerala High Court"}}, {"data": {"text": "Patna"}}]))
    assert read_texts(f) == [dict(id="3", text="Kerala High Court"), dict(id=f"{f}#1", text="Patna")]
    f.write_text(json.dumps([{"id": 3, "data": {}}]))
    with pytest.raises(DataError, match="task #0: data.text is missing"):
        read_texts(f)


def test_onnx_tagger_matches_torch(tiny, onnx_dir):
    sample = [MIXED, LONG[:3000], "The Supreme Court dismissed the appeal.", ""]
    torch_spans = spans(Tagger.from_pretrained(tiny).tag(sample))
    onnx_spans = spans(Tagger.from_pretrained(onnx_dir, threads=1).tag(sample))
    assert sum(map(len, torch_spans)) > 0
    assert onnx_spans == torch_spans
    assert read_marker(onnx_dir)["max_abs_diff"] < 1e-4


def test_torch_int8_loads_and_runs(tiny, tmp_path):
    out = quantize_dynamic_int8(tiny, tmp_path/"int8")
    tagger = Tagger.from_pretrained(out)
    assert tagger.info["format"] == "torch-int8"
    assert tagger.parameters == Tagger.from_pretrained(tiny).parameters
    assert tagger.backend.model.bert.encoder.layer[0].output.dense.__module__.startswith("torch.ao.nn.quantized")
    (ents,) = tagger.tag([MIXED])
    assert all(MIXED[e["start"]:e["end"]] == e["text"] for e in ents)


def test_torch_int8_keep_fp32_patterns(tiny, tmp_path):
    out = quantize_dynamic_int8(tiny, tmp_path/"int8-ffn", keep_fp32=[r"layer\.\d+\.output\.dense$"])
    model = Tagger.from_pretrained(out).backend.model
    assert type(model.bert.encoder.layer[1].output.dense) is torch.nn.Linear
    assert type(model.bert.encoder.layer[1].attention.output.dense) is not torch.nn.Linear
    with pytest.raises(ValueError, match="match no nn.Linear"):
        quantize_dynamic_int8(tiny, tmp_path/"x", keep_fp32=["no_such_layer"])


def test_onnx_int8_loads_and_runs(onnx_dir, tmp_path):
    import onnx
    out = quantize_onnx_int8(onnx_dir, tmp_path/"onnx-int8", keep_fp32=[r"^classifier$"])
    ops = [n for n in onnx.load(str(out/"model.onnx")).graph.node]
    assert any(n.op_type == "MatMulInteger" for n in ops)
    assert [n.op_type for n in ops if n.name == "/classifier/MatMul"] == ["MatMul"]
    tagger = Tagger.from_pretrained(out, threads=1)
    assert tagger.info["format"] == "onnx-int8"
    assert len(tagger.tag([MIXED, ""])) == 2
    assert (out/"model.onnx").stat().st_size < (onnx_dir/"model.onnx").stat().st_size / 2


def test_compress_rejects_wrong_source_format(onnx_dir, tmp_path):
    with pytest.raises(ValueError, match="has format onnx, but dynamic INT8 quantisation needs a torch folder"):
        compress_model(onnx_dir, tmp_path/"x", "int8")
    with pytest.raises(ValueError, match="unknown compression method"):
        compress_model(onnx_dir, tmp_path/"x", "fp16")


def test_compress_keeps_unrelated_output_folder(tiny, tmp_path):
    (tmp_path/"notes").mkdir()
    (tmp_path/"notes"/"keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a compressed model folder"):
        quantize_dynamic_int8(tiny, tmp_path/"notes")
    assert (tmp_path/"notes"/"keep.txt").read_text() == "mine"


def test_evaluate_compressed_writes_valid_results(tiny, small_data, tmp_path):
    out = quantize_dynamic_int8(tiny, tmp_path/"int8")
    base = dict(experiment="tiny", seed=7, data_hash="ab" * 32, config=dict(max_length=64, stride=16),
                validation=dict(f1=0.5), test=dict(f1=0.4))
    res = evaluate_compressed(out, small_data, tmp_path/"results", "tiny-int8", base_results=base)
    jsonschema.validate(res, RESULTS_SCHEMA)
    assert res["kind"] == "compressed"
    assert res["parameters"] == Tagger.from_pretrained(tiny).parameters
    assert res["seed"] == 7
    assert res["config"]["max_length"] == 64
    assert res["base"]["delta_test_f1"] == pytest.approx(res["test"]["f1"] - 0.4)
    assert rescore_predictions(tmp_path/"results"/res["predictions"])["f1"] == pytest.approx(res["test"]["f1"])


def test_sensitivity_scan_rows(tiny, small_data, tmp_path):
    rows = sensitivity_scan(tiny, small_data, groups={"all-int8": [], "ffn_out.0": [r"layer\.0\.output\.dense$"]},
                            out_path=tmp_path/"scan.json")
    assert [r["group"] for r in rows] == ["fp32", "all-int8", "ffn_out.0"]
    assert all(0 <= r["f1"] <= 1 for r in rows)
    assert json.loads((tmp_path/"scan.json").read_text())["rows"] == rows


def test_bench_writes_expected_keys(tiny, onnx_dir, small_data, tmp_path):
    bench = run_bench({"teacher": tiny, "teacher-onnx": onnx_dir}, small_data, tmp_path/"bench.json", sentences=4, repeats=2,
                      batch_size=2, latency_sentences=2, threads=1, arch_shapes=TINY_SHAPE)
    saved = json.loads((tmp_path/"bench.json").read_text())
    assert saved == json.loads(json.dumps(bench))
    assert {"settings", "machine", "versions", "teacher", "models", "architecture", "record_ids", "data_hash"} <= set(saved)
    assert saved["settings"]["threads"] == 1
    for m in saved["models"].values():
        assert {"format", "parameters", "weights_mib", "dir_mib", "words_per_s", "wordpieces_per_s", "latency_ms",
                "peak_rss_mib", "baseline_rss_mib", "model_rss_mib", "vs_teacher"} <= set(m)
        assert len(m["runs_s"]) == 2
        assert m["latency_ms"]["n"] == 4
        assert m["peak_rss_mib"] > m["baseline_rss_mib"] > 0
    assert saved["models"]["teacher"]["vs_teacher"]["words_per_s"] == 1.0
    assert "Random-weight" in saved["architecture"]["note"]
    assert set(saved["architecture"]["models"]) == {"bert-tiny-shape", "bert-tiny-shape-int8"}
    assert saved["architecture"]["models"]["bert-tiny-shape"]["weights"] == "random"


def test_arch_shapes_match_base_models():
    assert ARCH_SHAPES["legalbert-shape"] == dict(arch="bert", layers=12, hidden=768, heads=12)
    assert ARCH_SHAPES["distilbert-shape"] == dict(arch="distilbert", layers=6, hidden=768, heads=12)


def test_report_bench_missing_file_prints_note(tmp_path, capsys):
    assert report_bench(tmp_path/"bench.json", tmp_path, tmp_path/"pareto.png") is None
    assert "not found" in capsys.readouterr().out


def test_report_bench_draws_pareto(tiny, small_data, tmp_path):
    run_bench({"teacher": tiny}, small_data, tmp_path/"bench.json", sentences=2, repeats=1, batch_size=2, latency_sentences=1,
              threads=1, measure_rss=False, arch_shapes=None)
    (tmp_path/"teacher.json").write_text(json.dumps(dict(test=dict(f1=0.8), validation=dict(f1=0.7))))
    rep = report_bench(tmp_path/"bench.json", tmp_path, tmp_path/"fig"/"pareto.png")
    assert rep["table"].loc["teacher", "test F1"] == 0.8
    assert (tmp_path/"fig"/"pareto.png").stat().st_size > 0


def test_pareto_front():
    assert pareto_front({"a": (10, 0.8), "b": (20, 0.7), "c": (5, 0.75), "d": (20, 0.6)}) == ["b", "a"]


@pytest.mark.parametrize("fmt", ["jsonl", "conll", "spacy-json"])
def test_cli_tag_file(fmt, every_word_entity, tmp_path):
    src = tmp_path/"in.txt"
    src.write_bytes("Delhi High Court\r\n\r\nJustice Ṛṣi\tKumar\n".encode())
    out = tmp_path/f"out.{fmt}"
    run_cli(["tag", str(src), "--model", str(every_word_entity), "--format", fmt, "--out", str(out), "--batch-size", "2"])
    text = out.read_text(encoding="utf-8")
    if fmt == "jsonl":
        rows = [json.loads(line) for line in text.splitlines()]
        assert [r["text"] for r in rows] == ["Delhi High Court", "", "Justice Ṛṣi\tKumar"]
        assert [e["text"] for e in rows[2]["entities"]] == ["Justice", "Ṛṣi", "Kumar"]
        assert all(r["text"][e["start"]:e["end"]] == e["text"] for r in rows for e in r["entities"])
    elif fmt == "conll":
        assert text.count("# id = ") == 3
        assert "Ṛṣi B-PETITIONER\n" in text
    else:
        rows = [json.loads(line) for line in text.splitlines()]
        assert rows[0]["ents"][0] == dict(start=0, end=5, label="PETITIONER")
        assert set(rows[0]) == {"text", "ents", "title"}


def test_cli_tag_document_stdout(every_word_entity, tmp_path, capsys):
    src = tmp_path/"doc.txt"
    src.write_bytes("Delhi\r\nHigh Court".encode())
    run_cli(["tag", str(src), "--model", str(every_word_entity), "--document"])
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["text"] == "Delhi\r\nHigh Court"
    assert [(e["start"], e["end"]) for e in row["entities"]] == [(0, 5), (7, 11), (12, 17)]


def test_cli_tag_bad_utf8_exits_with_message(tiny, tmp_path):
    bad = tmp_path/"latin1.txt"
    bad.write_bytes(b"Caf\xe9")
    with pytest.raises(SystemExit, match=r"legalkd tag: .*latin1\.txt: not valid UTF-8 at byte offset 3"):
        run_cli(["tag", str(bad), "--model", str(tiny), "--out", str(tmp_path/"out.jsonl")])
    assert not (tmp_path/"out.jsonl").exists()


def test_cli_compress_scores_model(tiny, small_data, tmp_path, capsys):
    run_cli(["compress", "--model", str(tiny), "--out", str(tmp_path/"q"), "--method", "int8", "--keep-fp32", "^classifier$",
             "--data", str(small_data), "--results", str(tmp_path/"results"), "--experiment", "tiny-int8"])
    assert "tiny-int8: test F1" in capsys.readouterr().out
    res = json.loads((tmp_path/"results"/"tiny-int8.json").read_text())
    assert res["config"]["keep_fp32"] == ["^classifier$"]
    with pytest.raises(SystemExit, match="go together"):
        run_cli(["compress", "--model", str(tiny), "--out", str(tmp_path/"q2"), "--method", "int8", "--data", str(small_data)])


def test_cli_help_texts_present():
    ap = parser()
    sub = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("tag", "compress", "bench"):
        for action in sub.choices[name]._actions:
            assert action.help, f"{name} option {action.dest} has no help text"


def test_cli_bench_parses_model_pairs():
    args = parser().parse_args(["bench", "--models", "teacher=a", "s=b", "--data", "d"])
    assert args.models == [("teacher", "a"), ("s", "b")]
    with pytest.raises(SystemExit):
        parser().parse_args(["bench", "--models", "teacher", "--data", "d"])


def test_run_compression_retrained_student(tmp_path, small_data, tokenizer):
    from legalkd.compress import run_compression
    student = save_tiny(tmp_path/"student", tokenizer, seed=1)
    best = dict(experiment="stu", seed=1, data_hash="ab" * 32, config=dict(max_length=64, stride=16),
                validation=dict(f1=0.5), test=dict(f1=0.4), model=dict(checkpoint=str(student)))
    args = (best, dict(methods=["int8"]), small_data, tmp_path/"out", tmp_path/"results")
    first = run_compression(*args)[0]
    assert run_compression(*args)[0] == first
    save_tiny(student, tokenizer, seed=2)
    third = run_compression(*args)[0]
    assert third["config"]["weights_sha256"] != first["config"]["weights_sha256"]


def test_run_sensitivity_stale_scan(tmp_path):
    import os
    from legalkd.compress import run_sensitivity
    scan = tmp_path/"sensitivity_stu-int8.json"
    scan.write_text("{}")
    os.utime(scan, (1, 1))
    (tmp_path/"stu-int8.json").write_text("{}")
    copy = dict(experiment="stu-int8", config=dict(format="torch-int8", source="unused"), base=dict(delta_validation_f1=0.0))
    assert run_sensitivity([copy], tmp_path, tmp_path) == []
    assert not scan.exists()
