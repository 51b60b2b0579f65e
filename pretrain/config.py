"""Pretraining configuration: one dataclass, loaded from YAML, overridable from the CLI."""
from __future__ import annotations

import dataclasses
from typing import Optional

import yaml

from hear_ssam.encoder import EncoderConfig
from hear_ssam.frontend import FrontendConfig
from hear_ssam.presets import PRESETS, family_of_preset

from .objectives import MASKINGS, OBJECTIVES


@dataclasses.dataclass
class TrainConfig:
    preset: str = "ssam-tiny"  # hear_ssam.PRESETS key
    # EncoderConfig fields to replace (e.g. tiny test models); "block_options" merges into the preset's
    encoder_overrides: dict = dataclasses.field(default_factory=dict)
    # optimisation (SSAM paper / SSAST recipe)
    global_batch: int = 1024  # clips per optimiser step, over all processes
    micro_batch: int = 256  # clips per process per forward; accumulation makes up the rest
    base_lr: float = 1.5e-4  # per 256 clips: lr = base_lr * global_batch / 256
    weight_decay: float = 0.05  # not on 1-D parameters and biases
    betas: tuple = (0.9, 0.95)
    epochs: float = 100.0
    warmup_epochs: float = 10.0
    max_steps: Optional[int] = None  # overrides epochs when set
    epoch_clips: Optional[int] = None  # crops per epoch; default: one per file
    # objective (pretrain/objectives.py)
    masking: str = "unstructured"  # key of MASKINGS
    mask_ratio: float = 0.5
    objective: str = "mse_all"  # key of OBJECTIVES: MSE over all patches (official) or "mse_masked"
    # runtime
    precision: str = "fp16"  # fp16 | bf16 | fp32; autocast on CUDA only (CPU runs fp32)
    num_workers: int = 4
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 200
    plot_every: int = 1000

    def __post_init__(self):
        self.betas = tuple(self.betas)
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose from {sorted(PRESETS)}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {sorted(OBJECTIVES)}, got {self.objective!r}")
        if self.masking not in MASKINGS:
            raise ValueError(f"masking must be one of {sorted(MASKINGS)}, got {self.masking!r}")
        if self.precision not in ("fp16", "bf16", "fp32"):
            raise ValueError(f"precision must be fp16, bf16 or fp32, got {self.precision!r}")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")

    def encoder_config(self) -> EncoderConfig:
        """The preset's EncoderConfig with `encoder_overrides` applied."""
        over = dict(self.encoder_overrides)
        base = PRESETS[self.preset]
        options = {**base.block_options, **over.pop("block_options", {})}
        try:
            return dataclasses.replace(base, block_options=options, **over)
        except TypeError as e:
            raise ValueError(f"encoder_overrides: {e}") from None

    @property
    def frontend(self) -> FrontendConfig:
        """The features this preset's family is trained on."""
        return family_of_preset(self.preset).frontend

    @property
    def lr(self) -> float:
        return self.scaled_lr(self.base_lr, self.global_batch)

    @staticmethod
    def scaled_lr(base_lr: float, global_batch: int) -> float:
        """The linear scaling rule of the recipe: base_lr per 256 clips."""
        return base_lr * global_batch / 256

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d


def load_config(path=None, overrides=()) -> TrainConfig:
    """YAML file (optional) + `key=value` overrides (values parsed as YAML)."""
    values = {}
    if path:
        with open(path) as f:
            values = yaml.safe_load(f) or {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not key=value")
        values[key.strip()] = yaml.safe_load(raw)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; known: {sorted(known)}")
    return TrainConfig(**values)
