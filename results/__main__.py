"""python -m results aggregate RUNS [RUNS ...] --out DIR [--model NAME ...]
python -m results families RUNS --out DIR [--throughput-column NAME]

aggregate writes leaderboard.csv (HEAR format), leaderboard.md, scores.csv, overall.csv and
leaderboard.png into DIR and prints the Markdown leaderboard; several run folders (a frozen
run and a fine-tuning run, say) are read as one. families turns the runs of
`python -m eval_suites families` into the families comparison (results/families.py: scores of
both probes, leaderboard.md, separation.csv, models.csv, figures, the efficiency tables).
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
    a.add_argument("runs", type=Path, nargs="+")
    a.add_argument("--out", type=Path, default=Path("results"))
    a.add_argument("--url", default="", help="URL column of leaderboard.csv (where the models live)")
    a.add_argument("--date", help="Submission Date column of leaderboard.csv (default: each model's run date)")
    a.add_argument("--model", action="append", dest="models", metavar="NAME",
                   help="only this model folder of the RUNS (repeatable; default: every model with scores)")
    f = sub.add_parser("families", help="runs of python -m eval_suites families -> tables + figures")
    f.add_argument("runs", type=Path)
    f.add_argument("--out", type=Path, default=Path("results/families"))
    f.add_argument("--throughput-column", help="efficiency.csv's CPU HEAR throughput column (default: the "
                                               "first whose name has 'hear' and a rate such as 'per_s')")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        if args.cmd == "families":
            from .families import families
            files = families(args.runs, args.out, args.throughput_column)
        else:
            files = aggregate(args.runs, args.out, args.url, args.date, args.models)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(files["markdown"].read_text())
    print("wrote " + ", ".join(str(f) for f in files.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
