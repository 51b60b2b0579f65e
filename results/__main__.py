"""python -m results aggregate RUNS --out DIR"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .aggregate import aggregate


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m results", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("aggregate", help="heareval outputs -> leaderboard CSVs + chart")
    a.add_argument("runs", type=Path)
    a.add_argument("--out", type=Path, default=Path("results"))
    a.add_argument("--url", default="", help="URL column of leaderboard.csv (where the models live)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        files = aggregate(args.runs, args.out, args.url)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import pandas as pd
    print(pd.read_csv(files["leaderboard"]).to_string(index=False))
    print()
    print(pd.read_csv(files["overall"]).to_string(index=False))
    print("\nwrote " + ", ".join(str(f) for f in files.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
