"""The families comparison: each family's tiny encoder pretrained at one budget, its seeded
random initialisation and the log-mel baseline, on the mini suite, with two probes.

    python -m eval_suites families --tasks-dir data/tasks --out runs/families
    python -m eval_suites families --list-checkpoints     # NAME=CKPT of every row with weights

Rows are plain data (ROWS). The pretrained rows were trained on the same corpus at the same
budget, equal hours of audio: 64,000 crops of 2 s (ssam, ssast, axlstm), 12,800 crops of
10.24 s (ssamba). Each family's random initialisation (`python -m hear_ssam init FAMILY-tiny
CKPT --seed 0`, made here when its file is missing) shows what pretraining added; logmel is the
baseline. A row marked optional (ssast-tiny-posmask: SSAST's own positioned mask tokens, not
trained yet) runs only when its checkpoint exists; otherwise it is logged as skipped and
listed in families.json.

Steps, each resumable (finished embeddings, seeds and linear probes are skipped on rerun; a
model whose checkpoint changed starts over, as in `python -m eval_suites run`):
1. the MLP probe: heareval's, the suite's protocol (runner.run: embeddings, then seeds 0-4);
2. adaptive seeding, so that every 95 % Student-t half-width is at most TARGET_HALF_WIDTH:
   for each (model, task) the half-width over its seeds so far (the leaderboard's own formula,
   eval_suites.scores.half_width) is checked, and where it exceeds the target SEED_STEP more seeds
   are run (5-9, then 10-14, ...), up to SEED_CAP seeds; then checked again. "Seeds so far" are
   the complete blocks 0..n-1 (n a multiple of SEED_STEP), so an interrupted round decides the
   same on rerun. A row still above the target at the cap keeps its SEED_CAP seeds and is
   reported as such (here, in families.json and in the leaderboard), not hidden. Every decision
   is logged with its reason and recorded in families.json;
3. the linear probe of scene tasks: standardised logistic regression on the same embeddings
   (eval_suites.linear_probe: C chosen on validation, heareval's score functions and folds,
   a seeded bootstrap interval over test clips);
4. the linear probe of event tasks: heareval's own predictions runner with suites.MINI_LINEAR_GRID
   (hidden_layers 0: one linear layer on the frame embeddings, heareval's event post-processing)
   on the same embeddings, over the same seeds as that model's MLP probe of the task.

Layout of --out:
    families.json                         rows run and skipped, seeding rounds and outcome, probe settings
    mlp/                                  python -m eval_suites run's layout (NAME/embeddings, NAME/seedK/TASK, ...)
    linear/NAME/embeddings -> ../../mlp/NAME/embeddings
    linear/NAME/scene/TASK/linear-probe.json   scene tasks' linear probe (linear_probe's result + model, weights)
    linear/NAME/seedK/TASK/               event tasks' linear probe (heareval's predictions, run's layout)
    linear/NAME/model.json, linear/bundle_report.json, linear/NAME/logs/
`python -m results families RUNS` turns this (and RUNS/efficiency/, written by
tests/benchmarks/bench_families.py) into tables and figures.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

from . import linear_probe
from .runner import FAILED_STATES, ModelSpec, _embedding_type, predict_all, run
from .scores import half_width, seed_scores
from .suites import MINI, MINI_LINEAR_GRID, Suite

log = logging.getLogger("eval_suites.families")
REPO = Path(__file__).resolve().parents[1]

TARGET_HALF_WIDTH = 0.03  # the widest 95 % half-width the comparison aims for, on every task
SEED_STEP = 5  # seeds added at a time where a half-width is above the target
SEED_CAP = 20  # at most this many seeds per (model, task)


@dataclasses.dataclass(frozen=True)
class Row:
    """One row of the comparison."""
    name: str
    checkpoint: str  # relative to the repository, or a baseline name ("logmel")
    role: str  # "pretrained", "random init" or "baseline"
    random_init: str = ""  # pretrained rows: the row holding their architecture at random init
    init_preset: str = ""  # random-init rows: made by `python -m hear_ssam init PRESET CKPT --seed 0`
    optional: bool = False  # run only when the checkpoint exists (logged as skipped otherwise)


# Pretrained on the same corpus at the same budget (equal hours: 64,000 crops of 2 s; ssamba
# 12,800 crops of 10.24 s), each family's random initialisation, and the baseline.
ROWS = (
    Row("ssam-tiny", "results/checkpoints/ssam_tiny_cpu.safetensors", "pretrained", random_init="ssam-tiny-random"),
    Row("ssast-tiny", "results/checkpoints/ssast_tiny_cpu.safetensors", "pretrained",
        random_init="ssast-tiny-random"),
    Row("ssast-tiny-posmask", "results/checkpoints/ssast_tiny_cpu_posmask.safetensors", "pretrained",
        random_init="ssast-tiny-random", optional=True),
    Row("axlstm-tiny", "results/checkpoints/axlstm_tiny_cpu.safetensors", "pretrained",
        random_init="axlstm-tiny-random"),
    Row("ssamba-tiny", "results/checkpoints/ssamba_tiny_cpu.safetensors", "pretrained",
        random_init="ssamba-tiny-random"),
    Row("ssam-tiny-random", "data/ckpt/ssam_tiny_random_init.safetensors", "random init", init_preset="ssam-tiny"),
    Row("ssast-tiny-random", "data/ckpt/ssast_tiny_random_init.safetensors", "random init",
        init_preset="ssast-tiny"),
    Row("axlstm-tiny-random", "data/ckpt/axlstm_tiny_random_init.safetensors", "random init",
        init_preset="axlstm-tiny"),
    Row("ssamba-tiny-random", "data/ckpt/ssamba_tiny_random_init.safetensors", "random init",
        init_preset="ssamba-tiny"),
    Row("logmel", "logmel", "baseline"),
)
# Head-to-head pairs compared besides each model with its random init and with the baseline
# (a pair is compared when both rows ran).
HEAD_TO_HEAD = (("ssam-tiny", "ssast-tiny"), ("ssam-tiny", "ssast-tiny-posmask"), ("ssast-tiny-posmask", "ssast-tiny"))


def comparison_pairs(names, rows=ROWS) -> list:
    """[(a, b, why)] for the rows in `names`: each pretrained row against its own random init,
    HEAD_TO_HEAD, then each non-baseline row against each baseline."""
    names = set(names)
    present = [r for r in rows if r.name in names]
    pairs = [(r.name, r.random_init, "pretrained vs its random init") for r in present
             if r.role == "pretrained" and r.random_init in names]
    pairs += [(a, b, "head to head") for a, b in HEAD_TO_HEAD if a in names and b in names]
    baselines = [r.name for r in present if r.role == "baseline"]
    pairs += [(r.name, b, "vs the baseline") for r in present if r.role != "baseline" for b in baselines]
    return pairs


def resolve_rows(rows=ROWS, repo: Path = REPO) -> tuple[list, list]:
    """(rows to run, [(row, why skipped)]): an optional row without its checkpoint is skipped;
    a required pretrained checkpoint that is missing is an error naming it."""
    included, skipped = [], []
    for r in rows:
        if r.role in ("baseline", "random init") or (repo / r.checkpoint).is_file():
            included.append(r)
        elif r.optional:
            why = f"optional row: {r.checkpoint} does not exist (train it, then rerun to add the row)"
            log.info("%s skipped: %s", r.name, why)
            skipped.append((r, why))
        else:
            raise FileNotFoundError(f"{r.name}: checkpoint {r.checkpoint} does not exist (it is committed: "
                                    f"git checkout -- {r.checkpoint}, or retrain it with its pretrain config)")
    return included, skipped


def make_random_inits(rows, repo: Path = REPO):
    """Every random-init row's checkpoint, made with `python -m hear_ssam init` when missing."""
    for r in rows:
        path = repo / r.checkpoint
        if r.role != "random init" or path.is_file():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "hear_ssam", "init", r.init_preset, str(path), "--seed", "0"]
        log.info("%s: making its seeded random initialisation: %s", r.name, " ".join(cmd[1:]))
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=repo)
        if done.returncode != 0:
            raise RuntimeError(f"{r.name}: `python -m hear_ssam init {r.init_preset} {r.checkpoint} --seed 0` "
                               f"failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")


