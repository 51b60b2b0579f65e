"""heareval outputs -> leaderboards people read (Markdown, chart) and the HEAR CSV format.

    python -m results aggregate runs/eval --out results/
    python -m results aggregate runs/frozen runs/finetune --out results/both   # several folders, read as one

Reads RUNS/MODEL/seedK/TASK/test.predicted-scores.json (+ RUNS/MODEL/model.json) and writes
into --out:
- leaderboard.csv   HEAR leaderboard format: Model,URL,Submission Date + one column per
                    task (primary score as a fraction, mean over seeds); for hear2021 runs
                    the 19 official columns in the official order, blank when not run; else
                    the suite's task order, then other tasks alphabetically. It can be
                    appended to the official docs/leaderboard.csv.
- leaderboard.md    the table to read: one row per model (baselines marked "(baseline)"),
                    per task `mean ± ci95` (3 decimals, best mean of the column in bold),
                    then the overall scores of overall.csv; rows ranked by s(m).
- scores.csv        model, task, label, metric, mean, ci95 (Student-t half-width over
                    seeds), n, sd
- overall.csv       per model: HEAR normalised score and min-max s(m) (formulas in docs/evaluation.md)
- leaderboard.png   per-task scores with 95 % intervals, one colour per model; baselines
                    grey and hatched, with a dashed line at their score across each task
- models.csv        per model: the checkpoint it ran (relative to the repository when inside
                    it) and the file's sha256, baseline or not, fine-tuned or frozen, suite,
                    date: which weights made each row
Which task a bundle is: a bundle a suite names has that suite's column and metric; any other
bundle is labelled by its task_name with the first "evaluation" entry of its
task_metadata.json (the copy in the run's seed or embeddings folder) as primary metric.
A column fed by several bundles (HEAR 2021's Beehive: fold0 and fold1) gets, per seed, the
mean of its bundles, and only for seeds where all of them were scored.
The primary score is heareval's test_<metric> (test_<metric>_mean over folds), which for
the first evaluation entry equals its test_score (test_score_mean), scene or event task.
CSV and Markdown outputs are byte-identical for identical inputs (sorted rows, fixed float
formats; the only dates are those of model.json).
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

from eval_suites.scores import SCORES, half_width, primary_score
from eval_suites.suites import HEAR2021, HEAR2021_COLUMNS, KNOWN_TASKS, LOWER_IS_BETTER, SUITES, TaskSpec, \
    bundle_task_specs

log = logging.getLogger("results")
REFERENCES = Path(__file__).parent / "references.csv"
REPO = Path(__file__).resolve().parents[1]


def task_spec(bundle):
    """The spec a suite gives this bundle, or None."""
    return KNOWN_TASKS.get(bundle)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _specs(runs: Path, bundles) -> dict:
    """{bundle: TaskSpec}: a suite's spec, else from the run's own task_metadata.json."""
    metadata = {}
    for b in sorted(bundles):
        if b in KNOWN_TASKS:
            metadata[b] = {}
            continue
        candidates = sorted(runs.glob(f"*/seed*/{b}/task_metadata.json")) + \
            sorted(runs.glob(f"*/embeddings/*/{b}/task_metadata.json"))
        for f in candidates:
            meta = _read_json(f)
            if isinstance(meta, dict) and meta.get("task_name") and meta.get("evaluation"):
                metadata[b] = meta
                break
        else:
            log.warning("%s: no readable task_metadata.json in the runs; labelled by bundle name, "
                        "primary score = heareval's test_score", b)
    specs = bundle_task_specs(metadata)
    for b in bundles:
        specs.setdefault(b, TaskSpec(b, b, "score", ""))
    return specs


def collect(runs: Path, models=None) -> pd.DataFrame:
    """One row per (model, bundle, seed) with the primary score.

    models: the model folders to read (default: every folder with scores). A run directory
    keeps the folders of models an earlier run evaluated; naming the models keeps them out
    (collect_runs checks that the named ones exist).
    """
    runs = Path(runs)
    paths = sorted(runs.glob(f"*/seed*/*/{SCORES}"))
    if models is not None:
        paths = [p for p in paths if p.parent.parent.parent.name in set(models)]
    specs = _specs(runs, {p.parent.name for p in paths})
    rows = []
    for path in paths:
        task, seed_dir, model_dir = path.parent.name, path.parent.parent.name, path.parent.parent.parent
        if not seed_dir[4:].isdigit():
            continue
        spec = specs[task]
        try:
            scores = json.loads(path.read_text())  # heareval may write bare NaN; json accepts it
            value = primary_score(scores, spec.metric)
        except (ValueError, KeyError) as e:
            log.warning("unreadable %s: %s", path, e)
            continue
        meta = _read_json(model_dir / "model.json") or {}
        rows.append({"model": model_dir.name, "task": task, "label": spec.label, "metric": spec.metric,
                     "seed": int(seed_dir[4:]), "score": value, "checkpoint": _repo_relative(meta.get("checkpoint", "")),
                     "weights_sha256": meta.get("weights_sha256") or "",
                     "date": meta.get("date", ""), "baseline": bool(meta.get("baseline", False)),
                     "finetuned": bool(meta.get("finetuned", False)), "suite": meta.get("suite", "")})
    return pd.DataFrame(rows)


def collect_runs(folders, models=None) -> pd.DataFrame:
    """collect() over several run folders (e.g. a frozen run and a fine-tuning run), read as
    one: a model folder may appear in only one of them (unless `models` leaves it out)."""
    folders = [Path(f) for f in folders]
    found = {f: {p.parent.parent.parent.name for p in f.glob(f"*/seed*/*/{SCORES}")} for f in folders}
    empty = [str(f) for f, names in found.items() if not names]
    if empty and len(folders) > 1:  # (one folder: aggregate's own message)
        raise FileNotFoundError(f"no {SCORES} under {', '.join(f'{f}/*/seed*/*/' for f in empty)}: "
                                "is the folder name right?")
    if models is not None:
        missing = sorted(set(models) - set().union(*found.values()))
        if missing:
            raise FileNotFoundError(f"no scores for model(s) {', '.join(missing)} under "
                                    f"{', '.join(map(str, folders))} (models with scores: "
                                    f"{', '.join(sorted(set().union(*found.values()))) or 'none'})")
        found = {f: names & set(models) for f, names in found.items()}
    seen = {}
    for f, names in found.items():
        for name in sorted(names):
            if name in seen:
                raise ValueError(f"model {name} has scores in both {seen[name]} and {f}; leave it out by naming "
                                 "the other models with --model, or rename one of the folders")
            seen[name] = f
    frames = [collect(f, sorted(names)) for f, names in found.items() if names]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _repo_relative(checkpoint: str) -> str:
    """A checkpoint path relative to the repository when it lies inside it (so that the same
    run on another machine writes the same models.csv); other values unchanged."""
    try:
        return Path(checkpoint).relative_to(REPO).as_posix()
    except ValueError:
        return checkpoint


def models_table(raw: pd.DataFrame) -> pd.DataFrame:
    """One row per model: the checkpoint and weights it ran, from its model.json."""
    cols = ["model", "checkpoint", "weights_sha256", "baseline", "finetuned", "suite", "date"]
    return raw[cols].drop_duplicates("model").sort_values("model").reset_index(drop=True)


def _bundles_of_column(label: str, seen: set) -> set:
    """The bundles a column needs: all a suite maps to it (Beehive: both folds), else those seen."""
    known = {b for b, t in KNOWN_TASKS.items() if t.label == label}
    return known if known and seen <= known else seen


def per_seed(raw: pd.DataFrame) -> pd.DataFrame:
    """(model, column, seed) scores: a column's bundles averaged, complete seeds only."""
    rows = []
    seen = raw.groupby("label")["task"].agg(set).to_dict()
    for (model, label, seed), sub in raw.groupby(["model", "label", "seed"], sort=True):
        need = _bundles_of_column(label, seen[label])
        have = set(sub["task"])
        if have != need:
            log.warning("%s / %s / seed %d: %s not scored; the column needs %s, so this seed is left out",
                        model, label, seed, ", ".join(sorted(need - have)), " and ".join(sorted(need)))
            continue
        rows.append({"model": model, "task": "+".join(sorted(have)), "label": label,
                     "metric": sub["metric"].iloc[0], "seed": seed, "score": float(sub["score"].mean())})
    return pd.DataFrame(rows, columns=["model", "task", "label", "metric", "seed", "score"])


