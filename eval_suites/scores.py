"""heareval's score files read back: the primary score of a run, and the 95 % interval over seeds.

    primary_score(json.loads(path.read_text()), "top1_acc")   # a test.predicted-scores.json
    seed_scores(Path("runs/x"))                                 # one row per (model, bundle, seed)
    half_width([0.61, 0.64, 0.60])                              # Student-t 95 % half-width

The runner writes RUNS/MODEL/seedK/BUNDLE/test.predicted-scores.json; the leaderboards
(`results.aggregate`) and the families comparison's seeding rule both read them with these
functions, so a half-width means the same number everywhere.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from scipy import stats

from .suites import KNOWN_TASKS

log = logging.getLogger("eval_suites.scores")
SCORES = "test.predicted-scores.json"


def primary_score(scores: dict, metric: str) -> float:
    """heareval's primary test score: per split for train/valid/test, mean over folds for k-fold."""
    if "aggregated_scores" in scores:
        agg = scores["aggregated_scores"]
        return float(agg.get(f"test_{metric}_mean", agg["test_score_mean"]))
    test = scores["test"]
    return float(test.get(f"test_{metric}", test["test_score"]))


def half_width(values) -> float:
    """Student-t 95 % half-width of the mean of `values` (NaNs dropped); nan for fewer than 2."""
    x = [float(v) for v in values if not math.isnan(float(v))]
    if len(x) < 2:
        return float("nan")
    mean = sum(x) / len(x)
    sd = math.sqrt(sum((v - mean) ** 2 for v in x) / (len(x) - 1))
    return float(stats.t.ppf(0.975, len(x) - 1) * sd / math.sqrt(len(x)))


def seed_scores(runs: Path, models=None) -> list:
    """[{model, task, label, metric, seed, score}] for every readable score file of a bundle a
    suite names (its column and primary metric), of the `models` folders (default: all)."""
    rows = []
    for path in sorted(Path(runs).glob(f"*/seed*/*/{SCORES}")):
        bundle, seed_dir, model = path.parent.name, path.parent.parent.name, path.parent.parent.parent.name
        spec = KNOWN_TASKS.get(bundle)
        if spec is None or not seed_dir[4:].isdigit() or (models is not None and model not in models):
            continue
        try:
            score = primary_score(json.loads(path.read_text()), spec.metric)
        except (OSError, ValueError, KeyError) as e:
            log.warning("unreadable %s: %s", path, e)
            continue
        rows.append({"model": model, "task": bundle, "label": spec.label, "metric": spec.metric,
                     "seed": int(seed_dir[4:]), "score": score})
    return rows