def model_spec(row: Row, repo: Path = REPO) -> ModelSpec:
    return ModelSpec.parse(f"{row.name}={row.checkpoint if row.role == 'baseline' else repo / row.checkpoint}")


# ---------------------------------------------------------------- adaptive seeding

@dataclasses.dataclass(frozen=True)
class SeedingStep:
    """The rule's decision for one (model, task column) at one round."""
    model: str
    label: str
    bundles: tuple  # the column's bundles (one, except HEAR 2021's Beehive)
    seeds: int  # seeds so far: the complete blocks 0..seeds-1
    half_width: float  # 95 % Student-t half-width over those seeds (nan before any)
    add: tuple  # seeds to run next; () when the column is done
    why: str


def complete_seeds(seeds, step: int = SEED_STEP) -> int:
    """The largest multiple n of `step` with seeds 0..n-1 all present."""
    have, n = set(seeds), 0
    while all(s in have for s in range(n, n + step)):
        n += step
    return n


def plan_seeds(raw, target: float = TARGET_HALF_WIDTH, step: int = SEED_STEP, cap: int = SEED_CAP) -> list:
    """The adaptive seeding rule on per-seed scores -> [SeedingStep], one per (model, column).

    raw: one row per (model, task, seed) with its primary score, columns model, task, label,
    seed, score (a DataFrame or eval_suites.scores.seed_scores' list). Over the complete blocks of seeds: a
    half-width above `target` with fewer than `cap` seeds adds the next `step` seeds (at most
    up to `cap`); at the cap it is reported as still above the target.
    """
    if raw is None or len(raw) == 0:
        return []
    raw = pd.DataFrame(raw)
    bundles_of = raw.groupby(["model", "label"])["task"].agg(lambda t: tuple(sorted(set(t)))).to_dict()
    # a column's score per seed: the mean of its bundles, for seeds where all of them were scored
    by_seed = raw.groupby(["model", "label", "seed"]).agg(score=("score", "mean"), tasks=("task", "nunique"))
    scores_of = {key: {} for key in bundles_of}
    for (model, label, seed), r in by_seed.iterrows():
        if r.tasks == len(bundles_of[(model, label)]):
            scores_of[(model, label)][seed] = r.score
    counted = {key: complete_seeds(scores_of[key], step) for key in bundles_of}
    widths = {key: half_width([s for seed, s in scores_of[key].items() if seed < counted[key]])
              for key in bundles_of}
    steps = []
    for key in sorted(counted):
        n, width = counted[key], float(widths.get(key, float("nan")))
        if n == 0:
            add, why = tuple(range(step)), f"fewer than {step} complete seeds"
        elif math.isnan(width):
            add, why = (), f"no finite score over {n} seeds: reported"
        elif width > target and n < cap:
            add = tuple(range(n, min(n + step, cap)))
            why = f"half-width {width:.4f} over {n} seeds > {target}"
        elif width > target:
            add, why = (), f"half-width {width:.4f} over {n} seeds > {target} at the cap of {cap} seeds: reported"
        else:
            add, why = (), f"half-width {width:.4f} over {n} seeds <= {target}"
        steps.append(SeedingStep(key[0], key[1], bundles_of[key], n, width, add, why))
    return steps