def column_order(raw: pd.DataFrame) -> list:
    """Leaderboard columns: all 19 official ones for hear2021 runs, else the runs' suites'
    task order; then any other column alphabetically."""
    suites = sorted(set(raw.get("suite", pd.Series(dtype=str))) & set(SUITES))
    order = list(HEAR2021_COLUMNS) if HEAR2021.name in suites else []
    for name in suites:
        order += [label for label in SUITES[name].labels if label in set(raw["label"])]
    rest = sorted(set(raw["label"]) - set(order), key=lambda s: (s.lower(), s))
    return list(dict.fromkeys(order + rest))


def summarise(raw: pd.DataFrame) -> pd.DataFrame:
    """Per (model, column): mean, Student-t 95 % half-width, n, sd over seeds."""
    seeds = per_seed(raw)
    g = seeds.groupby(["model", "task", "label", "metric"], sort=True)["score"]
    out = g.agg(mean="mean", sd="std", n="count").reset_index()
    out["ci95"] = g.apply(half_width).values
    rank = {label: i for i, label in enumerate(column_order(raw))}
    out["_col"] = out["label"].map(rank)
    out = out.sort_values(["model", "_col"], kind="stable").drop(columns="_col").reset_index(drop=True)
    return out[["model", "task", "label", "metric", "mean", "ci95", "n", "sd"]]


