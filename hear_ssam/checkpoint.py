"""Checkpoint I/O: our safetensors format (version 2, reads version 1) and official releases.

Our format: one `.safetensors` file; its header metadata holds the JSON config under the
key "hear_ssam", so one path is the whole model:

    {"format": "hear_ssam/2", "preset": "ssam-tiny" | null, "family": "ssam" | null,
     "encoder": EncoderConfig fields, "pretraining": PretrainingOptions fields,
     "frontend": FrontendConfig fields, "runtime": "hear" | "official", "provenance": {...}}

Files written before the "pretraining" section existed (the bundled asset among them) store
its fields as flat keys of "encoder"; `split_pretraining` moves them to their section, and a
field a file does not store loads with its default (what the code that wrote it did).

Files written before `runtime` existed (the bundled asset among them) store its older
spelling, "token_order": "time-major" | "official"; `parse_config` reads either as "runtime".

Format 1 (releases <= 0.1: the bundled asset, files converted then) had a flat encoder
config with `arch` and a frontend record that was never read; `upgrade_v1` maps it.

Official releases (`checkpoint-99.pth`, a torch.save dict whose 'args' is an
argparse.Namespace holding an ml_collections ConfigDict) are read with a restricted
unpickler: only tensor-rebuilding functions are real; every other global (Namespace,
ConfigDict, or anything hostile) becomes an inert record that runs no code. The family is
recognised from the keys (`presets.FAMILIES[*].detect`) and its keys mapped at this
boundary (`from_official`); keys a family sets aside (pretraining-only heads) are listed in
the config's provenance, never silently dropped.
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

from .encoder import EncoderConfig, PretrainingOptions, SpectrogramEncoder
from .frontend import FrontendConfig
from .presets import FAMILIES, family_of_config, preset_name
from .runtime import resolve_runtime

FORMAT = "hear_ssam/2"
FORMAT_V1 = "hear_ssam/1"
METADATA_KEY = "hear_ssam"
TRAIN_METADATA_KEY = "train"  # pretrain/'s training checkpoints (weights + optimiser state)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the problem."""


# ---------------------------------------------------------------- our format

def make_config(cfg: EncoderConfig, pretraining: PretrainingOptions, frontend: FrontendConfig | None = None,
                runtime: str = "hear", provenance=None) -> dict:
    """The format-2 config of an encoder (its architecture and its pretraining options);
    `runtime` ("hear" | "official") is the one `load_model` runs for the file unless told otherwise."""
    frontend = frontend or FrontendConfig()
    if frontend.n_mels != cfg.n_mels:
        raise ValueError(f"frontend gives {frontend.n_mels} bins but the encoder expects {cfg.n_mels}")
    family = family_of_config(cfg)
    return {"format": FORMAT, "preset": preset_name(cfg, pretraining), "family": family.name if family else None,
            "encoder": cfg.to_dict(), "pretraining": pretraining.to_dict(), "frontend": frontend.to_dict(),
            "runtime": resolve_runtime(runtime), "provenance": provenance or {}}


def save_checkpoint(path, encoder: SpectrogramEncoder, runtime: str = "hear", provenance=None,
                    frontend: FrontendConfig | None = None) -> dict:
    """Write weights + config atomically (a crash never leaves a half-written file)."""
    path = Path(path)
    config = make_config(encoder.cfg, encoder.pretraining, frontend, runtime, provenance)
    tensors = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    write_safetensors(path, tensors, {METADATA_KEY: json.dumps(config)})
    return config


