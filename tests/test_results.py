"""results.aggregate: primary scores, Student-t intervals, overall scores, HEAR CSV format."""
import json
import math

import pandas as pd
import pytest
from scipy import stats

from results.aggregate import REFERENCES, aggregate, overall, primary_score


def _write(root, model, seed, task, score, kfold=True):
    d = root / model / f"seed{seed}" / task
    d.mkdir(parents=True)
    if kfold:
        body = {"fold00": {"test_score": score}, "aggregated_scores": {"test_score_mean": score,
                                                                       "test_top1_acc_mean": score}}
    else:
        body = {"test": {"test_score": score, "test_pitch_acc": score, "test_chroma_acc": float("nan")}}
    (d / "test.predicted-scores.json").write_text(json.dumps(body))  # json writes bare NaN
    (root / model / "model.json").write_text(json.dumps({"date": "2026-11-22"}))


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
