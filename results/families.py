"""The families comparison's tables and figures, from the runs of `python -m eval_suites families`.

    python -m results families runs/families --out results/families

Reads RUNS/mlp/ (the MLP probe, the runner's layout), RUNS/linear/ (the linear probe: scene
tasks' NAME/scene/TASK/linear-probe.json, event tasks' NAME/seedK/TASK/ scores), RUNS/families.json
(the rows that ran, the skipped ones; without it every model folder with scores) and, when
present, RUNS/efficiency/ (tests/benchmarks/bench_families.py's efficiency.csv, length.csv and
their PNGs). Writes into --out:
- scores.csv              the MLP probe, results/mini/scores.csv's schema (results.aggregate.summarise):
                          model, task, label, metric, mean, ci95 (Student-t half-width over seeds), n, sd
- scores_linear.csv       the linear probe, the same schema. Event tasks as above (seeds of heareval's
                          runner); scene tasks: mean = the probe's score, ci95 = the larger side of its
                          95 % bootstrap interval around it (so mean ± ci95 holds the interval),
                          n = test clips resampled, sd = the bootstrap's standard deviation
- separation.csv          per compared pair, probe and task: both intervals and whether they overlap
- leaderboard.md          one table per probe (rows = models, task columns mean ± half-width, mean),
                          the probe each is, what is separated (counted from separation.csv), the
                          efficiency table (efficiency.csv's EFFICIENCY_COLUMNS, cells as written), the
                          rows skipped
- models.csv              the checkpoint and sha256 behind each row (results.aggregate.models_table)
- quality_per_task.png    grouped bars per task with 95 % intervals, one panel per probe
- quality_vs_throughput.png  mean MLP score against CPU HEAR throughput (efficiency.csv's
                          hear_audio_s_per_s), one labelled point per pretrained model (skipped,
                          with a log line, without efficiency.csv)
- efficiency.csv, length.csv and their PNGs, copied from RUNS/efficiency/ when present
Pairs compared (eval_suites.families.comparison_pairs): each pretrained model with its own
random initialisation, ssam-tiny with ssast-tiny (and ssast-tiny-posmask when present), each
model with logmel. Two rows are separated on a task when their 95 % intervals (mean ± ci95)
do not overlap. CSV and Markdown outputs are byte-identical for identical inputs.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from eval_suites.families import ROWS, TARGET_HALF_WIDTH, comparison_pairs
from eval_suites import linear_probe
from eval_suites.suites import LOWER_IS_BETTER, MINI_GRID

from .aggregate import collect, column_order, models_table, summarise

log = logging.getLogger("results")
SCHEMA = ["model", "task", "label", "metric", "mean", "ci95", "n", "sd"]  # results/mini/scores.csv's columns
PROBES = {"mlp": "MLP probe", "linear": "linear probe"}
EFFICIENCY_FILES = ("efficiency", "length")  # RUNS/efficiency/NAME.csv and NAME*.png are copied
# leaderboard.md's efficiency table: these columns of efficiency.csv (bench_families.py's names:
# parameters, MACs per token, CPU HEAR and pretraining throughput, peak memory and time at 2 s
# and 60 s), those present, in this order; every column when it has none of them.
EFFICIENCY_COLUMNS = ("model", "params", "macs_per_token", "hear_audio_s_per_s", "pretrain_crops_per_s",
                      "pretrain_audio_s_per_s", "peak_mb_2s", "ms_2s", "peak_mb_60s", "ms_60s", "threads", "cpu")
# efficiency.csv's CPU HEAR throughput column: bench_families.py's, else the first whose name has
# "hear" and one of THROUGHPUT_HINTS ("--throughput-column" names another).
THROUGHPUT_COLUMN = "hear_audio_s_per_s"
THROUGHPUT_HINTS = ("per_s", "throughput", "per_sec", "realtime")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def row_order(models) -> list:
    """The rows' order of eval_suites.families.ROWS (pretrained, random inits, baseline), then
    any other model alphabetically."""
    known = [r.name for r in ROWS if r.name in set(models)]
    return known + sorted(set(models) - set(known))


def _sorted(table: pd.DataFrame, columns: list) -> pd.DataFrame:
    rank_model = {m: i for i, m in enumerate(row_order(table["model"]))}
    rank_label = {label: i for i, label in enumerate(columns)}
    keys = pd.DataFrame({"m": table["model"].map(rank_model), "c": table["label"].map(rank_label).fillna(len(columns))})
    return table.loc[keys.sort_values(["m", "c"], kind="stable").index].reset_index(drop=True)


def mlp_scores(runs: Path, models=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-seed rows of results.aggregate.collect, the scores.csv table) of RUNS/mlp."""
    raw = collect(runs / "mlp")
    if raw.empty:
        raise FileNotFoundError(f"no MLP probe scores under {runs / 'mlp'}/*/seed*/*/ "
                                f"(run python -m eval_suites families --out {runs} first)")
    if models is not None:
        raw = raw[raw["model"].isin(list(models))].reset_index(drop=True)
    return raw, _sorted(summarise(raw), column_order(raw))


