"""Teacher engine: registry errors, metrics, results schema, resuming, tiny LegalBERT/DistilBERT paths, torchrun."""
import json, math, os, subprocess, sys
from pathlib import Path

import jsonschema
import pytest

from conftest import SMALL, save_tiny
from legalkd.metrics import ner_scores
from legalkd.models import ModelNotFoundError, load_tokenizer
from legalkd.results import RESULTS_SCHEMA, rescore_predictions, write_results
from legalkd.teacher import StopAfterSave, TrainConfig, WindowDataset, load_split, train_teacher


def n_windows(data_dir, tokenizer):
    "Training windows of the SMALL config."
    recs = load_split(data_dir, "train", SMALL["max_records"])
    return len(WindowDataset(recs, tokenizer, SMALL["max_length"], SMALL["stride"]))


def test_hub_name_offline_error_says_what_to_do():
    with pytest.raises(ModelNotFoundError, match="--model-path"):
        load_tokenizer("nlpaueb/legal-bert-base-uncased")


def test_strict_metric_rejects_dangling_inside_tag():
    gold = [["B-JUDGE", "I-JUDGE", "O"]]
    assert ner_scores(gold, [["I-JUDGE", "I-JUDGE", "O"]])["f1"] == 0.0
    assert ner_scores(gold, gold)["per_type"]["JUDGE"]["support"] == 1


def test_results_schema_rejects_missing_fields(tmp_path):
    with pytest.raises(jsonschema.ValidationError, match="'experiment' is a required property"):
        write_results(dict(kind="teacher"), tmp_path)


@pytest.mark.parametrize("spec,arch", [("legalbert", "bert"), ("distilbert", "distilbert")])
def test_full_scale_specs_train_with_tiny_configs(spec, arch, tmp_path, data_dir, tokenizer):
    local = save_tiny(tmp_path/f"tiny-{spec}", tokenizer, arch=arch)
    res = train_teacher(spec, data_dir, tmp_path/"out", tmp_path/"results", f"{spec}-tiny", TrainConfig(**SMALL), model_path=str(local))
    jsonschema.validate(res, RESULTS_SCHEMA)
    assert res["model"]["arch"] == arch
    assert res["config"]["model"] == spec
    assert abs(rescore_predictions(tmp_path/"results"/res["predictions"])["f1"] - res["test"]["f1"]) < 1e-9
    assert set(res["test"]["by_source"]) == {"judgement", "preamble"}


def test_rerun_skips_finished_teacher(tmp_path, data_dir, tokenizer):
    local = save_tiny(tmp_path/"tiny", tokenizer)
    cfg = TrainConfig(**SMALL)
    first = train_teacher("legalbert", data_dir, tmp_path/"out", tmp_path/"results", "t", cfg, model_path=str(local))
    mtime = (tmp_path/"results"/"t.json").stat().st_mtime_ns
    again = train_teacher("legalbert", data_dir, tmp_path/"out", tmp_path/"results", "t", cfg, model_path=str(local))
    assert again["created"] == first["created"]
    assert (tmp_path/"results"/"t.json").stat().st_mtime_ns == mtime


def test_interrupted_training_resumes(tmp_path, data_dir, tokenizer):
    local = save_tiny(tmp_path/"tiny", tokenizer)
    cfg = TrainConfig(**{**SMALL, "epochs": 2})
    with pytest.raises(KeyboardInterrupt):
        train_teacher("legalbert", data_dir, tmp_path/"out", tmp_path/"results", "t", cfg, model_path=str(local), callbacks=[StopAfterSave()])
    assert not (tmp_path/"results"/"t.json").exists()
    res = train_teacher("legalbert", data_dir, tmp_path/"out", tmp_path/"results", "t", cfg, model_path=str(local))
    steps_per_epoch = math.ceil(n_windows(data_dir, tokenizer) / SMALL["batch_size"])
    assert res["resumed_from"].endswith(f"checkpoint-{steps_per_epoch}")
    assert [h["epoch"] for h in res["history"]] == [1.0, 2.0]


