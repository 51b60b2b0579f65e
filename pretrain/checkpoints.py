"""Training checkpoints: weights + AdamW state + the run's metadata in one safetensors file.

    OUT/checkpoint.safetensors   tensors "model.*" and "optim.<param id>.<name>",
                                 metadata "train" = JSON {format, step, config, encoder,
                                 pretraining, frontend, param_groups, scaler, data, ...}

Checkpoints written before "pretraining" existed hold its fields as flat keys of "encoder";
`load_training_checkpoint` moves them to their section (hear_ssam.checkpoint.split_pretraining).

Written to a `.tmp` and renamed, so a kill mid-write leaves the previous checkpoint intact.
No pickle anywhere. `python -m pretrain export` turns one into a plugin checkpoint.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open

from hear_ssam.checkpoint import (TRAIN_METADATA_KEY, CheckpointError, parse_config, read_safetensors,
                                  split_pretraining, upgrade_v1, write_safetensors)

TRAIN_FORMAT = "hear_ssam-train/2"
TRAIN_FORMAT_V1 = "hear_ssam-train/1"  # encoder config in format-1 layout, no frontend
CHECKPOINT = "checkpoint.safetensors"


def save_training_checkpoint(path: Path, encoder, frontend, optimizer, scaler, step, cfg, extra):
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    opt = optimizer.state_dict()
    for pid, state in opt["state"].items():
        for name, t in state.items():
            tensors[f"optim.{pid}.{name}"] = torch.as_tensor(t).detach().cpu().contiguous()
    meta = {"format": TRAIN_FORMAT, "step": step, "config": cfg.to_dict(),
            "encoder": encoder.cfg.to_dict(), "pretraining": encoder.pretraining.to_dict(),
            "frontend": frontend.to_dict(),
            "param_groups": opt["param_groups"], "scaler": scaler.state_dict(), **extra}
    write_safetensors(path, tensors, {TRAIN_METADATA_KEY: json.dumps(meta)})  # atomic


def checkpoint_step(path: Path) -> str:
    """'step N' of a training checkpoint, read from its header alone (for messages)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return f"step {json.loads((f.metadata() or {})[TRAIN_METADATA_KEY])['step']}"
    except Exception:
        return "unreadable"


def load_training_checkpoint(path: Path):
    """(metadata, model state dict, optimiser state dict) of a training checkpoint."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})[TRAIN_METADATA_KEY])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise ValueError(f"{path}: not a hear_ssam training checkpoint ({type(e).__name__}: {e})") from None
    if meta.get("format") == TRAIN_FORMAT_V1:
        upgraded = upgrade_v1({"format": "hear_ssam/1", "encoder": meta["encoder"]})
        meta.update(format=TRAIN_FORMAT, encoder=upgraded["encoder"], frontend=upgraded["frontend"])
    if meta.get("format") != TRAIN_FORMAT:
        raise ValueError(f"{path}: unknown training checkpoint format {meta.get('format')!r}")
    try:
        meta = split_pretraining(meta)
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path}: bad encoder metadata ({type(e).__name__}: {e})") from None
    model = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    state = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    return meta, model, {"state": state, "param_groups": meta["param_groups"]}


def read_init_weights(path, encoder_cfg, pretraining, frontend) -> tuple[dict, dict]:
    """(state dict, record) of the plugin checkpoint a second-stage run starts from.

    The file must hold the run's own encoder, pretraining options and frontend (a run cannot
    silently start from another model, nor train another recipe's heads); the record (its
    sha256 and what its provenance says it saw) goes into the new run's provenance, so an
    export's crop count covers both stages."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"init_from {path}: expected a hear_ssam .safetensors checkpoint "
                              "(export a training run with `python -m pretrain export` first)")
    state, stored = read_safetensors(path)
    cfg, file_pretraining, file_frontend, config = parse_config(stored, path)
    for what, mine, theirs in (("encoder differs", encoder_cfg.to_dict(), cfg.to_dict()),
                               ("pretraining options differ", pretraining.to_dict(), file_pretraining.to_dict())):
        differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if differ:
            raise CheckpointError(f"init_from {path}: its {what} from this run's in " + ", ".join(
                f"{k} ({theirs.get(k)!r}, the run has {mine.get(k)!r})" for k in differ))
    if file_frontend.to_dict() != frontend.to_dict():
        raise CheckpointError(f"init_from {path}: its frontend {file_frontend.to_dict()} differs from "
                              f"this run's {frontend.to_dict()}")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    prov = config.get("provenance") or {}
    record = {"file": str(path), "sha256": digest.hexdigest(),
              **{k: prov.get(k) for k in ("preset", "steps", "clips_seen", "final_loss", "corpus_sha256",
                                          "git_commit", "wall_s")}}
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, record
