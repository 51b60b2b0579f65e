"""results.aggregate: primary scores, Student-t intervals, overall scores, HEAR CSV format,
the Markdown leaderboard, columns of several bundles, bundles no suite knows."""
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats

from eval_suites.suites import HEAR2021_COLUMNS
from results.aggregate import REFERENCES, aggregate, overall, primary_score


def _write(root, model, seed, task, score, kfold=True, **meta):
    d = root / model / f"seed{seed}" / task
    d.mkdir(parents=True)
    if kfold:
        body = {"fold00": {"test_score": score}, "aggregated_scores": {"test_score_mean": score,
                                                                       "test_top1_acc_mean": score}}
    else:
        body = {"test": {"test_score": score, "test_pitch_acc": score, "test_chroma_acc": float("nan")}}
    (d / "test.predicted-scores.json").write_text(json.dumps(body))  # json writes bare NaN
    (root / model / "model.json").write_text(json.dumps({"date": "2026-11-22", **meta}))
    return d


def test_primary_score_for_kfold_and_train_valid_test():
    assert primary_score({"aggregated_scores": {"test_score_mean": 0.5, "test_mAP_mean": 0.4}}, "mAP") == 0.4
    assert primary_score({"test": {"test_score": 0.7, "test_pitch_acc": 0.6}}, "pitch_acc") == 0.6


def test_aggregate_writes_hear_format_with_t_intervals(tmp_path):
    runs = tmp_path / "runs"
    a = [0.50, 0.60, 0.55]
    for s, v in enumerate(a):
        _write(runs, "ssam", s, "esc50-v2.0.0-full", v)
        _write(runs, "ssam", s, "nsynth_pitch-v2.2.3-5h", 0.3 + s / 100, kfold=False)
        _write(runs, "random", s, "esc50-v2.0.0-full", 0.2)
        _write(runs, "random", s, "nsynth_pitch-v2.2.3-5h", 0.1, kfold=False)
    files = aggregate(runs, tmp_path / "out", url="https://example.org")
    lb = pd.read_csv(files["leaderboard"])
    assert list(lb.columns[:3]) == ["Model", "URL", "Submission Date"]
    assert set(lb.columns[3:]) == {"ESC-50", "NSynth Pitch 5h"}
    row = lb.set_index("Model").loc["ssam"]
    assert row["ESC-50"] == pytest.approx(0.55, abs=1e-4) and row["URL"] == "https://example.org"
    scores = pd.read_csv(files["scores"]).set_index(["model", "label"])
    ci = stats.t.ppf(0.975, 2) * pd.Series(a).std(ddof=1) / math.sqrt(3)
    assert scores.loc[("ssam", "ESC-50"), "ci95"] == pytest.approx(ci, abs=1e-4)
    assert scores.loc[("ssam", "ESC-50"), "n"] == 3
    assert scores.loc[("ssam", "NSynth Pitch 5h"), "metric"] == "pitch_acc"
    ref = pd.read_csv(tmp_path / "out" / "reference_rows.csv")
    assert set(ref.task) == {"ESC-50", "NSynth Pitch 5h"} and "ssam" not in set(ref.model)


def test_overall_scores_follow_the_documented_formulas():
    table = pd.DataFrame({"model": ["a", "b", "c"] * 2, "label": ["t1"] * 3 + ["t2"] * 3,
                          "mean": [0.9, 0.5, 0.1, 0.2, 0.4, 0.6]})
    o = overall(table).set_index("model")
    # min-max: a = (1 + 0) / 2, b = (0.5 + 0.5) / 2, c = (0 + 1) / 2  -> all 50
    assert o["s_m"].tolist() == pytest.approx([50, 50, 50])
    # z-scores (population sd) clamped to [-1, 1]: t1 a = +1.22 -> 1, t2 a = -1.22 -> -1
    assert o.loc["a", "hear_normalised"] == pytest.approx(0.0)
    table.loc[3, "mean"] = 0.6  # now a is best on both tasks
    o = overall(table).set_index("model")
    assert o.index[0] == "a" and o.loc["a", "s_m"] == pytest.approx(100)


def test_references_are_data_with_sources():
    refs = pd.read_csv(REFERENCES)
    assert {"model", "task", "score", "source"} <= set(refs.columns)
    assert refs.source.notna().all() and (refs.score.between(0, 1)).all()
    assert len(refs[refs.model == "MW-MAE-B-4x16-4l"]) == 10


def test_no_results_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no test.predicted-scores.json"):
        aggregate(tmp_path, tmp_path / "out")


