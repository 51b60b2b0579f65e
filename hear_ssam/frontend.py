"""Log-mel frontend of the SSAM recipe: torchaudio mel power spectrum, log, per-clip norm."""
from __future__ import annotations

import torch
import torch.nn as nn
import torchaudio

SAMPLE_RATE = 16000
HOP_LENGTH = 160  # 10 ms
LOG_EPS = torch.finfo(torch.float32).eps


class LogMelFrontend(nn.Module):
    """[B, samples] float32 at 16 kHz -> [B, 1, T, 80], T = samples // 160 + 1.

    Each clip is standardised over all of its bins (no dataset statistics), so a clip's
    features do not depend on its batch-mates.
    """

    def __init__(self, n_mels: int = 80, n_fft: int = 400, f_min: float = 50.0, f_max: float = 8000.0):
        super().__init__()
        self.n_fft = n_fft
        self.melspec = torchaudio.transforms.MelSpectrogram(
            sample_rate=SAMPLE_RATE, n_fft=n_fft, win_length=n_fft, hop_length=HOP_LENGTH,
            f_min=f_min, f_max=f_max, n_mels=n_mels, power=2.0)

    @property
    def min_samples(self) -> int:
        """Reflect padding of the centred STFT needs more than n_fft // 2 samples."""
        return self.n_fft // 2 + 1

    def log_mel(self, audio: torch.Tensor) -> torch.Tensor:
        """Un-normalised log-mel, [B, T, n_mels]."""
        return torch.log(self.melspec(audio) + LOG_EPS).transpose(1, 2)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        x = self.log_mel(audio)
        mean = x.mean(dim=(1, 2), keepdim=True)
        std = x.std(dim=(1, 2), keepdim=True)
        return ((x - mean) / (std + 1e-8)).unsqueeze(1)
