"""Tests of legalkd.analysis on synthetic results files (invented numbers, written to temporary folders)."""
import json, logging, math
from pathlib import Path

import pytest

from legalkd.analysis import (FIGURES, format_table, make_figures, reference_f1, results_markdown, summary_table,
                              table_html, teacher_names)
from legalkd.results import load_results, write_results

ROOT = Path(__file__).resolve().parents[1]


def fake_result(experiment, kind, f1, params=5_000_000, teacher=None, preamble=True, per_type=True):
    "Build a schema-valid results dict with invented scores."
    def scores(f):
        by_source = {"judgement": dict(precision=f, recall=f, f1=f - 0.02, macro_f1=f - 0.05, support=80)}
        if preamble: by_source["preamble"] = dict(precision=f, recall=f, f1=f + 0.03, macro_f1=f - 0.02, support=20)
        types = {"COURT": dict(precision=f, recall=f, f1=f, support=50), "DATE": dict(precision=f, recall=f, f1=f - 0.1, support=50)}
        return dict(precision=f, recall=f, f1=f, macro_f1=f - 0.04, support=100, per_type=types if per_type else {}, by_source=by_source)
    config = {"model": "fake"} | ({"teacher": teacher} if teacher is not None else {})
    return dict(experiment=experiment, kind=kind, model=dict(spec="fake", layers=3, hidden=384), parameters=params,
                config=config, seed=1, data_hash="f" * 64, versions={}, git_commit="test", wall_time_s=90.0, device={},
                created="test", history=[], validation=scores(f1 - 0.01), test=scores(f1),
                predictions=f"predictions/{experiment}.test.jsonl")


FULL = [fake_result("teacher", "teacher", 0.86, 22_700_000), fake_result("teacher-2", "teacher", 0.90, 22_700_000),
        fake_result("ce-only", "student", 0.74), fake_result("kd-v1", "student", 0.77, teacher="teacher"),
        fake_result("kd-v2", "student", 0.79), fake_result("kd-v3-stage1", "student", 0.78),
        fake_result("kd-v3-stage2", "student", 0.80), fake_result("multi-teacher", "student", 0.81, teacher=["teacher", "teacher-2"]),
        fake_result("kd-v2-int8", "compressed", 0.785, teacher="teacher")]


def write_all(results, folder):
    for r in results: write_results(r, folder)
    return folder


def test_summary_table_columns_and_order():
    table = summary_table(list(reversed(FULL)))
    assert list(table.columns) == ["experiment", "model", "kind", "params (M)", "strict micro F1", "macro F1", "% of teacher",
                                   "judgement F1", "preamble F1", "wall time (min)"]
    assert list(table.experiment) == ["teacher", "teacher-2", "ce-only", "kd-v1", "kd-v2", "kd-v3-stage1", "kd-v3-stage2",
                                      "multi-teacher", "kd-v2-int8"]
    row = table.set_index("experiment").loc["kd-v1"]
    assert row["model"] == "fake (3L/384H)"
    assert row["params (M)"] == pytest.approx(5.0)
    assert row["macro F1"] == pytest.approx(0.73)
    assert row["judgement F1"] == pytest.approx(0.75)
    assert row["preamble F1"] == pytest.approx(0.80)
    assert row["wall time (min)"] == pytest.approx(1.5)


def test_percent_of_teacher_uses_config_teacher():
    rel = summary_table(FULL).set_index("experiment")["% of teacher"]
    assert rel["kd-v1"] == pytest.approx(100 * 0.77 / 0.86)
    assert rel["ce-only"] == pytest.approx(100 * 0.74 / 0.86)  # no config.teacher: compared with `teacher`
    assert rel["multi-teacher"] == pytest.approx(100 * 0.81 / 0.90)  # the stronger of its two teachers
    assert rel["kd-v2-int8"] == pytest.approx(100 * 0.785 / 0.86)
    assert math.isnan(rel["teacher"])
    assert math.isnan(rel["teacher-2"])


def test_validation_split():
    table = summary_table(FULL, split="validation").set_index("experiment")
    assert table.loc["teacher", "strict micro F1"] == pytest.approx(0.85)
    with pytest.raises(ValueError, match="expected one of"):
        summary_table(FULL, split="dev")


def test_missing_teacher_logs_and_leaves_blank(caplog):
    with caplog.at_level(logging.INFO, logger="legalkd.analysis"):
        table = summary_table([fake_result("kd-v1", "student", 0.77, teacher="teacher-3")])
    assert math.isnan(table.loc[0, "% of teacher"])
    assert "no results for teacher(s) ['teacher-3']" in caplog.text


def test_missing_scores_are_nan():
    row = summary_table([fake_result("kd-v2", "student", 0.79, preamble=False)]).iloc[0]
    assert math.isnan(row["preamble F1"])
    assert row["judgement F1"] == pytest.approx(0.77)