def test_changed_config_starts_over(tmp_path, data_dir, tokenizer):
    local = save_tiny(tmp_path/"tiny", tokenizer)
    cfg = TrainConfig(**{**SMALL, "epochs": 2})
    with pytest.raises(KeyboardInterrupt):
        train_teacher("legalbert", data_dir, tmp_path/"out", tmp_path/"results", "t", cfg, model_path=str(local), callbacks=[StopAfterSave()])
    res = train_teacher("legalbert", data_dir, tmp_path/"out", tmp_path/"results", "t", cfg.update(epochs=1), model_path=str(local))
    assert res["resumed_from"] is None
    assert [h["epoch"] for h in res["history"]] == [1.0]


def test_torchrun_two_processes(tmp_path, data_dir, tokenizer):
    local = save_tiny(tmp_path/"tiny", tokenizer)
    script = tmp_path/"ddp.py"
    script.write_text(
        "import sys\nfrom legalkd.teacher import TrainConfig, train_teacher\n"
        f"cfg = TrainConfig(**{SMALL!r})\n"
        f"train_teacher('legalbert', {str(data_dir)!r}, {str(tmp_path/'out')!r}, {str(tmp_path/'results')!r}, 'ddp', cfg, model_path={str(local)!r})\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517", str(script)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path/"results"/"ddp.json").read_text())
    assert res["config"]["max_records"] == SMALL["max_records"]
    state = json.loads(next((tmp_path/"out"/"checkpoints").glob("checkpoint-*/trainer_state.json")).read_text())
    assert state["global_step"] == math.ceil(n_windows(data_dir, tokenizer) / (2 * SMALL["batch_size"]))


def test_offline_error_names_spec_and_folder():
    with pytest.raises(ModelNotFoundError) as err:
        load_tokenizer("distilbert")
    msg = str(err.value)
    assert "'distilbert' (distilbert-base-uncased)" in msg
    assert "--model-path /models/distilbert-base-uncased" in msg
    assert ".." not in msg


def test_missing_model_path_is_named(tmp_path, data_dir):
    with pytest.raises(ModelNotFoundError, match="not found; pass the folder"):
        train_teacher("legalbert", data_dir, tmp_path/"out", tmp_path/"results", "t", TrainConfig(**SMALL), model_path=str(tmp_path/"nope"))


def test_history_has_epoch_train_loss(tmp_path, data_dir, tokenizer):
    local = save_tiny(tmp_path/"tiny", tokenizer)
    res = train_teacher("legalbert", data_dir, tmp_path/"out", tmp_path/"results", "t", TrainConfig(**{**SMALL, "epochs": 2, "log_steps": 1}),
                        model_path=str(local))
    assert [h["epoch"] for h in res["history"]] == [1.0, 2.0]
    assert all(h["train_loss"] > 0 for h in res["history"])


def cli_train(local, data_dir, tmp_path, *extra):
    "Run `legalkd train-teacher` on the SMALL slice with a tiny model."
    from legalkd.cli import main
    main(["train-teacher", "--model", "legalbert", "--model-path", str(local), "--data", str(data_dir), "--out", str(tmp_path/"out"),
          "--results", str(tmp_path/"results"), "--max-records", str(SMALL["max_records"]), "--max-length", str(SMALL["max_length"]),
          "--stride", str(SMALL["stride"]), "--batch-size", str(SMALL["batch_size"]), "--no-bf16", *extra])


def test_cli_keeps_results_of_other_settings(tmp_path, data_dir, tokenizer):
    local = save_tiny(tmp_path/"tiny", tokenizer)
    cli_train(local, data_dir, tmp_path, "--epochs", "1")
    path = tmp_path/"results"/"teacher.json"
    before = path.read_bytes()
    with pytest.raises(SystemExit, match=r"epochs 1\.0 -> 2\.0.*pass --force"):
        cli_train(local, data_dir, tmp_path, "--epochs", "2")
    assert path.read_bytes() == before
    cli_train(local, data_dir, tmp_path, "--epochs", "2", "--force")
    assert json.loads(path.read_text())["config"]["epochs"] == 2.0


def test_cli_missing_data_says_prepare(tmp_path):
    from legalkd.cli import main
    with pytest.raises(SystemExit, match="legalkd data prepare"):
        main(["train-teacher", "--data", str(tmp_path/"nodata"), "--out", str(tmp_path/"out"), "--results", str(tmp_path/"results")])
