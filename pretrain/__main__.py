"""python -m pretrain {train, export, corpus}

    python -m pretrain corpus --out data/pretrain_corpus
    python -m pretrain train --config pretrain/configs/ssam_tiny.yaml --data DIR_OR_MANIFEST --out runs/NAME [--resume]
    torchrun --nproc-per-node=4 -m pretrain train --config ... --data ... --out ...
    python -m pretrain export runs/NAME/checkpoint.safetensors model.safetensors [--half]
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
from pathlib import Path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pretrain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="masked spectrogram modelling (one process or under torchrun)")
    t.add_argument("--config", help="YAML file (pretrain/configs/*.yaml)")
    t.add_argument("--data", required=True, help="folder of audio files, or a manifest (.tsv / list)")
    t.add_argument("--out", required=True, type=Path, help="run folder: checkpoint, metrics, plots")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors")
    t.add_argument("--cache", help="folder for precomputed features (filled once, then faster epochs)")
    t.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config keys")
    e = sub.add_parser("export", help="training checkpoint -> plugin .safetensors")
    e.add_argument("checkpoint", type=Path)
    e.add_argument("dst", type=Path)
    e.add_argument("--half", action="store_true", help="store weights as fp16 (half the size)")
    c = sub.add_parser("corpus", help="build the offline pretraining corpus from Debian packages")
    c.add_argument("--out", type=Path, default=Path("data/pretrain_corpus"))
    c.add_argument("--packages", nargs="+", help="default: pretrain.corpus.SOURCES")
    return p


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # tensorboard may import TensorFlow
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        if a.cmd == "train":
            from .config import load_config
            from .train import train
            cfg = load_config(a.config, a.set)
            command = "python -m pretrain " + " ".join(shlex.quote(x) for x in argv)
            train(cfg, a.data, a.out, resume=a.resume, cache_dir=a.cache, command=command)
        elif a.cmd == "export":
            from .export import main as export_main
            if not a.checkpoint.exists():
                raise FileNotFoundError(f"{a.checkpoint} does not exist")
            return export_main(a)
        else:
            from .corpus import build, SOURCES
            build(a.out, a.packages or list(SOURCES))
    except (OSError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or train's Stopped after saving: the shell's code for that signal
        return 128 + getattr(e, "signum", signal.SIGINT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