def overall(table: pd.DataFrame) -> pd.DataFrame:
    """HEAR normalisation (z-score per task across models, clamped to [-1, 1], averaged)
    and min-max s(m) = 100 * mean_t (x - min_t) / (max_t - min_t), over tasks all models have."""
    wide = table.pivot(index="model", columns="label", values="mean").sort_index()
    common = wide.dropna(axis=1)
    std = common.std(ddof=0).replace(0, np.nan)
    z = ((common - common.mean()) / std).clip(-1, 1).fillna(0)
    span = (common.max() - common.min()).replace(0, np.nan)
    mm = ((common - common.min()) / span).fillna(0)
    out = pd.DataFrame({"model": common.index, "hear_normalised": z.mean(axis=1).values,
                        "s_m": 100 * mm.mean(axis=1).values, "tasks": common.shape[1],
                        "mean_score": common.mean(axis=1).values})
    # Rounded to 12 decimals (+ 0.0 turns -0.0 into 0.0): sums of z-scores that cancel leave
    # +-1e-16, which would otherwise print as "-0.000" and decide ties.
    cols = ["hear_normalised", "s_m", "mean_score"]
    out[cols] = out[cols].round(12) + 0.0
    # Ties in s(m) go to the HEAR normalised score, then the mean score, then the name: the
    # ranking is a function of the scores alone.
    return out.sort_values(["s_m", "hear_normalised", "mean_score", "model"], ascending=[False, False, False, True],
                           kind="stable").reset_index(drop=True)