def adaptive_seeding(models, suite: Suite, mlp_dir: Path, jobs: int, target: float = TARGET_HALF_WIDTH,
                     step: int = SEED_STEP, cap: int = SEED_CAP) -> tuple[list, list, dict]:
    """Rounds of plan_seeds + probes until no column asks for seeds -> (rounds, final steps, status).

    A block that was asked for and still is incomplete after its round failed (see its log):
    it is not asked for again."""
    by_name = {m.name: m for m in models}
    rounds, status, tried = [], {}, set()
    while True:
        raw = seed_scores(mlp_dir, models=set(by_name))
        steps = plan_seeds(raw, target, step, cap)
        work, added, failed = [], [], set()
        for s in steps:
            if not s.add:
                continue
            if (s.model, s.label, s.add) in tried:
                log.error("%s / %s: seeds %d-%d did not all finish (see %s/logs/): no more seeds for it",
                          s.model, s.label, s.add[0], s.add[-1], mlp_dir / s.model)
                failed.add((s.model, s.label))
                continue
            tried.add((s.model, s.label, s.add))
            log.info("seeding: %s / %s: %s: adding seeds %d-%d", s.model, s.label, s.why, s.add[0], s.add[-1])
            work += [(by_name[s.model], b, range(s.add[-1] + 1)) for b in s.bundles]
            added.append(dataclasses.asdict(s))
        if not work:
            for s in steps:
                log.info("seeding done: %s / %s: %s%s", s.model, s.label, s.why,
                         f"; seeds {s.add[0]}-{s.add[-1]} failed" if (s.model, s.label) in failed else "")
            return rounds, steps, status
        rounds.append(added)
        log.info("seeding round %d: %d probes (model x task) get more seeds", len(rounds), len(work))
        status.update(predict_all(work, suite, mlp_dir, jobs))