def linear_scores(runs: Path, models, columns: list) -> pd.DataFrame:
    """scores_linear.csv: the scene tasks' linear-probe.json files and the event tasks' seeds,
    in scores.csv's schema (see the module docstring for what mean, ci95, n, sd are)."""
    rows = []
    for path in sorted((runs / "linear").glob(f"*/scene/*/{linear_probe.RESULT}")):
        r = _read_json(path)
        if not r or path.parents[2].name not in set(models):
            continue
        half = max(abs(r["score"] - r["ci95_low"]), abs(r["ci95_high"] - r["score"]))
        rows.append({"model": path.parents[2].name, "task": r["task"], "label": r["label"], "metric": r["metric"],
                     "mean": r["score"], "ci95": half, "n": r["n_test"], "sd": r["bootstrap_sd"]})
    table = pd.DataFrame(rows, columns=SCHEMA)
    events = collect(runs / "linear") if (runs / "linear").is_dir() else pd.DataFrame()
    if not events.empty and events["model"].isin(list(models)).any():
        events = summarise(events[events["model"].isin(list(models))])
        table = pd.concat([table, events[SCHEMA]], ignore_index=True) if len(table) else events[SCHEMA]
    if table.empty:
        log.warning("no linear probe scores under %s", runs / "linear")
    return _sorted(table[SCHEMA], columns)


def separation(tables: dict, pairs) -> pd.DataFrame:
    """Per pair (a, b), probe and task both have: the intervals and whether they are apart.

    better: a or b when the intervals do not overlap (by the metric's direction), else ""."""
    rows = []
    for probe, table in tables.items():
        cells = table.set_index(["model", "label"])
        for a, b, why in pairs:
            for label in dict.fromkeys(table["label"]):
                if (a, label) not in cells.index or (b, label) not in cells.index:
                    continue
                ca, cb = cells.loc[(a, label)], cells.loc[(b, label)]
                (a_low, a_high), (b_low, b_high) = ((c["mean"] - c["ci95"], c["mean"] + c["ci95"]) for c in (ca, cb))
                apart = not (math.isnan(ca["ci95"]) or math.isnan(cb["ci95"])) and (a_low > b_high or b_low > a_high)
                higher = a if ca["mean"] > cb["mean"] else b
                lower = b if higher == a else a
                better = (lower if ca["metric"] in LOWER_IS_BETTER else higher) if apart else ""
                rows.append({"a": a, "b": b, "pair": why, "probe": probe, "label": label, "a_mean": ca["mean"],
                             "a_ci95": ca["ci95"], "b_mean": cb["mean"], "b_ci95": cb["ci95"],
                             "separated": apart, "better": better})
    return pd.DataFrame(rows, columns=["a", "b", "pair", "probe", "label", "a_mean", "a_ci95", "b_mean", "b_ci95",
                                       "separated", "better"])


def separation_lines(sep: pd.DataFrame) -> list:
    """One Markdown line per (pair, probe): on how many tasks the intervals are apart, which way."""
    lines = []
    for (a, b, probe), sub in sep.groupby(["a", "b", "probe"], sort=False):
        a_better = list(sub.loc[sub["better"] == a, "label"])
        b_better = list(sub.loc[sub["better"] == b, "label"])
        parts = [f"{m} better on {', '.join(labels)}" for m, labels in ((a, a_better), (b, b_better)) if labels]
        lines.append(f"- {a} vs {b}, {PROBES[probe]}: separated on {len(a_better) + len(b_better)} of {len(sub)} "
                     f"tasks" + (f" ({'; '.join(parts)})" if parts else ""))
    return lines


