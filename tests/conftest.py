"""Shared fixtures: the real release files, a prepared copy of them, and tiny saved models."""
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))

ROOT = Path(__file__).resolve().parents[1]
RAW = Path(os.environ.get("LEGALKD_RAW", ROOT.parent/"shared"/"data"/"inlegalner"/"raw"))


@pytest.fixture(scope="session")
def raw_dir():
    "Folder of the InLegalNER release JSON files; tests that need it fail loudly when it is missing."
    if not (RAW/"NER_DEV_PREAMBLE.json").exists():
        pytest.fail(f"release files not found in {RAW}; set LEGALKD_RAW to the folder of NER_*.json")
    return RAW


@pytest.fixture(scope="session")
def data_dir(raw_dir, tmp_path_factory):
    "The release files prepared once per test session."
    from legalkd.data import prepare_data
    out = tmp_path_factory.mktemp("prepared")/"inlegalner"
    prepare_data(raw_dir, out)
    return out


@pytest.fixture(scope="session")
def tokenizer():
    from legalkd.models import load_tokenizer
    return load_tokenizer("minilm-l6")


def save_tiny(path, tokenizer, arch="bert", layers=2, hidden=32, seed=0):
    "Save a tiny random token classifier with `tokenizer` to `path` and return the path."
    from legalkd.models import tiny_model
    tiny_model(arch, layers=layers, hidden=hidden, vocab_size=len(tokenizer), seed=seed).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return Path(path)


SMALL = dict(epochs=1, max_records=24, max_length=64, stride=16, batch_size=8, eval_batch_size=16, bf16=False)
