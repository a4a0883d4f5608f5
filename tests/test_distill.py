"""Distillation: losses against hand-computed values, layer maps, projections, masking and both tokenizer paths."""
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import BertTokenizerFast, TrainingArguments

from conftest import SMALL, save_tiny
from legalkd.distill import (DistillConfig, DistillTrainer, PRESETS, StudentWithProjection, TokenIds, align_words, cache_teacher_outputs,
                             distill, get_preset, same_vocab, teacher_window)
from legalkd.losses import HiddenProjection, hidden_mse, kd_logit_loss, layer_pairs, token_ce
from legalkd.models import layer_map, tiny_model
from legalkd.teacher import ResultsExistError


def test_ce_matches_hand_value():
    logits = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]])
    expected = (-math.log(math.e / (math.e + 2)) - math.log(math.e**2 / (math.e**2 + 2))) / 2
    assert token_ce(logits, torch.tensor([[0, 1]])).item() == pytest.approx(expected)


def test_kd_matches_hand_value():
    t = torch.tensor([[math.log(0.7), math.log(0.3)]])
    assert kd_logit_loss(torch.zeros(1, 2), t, 1.0).item() == pytest.approx(0.7 * math.log(1.4) + 0.3 * math.log(0.6))


@pytest.mark.parametrize("T", [1.0, 2.0, 5.0])
def test_kd_temperature_squared_scaling(T):
    s, t = torch.randn(7, 29), torch.randn(7, 29)
    kl = F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), reduction="batchmean")
    assert kd_logit_loss(s, t, T).item() == pytest.approx(T * T * kl.item(), rel=1e-5)


def test_layer_maps():
    assert layer_map(12, 6) == [1, 3, 5, 7, 9, 11]
    assert layer_map(6, 3) == [1, 3, 5]
    assert layer_pairs(layer_map(12, 6)) == [(1, 2), (2, 4), (3, 6), (4, 8), (5, 10), (6, 12)]


def test_projection_for_different_widths():
    proj = HiddenProjection(2, 8, 16)
    hs = [torch.randn(5, 8, requires_grad=True) for _ in range(3)]
    loss = hidden_mse(hs, [torch.randn(5, 16) for _ in range(5)], layer_pairs([1, 3]), proj)
    loss.backward()
    assert proj.maps[0].weight.grad is not None and proj.maps[1].weight.grad is not None
    with pytest.raises(ValueError, match="enable the projection"):
        hidden_mse(hs, [torch.randn(5, 16) for _ in range(5)], layer_pairs([1, 3]))


def make_trainer(tmp_path, tokenizer, dcfg):
    student, teacher = tiny_model("bert", layers=2, vocab_size=len(tokenizer), seed=1), tiny_model("bert", layers=4, vocab_size=len(tokenizer), seed=2)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], label_names=["labels"], remove_unused_columns=False)
    return DistillTrainer(model=student, args=args, teachers=[teacher], dcfg=dcfg, student_ids=TokenIds.of(tokenizer), processing_class=tokenizer)


def batch(tokenizer):
    ids = torch.tensor([[101, 2457, 1997, 6768, 102, 0], [101, 2457, 102, 0, 0, 0]])
    return dict(input_ids=ids, attention_mask=(ids > 0).long(), labels=torch.tensor([[-100, 1, 0, 0, -100, -100], [-100, 1, -100, -100, -100, -100]]),
                word_ids=torch.tensor([[-1, 0, 1, -1, -1, -1], [-1, 0, -1, -1, -1, -1]]))


def test_kd_ignores_padding_and_later_wordpieces(tmp_path, tokenizer):
    trainer = make_trainer(tmp_path, tokenizer, DistillConfig(alpha_ce=0.0, alpha_kd=1.0))
    trainer.model.train()
    for m in trainer.model.modules():
        if isinstance(m, torch.nn.Dropout): m.p = 0.0  # training mode without noise, so losses compare exactly
    b = batch(tokenizer)
    t_logits = torch.randn(2, 6, 29)
    loss_a = trainer.compute_loss(trainer.model, {**b, "teacher_logits": t_logits.clone()})
    noisy = t_logits.clone()
    noisy[b["word_ids"] < 0] = 1e4  # garbage at [CLS], [SEP], padding and the second wordpiece of word 1
    loss_b = trainer.compute_loss(trainer.model, {**b, "teacher_logits": noisy})
    assert loss_a.item() == pytest.approx(loss_b.item())
    out = trainer.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    pos = b["word_ids"] >= 0
    assert loss_a.item() == pytest.approx(kd_logit_loss(out[pos], t_logits[pos], 2.0).item(), rel=1e-5)


