"""Pretraining configuration: one dataclass, loaded from YAML, overridable from the CLI."""
from __future__ import annotations

import dataclasses
from typing import Optional

import yaml

from hear_ssam.encoder import EncoderConfig, PretrainingOptions
from hear_ssam.frontend import FrontendConfig
from hear_ssam.presets import PRESETS, family_of_preset

from .data import SHORT_FILES
from .objectives import MASKINGS, objective_error, objective_metrics


@dataclasses.dataclass
class TrainConfig:
    preset: str = "ssam-tiny"  # hear_ssam.PRESETS key
    # EncoderConfig or PretrainingOptions fields to replace (e.g. a tiny test model {embed_dim: 32,
    # depth: 2}, SSAST's {mask_token_position: true}); "block_options" merges into the preset's
    encoder_overrides: dict = dataclasses.field(default_factory=dict)
    # optimisation (SSAM paper / SSAST recipe)
    global_batch: int = 1024  # clips per optimiser step, over all processes
    micro_batch: int = 256  # clips per process per forward; accumulation makes up the rest
    base_lr: float = 1.5e-4  # per 256 clips: lr = base_lr * global_batch / 256
    weight_decay: float = 0.05  # not on 1-D parameters and biases
    betas: tuple = (0.9, 0.95)
    epochs: float = 100.0
    warmup_epochs: float = 10.0
    warmup_steps: Optional[int] = None  # absolute warm-up steps (SSAMBA: 1000); overrides warmup_epochs
    max_steps: Optional[int] = None  # overrides epochs when set
    epoch_clips: Optional[int] = None  # crops per epoch; default: one per file
    # None: every file is drawn equally often. A number: a file is drawn with a chance
    # proportional to min(its length, this many seconds) (pretrain.data.EpochSampler)
    length_weight_cap_s: Optional[float] = None
    # how a file shorter than a crop fills it: "tile" its frames, or "pad" after them with
    # padding frames (SSAST / SSAMBA's loaders; pretrain.data.CropDataset)
    short_files: str = "tile"
    # lr after the linear warm-up: "cosine" = half-cosine to 0 at the last step (SSAM / AxLSTM);
    # "plateau" = the peak, halved (plateau_factor) when the mean of plateau_metric over the last
    # plateau_every steps has not improved for more than plateau_patience checks (torch's
    # ReduceLROnPlateau, threshold 1e-4 relative; SSAST / SSAMBA)
    schedule: str = "cosine"
    plateau_every: int = 4000  # steps per check (SSAST / SSAMBA's epoch_iter)
    plateau_patience: int = 2  # SSAMBA's lr_patience
    plateau_factor: float = 0.5
    # training metric the plateau watches: "loss" (lower is better), or "accuracy" (the masked
    # patch classification accuracy of a joint objective, higher is better: the quantity SSAST /
    # SSAMBA's scheduler watches, there on a validation set)
    plateau_metric: str = "loss"
    # objective (pretrain/objectives.py)
    masking: str = "unstructured"  # key of MASKINGS ("cluster": SSAST's)
    mask_ratio: float = 0.5  # N - int(N * (1 - mask_ratio)) patches masked (SSAMBA: 300/512 = 0.5859375)
    objective: str = "mse_all"  # key of OBJECTIVES: MSE over all patches (official), "mse_masked", "ssast_joint"
    # a second stage: the weights the run starts from, a plugin checkpoint (.safetensors, e.g. an
    # earlier run's export) of the same encoder and frontend; the optimiser, schedule, data order
    # and masks start afresh (set another seed to draw new crops). Recorded in the provenance.
    init_from: Optional[str] = None
    # runtime
    precision: str = "fp16"  # fp16 | bf16 | fp32: autocast; on a CPU only bf16 (fp16 runs fp32 there)
    num_workers: int = 4
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 200
    plot_every: int = 1000

    def __post_init__(self):
        self.betas = tuple(self.betas)
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose from {sorted(PRESETS)}")
        if objective_error(self.objective):
            raise ValueError(objective_error(self.objective))
        if self.masking not in MASKINGS:
            raise ValueError(f"masking must be one of {sorted(MASKINGS)}, got {self.masking!r}")
        if self.precision not in ("fp16", "bf16", "fp32"):
            raise ValueError(f"precision must be fp16, bf16 or fp32, got {self.precision!r}")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if self.schedule not in ("cosine", "plateau"):
            raise ValueError(f"schedule must be 'cosine' or 'plateau', got {self.schedule!r}")
        if self.short_files not in SHORT_FILES:
            raise ValueError(f"short_files must be {' or '.join(map(repr, SHORT_FILES))}, got {self.short_files!r}")
        if self.length_weight_cap_s is not None and self.length_weight_cap_s <= 0:
            raise ValueError(f"length_weight_cap_s must be > 0 seconds (or null), got {self.length_weight_cap_s}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.plateau_every < 1 or self.plateau_patience < 0 or not 0.0 < self.plateau_factor < 1.0:
            raise ValueError(f"plateau needs plateau_every >= 1, plateau_patience >= 0 and plateau_factor "
                             f"in (0, 1), got {self.plateau_every}, {self.plateau_patience}, {self.plateau_factor}")
        if self.plateau_metric not in ("loss", "accuracy"):
            raise ValueError(f"plateau_metric must be 'loss' or 'accuracy', got {self.plateau_metric!r}")
        if self.plateau_metric == "accuracy" and "acc" not in objective_metrics(self.objective):
            raise ValueError(f"plateau_metric 'accuracy' needs an objective that reports one (ssast_joint), "
                             f"not {self.objective!r}")

    def encoder_config(self) -> EncoderConfig:
        """The preset's EncoderConfig with the architecture's `encoder_overrides` applied."""
        over = self._overrides(EncoderConfig)
        base = PRESETS[self.preset]
        options = {**base.block_options, **over.pop("block_options", {})}
        try:
            return dataclasses.replace(base, block_options=options, **over)
        except TypeError as e:
            raise ValueError(f"encoder_overrides: {e}") from None

    def pretraining_options(self) -> PretrainingOptions:
        """The preset's family's PretrainingOptions with the options' `encoder_overrides` applied."""
        try:
            return dataclasses.replace(family_of_preset(self.preset).pretraining_options(),
                                       **self._overrides(PretrainingOptions))
        except TypeError as e:
            raise ValueError(f"encoder_overrides: {e}") from None

    def _overrides(self, config_cls) -> dict:
        """The keys of `encoder_overrides` that are fields of `config_cls` (one of the two the
        overrides are routed to); a key of neither is refused by name."""
        if not isinstance(self.encoder_overrides, dict):
            raise ValueError(f"encoder_overrides must be a mapping of field: value, e.g. {{depth: 2}}, "
                             f"got {self.encoder_overrides!r}")
        fields = {cls: [f.name for f in dataclasses.fields(cls)] for cls in (EncoderConfig, PretrainingOptions)}
        unknown = sorted(k for k in self.encoder_overrides if not any(k in names for names in fields.values()))
        if unknown:
            raise ValueError(f"encoder_overrides: unknown keys {unknown}; EncoderConfig fields: "
                             f"{fields[EncoderConfig]}, PretrainingOptions fields: {fields[PretrainingOptions]}")
        return {k: v for k, v in self.encoder_overrides.items() if k in fields[config_cls]}

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
