"""Command line: convert official checkpoints, make random-init ones, inspect any.

    python -m hear_ssam convert checkpoint-99.pth ssam_tiny.safetensors [--runtime official]
    python -m hear_ssam init ssam-tiny random_tiny.safetensors [--seed 0]
    python -m hear_ssam init logmel logmel.safetensors      # the log-mel baseline, as a file
    python -m hear_ssam info ssam_tiny.safetensors
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from .checkpoint import CheckpointError, baseline_config, load_checkpoint, save_baseline, save_checkpoint
from .frontend import FrontendConfig
from .presets import PRESETS, family_of_preset, preset_encoder
from .runtime import RUNTIMES, TOKEN_ORDERS, resolve_runtime


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m hear_ssam", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="official .pth (or ours) -> hear_ssam .safetensors")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--runtime", choices=RUNTIMES, default=None,
                   help="the runtime load_model runs for this checkpoint: hear or official (what the "
                        "family's released code computes); default: the source file's own (hear for a release)")
    c.add_argument("--token-order", choices=TOKEN_ORDERS, default=None, help=argparse.SUPPRESS)  # older spelling
    i = sub.add_parser("init", help="a randomly initialised checkpoint of a preset")
    i.add_argument("preset", choices=sorted(PRESETS) + ["logmel"], help="a preset, or logmel: the "
                   "log-mel baseline as a weightless file (what heareval's --model needs)")
    i.add_argument("dst")
    i.add_argument("--seed", type=int, default=0)
    n = sub.add_parser("info", help="print a checkpoint's config (architecture, pretraining options, frontend, "
                       "runtime, provenance) and parameter count")
    n.add_argument("path")
    args = p.parse_args(argv)
    if args.cmd == "convert":
        try:
            runtime = resolve_runtime(args.runtime, args.token_order, default=None)  # None: keep the source's
        except ValueError:  # both flags given, meaning different runtimes (argparse checked the values)
            c.error(f"--runtime {args.runtime} and --token-order {args.token_order} ask for different "
                    "runtimes; give only --runtime (--token-order is its older spelling: "
                    "time-major = hear, official = official)")

    try:
        if args.cmd == "convert":
            encoder, config = load_checkpoint(args.src)
            runtime = runtime or config["runtime"]
            prov = dict(config.get("provenance", {}), converted_from=args.src)
            save_checkpoint(args.dst, encoder, runtime, prov,
                            frontend=FrontendConfig.from_dict(config["frontend"]))
            print(f"wrote {args.dst}: {config['family'] or encoder.cfg.block} width {encoder.cfg.embed_dim}, "
                  f"{encoder.num_trainable_parameters():,} parameters, runtime {runtime}")
        elif args.cmd == "init" and args.preset == "logmel":
            save_baseline(args.dst, "logmel", FrontendConfig())
            print(f"wrote {args.dst}: the log-mel baseline (no weights)")
        elif args.cmd == "init":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(args.seed)
                encoder = preset_encoder(args.preset)
            save_checkpoint(args.dst, encoder, provenance={
                "weights": f"random init, seed {args.seed}", "preset": args.preset},
                frontend=family_of_preset(args.preset).frontend)
            print(f"wrote {args.dst}: random-init {args.preset} (seed {args.seed})")
        elif baseline_config(args.path) is not None:
            print(json.dumps(baseline_config(args.path), indent=2))
        else:
            encoder, config = load_checkpoint(args.path)
            config["trainable_parameters"] = encoder.num_trainable_parameters()
            print(json.dumps(config, indent=2))
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
