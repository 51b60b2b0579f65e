"""Run heareval 2021.1.3 on a modern stack: one process embeds all of a model's tasks, one
process probes one embedded task for several seeds, reproducibly.

    python -m eval_suites.heareval_compat embeddings hear_ssam --model logmel \\
        --tasks-dir OUT/NAME/tasks_view --embeddings-dir OUT/NAME/embeddings
    python -m eval_suites.heareval_compat predict OUT/NAME/embeddings/hear_ssam/TASK \\
        --runs-dir OUT/NAME --seeds 0 1 2 [--grid-json '{...}'] [--grid-points 8]

`embeddings` is heareval's embeddings runner, its arguments unchanged (it walks every folder
of --tasks-dir and skips tasks whose `.done.embeddings` exists).
`predict` gives each seed its own copy of the embedding task, RUNS_DIR/seedK/TASK/ (links to
the embedding files; heareval writes its predictions beside them), works in RUNS_DIR/seedK/
(heareval's Lightning logs and checkpoints land in seedK/logs/TASK/), and skips a seed whose
test.predicted-scores.json exists. A seed that fails is reported on a line
"heareval_compat: seed K failed: ..." and the other seeds go on; exit status 1 if any failed.
Two runs of the same seed write the same scores to the last digit, in a fresh process or
after other seeds; only the wall-clock "time_in_min" fields differ.

What it adjusts, and why (each is a documented break or a reproducibility fix, not a change
of method):
- torch >= 2.6 loads checkpoints weights-only by default, and heareval re-reads its own
  Lightning checkpoints, whose hyper-parameters hold the probe grid's classes and functions.
  Weights-only loading stays on (switching it off, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1, would
  let any pickle the process loads run code); instead exactly the objects a grid can hold
  are allowlisted: heareval's (eval_suites.heareval_startup.HEAREVAL_CHECKPOINT_GLOBALS)
  and those a suite grid can name (_NAMES), with torch.serialization.add_safe_globals.
- heareval seeds every run with 42; the papers' protocol repeats probes over seeds, so
  `seed_everything` is redirected to the requested seed (with workers=True), and every
  seed starts with `pl.seed_everything(seed, workers=True)`, so a seed's run does not depend
  on what ran before it in the process. Seed 42 is heareval's own run.
- heareval sets `trainer.fit_loop.current_epoch` before testing so that event tasks use the
  post-processing chosen at the best validation epoch; PyTorch Lightning 1.9 has no such
  attribute, so FitLoop gets a property that reads/writes the epoch progress counter.
  These two patches are eval_suites.heareval_startup's, which `install-startup` also puts
  into the environment so that heareval's own runners work as typed:

    python -m eval_suites.heareval_compat install-startup [--uninstall] [--target DIR]
- The probe grid is the suite's (heareval's PARAM_GRID format; names resolved to objects);
  without one, heareval's own PARAM_GRID (restored if an earlier seed replaced it).
- Determinism: one thread (`torch.set_num_threads(1)`; the runner also sets OMP/MKL to 1
  and PYTHONHASHSEED=0), because float sums depend on how they are split across threads.
  heareval asks Lightning for `deterministic=True`, which Lightning 1.9 makes the strict
  `torch.use_deterministic_algorithms(True)`: on a GPU, an op without a deterministic
  kernel then aborts the probe. Lightning's switch is made warn-only (the same
  deterministic kernels wherever they exist, a warning instead of a crash elsewhere).
- heareval writes hyper-parameters with str(), which for functions (the initialisation,
  e.g. xavier_normal_) embeds a memory address that changes every process; functions are
  written as module.qualname instead, so equal runs write equal score files.
- Several seeds in one process: heareval's predictions runner caches one logger per task
  and adds file handlers per log file; they are closed between seeds, so each seed's
  prediction.log holds only its own lines.
- Seeds are run from their own folder with a relative task path, so the score file's
  "embedding_path" is "TASK" (not an absolute path) and Lightning's logs stay in seedK/.
- The embeddings runner's --model must be an existing path (click.Path(exists=True)), which
  refuses names the plugin resolves itself, such as the `logmel` baseline, before
  load_model sees them; that one option is relaxed to a plain string.
- Embeddings: torch.use_deterministic_algorithms(True, warn_only=True) and cuBLAS's
  deterministic workspace (CUBLAS_WORKSPACE_CONFIG), so that GPU embeddings are repeatable
  too; CPU embeddings are repeatable at a fixed thread count (the runner fixes it).
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import sys
import traceback
from pathlib import Path

import torch

from .heareval_startup import allow_heareval_checkpoint_globals, give_fitloop_a_current_epoch_setter
from .heareval_startup import install as install_startup
from .heareval_startup import site_packages
from .heareval_startup import uninstall as uninstall_startup

SCORES = "test.predicted-scores.json"
PREFIX = "heareval_compat:"  # the runner reads "heareval_compat: seed K failed: ..." lines

_NAMES = {
    "BatchNorm1d": torch.nn.BatchNorm1d, "LayerNorm": torch.nn.LayerNorm, "Identity": torch.nn.Identity,
    "xavier_normal_": torch.nn.init.xavier_normal_, "xavier_uniform_": torch.nn.init.xavier_uniform_,
    "Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW,
}
_HEAREVAL_PARAM_GRID: dict | None = None  # heareval's own PARAM_GRID, kept before a suite's replaces it


def resolve_grid(grid: dict) -> dict:
    """Suite grids name classes/functions as strings; heareval wants the objects."""
    return {k: [_NAMES.get(v, v) if isinstance(v, str) else v for v in values] for k, values in grid.items()}


def _serialize_value(v):
    """heareval's serialize_value, minus the memory address str() puts in a function's name."""
    if isinstance(v, (str, float, int)):
        return v
    if inspect.isfunction(v) or inspect.isbuiltin(v):
        return f"{v.__module__}.{v.__qualname__}"
    return str(v)


def patch_heareval(seed: int, grid: dict | None):
    """Apply the patches of the module docstring for one seed (idempotent; call per seed)."""
    global _HEAREVAL_PARAM_GRID
    import pytorch_lightning as pl
    from pytorch_lightning.trainer.connectors.accelerator_connector import AcceleratorConnector

    import heareval.predictions.task_predictions as tp

    allow_heareval_checkpoint_globals(extra=_NAMES.values())
    give_fitloop_a_current_epoch_setter()

    if not getattr(AcceleratorConnector._init_deterministic, "_warn_only", False):
        strict = AcceleratorConnector._init_deterministic

        def _init_deterministic(self, deterministic):
            strict(self, "warn" if deterministic is True else deterministic)
        _init_deterministic._warn_only = True
        AcceleratorConnector._init_deterministic = _init_deterministic

    tp.seed_everything = lambda _seed, workers=False: pl.seed_everything(seed, workers=True)
    tp.serialize_value = _serialize_value
    if _HEAREVAL_PARAM_GRID is None:
        _HEAREVAL_PARAM_GRID = dict(tp.PARAM_GRID)
    new_grid = resolve_grid(grid) if grid is not None else dict(_HEAREVAL_PARAM_GRID)
    tp.PARAM_GRID.clear()
    tp.PARAM_GRID.update(new_grid)


def _start_seed(seed: int):
    """Everything a seed's run depends on, reset: threads, deterministic kernels, RNGs."""
    import pytorch_lightning as pl
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    pl.seed_everything(seed, workers=True)