def test_cached_outputs_match_live_loss(tmp_path, tokenizer):
    trainer = make_trainer(tmp_path, tokenizer, DistillConfig(alpha_ce=1.0, alpha_kd=1.0, alpha_inter=1.0))
    trainer.model.train()
    for m in trainer.model.modules():
        if isinstance(m, torch.nn.Dropout): m.p = 0.0
    b = batch(tokenizer)
    live = trainer.compute_loss(trainer.model, b)
    with torch.no_grad():
        out = trainer.teachers[0](input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_hidden_states=True)
    hidden = torch.cat([out.hidden_states[t + 1] for t in trainer.layer_map], -1)
    cached = trainer.compute_loss(trainer.model, {**b, "teacher_logits": out.logits, "teacher_hidden": hidden})
    assert cached.item() == pytest.approx(live.item(), rel=1e-5)
    wrong = trainer.compute_loss(trainer.model, {**b, "teacher_logits": out.logits, "teacher_hidden": hidden.flip(-1)})
    assert wrong.item() != pytest.approx(live.item(), rel=1e-3)


def test_cache_rows_match_teacher(tmp_path, data_dir, tokenizer):
    from legalkd.data import LABELS, tokenize_records
    from legalkd.teacher import TrainConfig, load_split
    teacher = save_tiny(tmp_path/"teacher"/"model", tokenizer, layers=4, seed=3)
    cfg = TrainConfig(max_records=12, max_length=64, stride=16, bf16=False)
    cache = cache_teacher_outputs(teacher, data_dir, cfg, hidden_layers=[2, 4], cache_dir=tmp_path/"cache")
    recs = load_split(data_dir, "train", 12)
    i = next(k for k, r in enumerate(recs) if len(tokenize_records([r], tokenizer, 64, 16)) == 1)  # a record that fits one window
    f = tokenize_records([recs[i]], tokenizer, 64, 16)[0]
    model = tiny_model("bert", layers=4, vocab_size=len(tokenizer), seed=3).eval()
    with torch.no_grad():
        out = model(input_ids=torch.tensor([f["input_ids"]]), output_hidden_states=True)
    owned_words = (torch.tensor(f["word_ids"]) >= 0) & torch.tensor(f["owned"]).bool()  # first wordpiece of each word
    expected = torch.cat([out.logits[0], out.hidden_states[2][0], out.hidden_states[4][0]], -1)[owned_words]
    assert cache[i].shape == (len(recs[i]["words"]), len(LABELS) + 2 * 32)
    torch.testing.assert_close(cache[i].float(), expected, atol=2e-2, rtol=1e-2)


def test_masking_views_change_only_word_pieces(tmp_path, tokenizer):
    from legalkd.distill import mask_view
    b = batch(tokenizer)
    chosen = torch.ones(2, 2, dtype=torch.bool)
    out = mask_view(b["input_ids"], b["attention_mask"], b["word_ids"], chosen, TokenIds.of(tokenizer), torch.Generator().manual_seed(3))
    keep = torch.tensor([[True, False, False, False, True, True], [True, False, True, True, True, True]])
    assert torch.equal(out[keep], b["input_ids"][keep])


def other_vocab_tokenizer(tmp_path):
    "A small WordPiece tokenizer with a vocabulary unlike BERT's."
    words = "the high court of delhi appeal section act dated petitioner respondent judge".split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz0123456789.,()-") + \
            [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789"] + words
    (tmp_path/"vocab.txt").write_text("\n".join(vocab))
    return BertTokenizerFast(str(tmp_path/"vocab.txt"), do_lower_case=True)


def test_cross_tokenizer_alignment(tmp_path, tokenizer):
    other = other_vocab_tokenizer(tmp_path)
    assert not same_vocab(tokenizer, other)
    words = ["The", "High", "Court", "of", "Delhi", "Zyxw"]
    tw = teacher_window(words, 1, 6, other)
    s_ids, s_w = tokenizer(words[1:], is_split_into_words=True).input_ids, [-1] + [1, 2, 3, 4, 5] + [-1]
    s_i, t_i = align_words(torch.tensor([s_w]), torch.tensor([tw["t_word_ids"]]))
    t_words = torch.tensor(tw["t_word_ids"])[t_i]
    assert t_words.tolist() == [1, 2, 3, 4, 5]
    assert torch.tensor(s_w)[s_i].tolist() == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("variant", ["kd-v2", "kd-v3-stage1"])
