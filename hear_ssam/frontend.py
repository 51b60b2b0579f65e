"""Frontends: audio [B, samples] -> features [B, 1, T, F], described by a `FrontendConfig`.

The config is the contract between pretraining, checkpoints and the HEAR runtime: a
checkpoint stores it, the loader reads it back, and both the runtime and the pretraining
crops build their features from it (so a model is always fed what it was trained on).

    cfg = FrontendConfig()                 # SSAM's 80-bin log-mel, per-clip standardised
    frontend = build_frontend(cfg)
    feats = frontend(audio_16k)            # [B, 1, T, 80], T = samples // 160 + 1

`FRONTENDS` maps a config's `kind` to its module; a new frontend (SSAMBA's Kaldi fbank)
is one class plus one entry.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn as nn
import torchaudio

SAMPLE_RATE = 16000
FLOAT32_EPS = float(torch.finfo(torch.float32).eps)  # 1.1920929e-07, the recipe's log offset


NORMALIZATIONS = ("per_clip",)


def standardise(x: torch.Tensor, dims=(-2, -1), eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / (std + eps) over `dims` (unbiased std, as the recipe's torch.std)."""
    return (x - x.mean(dim=dims, keepdim=True)) / (x.std(dim=dims, keepdim=True) + eps)


def to_mono_16k(audio, rate: int) -> torch.Tensor:
    """[frames, channels] (numpy or torch) or [frames] at `rate` -> float32 mono [samples] at 16 kHz."""
    x = torch.from_numpy(np.ascontiguousarray(audio)) if isinstance(audio, np.ndarray) else audio
    x = x.float()
    if x.ndim == 2:
        x = x.mean(dim=1)
    return torchaudio.functional.resample(x, rate, SAMPLE_RATE) if rate != SAMPLE_RATE else x


class LogMelFrontend(nn.Module):
    """SSAM's frontend: torchaudio mel power spectrum, log, per-clip standardisation.

    [B, samples] float32 at 16 kHz -> [B, 1, T, n_mels], T = samples // hop + 1. Each clip is
    standardised over all of its bins (no dataset statistics), so a clip's features do not
    depend on its batch-mates.
    """

    def __init__(self, cfg: FrontendConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or FrontendConfig()
        self.melspec = torchaudio.transforms.MelSpectrogram(
            sample_rate=cfg.sample_rate, n_fft=cfg.n_fft, win_length=cfg.win_length,
            hop_length=cfg.hop_length, f_min=cfg.f_min, f_max=cfg.f_max, n_mels=cfg.n_mels, power=2.0)

    @property
    def min_samples(self) -> int:
        """Reflect padding of the centred STFT needs more than n_fft // 2 samples."""
        return self.cfg.n_fft // 2 + 1

    def features(self, audio: torch.Tensor) -> torch.Tensor:
        """Un-normalised log-mel, [B, T, n_mels] (what a pretraining cache stores)."""
        return torch.log(self.melspec(audio) + self.cfg.log_offset).transpose(1, 2)

    def normalise(self, features: torch.Tensor) -> torch.Tensor:
        """[B, T, F] features of whole clips or crops -> standardised [B, 1, T, F]."""
        return standardise(features).unsqueeze(1)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.normalise(self.features(audio))


FRONTENDS = {"logmel": LogMelFrontend}


@dataclasses.dataclass(frozen=True)
class FrontendConfig:
    """What turns 16 kHz audio into a model's input features (SSAM's defaults)."""
    kind: str = "logmel"  # key of FRONTENDS
    sample_rate: int = SAMPLE_RATE
    n_fft: int = 400  # 25 ms window
    win_length: int = 400
    hop_length: int = 160  # 10 ms: one feature frame
    f_min: float = 50.0
    f_max: float = 8000.0
    n_mels: int = 80
    log_offset: float = FLOAT32_EPS  # log(mel + log_offset)
    normalization: str = "per_clip"  # standardise each clip (or crop) over all its bins

    def __post_init__(self):
        if self.kind not in FRONTENDS:
            raise ValueError(f"frontend kind must be one of {sorted(FRONTENDS)}, got {self.kind!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"frontend normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")

    @property
    def frame_ms(self) -> float:
        """Hop between feature frames in milliseconds (10 ms)."""
        return 1000.0 * self.hop_length / self.sample_rate

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FrontendConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown frontend config keys {unknown}")
        return cls(**d)



def build_frontend(cfg: FrontendConfig) -> nn.Module:
    return FRONTENDS[cfg.kind](cfg)