def test_hear2021_runs_use_the_official_columns_and_beehive_averages_its_folds(tmp_path):
    runs = tmp_path / "runs"
    for seed, (f0, f1) in zip((1, 2), ((0.6, 0.8), (0.7, 0.9))):
        _write(runs, "m", seed, "beehive_states_fold0-v2-full", f0, kfold=False, suite="hear2021")
        _write(runs, "m", seed, "beehive_states_fold1-v2-full", f1, kfold=False, suite="hear2021")
        _write(runs, "m", seed, "esc50-v2.0.0-full", 0.5, suite="hear2021")
    _write(runs, "m", 3, "beehive_states_fold0-v2-full", 0.1, kfold=False, suite="hear2021")  # fold1 missing
    _write(runs, "half", 42, "beehive_states_fold0-v2-full", 0.9, kfold=False, suite="hear2021")
    _write(runs, "half", 42, "esc50-v2.0.0-full", 0.4, suite="hear2021")
    files = aggregate(runs, tmp_path / "out")
    lines = files["leaderboard"].read_text().splitlines()
    assert lines[0] == "Model,URL,Submission Date," + ",".join(HEAR2021_COLUMNS)
    lb = pd.read_csv(files["leaderboard"]).set_index("Model")
    assert lb.loc["m", "Beehive"] == pytest.approx(0.75)  # seeds 1, 2: (0.7 + 0.8) / 2; seed 3 lacks fold1
    assert math.isnan(lb.loc["half", "Beehive"])  # one fold alone is not the column
    assert lb.loc["half", "ESC-50"] == pytest.approx(0.4) and lb["FSD50K"].isna().all()  # blank when not run
    assert lines[1].startswith("half,,2026-11-22,,,,,0.4000,,")
    scores = pd.read_csv(files["scores"]).set_index(["model", "label"])
    assert scores.loc[("m", "Beehive"), "task"] == "beehive_states_fold0-v2-full+beehive_states_fold1-v2-full"
    assert scores.loc[("m", "Beehive"), "n"] == 2


def test_bundles_no_suite_knows_take_label_and_metric_from_their_metadata(tmp_path):
    runs = tmp_path / "runs"
    for seed, v in enumerate([0.3, 0.5]):
        d = _write(runs, "m", seed, "bursts-v1.0-full", 0, kfold=False)
        (d / "test.predicted-scores.json").write_text(json.dumps({"test": {
            "test_score": v, "test_event_onset_200ms_fms": v, "test_event_onset_200ms_fms_precision": 0.99}}))
        (d / "task_metadata.json").write_text(json.dumps({
            "task_name": "bursts", "embedding_type": "event", "evaluation": ["event_onset_200ms_fms"]}))
    files = aggregate(runs, tmp_path / "out")
    row = pd.read_csv(files["scores"]).iloc[0]
    assert (row["label"], row["metric"], row["mean"]) == ("bursts", "event_onset_200ms_fms", pytest.approx(0.4))
    assert files["leaderboard"].read_text().splitlines()[0] == "Model,URL,Submission Date,bursts"


def _two_models(runs):
    for s, v in enumerate([0.50, 0.60, 0.55]):
        _write(runs, "ssam", s, "esc50-v2.0.0-full", v)
        _write(runs, "ssam", s, "nsynth_pitch-v2.2.3-5h", 0.3, kfold=False)
        _write(runs, "logmel", s, "esc50-v2.0.0-full", 0.2 + s / 100, baseline=True)
        _write(runs, "logmel", s, "nsynth_pitch-v2.2.3-5h", 0.4, kfold=False, baseline=True)


def test_markdown_leaderboard_marks_the_best_and_the_baseline(tmp_path):
    runs = tmp_path / "runs"
    _two_models(runs)
    md = aggregate(runs, tmp_path / "out")["markdown"].read_text().splitlines()
    assert md[0] == "| Model | ESC-50 | NSynth Pitch 5h | HEAR norm. | s(m) | mean | tasks |"
    assert md[1] == "|:--|--:|--:|--:|--:|--:|--:|"
    ci = stats.t.ppf(0.975, 2) * pd.Series([0.50, 0.60, 0.55]).std(ddof=1) / math.sqrt(3)
    # ranked by s(m): ssam is best on ESC-50, the baseline on NSynth (bold: best mean per column)
    assert md[2] == f"| ssam | **0.550 ± {ci:.3f}** | 0.300 ± 0.000 | 0.000 | 50.0 | 0.425 | 2 |"
    assert md[3] == "| logmel (baseline) | 0.210 ± 0.025 | **0.400 ± 0.000** | 0.000 | 50.0 | 0.305 | 2 |"
    assert any("Baseline: logmel" in line for line in md)


def test_outputs_are_byte_identical_for_identical_inputs(tmp_path):
    runs = tmp_path / "runs"
    _two_models(runs)
    a, b = aggregate(runs, tmp_path / "a"), aggregate(runs, tmp_path / "b")
    for key in ("scores", "leaderboard", "markdown", "overall"):
        assert a[key].read_bytes() == b[key].read_bytes(), key
    assert a["chart"].read_bytes()[:4] == b"\x89PNG"


