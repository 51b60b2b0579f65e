"""python -m eval_suites {list, build mini, run SUITE}

    python -m eval_suites list
    python -m eval_suites build mini --tasks-dir tasks/
    python -m eval_suites run mini --model default --model runs/x/model.safetensors --tasks-dir tasks/ --out runs/eval
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .suites import SUITES


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
    r.add_argument("suite", choices=sorted(SUITES))
    r.add_argument("--model", action="append", required=True, help="CKPT, NAME=CKPT or 'default'")
    r.add_argument("--tasks-dir", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--seeds", type=int, nargs="+", help="default: the suite's")
    r.add_argument("--task", action="append", help="only these bundles")
    r.add_argument("--jobs", type=int, help="probe trainings in parallel (default: cores, max 4)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        if a.cmd == "list":
            for s in SUITES.values():
                print(f"{s.name}: {s.description} seeds={list(s.seeds)}")
                for t in s.tasks:
                    print(f"  {t.bundle:<36} {t.label:<22} {t.metric:<10} {t.split}")
        elif a.cmd == "build":
            from .mini import build
            build(a.tasks_dir, a.work)
        else:
            from .runner import ModelSpec, run
            models = [ModelSpec.parse(m) for m in a.model]
            names = [m.name for m in models]
            if len(set(names)) != len(names):
                raise ValueError(f"model names must differ, got {names}; use NAME=CKPT")
            status = run(SUITES[a.suite], models, a.tasks_dir, a.out, a.seeds, a.task, a.jobs)
            failed = [k for k, (state, _) in status.items() if state == "failed"]
            return 1 if failed else 0
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