def write_safetensors(path, tensors: dict, metadata: dict) -> None:
    """The one writer of every safetensors file the project makes (plugin files, training
    checkpoints): written to `path.tmp` and renamed over `path`, so a crash or a kill mid-write
    leaves the previous file intact, never a half-written one. Missing parent folders are
    made, as a user expects of `python -m hear_ssam init ... new_folder/model.safetensors`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def upgrade_v1(config: dict) -> dict:
    """A format-1 config (flat encoder fields with `arch`) as format 2."""
    enc = dict(config["encoder"])
    arch = enc.pop("arch")
    mamba = {k: enc.pop(k) for k in ("d_state", "d_conv", "expand")}
    vit = {k: enc.pop(k) for k in ("num_heads", "mlp_ratio")}
    if arch == "ssam":
        enc.update(block="mamba", block_options=mamba)
    elif arch == "ssast":
        enc.update(block="vit", block_options=vit)
    else:
        raise ValueError(f"unknown arch {arch!r}")
    # Format 1 always meant SSAM's 80-bin log-mel (its "frontend" record was descriptive only).
    return dict(config, format=FORMAT, family=arch, encoder=enc,
                frontend=FrontendConfig(n_mels=enc.get("n_mels", 80)).to_dict())


PRETRAINING_FIELDS = tuple(f.name for f in dataclasses.fields(PretrainingOptions))


def split_pretraining(config: dict) -> dict:
    """A config (plugin file or training checkpoint) with the pretraining options in their own
    "pretraining" section: files written before the section existed hold them as flat keys of
    "encoder", which are moved there. A file with neither gets SSAM's defaults when read."""
    encoder = dict(config["encoder"])
    flat = {k: encoder.pop(k) for k in PRETRAINING_FIELDS if k in encoder}
    if flat and "pretraining" in config:
        raise ValueError(f"pretraining options {sorted(flat)} stored both in 'encoder' and in 'pretraining'; "
                         "keep them in 'pretraining' only")
    pretraining = config.get("pretraining", flat)
    out = {}
    for k, v in config.items():  # the section right after "encoder", as `make_config` writes it
        if k != "pretraining":
            out[k] = encoder if k == "encoder" else v
        if k == "encoder":
            out["pretraining"] = pretraining
    return out


def read_safetensors(path: Path):
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    if METADATA_KEY not in meta:
        if TRAIN_METADATA_KEY in meta:
            raise CheckpointError(f"{path}: is a pretraining checkpoint (weights + optimiser state); "
                                  f"export it for the plugin first: python -m pretrain export {path} "
                                  "model.safetensors")
        raise CheckpointError(f"{path}: safetensors file has no '{METADATA_KEY}' config in its "
                              "metadata; it was not written by hear_ssam (convert an official release with "
                              "python -m hear_ssam convert CHECKPOINT.pth OUT.safetensors, or load the .pth itself)")
    return tensors, json.loads(meta[METADATA_KEY])


def parse_config(config: dict, path) -> tuple[EncoderConfig, PretrainingOptions, FrontendConfig, dict]:
    """(encoder config, pretraining options, frontend config, format-2 config dict) of a stored
    config; the dict has the options in "pretraining" and says "runtime" whichever layout and
    spelling the file stores (older files: the options flat in "encoder", "token_order")."""
    try:
        if config.get("format") == FORMAT_V1:
            config = upgrade_v1(config)
        if config.get("format") != FORMAT:
            raise CheckpointError(f"{path}: unknown checkpoint format {config.get('format')!r}")
        config = split_pretraining(config)
        cfg = EncoderConfig(**config["encoder"])
        pretraining = PretrainingOptions(**config["pretraining"])
        pretraining.check_block(cfg.block)
        frontend = FrontendConfig.from_dict(config["frontend"])
        runtime = resolve_runtime(config.get("runtime"), config.get("token_order"))
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad config ({type(e).__name__}: {e})") from None
    if frontend.n_mels != cfg.n_mels:
        raise CheckpointError(f"{path}: frontend gives {frontend.n_mels} bins, encoder expects {cfg.n_mels}")
    config = {k: v for k, v in config.items() if k != "token_order"}  # read as its newer spelling
    return cfg, pretraining, frontend, dict(config, pretraining=pretraining.to_dict(), runtime=runtime)


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


