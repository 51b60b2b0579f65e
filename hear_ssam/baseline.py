"""The log-mel baseline: the floor every leaderboard row is read against.

    model = hear_ssam.load_model("logmel")
    python -m hear_ssam init logmel logmel.safetensors     # the same, as a (weightless) file
    python -m heareval.embeddings.runner hear_ssam --model logmel.safetensors --tasks-dir tasks/

(heareval's --model must name an existing file, hence the file form: a safetensors file with
no tensors whose config says family "baseline" and which frontend to use.)

The idea of HEAR 2021's naive baseline, on our own frontend: no learned weights at all.
- timestamp embeddings: the frontend's standardised log-mel frames (SSAM's 80-bin log-mel,
  10 ms hop), averaged over each 40 ms step, so the frames sit on exactly the grid of the
  encoders' frames (centres 15 + 40 i ms, the same trimming rule): [n, frames, 80];
- scene embedding: the mean and the standard deviation over the clip's log-mel frames,
  concatenated: [n, 160].

Same HEAR attributes and input checks as a `HearSSAM`; nothing to train, nothing to load.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn as nn

from .frontend import FrontendConfig, build_frontend
from .runtime import MAX_HOP_MS, centred_frame_count, centred_timestamps

BASELINES = ("logmel",)  # names load_model() resolves to a baseline instead of a file


class LogMelBaseline(nn.Module):
    """Log-mel frames on the encoders' 40 ms grid; mean + std of the frames as the scene."""

    def __init__(self, frontend: FrontendConfig | None = None, frames_per_output: int = 4):
        super().__init__()
        cfg = frontend or FrontendConfig()
        self.frontend = build_frontend(cfg)
        self.frames_per_output = int(frames_per_output)  # 4 x 10 ms: the encoders' patch step
        self.frame_hop_ms = cfg.frame_ms * self.frames_per_output
        if self.frame_hop_ms > MAX_HOP_MS:
            raise ValueError(f"a {self.frame_hop_ms:g} ms hop is above HEAR's {MAX_HOP_MS:g} ms")
        self.frame_offset_ms = self.frontend.first_frame_centre_ms + cfg.frame_ms * (self.frames_per_output - 1) / 2
        self.sample_rate = int(cfg.sample_rate)
        self.timestamp_embedding_size = int(cfg.n_mels)
        self.scene_embedding_size = int(2 * cfg.n_mels)
        self.config = {"family": "baseline", "preset": "logmel", "frontend": cfg.to_dict(),
                       "provenance": {"weights": "none: log-mel features (HEAR naive-baseline idea)"}}
        # No parameters: this buffer tells which device the model was moved to.
        self.register_buffer("_device_marker", torch.zeros(0), persistent=False)

    @property
    def device(self) -> torch.device:
        return self._device_marker.device

    def n_frames(self, n_samples: int) -> int:
        return centred_frame_count(n_samples, self.sample_rate, self.frontend.n_frames(n_samples),
                                   self.frames_per_output, self.frame_offset_ms, self.frame_hop_ms)

    def frame_embeddings(self, audio: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """[n, samples] -> (frames [n, n_frames, F], centred timestamps [n, n_frames] in ms)."""
        n, n_samples = audio.shape
        spec = self.frontend(audio)[:, 0]  # [n, T, F]
        k, T = self.frames_per_output, spec.shape[1]
        # Average each group of k feature frames; the last, partial group over its real frames.
        padded = nn.functional.pad(spec, (0, 0, 0, (-T) % k))
        counts = nn.functional.pad(torch.ones(T, device=spec.device), (0, (-T) % k)).view(-1, k).sum(1)
        frames = padded.view(n, -1, k, spec.shape[2]).sum(2) / counts[None, :, None]
        n_keep = self.n_frames(n_samples)
        stamps = centred_timestamps(n_keep, self.frame_offset_ms, self.frame_hop_ms,
                                    1000.0 * n_samples / self.sample_rate)
        stamps = stamps.to(torch.float32).to(audio.device).expand(n, -1).contiguous()
        return frames[:, :n_keep].contiguous(), stamps

    def scene_embeddings(self, audio: torch.Tensor) -> torch.Tensor:
        """[n, samples] -> [n, 2F]: mean and standard deviation of the log-mel frames."""
        spec = self.frontend(audio)[:, 0]
        return torch.cat([spec.mean(dim=1), spec.std(dim=1, unbiased=False)], dim=1)