def test_distill_with_other_teacher_vocabulary(variant, tmp_path, data_dir, tokenizer):
    other = other_vocab_tokenizer(tmp_path)
    teacher = save_tiny(tmp_path/"teacher"/"model", other, layers=4)
    student = save_tiny(tmp_path/"student-init", tokenizer, arch="distilbert", layers=2)
    res = distill(variant, [teacher], data_dir, tmp_path/variant, tmp_path/"results", student=str(student), **SMALL)
    assert res["model"]["same_tokenizer"] is False
    assert res["model"]["arch"] == "distilbert"


def test_distill_same_vocabulary_with_projection(tmp_path, data_dir, tokenizer):
    teacher = save_tiny(tmp_path/"teacher"/"model", tokenizer, layers=4, hidden=64)
    student = save_tiny(tmp_path/"student-init", tokenizer, layers=2, hidden=32)
    res = distill("kd-v2", [teacher], data_dir, tmp_path/"kd-v2", tmp_path/"results", student=str(student), **SMALL)
    assert res["model"]["same_tokenizer"] is True
    assert res["model"]["hidden"] == 32
    assert res["model"]["projection"] is True


def test_every_preset_runs_and_stage2_starts_from_stage1(tmp_path, data_dir, tokenizer):
    teachers = [save_tiny(tmp_path/n/"model", tokenizer, layers=4, seed=s) for n, s in (("teacher", 1), ("teacher-2", 2))]
    names = ["ce-only", "kd-v1", "kd-v2", "kd-v3-stage1", "kd-v3-stage2", "multi-teacher"]
    for v in names:
        res = distill(v, teachers, data_dir, tmp_path/v, tmp_path/"results", student="from-teacher:2", cache_dir=tmp_path/"cache", **SMALL)
        assert res["model"]["layers"] == 2
        assert res["config"]["teacher"] == "teacher"
        if v == "kd-v3-stage2": assert res["model"]["init_from"] == str(tmp_path/"kd-v3-stage1"/"model")
    # kd-v1, kd-v2 and kd-v3-stage2 share one cache of the first teacher; multi-teacher adds one of the second
    assert len(list((tmp_path/"cache").glob("teacher-*.pt"))) == 2
    multi = distill("multi-teacher", teachers, data_dir, tmp_path/"multi-teacher", tmp_path/"results", student="from-teacher:2", **SMALL)
    assert len(multi["model"]["teacher_weights"]) == 2


def test_unknown_variant_lists_known_ones():
    with pytest.raises(KeyError, match="known variants: ce-only"):
        get_preset("kd-v9")


def test_student_retrains_after_new_teacher(tmp_path, data_dir, tokenizer):
    import time
    from legalkd.teacher import TrainConfig, train_teacher
    results = tmp_path/"results"
    train_teacher("minilm-l6", data_dir, tmp_path/"teacher", results, "teacher", TrainConfig(**SMALL), model_obj=tiny_model("bert", layers=4))
    first = distill("ce-only", [tmp_path/"teacher"/"model"], data_dir, tmp_path/"ce-only", results, student="from-teacher:2", **SMALL)
    again = distill("ce-only", [tmp_path/"teacher"/"model"], data_dir, tmp_path/"ce-only", results, student="from-teacher:2", **SMALL)
    assert again["created"] == first["created"]  # nothing changed: skipped
    with pytest.raises(ResultsExistError, match=r"distill\.train\.epochs 1 -> 2"):
        distill("ce-only", [tmp_path/"teacher"/"model"], data_dir, tmp_path/"ce-only", results, student="from-teacher:2", overwrite=False,
                **{**SMALL, "epochs": 2})
    time.sleep(1.1)  # results stamps have one-second resolution
    train_teacher("minilm-l6", data_dir, tmp_path/"teacher", results, "teacher", TrainConfig(**SMALL), model_obj=tiny_model("bert", layers=4, seed=5),
                  force=True)
    retrained = distill("ce-only", [tmp_path/"teacher"/"model"], data_dir, tmp_path/"ce-only", results, student="from-teacher:2", **SMALL)
    assert retrained["created"] > first["created"]
    assert retrained["resumed_from"] is None  # the old run's checkpoints were not resumed
