"""Export a training checkpoint to the plugin's format (safetensors + JSON provenance).

    python -m pretrain export runs/NAME/checkpoint.safetensors model.safetensors [--half]
"""
from __future__ import annotations

import datetime
from pathlib import Path

import hear_ssam
from hear_ssam import EncoderConfig, FrontendConfig, PretrainingOptions, SpectrogramEncoder, save_checkpoint

from .checkpoints import load_training_checkpoint
from .config import TrainConfig


def export(train_ckpt, dst, half=False) -> dict:
    meta, model_state, _ = load_training_checkpoint(Path(train_ckpt))
    encoder = SpectrogramEncoder(EncoderConfig(**meta["encoder"]), PretrainingOptions(**meta["pretraining"]))
    encoder.load_state_dict(model_state, strict=True)
    cfg = meta["config"]
    objective = cfg.get("objective") or {"all": "mse_all", "masked": "mse_masked"}[cfg["loss"]]  # train/1 runs
    provenance = {
        "weights": "pretrained with hear_ssam's pretrain/ (masked spectrogram modelling)",
        "preset": cfg["preset"], "steps": meta["step"], "global_batch": cfg["global_batch"],
        "clips_seen": meta["step"] * cfg["global_batch"], "final_loss": round(meta.get("last_loss", float("nan")), 5),
        "objective": objective, "masking": cfg.get("masking", "unstructured"), "mask_ratio": cfg["mask_ratio"],
        "lr": TrainConfig.scaled_lr(cfg["base_lr"], cfg["global_batch"]),
        "data": meta.get("data"), "data_files": meta.get("files"), "data_hours": meta.get("data_hours"),
        "command": meta.get("command"), "hear_ssam_version": hear_ssam.__version__,
        "exported": datetime.date.today().isoformat(),
    }
    # lr schedule: the config's keys that shape it, so the curve can be redrawn (pretrain.schedules.lr_at)
    provenance["lr_schedule"] = {k: cfg.get(k) for k in ("schedule", "warmup_steps", "warmup_epochs", "max_steps",
                                                           "epochs", "base_lr", "weight_decay", "betas")}
    provenance["length_weight_cap_s"] = cfg.get("length_weight_cap_s")
    for key in ("corpus_sha256", "corpus_hours", "corpus_files"):
        if key in meta:
            provenance[key] = meta[key]
    segments = meta.get("segments") or []
    if segments:  # where it ran: one entry per (re)start, e.g. CPU then GPU
        provenance["segments"] = segments
        provenance["hardware"] = sorted({s["hardware"] for s in segments})
        provenance["wall_s"] = round(sum(s["wall_s"] for s in segments), 1)
        provenance["git_commit"] = segments[-1].get("git_commit")
    init = meta.get("init_from")
    if init:  # a second stage: the weights have seen both stages' crops
        provenance["init_from"] = init
        provenance["clips_seen_this_run"] = provenance["clips_seen"]
        provenance["clips_seen"] += init.get("clips_seen") or 0
    if half:  # fp16 storage halves the file; the plugin computes in fp32
        encoder.half()
    save_checkpoint(dst, encoder, provenance=provenance, frontend=FrontendConfig.from_dict(meta["frontend"]))
    return provenance


def main(args) -> int:
    prov = export(args.checkpoint, args.dst, args.half)
    print(f"wrote {args.dst}: {prov['preset']}, {prov['steps']} steps, final loss {prov['final_loss']}")
    return 0