def leaderboard(table: pd.DataFrame, raw: pd.DataFrame, url: str = "", date: str | None = None) -> pd.DataFrame:
    """HEAR leaderboard CSV rows: Model, URL, Submission Date, then one column per task.
    `date` replaces the run dates of model.json (so a rerun on another day writes the same file)."""
    columns = column_order(raw)
    if HEAR2021.name not in set(raw.get("suite", [])):
        columns = [c for c in columns if c in set(table["label"])]
    wide = table.pivot(index="model", columns="label", values="mean").sort_index().reindex(columns=columns)
    dates = raw.groupby("model")["date"].first()
    lb = pd.DataFrame({"Model": wide.index, "URL": url,
                       "Submission Date": [date if date is not None else dates.get(m, "") for m in wide.index]})
    return pd.concat([lb.reset_index(drop=True), wide.reset_index(drop=True)], axis=1)


def _baselines(raw: pd.DataFrame) -> set:
    return set(raw.loc[raw["baseline"], "model"]) if "baseline" in raw else set()


def _finetuned(raw: pd.DataFrame) -> set:
    return set(raw.loc[raw["finetuned"], "model"]) if "finetuned" in raw else set()


def display_name(model: str, baselines: set, finetuned: set = frozenset()) -> str:
    """The row's name in tables and charts: baselines and fine-tuned rows (`python -m eval_suites
    finetune`, trained end to end rather than probed frozen) say so."""
    if model in baselines:
        return f"{model} (baseline)"
    return f"{model} (fine-tuned)" if model in finetuned and not model.endswith("-finetuned") else model


def markdown(table: pd.DataFrame, overall_table: pd.DataFrame, raw: pd.DataFrame) -> str:
    """leaderboard.md: model rows ranked by s(m), `mean ± ci95` per task, best mean in bold."""
    labels = [c for c in column_order(raw) if c in set(table["label"])]
    cells = table.set_index(["model", "label"])
    baselines, finetuned = _baselines(raw), _finetuned(raw)
    models = list(overall_table["model"]) + sorted(set(table["model"]) - set(overall_table["model"]))
    best = {}
    for label in labels:
        sub = table[table["label"] == label]
        metric = sub["metric"].iloc[0]
        means = sub["mean"].dropna().round(3)
        if len(means):
            best[label] = means.min() if metric in LOWER_IS_BETTER else means.max()
    head = ["Model"] + labels + ["HEAR norm.", "s(m)", "mean", "tasks"]
    lines = ["| " + " | ".join(h.replace("|", "\\|") for h in head) + " |",
             "|:--" + "|--:" * (len(head) - 1) + "|"]
    ov = overall_table.set_index("model")
    for m in models:
        row = [display_name(m, baselines, finetuned)]
        for label in labels:
            if (m, label) not in cells.index:
                row.append("")
                continue
            c = cells.loc[(m, label)]
            text = f"{c['mean']:.3f}" + (f" ± {c['ci95']:.3f}" if not math.isnan(c["ci95"]) else "")
            row.append(f"**{text}**" if label in best and round(c["mean"], 3) == best[label] else text)
        if m in ov.index:
            o = ov.loc[m]
            row += [f"{o['hear_normalised']:.3f}", f"{o['s_m']:.1f}", f"{o['mean_score']:.3f}", f"{int(o['tasks'])}"]
        else:
            row += ["", "", "", ""]
        lines.append("| " + " | ".join(row) + " |")
    metrics = ", ".join(f"{label} {table[table['label'] == label]['metric'].iloc[0]}" for label in labels)
    n = sorted(set(int(v) for v in table["n"]))
    n_text = f"n = {n[0]} seeds" if len(n) == 1 else f"n = {n[0]}-{n[-1]} seeds per cell (scores.csv)"
    ntasks = int(overall_table["tasks"].iloc[0]) if len(overall_table) else 0
    lines += ["", f"Primary test score per task ({metrics}): mean ± 95 % Student-t half-width over seeds "
                  f"({n_text}); **bold**: best mean of the column. Overall, over the {ntasks} tasks every "
                  f"model has (overall.csv): HEAR normalised score, min-max s(m) and mean score. "
                  f"Rows ranked by s(m)."]
    if baselines:
        lines += ["", f"Baseline: {', '.join(sorted(baselines))} (no learned weights): the floor a model's "
                      f"row is read against."]
    if finetuned:
        lines += ["", f"Fine-tuned: {', '.join(sorted(finetuned))} (trained end to end on each task, "
                      f"docs/finetuning.md); the other rows are frozen embeddings under heareval's probe."]
    return "\n".join(lines) + "\n"