def _close_task_loggers():
    """heareval.predictions.runner caches loggers with file handlers; drop them between seeds."""
    import heareval.predictions.runner as hr
    for logger in list(hr._task_path_to_logger.values()):
        for h in list(logger.handlers):
            h.close()
            logger.removeHandler(h)
    hr._task_path_to_logger.clear()


def link_embedding_task(emb_task: Path, seed_task: Path):
    """seed_task/ = links to emb_task's files (heareval reads them and writes beside them)."""
    seed_task.mkdir(parents=True)
    for f in sorted(emb_task.iterdir()):
        if f.is_file():
            (seed_task / f.name).symlink_to(f.resolve())


def predict(emb_task: Path, runs_dir: Path, seeds, grid: dict | None, grid_points: int,
            gpus: str | None = None) -> dict:
    """Probe one embedded task for each seed in turn -> {seed: None (done/skipped) or error}."""
    import heareval.predictions.runner as hr
    emb_task, runs_dir = Path(emb_task).resolve(), Path(runs_dir).resolve()
    task = emb_task.name
    if not (emb_task / ".done.embeddings").exists():
        raise FileNotFoundError(f"{emb_task} has no .done.embeddings: compute the embeddings first")
    errors, home = {}, os.getcwd()
    for seed in seeds:
        seed_root = runs_dir / f"seed{seed}"
        seed_task = seed_root / task
        if (seed_task / SCORES).exists():
            print(f"{PREFIX} seed {seed}: {seed_task / SCORES} exists, skipped", flush=True)
            continue
        # A seed without scores starts clean: no stale predictions or Lightning versions.
        for stale in (seed_task, seed_root / "logs" / task):
            if stale.exists():
                shutil.rmtree(stale)
        link_embedding_task(emb_task, seed_task)
        patch_heareval(seed, grid)
        _start_seed(seed)
        args = [task, "--grid", "default", "--grid-points", str(grid_points)]
        if gpus is not None:
            args += ["--gpus", gpus]
        print(f"{PREFIX} seed {seed}: probing {task} in {seed_root}", flush=True)
        os.chdir(seed_root)
        try:
            hr.runner.main(args=args, standalone_mode=False)
            if not (seed_task / SCORES).exists():
                raise RuntimeError(f"heareval finished without writing {SCORES}")
        except Exception as e:  # report this seed, go on with the others
            traceback.print_exc()
            errors[seed] = f"{type(e).__name__}: {e}"
            print(f"{PREFIX} seed {seed} failed: {errors[seed]}", flush=True)
        finally:
            os.chdir(home)
            _close_task_loggers()
    return errors