# ---------------------------------------------------------------- linear probes

def _model_json(folder: Path) -> dict:
    try:
        return json.loads((folder / "model.json").read_text())
    except (OSError, ValueError):
        return {}


def linear_scene(models, suite: Suite, tasks_dir: Path, mlp_dir: Path, linear_dir: Path) -> dict:
    """linear_probe.probe_scene_task for every model x scene task with embeddings, resumably
    -> {(model, bundle, "linear"): (state, why)}."""
    status = {}
    settings = {"C_grid": list(linear_probe.C_GRID), "resamples": linear_probe.BOOTSTRAP_RESAMPLES,
                "bootstrap_seed": linear_probe.BOOTSTRAP_SEED, "max_iter": linear_probe.MAX_ITER}
    for m in models:
        weights = _model_json(mlp_dir / m.name).get("weights_sha256")
        for t in suite.tasks:
            if not (tasks_dir / t.bundle).is_dir() or _embedding_type(tasks_dir / t.bundle) != "scene":
                continue
            path = linear_dir / m.name / "scene" / t.bundle / linear_probe.RESULT
            old = _read_json(path)
            if old and old.get("weights_sha256") == weights and all(old.get(k) == v for k, v in settings.items()):
                log.info("%s / %s linear probe: done before (%s)", m.name, t.bundle, path)
                status[(m.name, t.bundle, "linear")] = ("skipped", "")
                continue
            emb_task = mlp_dir / m.name / "embeddings" / "hear_ssam" / t.bundle
            try:
                result = linear_probe.probe_scene_task(emb_task, t.metric, t.label)
            except linear_probe.LinearProbeError as e:
                log.error("%s / %s linear probe failed: %s", m.name, t.bundle, e)
                status[(m.name, t.bundle, "linear")] = ("failed", str(e))
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"model": m.name, "weights_sha256": weights, **result}, indent=1) + "\n")
            log.info("%s / %s linear probe: %s %.4f (95 %% bootstrap %.4f-%.4f)", m.name, t.label, t.metric,
                     result["score"], result["ci95_low"], result["ci95_high"])
            status[(m.name, t.bundle, "linear")] = ("done", "")
    return status


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _link_embeddings(model: ModelSpec, mlp_dir: Path, linear_dir: Path):
    """linear/NAME/embeddings -> the MLP run's embeddings; linear/NAME is cleared first when it
    was made from other weights (the runner would otherwise clear it, link included)."""
    folder = linear_dir / model.name
    old, new = _model_json(folder), _model_json(mlp_dir / model.name)
    if folder.exists() and old and old.get("weights_sha256") != new.get("weights_sha256"):
        log.warning("%s: its checkpoint changed since %s was made: discarding its linear probes", model.name, folder)
        shutil.rmtree(folder)
    link = folder / "embeddings"
    if link.is_symlink() or link.exists():
        if link.is_symlink() and link.resolve() == (mlp_dir / model.name / "embeddings").resolve():
            return
        shutil.rmtree(link) if not link.is_symlink() else link.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(mlp_dir / model.name / "embeddings", folder))


