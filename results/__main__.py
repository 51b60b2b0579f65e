"""python -m results aggregate RUNS --out DIR [--model NAME ...]

Writes leaderboard.csv (HEAR format), leaderboard.md, scores.csv, overall.csv and
leaderboard.png into DIR and prints the Markdown leaderboard.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .aggregate import aggregate


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m results", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("aggregate", help="heareval outputs -> leaderboard CSV/Markdown + chart")
    a.add_argument("runs", type=Path)
    a.add_argument("--out", type=Path, default=Path("results"))
    a.add_argument("--url", default="", help="URL column of leaderboard.csv (where the models live)")
    a.add_argument("--date", help="Submission Date column of leaderboard.csv (default: each model's run date)")
    a.add_argument("--model", action="append", dest="models", metavar="NAME",
                   help="only this model folder of RUNS (repeatable; default: every model with scores)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        files = aggregate(args.runs, args.out, args.url, args.date, args.models)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(files["markdown"].read_text())
    print("wrote " + ", ".join(str(f) for f in files.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
