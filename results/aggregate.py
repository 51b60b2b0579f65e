"""heareval outputs -> leaderboard CSVs + chart.

    python -m results aggregate runs/eval --out results/

Reads RUNS/MODEL/seedK/TASK/test.predicted-scores.json and writes into --out:
- leaderboard.csv   HEAR leaderboard format: Model,URL,Submission Date + one column per
                    task (primary score as a fraction, mean over seeds); it can be appended
                    to the official docs/leaderboard.csv.
- scores.csv        model, task, metric, mean, ci95 (Student-t half-width over seeds), n, sd
- overall.csv       per model: HEAR normalised score and min-max s(m) (formulas in README)
- leaderboard.png   per-task scores with 95 % intervals, one colour per model
Published reference numbers live in results/references.csv with their source and are
only ever written to reference_rows.csv, never mixed into the measured rows.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from eval_suites.suites import SUITES

log = logging.getLogger("results")
REFERENCES = Path(__file__).parent / "references.csv"
SCORES = "test.predicted-scores.json"


def task_spec(bundle):
    for suite in SUITES.values():
        for t in suite.tasks:
            if t.bundle == bundle:
                return t
    return None


def primary_score(scores: dict, metric: str) -> float:
    """heareval's primary test score: per split for train/valid/test, mean over folds for k-fold."""
    if "aggregated_scores" in scores:
        agg = scores["aggregated_scores"]
        return float(agg.get(f"test_{metric}_mean", agg["test_score_mean"]))
    test = scores["test"]
    return float(test.get(f"test_{metric}", test["test_score"]))


def collect(runs: Path) -> pd.DataFrame:
    rows = []
    for path in sorted(runs.glob(f"*/seed*/*/{SCORES}")):
        task, seed_dir, model_dir = path.parent.name, path.parent.parent.name, path.parent.parent.parent
        spec = task_spec(task)
        metric = spec.metric if spec else "score"
        try:
            scores = json.loads(path.read_text())  # heareval may write bare NaN; json accepts it
            value = primary_score(scores, metric)
        except (ValueError, KeyError) as e:
            log.warning("unreadable %s: %s", path, e)
            continue
        meta_file = model_dir / "model.json"
        meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
        rows.append({"model": model_dir.name, "task": task, "label": spec.label if spec else task,
                     "metric": metric, "seed": int(seed_dir[4:]), "score": value,
                     "checkpoint": meta.get("checkpoint", ""), "date": meta.get("date", "")})
    return pd.DataFrame(rows)


def summarise(raw: pd.DataFrame) -> pd.DataFrame:
    def ci95(x):
        x = x.dropna()
        return float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("nan")
    g = raw.groupby(["model", "task", "label", "metric"], sort=False)["score"]
    out = g.agg(mean="mean", sd="std", n="count").reset_index()
    out["ci95"] = g.apply(ci95).values
    return out[["model", "task", "label", "metric", "mean", "ci95", "n", "sd"]]


def overall(table: pd.DataFrame) -> pd.DataFrame:
    """HEAR normalisation (z-score per task across models, clamped to [-1, 1], averaged)
    and min-max s(m) = 100 * mean_t (x - min_t) / (max_t - min_t), over tasks all models have."""
    wide = table.pivot(index="model", columns="label", values="mean")
    common = wide.dropna(axis=1)
    std = common.std(ddof=0).replace(0, np.nan)
    z = ((common - common.mean()) / std).clip(-1, 1).fillna(0)
    span = (common.max() - common.min()).replace(0, np.nan)
    mm = ((common - common.min()) / span).fillna(0)
    return pd.DataFrame({"model": common.index, "hear_normalised": z.mean(axis=1).values,
                         "s_m": 100 * mm.mean(axis=1).values, "tasks": common.shape[1],
                         "mean_score": common.mean(axis=1).values}).sort_values("s_m", ascending=False)


def leaderboard(table: pd.DataFrame, raw: pd.DataFrame, url: str = "") -> pd.DataFrame:
    wide = table.pivot(index="model", columns="label", values="mean")
    dates = raw.groupby("model")["date"].first()
    lb = pd.DataFrame({"Model": wide.index, "URL": url,
                       "Submission Date": [dates.get(m, "") for m in wide.index]})
    return pd.concat([lb.reset_index(drop=True), wide.reset_index(drop=True)], axis=1)


def plot(table: pd.DataFrame, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = list(dict.fromkeys(table["label"]))
    models = list(dict.fromkeys(table["model"]))
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(labels)) + 2, 4.2))
    for i, m in enumerate(models):
        sub = table[table.model == m].set_index("label").reindex(labels)
        x = np.arange(len(labels)) + (i - (len(models) - 1) / 2) * width
        ax.bar(x, sub["mean"], width, yerr=sub["ci95"].fillna(0), capsize=3, label=m)
    ax.set_xticks(np.arange(len(labels)), labels, rotation=15, ha="right")
    ax.set_ylabel("primary test score (mean over seeds, 95 % CI)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def aggregate(runs: Path, out: Path, url: str = "") -> dict:
    raw = collect(Path(runs))
    if raw.empty:
        raise FileNotFoundError(f"no {SCORES} under {runs}/*/seed*/*/ (run python -m eval_suites run first)")
    out.mkdir(parents=True, exist_ok=True)
    table = summarise(raw)
    files = {"scores": out / "scores.csv", "leaderboard": out / "leaderboard.csv",
             "overall": out / "overall.csv", "chart": out / "leaderboard.png"}
    table.to_csv(files["scores"], index=False, float_format="%.4f")
    leaderboard(table, raw, url).to_csv(files["leaderboard"], index=False, float_format="%.4f")
    overall(table).to_csv(files["overall"], index=False, float_format="%.4f")
    plot(table, files["chart"])
    if REFERENCES.exists():
        refs = pd.read_csv(REFERENCES)
        refs[refs.task.isin(table.label)].to_csv(out / "reference_rows.csv", index=False)
    return files