def _cell(c, target: float) -> str:
    text = f"{c['mean']:.3f}" + (f" ± {c['ci95']:.3f}" if not math.isnan(c["ci95"]) else "")
    return text + (" †" if c["ci95"] > target else "")


def _means(table: pd.DataFrame, labels: list) -> pd.Series:
    """Per model, the mean over the task columns (blank unless it has them all)."""
    wide = table.pivot(index="model", columns="label", values="mean").reindex(columns=labels)
    return wide.mean(axis=1).where(wide.notna().all(axis=1))


def score_table(table: pd.DataFrame, labels: list, baselines: set, target: float = TARGET_HALF_WIDTH) -> list:
    """Markdown lines: rows = models (ROWS order), `mean ± ci95` per task (best in bold), the mean."""
    cells = table.set_index(["model", "label"])
    means = _means(table, labels)
    best = {}
    for label in labels:
        sub = table[table["label"] == label]
        if len(sub):
            values = sub["mean"].round(3)
            best[label] = values.min() if sub["metric"].iloc[0] in LOWER_IS_BETTER else values.max()
    lines = ["| Model | " + " | ".join(label.replace("|", "\\|") for label in labels) + " | mean |",
             "|:--" + "|--:" * (len(labels) + 1) + "|"]
    for m in row_order(table["model"]):
        row = [f"{m} (baseline)" if m in baselines else m]
        for label in labels:
            if (m, label) not in cells.index:
                row.append("")
                continue
            c = cells.loc[(m, label)]
            text = _cell(c, target)
            row.append(f"**{text}**" if round(c["mean"], 3) == best.get(label) else text)
        row.append("" if pd.isna(means.get(m)) else f"{means[m]:.3f}")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _n_text(table: pd.DataFrame) -> str:
    n = sorted(set(int(v) for v in table["n"]))
    return f"{n[0]}" if len(n) == 1 else f"{n[0]}-{n[-1]}"


def markdown(mlp: pd.DataFrame, linear: pd.DataFrame, sep: pd.DataFrame, labels: list, baselines: set,
             efficiency: pd.DataFrame | None, record: dict | None) -> str:
    """leaderboard.md (see the module docstring)."""
    metrics = ", ".join(f"{label} {mlp[mlp['label'] == label]['metric'].iloc[0]}" for label in labels)
    seeding = (record or {}).get("seeding", {})
    target, step, cap = (seeding.get(k) for k in ("target_half_width", "step", "cap"))
    target = TARGET_HALF_WIDTH if target is None else target
    lines = [f"# Families comparison on the {(record or {}).get('suite', 'mini')} suite", "",
             f"Primary test score per task ({metrics}); **bold**: best of the column; mean: over the "
             f"{len(labels)} tasks; † a 95 % half-width above {target}, reported as it is.", "",
             "## MLP probe", ""]
    lines += score_table(mlp, labels, baselines, target)
    g = {k: v[0] for k, v in MINI_GRID.items()}
    lines += ["", f"heareval's predictions runner with the mini suite's protocol (one hidden layer of "
                  f"{g['hidden_dim']:,} + {g['hidden_norm']}, dropout {g['dropout']}, {g['optim']} lr {g['lr']:g}, "
                  f"batch {g['batch_size']}; eval_suites/suites.py MINI_GRID): mean ± 95 % "
                  f"Student-t half-width over seeds ({_n_text(mlp)} per cell, scores.csv)"
                  + (f"; seeds are added {step} at a time where the half-width is above {target}, up to {cap} "
                     f"(eval_suites/families.py)" if cap else "") + ".", "",
              "## Linear probe", ""]
    if linear.empty:
        lines += ["No linear probe scores."]
    else:
        lines += score_table(linear, [label for label in labels if label in set(linear["label"])], baselines, target)
        scene = (record or {}).get("linear_probe", {}).get("scene", {})
        grid = ", ".join(f"{c:g}" for c in scene.get("C_grid", linear_probe.C_GRID))
        resamples = scene.get("resamples", linear_probe.BOOTSTRAP_RESAMPLES)
        lines += ["", "Scene tasks: standardised logistic regression (sklearn StandardScaler + LogisticRegression, "
                      f"lbfgs), C in {{{grid}}} chosen per split on its validation fold, fitted on the train "
                      "folds, scored on the test fold with heareval's score function and averaged over folds; "
                      f"± the larger side of the 95 % bootstrap interval over test clips ({resamples:,} seeded "
                      "resamples; n in scores_linear.csv = test clips). Event tasks: heareval's runner with "
                      "hidden_layers 0 (one linear layer on the frame embeddings, heareval's event "
                      "post-processing), mean ± 95 % Student-t half-width over the MLP probe's seeds."]
    lines += ["", "## What is separated", "",
              "Tasks on which the two rows' 95 % intervals do not overlap (separation.csv):", ""]
    lines += separation_lines(sep) or ["- none: no two compared rows (eval_suites/families.py) ran"]
    if efficiency is not None:
        shown = [c for c in EFFICIENCY_COLUMNS if c in efficiency.columns] or list(efficiency.columns)
        lines += ["", "## Efficiency", "", f"From tests/benchmarks/bench_families.py: efficiency.csv's "
                  f"{', '.join(shown)} as written (every column in efficiency.csv; length.csv: per window length):",
                  "", "| " + " | ".join(str(c).replace("|", "\\|") for c in shown) + " |",
                  "|:--" + "|--:" * (len(shown) - 1) + "|"]
        lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in efficiency[shown].itertuples(index=False)]
    skipped = (record or {}).get("skipped", [])
    if skipped:
        lines += ["", "## Rows not run", ""] + [f"- {s['name']}: {s['why']}" for s in skipped]
    if baselines:
        lines += ["", f"Baseline: {', '.join(sorted(baselines))} (no learned weights)."]
    return "\n".join(lines) + "\n"