def test_cli_prints_the_markdown_table(tmp_path):
    runs = tmp_path / "runs"
    _two_models(runs)
    r = subprocess.run([sys.executable, "-m", "results", "aggregate", str(runs), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("| Model | ESC-50 | NSynth Pitch 5h |") and "logmel (baseline)" in r.stdout


def test_a_given_date_replaces_the_run_dates(tmp_path):
    for seed in (0, 1):
        _write(tmp_path / "runs", "m", seed, "esc50-v2.0.0-full", 0.5 + seed / 10)
    aggregate(tmp_path / "runs", tmp_path / "out", date="2026-01-02")
    lb = pd.read_csv(tmp_path / "out" / "leaderboard.csv")
    assert list(lb["Submission Date"]) == ["2026-01-02"]


def test_named_models_leave_out_other_folders_of_the_run(tmp_path):
    runs = tmp_path / "runs"
    _two_models(runs)
    for seed in (0, 1):  # a model an earlier run evaluated, no longer in the job
        _write(runs, "stale", seed, "esc50-v2.0.0-full", 0.9)
    r = subprocess.run([sys.executable, "-m", "results", "aggregate", str(runs), "--out", str(tmp_path / "o"),
                        "--model", "ssam", "--model", "logmel"],
                       capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert r.returncode == 0, r.stderr
    assert set(pd.read_csv(tmp_path / "o" / "scores.csv").model) == {"ssam", "logmel"}
    assert "stale" not in r.stdout
    with pytest.raises(FileNotFoundError, match=r"model\(s\) ssast .*models with scores: logmel, ssam, stale"):
        aggregate(runs, tmp_path / "p", models=["ssam", "ssast"])


def test_models_csv_names_the_weights_of_every_row(tmp_path):
    runs = tmp_path / "runs"
    from results.aggregate import REPO
    inside = str(REPO / "results" / "checkpoints" / "x.safetensors")
    for s in range(2):
        _write(runs, "ssam", s, "esc50-v2.0.0-full", 0.5, checkpoint=inside, weights_sha256="ab" * 32)
        _write(runs, "logmel", s, "esc50-v2.0.0-full", 0.4, checkpoint="built-in logmel baseline (no weights)",
               baseline=True)
    models = pd.read_csv(aggregate(runs, tmp_path / "out")["models"], keep_default_na=False)
    assert models.to_dict("records") == [
        {"model": "logmel", "checkpoint": "built-in logmel baseline (no weights)", "weights_sha256": "",
         "baseline": True, "finetuned": False, "suite": "", "date": "2026-11-22"},
        {"model": "ssam", "checkpoint": "results/checkpoints/x.safetensors", "weights_sha256": "ab" * 32,
         "baseline": False, "finetuned": False, "suite": "", "date": "2026-11-22"}]


def test_several_run_folders_are_read_as_one(tmp_path):
    frozen, tuned = tmp_path / "frozen", tmp_path / "tuned"
    for seed in (0, 1):
        _write(frozen, "ssam", seed, "esc50-v2.0.0-full", 0.5)
        _write(frozen, "stale", seed, "esc50-v2.0.0-full", 0.1)
        _write(tuned, "ssam-finetuned", seed, "esc50-v2.0.0-full", 0.7, finetuned=True)
        _write(tuned, "stale", seed, "esc50-v2.0.0-full", 0.2)
    r = subprocess.run([sys.executable, "-m", "results", "aggregate", str(frozen), str(tuned), "--out",
                        str(tmp_path / "o"), "--model", "ssam", "--model", "ssam-finetuned"],
                       capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert r.returncode == 0, r.stderr
    scores = pd.read_csv(tmp_path / "o" / "scores.csv").set_index("model")["mean"].to_dict()
    assert scores == {"ssam": 0.5, "ssam-finetuned": 0.7}
    models = pd.read_csv(tmp_path / "o" / "models.csv").set_index("model")["finetuned"].to_dict()
    assert models == {"ssam": False, "ssam-finetuned": True}
    with pytest.raises(ValueError, match=re.escape(f"model stale has scores in both {frozen} and {tuned}")):
        aggregate([frozen, tuned], tmp_path / "p")
    with pytest.raises(FileNotFoundError, match=r"model\(s\) ssast under .*frozen, .*tuned"):
        aggregate([frozen, tuned], tmp_path / "p", models=["ssast"])
    with pytest.raises(FileNotFoundError, match=re.escape(f"no test.predicted-scores.json under {tmp_path}/tunned/")):
        aggregate([frozen, tmp_path / "tunned"], tmp_path / "p")  # a mistyped folder is not read as empty