def plot(table: pd.DataFrame, path: Path, baselines: set = frozenset(), labels=None, finetuned: set = frozenset()):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = [label for label in (labels or dict.fromkeys(table["label"])) if label in set(table["label"])]
    models = sorted(set(table["model"]) - set(baselines)) + sorted(set(table["model"]) & set(baselines))
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(labels)) + 2, 4.2))
    colours = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4)
    top = 1.0
    for i, m in enumerate(models):
        sub = table[table.model == m].set_index("label").reindex(labels)
        x = np.arange(len(labels)) + (i - (len(models) - 1) / 2) * width
        yerr = sub["ci95"].fillna(0)
        # Fractions fit in [0, 1]; error bars of a few seeds may run past it (clipped), an
        # error rate above 1 may not.
        top = max(top, float(np.nanmax(sub["mean"].values)) if sub["mean"].notna().any() else 0)
        if m in baselines:
            ax.bar(x, sub["mean"], width, yerr=yerr, capsize=3, color="0.82", edgecolor="0.35", hatch="//",
                   linewidth=0.6, label=display_name(m, baselines, finetuned))
            # The floor across each task's whole group of bars, to read the others against.
            labelled = False
            for j, v in enumerate(sub["mean"]):
                if not math.isnan(v):
                    ax.hlines(v, j - 0.45, j + 0.45, colors="0.25", linestyles="--", linewidth=1.0, zorder=3,
                              label=None if labelled else f"{m} score")
                    labelled = True
        else:
            ax.bar(x, sub["mean"], width, yerr=yerr, capsize=3, color=next(colours), label=m)
    ax.set_xticks(np.arange(len(labels)), labels, rotation=15, ha="right")
    ax.set_ylabel("primary test score (mean over seeds, 95 % CI)")
    ax.set_ylim(0, top * 1.05)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def aggregate(runs, out: Path, url: str = "", date: str | None = None, models=None) -> dict:
    """runs: one run folder, or several read as one (collect_runs)."""
    folders = [Path(r) for r in runs] if isinstance(runs, (list, tuple)) else [Path(runs)]
    raw = collect_runs(folders, models)
    if raw.empty:
        raise FileNotFoundError(f"no {SCORES} under {', '.join(f'{f}/*/seed*/*/' for f in folders)} "
                                "(run python -m eval_suites run first)")
    runs = ", ".join(map(str, folders))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = summarise(raw)
    if table.empty:
        raise FileNotFoundError(f"no column of {runs} has all its bundles scored (see the warnings above)")
    over = overall(table)
    files = {"scores": out / "scores.csv", "leaderboard": out / "leaderboard.csv",
             "markdown": out / "leaderboard.md", "overall": out / "overall.csv", "chart": out / "leaderboard.png",
             "models": out / "models.csv"}
    table.to_csv(files["scores"], index=False, float_format="%.4f")
    leaderboard(table, raw, url, date).to_csv(files["leaderboard"], index=False, float_format="%.4f")
    over.to_csv(files["overall"], index=False, float_format="%.4f")
    models_table(raw).to_csv(files["models"], index=False)
    files["markdown"].write_text(markdown(table, over, raw))
    plot(table, files["chart"], _baselines(raw), column_order(raw), _finetuned(raw))
    if REFERENCES.exists():
        refs = pd.read_csv(REFERENCES)
        refs[refs.task.isin(table.label)].to_csv(out / "reference_rows.csv", index=False)
    return files
