"""Export a training checkpoint to the plugin's format (safetensors + JSON provenance).

    python -m pretrain.export runs/NAME/checkpoint.safetensors model.safetensors
"""
from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import hear_ssam
from hear_ssam import EncoderConfig, SSAMEncoder, save_checkpoint

from .config import TrainConfig
from .train import load_training_checkpoint


def export(train_ckpt, dst, half=False):
    meta, model_state, _ = load_training_checkpoint(Path(train_ckpt))
    encoder = SSAMEncoder(EncoderConfig(**meta["encoder"]))
    encoder.load_state_dict(model_state, strict=True)
    cfg = meta["config"]
    provenance = {
        "weights": "pretrained with hear_ssam's pretrain/ (masked spectrogram modelling)",
        "preset": cfg["preset"], "steps": meta["step"], "global_batch": cfg["global_batch"],
        "clips_seen": meta["step"] * cfg["global_batch"], "final_loss": round(meta.get("last_loss", float("nan")), 5),
        "loss": cfg["loss"], "mask_ratio": cfg["mask_ratio"], "lr": TrainConfig(**cfg).lr,
        "data": meta.get("data"), "data_files": meta.get("files"), "data_hours": meta.get("data_hours"),
        "command": meta.get("command"), "hear_ssam_version": hear_ssam.__version__,
        "exported": datetime.date.today().isoformat(),
    }
    if half:  # fp16 storage halves the file; the plugin computes in fp32
        encoder.half()
    save_checkpoint(dst, encoder, provenance=provenance)
    return provenance


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--half", action="store_true", help="store weights as fp16 (half the size)")
    a = p.parse_args(argv)
    if not a.checkpoint.exists():
        print(f"error: {a.checkpoint} does not exist", file=sys.stderr)
        return 2
    prov = export(a.checkpoint, a.dst, a.half)
    print(f"wrote {a.dst}: {prov['preset']}, {prov['steps']} steps, final loss {prov['final_loss']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