def embeddings_main(argv) -> int:
    """heareval's embeddings runner, with --model accepting plugin-resolved names."""
    import click
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    from heareval.embeddings import runner as er
    for param in er.runner.params:
        if param.name == "model":
            param.type = click.STRING
    er.runner.main(args=list(argv), standalone_mode=False)
    return 0


def install_startup_main(target: Path | None, remove: bool) -> int:
    """Install (or remove) heareval_startup's hook in an environment; print what changed."""
    if remove:
        removed = uninstall_startup(target)
        for path in removed:
            print(f"removed {path}")
        if not removed:
            print(f"nothing to remove in {target or site_packages()}")
    else:
        for path in install_startup(target):
            print(f"wrote {path}")
    return 0


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["embeddings"]:
        return embeddings_main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m eval_suites.heareval_compat", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("embeddings", help="heareval.embeddings.runner, same arguments")
    pr = sub.add_parser("predict", help="probes of one embedded task, one seed after another")
    pr.add_argument("emb_task", type=Path, help="embedding task folder (EMB/hear_ssam/TASK)")
    pr.add_argument("--runs-dir", type=Path, required=True, help="seeds go to RUNS_DIR/seedK/TASK/")
    pr.add_argument("--seeds", type=int, nargs="+", default=[42])
    pr.add_argument("--grid-json", help="probe grid (heareval PARAM_GRID format, names as strings); "
                                        "default: heareval's own")
    pr.add_argument("--grid-points", type=int, default=8, help="grid points heareval draws (its default 8)")
    pr.add_argument("--gpus", default=None, help="passed to heareval (e.g. '[0]')")
    st = sub.add_parser("install-startup", help="make heareval's own runners work as typed in this environment "
                                                "(a .pth hook in site-packages)")
    st.add_argument("--uninstall", action="store_true", help="remove the hook instead")
    st.add_argument("--target", type=Path, default=None,
                    help="folder to install into (default: this Python's site-packages)")
    a = p.parse_args(argv)
    if a.cmd == "install-startup":
        try:
            return install_startup_main(a.target, a.uninstall)
        except FileNotFoundError as e:
            p.error(str(e))
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only settable before any inter-op work; harmless if already 1
        pass
    errors = predict(a.emb_task, a.runs_dir, a.seeds, json.loads(a.grid_json) if a.grid_json else None,
                     a.grid_points, a.gpus)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
