"""python -m pretrain --config CONFIG.yaml --data DIR_OR_MANIFEST --out runs/NAME [--resume]"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path

from .config import load_config


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # tensorboard may import TensorFlow
    p = argparse.ArgumentParser(prog="python -m pretrain", description=__doc__)
    p.add_argument("--config", help="YAML file (pretrain/configs/*.yaml)")
    p.add_argument("--data", required=True, help="folder of audio files, or a manifest (.tsv / list)")
    p.add_argument("--out", required=True, type=Path, help="run folder: checkpoint, metrics, plots")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors")
    p.add_argument("--cache", help="folder for precomputed log-mels (faster epochs)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config keys")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        cfg = load_config(a.config, a.set)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from .train import train
    command = "python -m pretrain " + " ".join(shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))
    try:
        train(cfg, a.data, a.out, resume=a.resume, cache_dir=a.cache, command=command)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