def test_teacher_names_rejects_bad_config():
    assert teacher_names(fake_result("s", "student", 0.5)) == ["teacher"]
    assert teacher_names(fake_result("s", "student", 0.5, teacher=["a", "b"])) == ["a", "b"]
    with pytest.raises(ValueError, match="config.teacher is 3"):
        teacher_names(fake_result("s", "student", 0.5, teacher=3))


def test_reference_f1_without_teachers_is_nan():
    assert math.isnan(reference_f1(fake_result("s", "student", 0.5), {}))


def test_duplicate_experiments_rejected():
    with pytest.raises(ValueError, match="appears twice"):
        summary_table(FULL + FULL[:1])


def test_format_table_marks_missing():
    formatted = format_table(summary_table(FULL)).set_index("experiment")
    assert formatted.loc["teacher", "% of teacher"] == "-"
    assert formatted.loc["kd-v1", "strict micro F1"] == "0.770"
    assert formatted.loc["teacher", "params (M)"] == "22.70"


def test_results_markdown_table(tmp_path):
    write_all(FULL, tmp_path)
    (tmp_path/"bench.json").write_text(json.dumps({"not": "an experiment"}))  # load_results skips benchmark files
    lines = results_markdown(tmp_path).splitlines()
    assert lines[0].startswith("| experiment | model | kind | params (M) | strict micro F1 |")
    assert lines[1] == "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"
    assert len(lines) == 2 + len(FULL)
    assert lines[2].startswith("| teacher | fake (3L/384H) | teacher | 22.70 | 0.860 |")


def test_results_markdown_empty_folder(tmp_path):
    assert results_markdown(tmp_path) == f"No results files in `{tmp_path}` yet.\n"


def test_table_html_has_id():
    html = table_html(summary_table(FULL))
    assert 'id="results-table"' in html
    assert "multi-teacher" in html


def test_make_figures_draws_all(tmp_path):
    paths = make_figures(write_all(FULL, tmp_path/"results"), tmp_path/"figures")
    assert sorted(paths) == sorted(FIGURES)
    for name, path in paths.items():
        assert path == tmp_path/"figures"/f"{name}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert not list((tmp_path/"figures").glob(".*")), "temporary files were left behind"


def test_make_figures_is_reproducible(tmp_path):
    results = write_all(FULL, tmp_path/"results")
    first = {n: p.read_bytes() for n, p in make_figures(results, tmp_path/"a").items()}
    second = {n: p.read_bytes() for n, p in make_figures(results, tmp_path/"b").items()}
    assert first == second


def test_make_figures_skips_missing_and_removes_stale(tmp_path, caplog):
    figures = tmp_path/"figures"
    make_figures(write_all(FULL, tmp_path/"full"), figures)
    partial = write_all([fake_result("kd-v1", "student", 0.77), fake_result("kd-v2", "student", 0.79)], tmp_path/"partial")
    with caplog.at_level(logging.INFO, logger="legalkd.analysis"):
        paths = make_figures(partial, figures)
    assert "teacher_vs_student_f1" not in paths
    assert "relative_f1" not in paths
    assert "kd_progression" in paths
    assert not (figures/"teacher_vs_student_params.png").exists(), "stale figure was kept"
    assert "no results for ['ce-only', 'kd-v3-stage1', 'kd-v3-stage2', 'multi-teacher']" in caplog.text
    assert "drawn without the teacher line" in caplog.text


def test_make_figures_without_results(tmp_path, caplog):
    assert make_figures(tmp_path, tmp_path/"figures") == {}
    assert "no results files" in caplog.text


def test_progression_with_only_multi_teacher(tmp_path):
    paths = make_figures(write_all([fake_result("multi-teacher", "student", 0.81)], tmp_path/"r"), tmp_path/"f")
    assert "kd_progression" in paths


def test_heatmap_skipped_without_per_type(tmp_path):
    paths = make_figures(write_all([fake_result("teacher", "teacher", 0.86, per_type=False)], tmp_path/"r"), tmp_path/"f")
    assert "per_type_f1_heatmap" not in paths
    assert "overall_f1" in paths


def test_committed_results_summarise():
    results = load_results(ROOT/"results")
    if not results: pytest.skip(f"no results JSON in {ROOT/'results'} yet")
    table = summary_table(results)
    assert sorted(table.experiment) == sorted(r["experiment"] for r in results)
    assert table["strict micro F1"].between(0, 1).all()


def test_committed_f1_matches_predictions():
    from legalkd.results import load_results, rescore_predictions
    runs = load_results(ROOT/"results") + load_results(ROOT/"results"/"search")
    assert runs
    for r in runs:
        base = ROOT/"results"/("search" if r["experiment"].startswith("search-") else "")
        assert round(rescore_predictions(base/r["predictions"])["f1"], 3) == round(r["test"]["f1"], 3), r["experiment"]
