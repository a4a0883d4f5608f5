"""Data conversion: bad input, round trip on the real files, windows, CoNLL and the Hugging Face path."""
import json
from collections import Counter

import pytest

from legalkd.data import (DataError, LABELS, convert_record, entity_counts, merge_windows, prepare_data, read_conll,
                          read_labelstudio, tags_to_spans, tokenize_records, write_conll, load_hf_release, data_meta)


def task(rid="r1", text="Appeal under Section 302 IPC", spans=((13, 24, "PROVISION"),), source="tax judgement https://x"):
    return dict(id=rid, data=dict(text=text), meta=dict(source=source),
                annotations=[dict(result=[dict(value=dict(start=s, end=e, text=text[s:e], labels=[l])) for s, e, l in spans])])


def write(tmp_path, tasks, name="NER_TRAIN_JUDGEMENT.json"):
    p = tmp_path/name
    p.write_text(json.dumps(tasks))
    return p


def test_label_vocabulary_fixed():
    assert len(LABELS) == 29
    assert LABELS[:3] == ["O", "B-COURT", "I-COURT"]


def test_malformed_json_names_file(tmp_path):
    p = tmp_path/"NER_TRAIN_JUDGEMENT.json"
    p.write_text('[{"id": "r1", ')
    with pytest.raises(DataError, match="NER_TRAIN_JUDGEMENT.json: invalid JSON at line 1"):
        read_labelstudio(p)


def test_non_utf8_names_file(tmp_path):
    p = tmp_path/"NER_TRAIN_JUDGEMENT.json"
    p.write_bytes(b'[{"id": "r1", "data": {"text": "caf\xe9"}}]')
    with pytest.raises(DataError, match=r"NER_TRAIN_JUDGEMENT.json: not valid UTF-8 \(byte 35\)"):
        read_labelstudio(p)


def test_span_text_mismatch_names_record(tmp_path):
    t = task("bad-span")
    t["annotations"][0]["result"][0]["value"]["text"] = "Section 303"
    with pytest.raises(DataError, match="record bad-span: span 13-24 text 'Section 303' differs"):
        read_labelstudio(write(tmp_path, [t]))


def test_overlapping_spans_names_record(tmp_path):
    t = task("overlap", spans=((13, 24, "PROVISION"), (21, 28, "STATUTE")))
    with pytest.raises(DataError, match="record overlap: spans 13-24 .PROVISION. and 21-28 .STATUTE. overlap"):
        read_labelstudio(write(tmp_path, [t]))


def test_unknown_label_names_record(tmp_path):
    t = task("odd-label", spans=((13, 24, "SECTION"),))
    with pytest.raises(DataError, match="record odd-label: span 13-24 has unknown label 'SECTION'"):
        read_labelstudio(write(tmp_path, [t]))


def test_empty_text_names_record(tmp_path):
    with pytest.raises(DataError, match="record empty: empty text"):
        read_labelstudio(write(tmp_path, [task("empty", text="   ", spans=())]))


def test_span_outside_text_names_record(tmp_path):
    t = task("far", spans=((13, 24, "PROVISION"),))
    t["annotations"][0]["result"][0]["value"].update(end=99, text="x")
    with pytest.raises(DataError, match="record far: span 13-99 is empty or outside the text"):
        read_labelstudio(write(tmp_path, [t]))


def test_edge_whitespace_trimmed_and_counted(tmp_path):
    stats = Counter()
    recs = read_labelstudio(write(tmp_path, [task("ws", spans=((12, 25, "PROVISION"),))]), stats=stats)
    assert recs[0]["spans"] == [(13, 24, "PROVISION")]
    assert stats["trimmed_spans"] == 1


def test_round_trip_real_files(raw_dir):
    counts = {}
    for split, names in (("train", ["NER_TRAIN_JUDGEMENT.json", "NER_TRAIN_PREAMBLE.json"]),
                         ("test", ["NER_DEV_JUDGEMENT.json", "NER_DEV_PREAMBLE.json"])):
        n_spans = n_back = 0
        for name in names:
            for rec in read_labelstudio(raw_dir/name):
                conv = convert_record(rec)
                back = tags_to_spans(conv["word_offsets"], conv["tags"])
                assert back == [tuple(s) for s in rec["spans"]], rec["id"]
                n_spans += len(rec["spans"]); n_back += len(back)
        counts[split] = (n_spans, n_back)
    assert counts == {"train": (29964, 29964), "test": (3261, 3261)}


