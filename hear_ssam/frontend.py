"""Frontends: audio [B, samples] -> features [B, 1, T, F], described by a `FrontendConfig`.

The config is the contract between pretraining, checkpoints and the HEAR runtime: a
checkpoint stores it, the loader reads it back, and both the runtime and the pretraining
crops build their features from it (so a model is always fed what it was trained on).

    cfg = FrontendConfig()                 # SSAM's 80-bin log-mel, per-clip standardised
    frontend = build_frontend(cfg)
    feats = frontend(audio_16k)            # [B, 1, T, 80], T = samples // 160 + 1

    build_frontend(SSAMBA_FBANK)(audio_16k)  # [B, 1, T, 128], T = 1 + (samples - 400) // 160

`FRONTENDS` maps a config's `kind` to its module: "logmel" (SSAM, AxLSTM) and
"kaldi_fbank" (SSAST / SSAMBA's Kaldi-compatible fbank).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn as nn
import torchaudio

SAMPLE_RATE = 16000
FLOAT32_EPS = float(torch.finfo(torch.float32).eps)  # 1.1920929e-07, the recipe's log offset


# "per_clip": each clip (or crop) standardised over all its bins (SSAM);
# "dataset": (x - norm_mean) / (2 * norm_std) with training-set statistics, the AST / SSAST /
# SSAMBA convention (their dataloader's `(fbank - mean) / (std * 2)`).
NORMALIZATIONS = ("per_clip", "dataset")
# FrontendConfig fields added after its first format: to_dict leaves them out while unset.
_LATER_FIELDS = ("norm_mean", "norm_std")


def standardise(x: torch.Tensor, dims=(-2, -1), eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / (std + eps) over `dims` (unbiased std, as the recipe's torch.std)."""
    return (x - x.mean(dim=dims, keepdim=True)) / (x.std(dim=dims, keepdim=True) + eps)


def normalise_features(features: torch.Tensor, cfg: FrontendConfig) -> torch.Tensor:
    """[B, T, F] un-normalised features -> [B, 1, T, F], by `cfg.normalization`."""
    if cfg.normalization == "dataset":
        x = (features - cfg.norm_mean) / (2 * cfg.norm_std)
    else:
        x = standardise(features)
    return x.unsqueeze(1)


def pad_value(cfg: FrontendConfig) -> float:
    """The normalised value of padding frames. Per-clip: 0 (the official SSAM runtime pads the
    normalised clip with zeros); dataset statistics: zero features normalised (as the SSAST /
    SSAMBA dataloaders pad the fbank with zeros before normalising)."""
    return (0.0 - cfg.norm_mean) / (2 * cfg.norm_std) if cfg.normalization == "dataset" else 0.0


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

    def n_frames(self, n_samples: int) -> int:
        """Feature frames of a clip: the STFT is centred, so frame k is centred at sample k * hop."""
        return n_samples // self.cfg.hop_length + 1

    first_frame_centre_ms = 0.0

    def features(self, audio: torch.Tensor) -> torch.Tensor:
        """Un-normalised log-mel, [B, T, n_mels] (what a pretraining cache stores)."""
        return torch.log(self.melspec(audio) + self.cfg.log_offset).transpose(1, 2)

    def normalise(self, features: torch.Tensor) -> torch.Tensor:
        """[B, T, F] features of whole clips or crops -> normalised [B, 1, T, F]."""
        return normalise_features(features, self.cfg)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.normalise(self.features(audio))


class KaldiFbankFrontend(nn.Module):
    """SSAST / SSAMBA's frontend: `torchaudio.compliance.kaldi.fbank` of each clip, mean removed.

    Per clip: `fbank(wave - wave.mean(), htk_compat=True, sample_frequency=sample_rate,
    use_energy=False, window_type='hanning', num_mel_bins=n_mels, dither=0.0,
    frame_length=1000 * win_length / sample_rate, frame_shift=1000 * hop_length / sample_rate,
    low_freq=f_min, high_freq=f_max)`, every other argument Kaldi's default (pre-emphasis 0.97,
    per-frame DC removal, FFT of the window rounded up to a power of two, log(max(mel, eps))).
    No centre padding ("snip edges"): T = 1 + (samples - win_length) // hop_length.
    """

    def __init__(self, cfg: FrontendConfig):
        super().__init__()
        self.cfg = cfg
        self.fbank_kwargs = dict(
            htk_compat=True, sample_frequency=float(cfg.sample_rate), use_energy=False,
            window_type="hanning", num_mel_bins=cfg.n_mels, dither=0.0,
            frame_length=1000.0 * cfg.win_length / cfg.sample_rate,
            frame_shift=1000.0 * cfg.hop_length / cfg.sample_rate,
            low_freq=float(cfg.f_min), high_freq=float(cfg.f_max))

    @property
    def min_samples(self) -> int:
        """One whole window (fewer samples give no frame at all)."""
        return self.cfg.win_length

    def n_frames(self, n_samples: int) -> int:
        """Feature frames of a clip ("snip edges": only whole windows)."""
        return 1 + (n_samples - self.cfg.win_length) // self.cfg.hop_length

    @property
    def first_frame_centre_ms(self) -> float:
        """Frame k covers samples [k * hop, k * hop + win): its centre is half a window in."""
        return 500.0 * self.cfg.win_length / self.cfg.sample_rate

    def features(self, audio: torch.Tensor) -> torch.Tensor:
        """Un-normalised log-mel fbank, [B, T, n_mels]. Kaldi's fbank takes one waveform at a
        time, so the batch is a loop; each clip's mean is removed over its own samples."""
        if audio.shape[-1] < self.min_samples:
            raise ValueError(f"kaldi fbank needs at least {self.min_samples} samples, got {audio.shape[-1]}")
        return torch.stack([
            torchaudio.compliance.kaldi.fbank((wave - wave.mean()).unsqueeze(0), **self.fbank_kwargs)
            for wave in audio])

    def normalise(self, features: torch.Tensor) -> torch.Tensor:
        """[B, T, F] features of whole clips or crops -> normalised [B, 1, T, F]."""
        return normalise_features(features, self.cfg)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.normalise(self.features(audio))