def plot_quality(tables: dict, labels: list, baselines: set, path: Path):
    """quality_per_task.png: one panel per probe, grouped bars per task with 95 % intervals;
    each model one colour in both panels, baselines grey and hatched."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    models = row_order(pd.concat(list(tables.values()))["model"])
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4
    colours, i = {}, 0
    for m in models:
        if m not in baselines:
            colours[m], i = palette[i], i + 1
    width = 0.8 / max(1, len(models))
    fig, axes = plt.subplots(len(tables), 1, figsize=(max(7, 1.8 * len(labels)) + 2.5, 3.6 * len(tables)),
                             squeeze=False)
    for ax, (probe, table) in zip(axes[:, 0], tables.items()):
        for j, m in enumerate(models):
            sub = table[table["model"] == m].set_index("label").reindex(labels)
            x = np.arange(len(labels)) + (j - (len(models) - 1) / 2) * width
            style = dict(color="0.82", edgecolor="0.35", hatch="//", linewidth=0.6) if m in baselines else \
                dict(color=colours[m])
            ax.bar(x, sub["mean"], width, yerr=sub["ci95"].fillna(0), capsize=2,
                   label=f"{m} (baseline)" if m in baselines else m, **style)
        ax.set_xticks(np.arange(len(labels)), labels, rotation=10, ha="right")
        ax.set_title(PROBES[probe], fontsize=10)
        ax.set_ylabel("test score (95 % CI)")
        ax.set_ylim(0, 1.0)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def throughput_column(efficiency: pd.DataFrame, name: str | None = None) -> str:
    """efficiency.csv's CPU HEAR throughput column: `name`, else THROUGHPUT_COLUMN, else the
    first column with "hear" and a rate in its name."""
    if name is not None:
        if name not in efficiency.columns:
            raise ValueError(f"--throughput-column {name}: not a column of efficiency.csv "
                             f"({', '.join(map(str, efficiency.columns))})")
        return name
    names = {c: str(c).lower() for c in efficiency.columns}
    found = [c for c in efficiency.columns if c == THROUGHPUT_COLUMN] + [
        c for c, n in names.items() if "hear" in n and any(h in n for h in THROUGHPUT_HINTS)]
    if not found:
        raise ValueError(f"efficiency.csv has no CPU HEAR throughput column (a name with 'hear' and one of "
                         f"{', '.join(THROUGHPUT_HINTS)}; columns: {', '.join(map(str, efficiency.columns))}): "
                         f"name it with --throughput-column")
    return found[0]


def model_column(efficiency: pd.DataFrame) -> str:
    """efficiency.csv's row names: its "model" column, else "name", else its first column."""
    for c in ("model", "name"):
        if c in efficiency.columns:
            return c
    return efficiency.columns[0]


