"""Checkpoint I/O.

Our format: one `.safetensors` file; its header metadata holds the JSON config under the
key "hear_ssam" (encoder config, frontend, token order, provenance), so one path is the
whole model. Official SSAM releases (`checkpoint-99.pth`, a torch.save dict whose 'args'
is an argparse.Namespace holding an ml_collections ConfigDict) are read with a restricted
unpickler: only tensor-rebuilding functions are real; every other global (Namespace,
ConfigDict, or anything hostile) becomes an inert record that runs no code.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import zipfile
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .encoder import PRESETS, EncoderConfig, SSAMEncoder

FORMAT = "hear_ssam/1"
METADATA_KEY = "hear_ssam"
FRONTEND = {"sample_rate": 16000, "n_fft": 400, "win_length": 400, "hop_length": 160,
            "f_min": 50.0, "f_max": 8000.0, "n_mels": 80, "log_eps": "float32 eps",
            "normalization": "per clip: (x - mean) / (std + 1e-8)"}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the problem."""


# ---------------------------------------------------------------- our format

def make_config(cfg: EncoderConfig, token_order="time-major", provenance=None) -> dict:
    preset = next((name for name, p in PRESETS.items() if p == cfg), None)
    return {"format": FORMAT, "preset": preset, "encoder": dataclasses.asdict(cfg),
            "frontend": FRONTEND, "token_order": token_order, "provenance": provenance or {}}


def save_checkpoint(path, encoder: SSAMEncoder, token_order="time-major", provenance=None):
    """Write weights + config atomically (a crash never leaves a half-written file)."""
    path = Path(path)
    config = make_config(encoder.cfg, token_order, provenance)
    tensors = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(config)})
    os.replace(tmp, path)
    return config


def read_safetensors(path: Path):
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    if METADATA_KEY not in meta:
        raise CheckpointError(f"{path}: safetensors file has no '{METADATA_KEY}' config in its "
                              "metadata; it was not written by hear_ssam (convert it first)")
    return tensors, json.loads(meta[METADATA_KEY])


# ---------------------------------------------------------------- official .pth

class _Inert:
    """Stands in for any non-tensor global in an official checkpoint; records, never runs."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):  # dict-like globals are filled with SETITEMS
        self.__dict__.setdefault("items", {})[key] = value

    def append(self, value):
        self.__dict__.setdefault("list", []).append(value)

    def extend(self, values):
        self.__dict__.setdefault("list", []).extend(values)


def _inert_class(module, name):
    return type(name, (_Inert,), {"__module__": f"inert:{module}"})


_TENSOR_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"), ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch", "Size"), ("torch", "device"), ("collections", "OrderedDict"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _TENSOR_GLOBALS or (module == "torch" and name.endswith("Storage")):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return super().find_class(module, name)
        return _inert_class(module, name)


restricted_pickle = SimpleNamespace(Unpickler=_RestrictedUnpickler, load=None,
                                    __name__="hear_ssam.restricted_pickle")


def read_official(path: Path) -> dict:
    """The 'model' state dict of an official torch.save checkpoint, without running its code."""
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a torch.save zip archive (legacy or corrupt .pth)")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=False,
                         pickle_module=restricted_pickle)
    except Exception as e:
        raise CheckpointError(f"{path}: could not read checkpoint ({type(e).__name__}: {e})") from None
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a dict with a 'model' state dict of tensors")
    # DDP / torch.compile prefixes
    return {re.sub(r"^(module\.|_orig_mod\.)+", "", k): v for k, v in state.items()}


def infer_config(state: dict, path) -> EncoderConfig:
    """Rebuild the EncoderConfig of an official state dict from its tensor shapes."""
    try:
        D = state["cls_token"].shape[-1]
        depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
        pt, pf = state["patch_embed.proj.weight"].shape[-2:]
        n_tokens = state["pos_embed"].shape[1] - 1
    except (KeyError, ValueError, IndexError) as e:
        raise CheckpointError(f"{path}: not an SSAM/SSAST state dict (missing {e})") from None
    base = dict(embed_dim=D, depth=depth, patch_time=pt, patch_freq=pf,
                crop_frames=pt * (n_tokens // (80 // pf)), num_heads=max(1, D // 64))
    if "blocks.0.mixer.A_log" in state:
        E, N = state["blocks.0.mixer.A_log"].shape
        return EncoderConfig(arch="ssam", d_state=N, expand=E // D,
                             d_conv=state["blocks.0.mixer.conv1d.weight"].shape[-1], **base)
    if "blocks.0.attn.qkv.weight" in state:
        hidden = state["blocks.0.mlp.fc1.weight"].shape[0]
        return EncoderConfig(arch="ssast", mlp_ratio=hidden / D, **base)
    raise CheckpointError(f"{path}: blocks are neither Mamba mixers nor ViT attention blocks")


# ---------------------------------------------------------------- loading

def build_encoder(cfg: EncoderConfig, state: dict, path) -> SSAMEncoder:
    """An encoder with `state` loaded strictly; mismatches are reported by key."""
    torch.manual_seed(0)  # construction draws an init that is overwritten; keep it cheap+quiet
    encoder = SSAMEncoder(cfg)
    own = encoder.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{path}: state dict does not match {cfg.arch} "
                              f"(width {cfg.embed_dim}, depth {cfg.depth}): "
                              f"missing keys {missing[:8]}, unexpected keys {unexpected[:8]}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(f"{path}: key '{k}' has shape {tuple(v.shape)}, "
                                  f"the model expects {tuple(own[k].shape)}")
    encoder.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return encoder.eval()


def load_checkpoint(path) -> tuple[SSAMEncoder, dict]:
    """(encoder, config) from one of our .safetensors files or an official .pth."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint file does not exist")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory; pass the checkpoint file inside it")
    with open(path, "rb") as f:
        head = f.read(8)
    if path.suffix == ".safetensors":
        state, config = read_safetensors(path)
        if config.get("format") != FORMAT:
            raise CheckpointError(f"{path}: unknown checkpoint format {config.get('format')!r}")
        try:
            cfg = EncoderConfig(**config["encoder"])
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: bad encoder config ({e})") from None
        return build_encoder(cfg, state, path), config
    if path.suffix in (".pth", ".pt", ".ckpt") or head.startswith(b"PK"):
        state = read_official(path)
        cfg = infer_config(state, path)
        config = make_config(cfg, "time-major", {"converted_from": str(path)})
        return build_encoder(cfg, state, path), config
    raise CheckpointError(f"{path}: unknown checkpoint type '{path.suffix}'; expected a "
                          "hear_ssam .safetensors file or an official SSAM .pth")
