"""Run heareval 2021.1.3's predictions runner on a modern stack, with a suite's grid and seed.

    python -m eval_suites.heareval_compat EMBEDDING_TASK_DIR --seed 3 --grid-json '{...}'

What it adjusts, and why (each is a documented break, not a change of method):
- torch >= 2.6 loads checkpoints weights-only by default; heareval's own Lightning
  checkpoints hold hyper-parameters, so TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 (they are files
  heareval itself just wrote).
- heareval seeds every run with 42; the papers' protocol repeats probes over seeds, so
  `seed_everything` is redirected to the requested seed.
- heareval sets `trainer.fit_loop.current_epoch` before testing so that event tasks use the
  post-processing chosen at the best validation epoch; PyTorch Lightning 1.9 has no such
  attribute, so FitLoop gets a property that reads/writes the epoch progress counter.
- The probe grid is the suite's (heareval's PARAM_GRID format; names resolved to objects).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

_NAMES = {
    "BatchNorm1d": torch.nn.BatchNorm1d, "LayerNorm": torch.nn.LayerNorm, "Identity": torch.nn.Identity,
    "xavier_normal_": torch.nn.init.xavier_normal_, "xavier_uniform_": torch.nn.init.xavier_uniform_,
    "Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW,
}


def resolve_grid(grid: dict) -> dict:
    """Suite grids name classes/functions as strings; heareval wants the objects."""
    return {k: [_NAMES.get(v, v) if isinstance(v, str) else v for v in values] for k, values in grid.items()}


def patch_heareval(seed: int, grid: dict | None):
    import pytorch_lightning as pl
    from pytorch_lightning.loops.fit_loop import FitLoop

    import heareval.predictions.task_predictions as tp

    if not isinstance(getattr(FitLoop, "current_epoch", None), property):
        def _get(self):
            return self.epoch_progress.current.completed

        def _set(self, value):
            self.epoch_progress.current.completed = value
            self.epoch_progress.current.processed = value
        FitLoop.current_epoch = property(_get, _set)

    tp.seed_everything = lambda _seed, workers=False: pl.seed_everything(seed, workers=workers)
    if grid is not None:
        tp.PARAM_GRID.clear()
        tp.PARAM_GRID.update(resolve_grid(grid))


def main(argv=None):
    # Set here, in the probe subprocess, never at import: the rest of a process keeps torch's
    # safe weights-only default.
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task_dirs", nargs="+", help="embedding task folders (heareval's layout)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--grid-json", help="probe grid (heareval PARAM_GRID format, names as strings)")
    p.add_argument("--gpus", default=None, help="passed to heareval (e.g. '[0]')")
    a = p.parse_args(argv)
    patch_heareval(a.seed, json.loads(a.grid_json) if a.grid_json else None)
    from heareval.predictions.runner import runner
    args = list(a.task_dirs) + ["--grid", "default", "--grid-points", "1000"]
    if a.gpus is not None:
        args += ["--gpus", a.gpus]
    return runner.main(args=args, standalone_mode=False) or 0


if __name__ == "__main__":
    sys.exit(main())