def plot_quality_vs_throughput(mlp: pd.DataFrame, labels: list, efficiency: pd.DataFrame, column: str,
                               path: Path) -> bool:
    """quality_vs_throughput.png: mean MLP score against CPU HEAR throughput, one labelled point
    per pretrained model (ROWS role "pretrained") found in both tables; False if none is."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    pretrained = [r.name for r in ROWS if r.role == "pretrained"]
    means = _means(mlp, labels)
    speed = pd.to_numeric(efficiency.set_index(model_column(efficiency))[column], errors="coerce")
    speed = speed.groupby(level=0, sort=False).first()  # one point per model, should a row repeat
    points = [(m, float(speed[m]), float(means[m])) for m in pretrained
              if m in speed.index and m in means.index and not pd.isna(speed[m]) and not pd.isna(means[m])]
    if not points:
        log.info("quality_vs_throughput.png not written: no pretrained model has both a mean MLP score and a %s",
                 column)
        return False
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for m, x, y in points:
        ax.scatter([x], [y], s=36)
        ax.annotate(m, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=9)
    xs = [x for _, x, _ in points]
    if max(xs) > 10 * min(xs):  # a log axis only where the throughputs span a decade
        ax.set_xscale("log")
    ax.margins(x=0.15, y=0.15)
    ax.set_xlabel(f"CPU HEAR throughput ({column}, efficiency.csv)")
    ax.set_ylabel(f"mean MLP probe score over {len(labels)} tasks")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def families(runs: Path, out: Path, throughput: str | None = None) -> dict:
    """Every output of the module docstring -> {name: path}."""
    runs, out = Path(runs), Path(out)
    record = _read_json(runs / "families.json")
    models = [r["name"] for r in record["rows"]] if record else None
    raw, mlp = mlp_scores(runs, models)
    models = sorted(set(raw["model"]))
    labels = [label for label in column_order(raw) if label in set(mlp["label"])]
    linear = linear_scores(runs, models, labels)
    baselines = set(raw.loc[raw["baseline"], "model"])
    sep = separation({"mlp": mlp, "linear": linear}, comparison_pairs(models))
    out.mkdir(parents=True, exist_ok=True)
    files = {"scores": out / "scores.csv", "scores_linear": out / "scores_linear.csv",
             "separation": out / "separation.csv", "markdown": out / "leaderboard.md", "models": out / "models.csv",
             "quality": out / "quality_per_task.png"}
    mlp.to_csv(files["scores"], index=False, float_format="%.4f")
    linear.to_csv(files["scores_linear"], index=False, float_format="%.4f")
    sep.to_csv(files["separation"], index=False, float_format="%.4f")
    models_table(raw).to_csv(files["models"], index=False)

    efficiency = None
    eff_dir = runs / "efficiency"
    if (eff_dir / "efficiency.csv").is_file():
        efficiency = pd.read_csv(eff_dir / "efficiency.csv", dtype=str, keep_default_na=False)
        for stem in EFFICIENCY_FILES:
            for f in sorted(eff_dir.glob(f"{stem}.csv")) + sorted(eff_dir.glob(f"{stem}*.png")):
                shutil.copyfile(f, out / f.name)
                files[f.name] = out / f.name
        throughput_path = out / "quality_vs_throughput.png"
        if plot_quality_vs_throughput(mlp, labels, efficiency, throughput_column(efficiency, throughput),
                                      throughput_path):
            files["throughput"] = throughput_path
    else:
        log.info("%s not found: no efficiency table, no quality_vs_throughput.png (run "
                 "tests/benchmarks/bench_families.py --out %s)", eff_dir / "efficiency.csv", eff_dir)
    files["markdown"].write_text(markdown(mlp, linear, sep, labels, baselines, efficiency, record))
    plot_quality({"mlp": mlp, **({"linear": linear} if not linear.empty else {})}, labels, baselines,
                 files["quality"])
    return files

