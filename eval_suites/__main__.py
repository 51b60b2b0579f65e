"""python -m eval_suites {list, build mini, run [SUITE], families, finetune}

    python -m eval_suites list
    python -m eval_suites build mini --tasks-dir tasks/
    python -m eval_suites run mini --model default --model runs/x/model.safetensors --tasks-dir tasks/ --out runs/eval
    python -m eval_suites run hear2021 --model logmel --model ssam=ssam.safetensors --tasks-dir ~/hear/tasks --out runs/hear
    python -m eval_suites run --model logmel --model default --tasks-dir any_bundles/ --out runs/any
    python -m eval_suites families --tasks-dir data/tasks --out runs/families
    python -m eval_suites families --list-checkpoints
    python -m eval_suites finetune --tasks-dir data/tasks --model ssam=ssam.safetensors --out runs/ft --seeds 0 1 2

`run` without a SUITE evaluates every bundle in --tasks-dir with heareval's own protocol
(its PARAM_GRID, 8 grid points, seed 42); --protocol, --grid-json and --seeds replace the
protocol of either kind of run. Broken bundles are reported by name and skipped; the exit
status is 1 if a bundle was broken or a step failed (a suite bundle absent from --tasks-dir
is reported, not a failure), 2 for bad arguments.

`families` runs the families comparison on the mini suite (eval_suites/families.py: its rows,
the MLP probe with adaptive seeding, the linear probe); `--list-checkpoints` prints NAME=CKPT
of its rows that have weights, one a line, for the efficiency benchmark.

`finetune` trains a checkpoint end to end on each scene bundle of --tasks-dir (SSAST's recipe,
eval_suites/finetune.py, docs/finetuning.md) and writes heareval's score files under
OUT/NAME-finetuned/ (NAME=CKPT names the row), so `python -m results aggregate` shows
fine-tuned and frozen rows side by side. Resumable: run the same command again.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .suites import HEAR2021_COLUMNS, PROTOCOLS, SUITES


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m eval_suites", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="suites and their tasks")
    b = sub.add_parser("build", help="build an offline suite's HEAR bundles")
    b.add_argument("suite", choices=["mini"])
    b.add_argument("--tasks-dir", type=Path, required=True)
    b.add_argument("--work", type=Path, default=Path("data/mini_build"), help="package download cache")
    r = sub.add_parser("run", help="embeddings + probes for models x tasks x seeds")
    r.add_argument("suite", nargs="?", choices=sorted(SUITES),
                   help="a suite (default: every bundle in --tasks-dir, heareval's protocol)")
    r.add_argument("--model", action="append", required=True,
                   help="CKPT, NAME=CKPT, 'default' (bundled model) or 'logmel' (log-mel baseline)")
    r.add_argument("--tasks-dir", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--seeds", type=int, nargs="+", help="default: the suite's (or the protocol's)")
    r.add_argument("--task", action="append", help="only these bundles")
    r.add_argument("--protocol", choices=sorted(PROTOCOLS),
                   help="probe grid and seeds of this suite, or 'heareval' (its PARAM_GRID, 8 points, seed 42)")
    r.add_argument("--grid-json", help="probe grid in heareval's PARAM_GRID format, names as strings "
                                       "(every point is trained)")
    r.add_argument("--jobs", type=int, help="probe processes in parallel (default: cores, max 4)")
    f = sub.add_parser("families", help="the families comparison on the mini suite (MLP + linear probes)")
    f.add_argument("--tasks-dir", type=Path, help="the built mini suite")
    f.add_argument("--out", type=Path, help="runs folder (e.g. runs/families)")
    f.add_argument("--jobs", type=int, help="probe processes in parallel (default: cores, max 4)")
    f.add_argument("--list-checkpoints", action="store_true",
                   help="print NAME=CKPT of the rows with weights (optional rows only when present) and exit")
    t = sub.add_parser("finetune", help="fine-tune a checkpoint end to end on HEAR bundles with clip labels")
    t.add_argument("--tasks-dir", type=Path, required=True, help="a folder of HEAR bundles")
    t.add_argument("--model", required=True, help="CKPT or NAME=CKPT (the row is NAME-finetuned; NAME defaults to CKPT's stem)")
    t.add_argument("--out", type=Path, required=True, help="runs folder (the frozen runs may live there too)")
    t.add_argument("--task", action="append", help="only these bundles (an event bundle named here is an error)")
    t.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    from .finetune_recipe import Recipe
    defaults = Recipe()
    for field, kind, text in (
            ("epochs", int, "training epochs per split"), ("batch_size", int, "clips per step (all processes)"),
            ("lr", float, "the encoder's learning rate"), ("head_lr_factor", float, "the head's lr = lr x this"),
            ("weight_decay", float, "Adam's L2 term"), ("lr_decay_start", int, "first epoch (1-based) after which lr decays"),
            ("lr_decay", float, "lr factor per epoch from lr_decay_start on"), ("warmup_steps", int, "linear warm-up steps"),
            ("lr_floor", float, "stop once lr < lr x this after epoch 10, as SSAST"),
            ("freq_mask", float, "SpecAugment: widest frequency mask, as a share of the bins"),
            ("time_mask", float, "SpecAugment: widest time mask, as a share of the window"),
            ("mixup", float, "probability that a training clip is mixed with another"),
            ("pooling", str, "auto, tokens (ft_avgtok) or frames (the scene embedding)"),
            ("patch_stride", str, "auto (SSAST/SSAMBA: 10), none, S, or T,F in frames,bins"),
            ("window_seconds", float, "window length (0: the bundle's clip length where positions extend)"),
            ("loss", str, "auto, ce or bce"), ("precision", str, "auto, fp32, bf16 or fp16")):
        t.add_argument("--" + field.replace("_", "-"), type=kind, default=getattr(defaults, field),
                       help=f"{text} (default {getattr(defaults, field)})")
    t.add_argument("--no-noise", action="store_true", help="leave out SSAST's noise and roll augmentation")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        if a.cmd == "list":
            for s in SUITES.values():
                print(f"{s.name}: {s.description}\n  probes: {s.protocol_text()}")
                for t in s.tasks:
                    print(f"  {t.bundle:<36} {t.label:<22} {t.metric:<22} {t.split}")
            print(f"protocols (run --protocol): {', '.join(sorted(PROTOCOLS))}")
            print(f"HEAR 2021 leaderboard columns: {', '.join(HEAR2021_COLUMNS)}")
        elif a.cmd == "families":
            from .families import checkpoint_rows, run_families
            from .runner import FAILED_STATES
            if a.list_checkpoints:
                print("\n".join(checkpoint_rows()))
                return 0
            if a.tasks_dir is None or a.out is None:
                raise ValueError("families needs --tasks-dir (the built mini suite) and --out (a runs folder)")
            status = run_families(a.tasks_dir, a.out, jobs=a.jobs)
            return 1 if any(state in FAILED_STATES for state, _ in status.values()) else 0
        elif a.cmd == "finetune":
            import dataclasses
            from .finetune import finetune
            from .finetune_recipe import FinetuneError, Recipe
            from .runner import ModelSpec
            spec = ModelSpec.parse(a.model if "=" in a.model else f"{Path(a.model).stem}={a.model}")
            if not spec.name.endswith("-finetuned"):  # the row says what it is in every table and CSV
                spec = dataclasses.replace(spec, name=spec.name + "-finetuned")
            recipe = Recipe(**{f.name: getattr(a, f.name) for f in dataclasses.fields(Recipe)
                               if f.name not in ("noise", "betas")}, noise=not a.no_noise)
            try:
                status = finetune(spec, a.tasks_dir, a.out, recipe, seeds=a.seeds, tasks=a.task)
            except FinetuneError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            skipped = [b for (b, seed), state in status.items() if seed is None]
            return 1 if any(not status[(b, None)].startswith("skipped: bundle " + b + " is an event")
                            for b in skipped) else 0
        elif a.cmd == "build":
            from .build import build
            build(a.tasks_dir, a.work)
        else:
            from .runner import FAILED_STATES, ModelSpec, run
            models = [ModelSpec.parse(m) for m in a.model]
            names = [m.name for m in models]
            if len(set(names)) != len(names):
                raise ValueError(f"model names must differ, got {names}; use NAME=CKPT")
            try:
                grid = json.loads(a.grid_json) if a.grid_json else None
            except ValueError as e:
                raise ValueError(f"--grid-json is not valid JSON: {e}") from None
            if grid is not None and not isinstance(grid, dict):
                raise ValueError("--grid-json must be a JSON object {param: [values]}")
            status = run(SUITES[a.suite] if a.suite else None, models, a.tasks_dir, a.out, a.seeds, a.task,
                         a.jobs, protocol=PROTOCOLS[a.protocol] if a.protocol else None, grid=grid)
            return 1 if any(state in FAILED_STATES for state, _ in status.values()) else 0
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