def linear_events(models, suite: Suite, tasks_dir: Path, mlp_dir: Path, linear_dir: Path, mlp_seeds: dict,
                  jobs: int, grid: dict = MINI_LINEAR_GRID) -> dict:
    """heareval's runner with the linear `grid` on every event task, on the MLP run's embeddings,
    over the seeds of that model's MLP probe of the task (`mlp_seeds`: {(model, bundle): n})."""
    events = [t.bundle for t in suite.tasks
              if (tasks_dir / t.bundle).is_dir() and _embedding_type(tasks_dir / t.bundle) == "event"]
    if not events:
        log.info("no event task in %s: no event linear probe", tasks_dir)
        return {}
    for m in models:
        _link_embeddings(m, mlp_dir, linear_dir)
    linear_suite = dataclasses.replace(suite, grid=grid, grid_points=None)
    status = run(linear_suite, models, tasks_dir, linear_dir, tasks=events, jobs=jobs)
    more = [(m, b, range(mlp_seeds[(m.name, b)])) for m in models for b in events
            if mlp_seeds.get((m.name, b), 0) > len(linear_suite.seeds)]
    for m, b, seeds in more:
        log.info("%s / %s linear probe: seeds %d-%d, as its MLP probe", m.name, b, len(linear_suite.seeds),
                 seeds[-1])
    status.update(predict_all(more, linear_suite, linear_dir, jobs))
    return status


# ---------------------------------------------------------------- the comparison

def run_families(tasks_dir: Path, out: Path, rows=ROWS, suite: Suite = MINI, jobs: int | None = None,
                 target: float = TARGET_HALF_WIDTH, step: int = SEED_STEP, cap: int = SEED_CAP) -> dict:
    """Steps 1-4 of the module docstring -> {(model, bundle, step): (state, why)}; writes
    OUT/families.json."""
    tasks_dir, out = Path(tasks_dir).resolve(), Path(out).resolve()
    jobs = jobs or max(1, min(os.cpu_count() or 1, 4))
    included, skipped = resolve_rows(rows)
    make_random_inits(included)
    models = [model_spec(r) for r in included]
    log.info("families: %d rows (%s); %d skipped", len(models), ", ".join(m.name for m in models), len(skipped))
    mlp_dir, linear_dir = out / "mlp", out / "linear"

    log.info("== MLP probe (heareval, %s protocol): embeddings + seeds %s", suite.name, list(suite.seeds))
    status = dict(run(suite, models, tasks_dir, mlp_dir, jobs=jobs))
    log.info("== adaptive seeding: more seeds where a 95 %% half-width is above %g (step %d, cap %d)",
             target, step, cap)
    rounds, final, seeding_status = adaptive_seeding(models, suite, mlp_dir, jobs, target, step, cap)
    status.update(seeding_status)
    above = [s for s in final if s.half_width > target]
    for s in above:
        log.warning("%s / %s: half-width %.4f over %d seeds is above %g: reported as is", s.model, s.label,
                    s.half_width, s.seeds, target)
    log.info("== linear probe, scene tasks (standardised logistic regression)")
    status.update(linear_scene(models, suite, tasks_dir, mlp_dir, linear_dir))
    log.info("== linear probe, event tasks (heareval's runner, hidden_layers 0)")
    mlp_seeds = {(s.model, b): s.seeds for s in final for b in s.bundles}
    status.update(linear_events(models, suite, tasks_dir, mlp_dir, linear_dir, mlp_seeds, jobs))

    record = {
        "suite": suite.name, "tasks_dir": str(tasks_dir),
        "rows": [dataclasses.asdict(r) for r in included],
        "skipped": [{"name": r.name, "checkpoint": r.checkpoint, "why": why} for r, why in skipped],
        "seeding": {"target_half_width": target, "step": step, "cap": cap, "rounds": rounds,
                    "final": [dataclasses.asdict(s) for s in final]},
        "linear_probe": {"scene": {"C_grid": list(linear_probe.C_GRID), "max_iter": linear_probe.MAX_ITER,
                                   "resamples": linear_probe.BOOTSTRAP_RESAMPLES,
                                   "bootstrap_seed": linear_probe.BOOTSTRAP_SEED},
                         "event_grid": MINI_LINEAR_GRID},
        "failed": sorted(f"{m} / {b} / {what}: {why}" for (m, b, what), (state, why) in status.items()
                         if state in FAILED_STATES),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "families.json").write_text(json.dumps(record, indent=1) + "\n")
    log.info("families: wrote %s; %s", out / "families.json",
             f"{len(record['failed'])} steps failed (listed there)" if record["failed"] else "every step finished")
    return status


def checkpoint_rows(rows=ROWS) -> list:
    """NAME=CKPT (relative to the repository) of every row that runs and has weights."""
    included, _ = resolve_rows(rows)
    return [f"{r.name}={r.checkpoint}" for r in included if r.role != "baseline"]