def official_config(state: dict, path) -> tuple[dict, EncoderConfig, PretrainingOptions, FrontendConfig, dict]:
    """(our state dict, encoder config, pretraining options, frontend, set-aside keys) of an
    official state dict; the options are the family's (its released heads are in the state)."""
    family = next((f for f in FAMILIES.values() if f.detect(state)), None)
    if family is None:
        raise CheckpointError(f"{path}: not a state dict of a known family ({', '.join(FAMILIES)}): "
                              f"keys start {sorted(state)[:4]}")
    ours, set_aside = family.from_official(state)
    try:
        cfg = family.config_from_state(ours)
    except (KeyError, ValueError, IndexError) as e:
        raise CheckpointError(f"{path}: looks like {family.name} but cannot read its shapes "
                              f"({type(e).__name__}: {e})") from None
    return ours, cfg, family.pretraining_options(), family.frontend, set_aside


# ---------------------------------------------------------------- loading

def build_encoder(cfg: EncoderConfig, pretraining: PretrainingOptions, state: dict, path) -> SpectrogramEncoder:
    """An encoder (with its pretraining heads) with `state` loaded strictly; mismatches are
    reported by key.

    Built on the meta device (no initialisation is computed, and the caller's global RNG
    is never touched), then the loaded tensors are assigned in.
    """
    with torch.device("meta"):
        encoder = SpectrogramEncoder(cfg, pretraining)
    own = encoder.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{path}: state dict does not match {cfg.block} blocks "
                              f"(width {cfg.embed_dim}, depth {cfg.depth}): "
                              f"missing keys {missing[:8]}, unexpected keys {unexpected[:8]}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(f"{path}: key '{k}' has shape {tuple(v.shape)}, "
                                  f"the model expects {tuple(own[k].shape)}")
    encoder.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)
    return encoder.eval()


BASELINE_FAMILY = "baseline"  # a weightless file: the config of a feature baseline (log-mel)


def save_baseline(path, preset: str, frontend: FrontendConfig) -> dict:
    """A baseline as a file (no tensors, only the config), so that tools which insist on an
    existing model path (heareval's --model) can load it; written atomically."""
    path = Path(path)
    config = {"format": FORMAT, "preset": preset, "family": BASELINE_FAMILY, "frontend": frontend.to_dict(),
              "provenance": {"weights": "none: a feature baseline"}}
    write_safetensors(path, {}, {METADATA_KEY: json.dumps(config)})
    return config


def baseline_config(path) -> dict | None:
    """The config of a baseline file written by `save_baseline`; None for anything else."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            config = json.loads((f.metadata() or {}).get(METADATA_KEY, "{}"))
    except Exception:  # not ours or unreadable: load_checkpoint names the problem
        return None
    return config if config.get("family") == BASELINE_FAMILY else None


def load_checkpoint(path) -> tuple[SpectrogramEncoder, dict]:
    """(encoder, format-2 config) from one of our .safetensors files or an official .pth; the
    encoder holds its pretraining options (`encoder.pretraining`), the config both sections."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint file does not exist")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory; pass the checkpoint file inside it")
    with open(path, "rb") as f:
        head = f.read(8)
    if path.suffix == ".safetensors":
        if baseline_config(path) is not None:
            raise CheckpointError(f"{path}: is a feature baseline (no encoder); load it with "
                                  "hear_ssam.load_model(path)")
        state, stored = read_safetensors(path)
        cfg, pretraining, _, config = parse_config(stored, path)
        return build_encoder(cfg, pretraining, state, path), config
    if path.suffix in (".pth", ".pt", ".ckpt") or head.startswith(b"PK"):
        state, cfg, pretraining, frontend, set_aside = official_config(read_official(path), path)
        provenance = {"converted_from": str(path)}
        if set_aside:
            provenance["set_aside_keys"] = sorted(set_aside)
        config = make_config(cfg, pretraining, frontend, "hear", provenance)
        return build_encoder(cfg, pretraining, state, path), config
    raise CheckpointError(f"{path}: unknown checkpoint type '{path.suffix}'; expected a "
                          "hear_ssam .safetensors file or an official .pth release")