def test_prepared_split_sizes(data_dir):
    meta = data_meta(data_dir)
    assert meta["records"]["train"] + meta["records"]["validation"] == 10995
    assert meta["records"]["test"] == 1074
    assert sum(meta["entities"]["train"].values()) + sum(meta["entities"]["validation"].values()) == 29964
    assert sum(meta["entities"]["test"].values()) == 3261
    assert meta["repairs"]["trimmed_spans"] == 29


def test_prepare_reuses_unchanged_output(raw_dir, data_dir):
    before = (data_dir/"meta.json").stat().st_mtime_ns
    prepare_data(raw_dir, data_dir)
    assert (data_dir/"meta.json").stat().st_mtime_ns == before


def test_validation_stratified(data_dir):
    from datasets import load_from_disk
    val = load_from_disk(data_dir/"dataset")["validation"]
    kinds = Counter(val["source_type"])
    assert kinds == {"judgement": 944, "preamble": 156}


def test_longest_preamble_every_word_one_slot(data_dir, tokenizer):
    from datasets import load_from_disk
    train = load_from_disk(data_dir/"dataset")["train"]
    i = max(range(len(train)), key=lambda k: len(train[k]["words"]))
    rec = train[i]
    feats = tokenize_records([rec], tokenizer, max_length=512, stride=128)
    assert sum(len(f["input_ids"]) - 2 for f in feats) > 4000
    owned = Counter(w for f in feats for w, o in zip(f["word_ids"], f["owned"]) if o)
    assert sorted(owned) == list(range(len(rec["words"])))
    assert set(owned.values()) == {1}
    merged = merge_windows(feats, [f["labels"] for f in feats], [len(rec["words"])])
    assert [LABELS[i] for i in merged[0]] == rec["tags"]


def test_word_without_wordpiece_repaired(tokenizer):
    from collections import Counter as C
    stats = C()
    feats = tokenize_records([dict(words=["Court", "\u200b", "Delhi"], tags=["B-COURT", "O", "B-GPE"])], tokenizer, stats=stats)
    assert stats["empty_words"] == 1
    assert sorted(w for w, o in zip(feats[0]["word_ids"], feats[0]["owned"]) if o) == [0, 1, 2]


def test_conll_round_trip(tmp_path, data_dir):
    from datasets import load_from_disk
    recs = load_from_disk(data_dir/"dataset")["test"].select(range(20)).to_list()
    write_conll(recs, tmp_path/"test.conll")
    back = read_conll(tmp_path/"test.conll")
    assert [(r["id"], r["source_type"], r["words"], r["tags"]) for r in back] == [(r["id"], r["source_type"], r["words"], r["tags"]) for r in recs]


def test_conll_bad_tag_names_line(tmp_path):
    (tmp_path/"x.conll").write_text("Court B-COURT\nDelhi B-CITY\n")
    with pytest.raises(DataError, match=r"x.conll:2: unknown tag 'B-CITY'"):
        read_conll(tmp_path/"x.conll")


def test_prepare_from_conll_folder(tmp_path, data_dir):
    for split in ("train", "validation", "test"):
        from datasets import load_from_disk
        write_conll(load_from_disk(data_dir/"dataset")[split].select(range(10)).to_list(), tmp_path/"conll"/f"{split}.conll")
    ds = prepare_data(tmp_path/"conll", tmp_path/"out")
    assert {k: len(v) for k, v in ds.items()} == {"train": 10, "validation": 10, "test": 10}


def test_hf_path_with_local_stand_in(tmp_path):
    stand_in = tmp_path/"InLegalNER"
    stand_in.mkdir()
    train = [task("t1"), task("t2", text="Preamble of the High Court", spans=((16, 26, "COURT"),), source="x preamble https://y")]
    (stand_in/"train.json").write_text(json.dumps(train))
    (stand_in/"dev.json").write_text(json.dumps([task("d1")]))
    raw = load_hf_release(str(stand_in))
    assert [r["id"] for r in raw["train"]] == ["t1", "t2"]
    assert [r["source_type"] for r in raw["train"]] == ["judgement", "preamble"]
    assert [r["id"] for r in raw["test"]] == ["d1"]


def test_cli_prepare_prints_counts(raw_dir, tmp_path, capsys):
    from legalkd.cli import main
    main(["data", "prepare", "--source", str(raw_dir), "--out", str(tmp_path/"d")])
    out = capsys.readouterr().out
    assert "test          1074 records   3261 entities" in out