FRONTENDS = {"logmel": LogMelFrontend, "kaldi_fbank": KaldiFbankFrontend}


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
    log_offset: float = FLOAT32_EPS  # log(mel + log_offset); kaldi_fbank: its fixed floor, log(max(mel, eps))
    normalization: str = "per_clip"  # key of NORMALIZATIONS
    # Added with "kaldi_fbank" (written by to_dict only when set, so older configs read back equal):
    norm_mean: float | None = None  # normalization "dataset": the training set's feature mean
    norm_std: float | None = None  # ... and its std (the features are divided by 2 * norm_std)

    def __post_init__(self):
        if self.kind not in FRONTENDS:
            raise ValueError(f"frontend kind must be one of {sorted(FRONTENDS)}, got {self.kind!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"frontend normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")
        if self.normalization == "dataset":
            if self.norm_mean is None or self.norm_std is None or not self.norm_std > 0:
                raise ValueError("frontend normalization 'dataset' needs norm_mean and a positive norm_std, "
                                 f"got norm_mean={self.norm_mean}, norm_std={self.norm_std}")
        elif self.norm_mean is not None or self.norm_std is not None:
            raise ValueError(f"norm_mean / norm_std are the statistics of normalization 'dataset'; "
                             f"normalization {self.normalization!r} takes none")
        if self.kind == "kaldi_fbank":
            self._check_kaldi()

    def _check_kaldi(self):
        """Kaldi's fbank is parameterised in milliseconds, pads its FFT to a power of two and
        floors the mel energies at float32 eps: refuse configs that would not be what runs."""
        for name in ("win_length", "hop_length"):
            n = getattr(self, name)
            ms = 1000.0 * n / self.sample_rate
            if int(self.sample_rate * ms * 0.001) != n:  # kaldi's own conversion back to samples
                raise ValueError(f"kaldi_fbank: {name}={n} samples does not survive Kaldi's conversion "
                                 f"to milliseconds and back at {self.sample_rate} Hz")
        fft = 1 << (self.win_length - 1).bit_length()
        if self.n_fft != fft:
            raise ValueError(f"kaldi_fbank: n_fft must be the window rounded up to a power of two "
                             f"({fft} for win_length={self.win_length}), got {self.n_fft}")
        if self.log_offset != FLOAT32_EPS:
            raise ValueError(f"kaldi_fbank: the log floor is Kaldi's fixed float32 eps ({FLOAT32_EPS}), "
                             f"got log_offset={self.log_offset}")
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise ValueError(f"kaldi_fbank: need 0 <= f_min < f_max <= {self.sample_rate / 2:g} Hz, "
                             f"got f_min={self.f_min}, f_max={self.f_max}")

    @property
    def frame_ms(self) -> float:
        """Hop between feature frames in milliseconds (10 ms)."""
        return 1000.0 * self.hop_length / self.sample_rate

    def to_dict(self) -> dict:
        """The fields; those added after the first format are left out while unset, so the
        dict of every earlier config (checkpoints, feature-cache keys) is unchanged."""
        d = dataclasses.asdict(self)
        for name in _LATER_FIELDS:
            if d[name] is None:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FrontendConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown frontend config keys {unknown}")
        return cls(**d)


# SSAMBA's (and SSAST's) pretraining features: 128-bin Kaldi fbank, 25 ms Hann ("hanning")
# window, 10 ms shift, 20 Hz .. Nyquist (Kaldi's low_freq default, high_freq 0 = Nyquist),
# normalised with the AudioSet + LibriSpeech statistics of their pretraining scripts.
SSAMBA_FBANK = FrontendConfig(kind="kaldi_fbank", n_fft=512, win_length=400, hop_length=160,
                              f_min=20.0, f_max=8000.0, n_mels=128, normalization="dataset",
                              norm_mean=-4.2677393, norm_std=4.5689974)


def build_frontend(cfg: FrontendConfig) -> nn.Module:
    return FRONTENDS[cfg.kind](cfg)
