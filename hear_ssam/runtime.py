"""HEAR runtime: whole clips -> windows (2 s by default) -> encoder -> 40 ms frames / clip embeddings.

A clip is normalised as a whole, cut into independent windows of the encoder's crop
(padded at the end with the frontend's padding value) and encoded `chunk_batch_size` windows
at a time. One output frame per patch time step (the frequency patches concatenated); a
step longer than 50 ms (SSAMBA's 16-frame patches: 160 ms) is repeated onto a regular grid of
at most 50 ms, as HEAR asks. Timestamps are the centres of the feature frames each output
frame covers, and only frames centred inside the clip are returned.

Scene embedding ("scene pooling"): "frames" = mean of the clip's frames (SSAM, AxLSTM);
"tokens" = mean of its non-CLS tokens (SSAMBA's `ft_avgtok`), D values.

Token orders
- "time-major" (default): output frame t concatenates the 5 frequency patches of time step t.
- "official": the released code's reshape `'b (f t) d -> b t (f d)'`, which treats the
  time-major tokens as frequency-major, so "frame" i mixes tokens 0.4 s apart; its padding
  (a full extra chunk when T is a multiple of 200) and trim are reproduced as well.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn as nn

from .encoder import SpectrogramEncoder
from .frontend import FrontendConfig, build_frontend, pad_value

TOKEN_ORDERS = ("time-major", "official")
PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}  # autocast dtype of the encoder
SCENE_POOLINGS = ("frames", "tokens")
MAX_HOP_MS = 50.0  # HEAR's recommended maximum timestamp hop


class HearSSAM(nn.Module):
    """What `load_model` returns: frontend + encoder + the HEAR attributes (plain ints)."""

    def __init__(self, encoder: SpectrogramEncoder, token_order: str = "time-major",
                 chunk_batch_size: int = 16, config: dict | None = None,
                 frontend: FrontendConfig | None = None, scene_pooling: str = "frames",
                 precision: str = "fp32"):
        """`frontend`: the features the encoder was trained on (default: the config's, else SSAM's)."""
        super().__init__()
        if token_order not in TOKEN_ORDERS:
            raise ValueError(f"token_order must be one of {TOKEN_ORDERS}, got {token_order!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        if scene_pooling not in SCENE_POOLINGS:
            raise ValueError(f"scene_pooling must be one of {SCENE_POOLINGS}, got {scene_pooling!r}")
        if token_order == "official" and encoder.cfg.patch_order != "time-major":
            raise ValueError("token_order='official' reproduces the released SSAM/AxLSTM runtime's reshape "
                             "of time-major tokens; this model's tokens are frequency-major")
        self.config = dict(config or {})
        if frontend is None:
            frontend = FrontendConfig.from_dict(self.config["frontend"]) if "frontend" in self.config \
                else FrontendConfig(n_mels=encoder.cfg.n_mels)
        if frontend.n_mels != encoder.cfg.n_mels:
            raise ValueError(f"frontend gives {frontend.n_mels} bins, the encoder expects {encoder.cfg.n_mels}")
        self.config.update(frontend=frontend.to_dict(), token_order=token_order,  # what actually runs
                           window_seconds=encoder.cfg.crop_frames * frontend.frame_ms / 1000,
                           scene_pooling=scene_pooling, precision=precision)
        self.frontend = build_frontend(frontend)
        self.pad_value = pad_value(frontend)
        self.encoder = encoder
        self.token_order = token_order
        self.scene_pooling = scene_pooling
        # The official runtime embeds under fp16 autocast on GPU; the frontend stays fp32.
        self.precision = precision
        self.chunk_batch_size = int(chunk_batch_size)  # windows per encoder call
        self.sample_rate = int(frontend.sample_rate)
        cfg = encoder.cfg
        self.timestamp_embedding_size = int(cfg.frame_embedding_size)
        self.scene_embedding_size = int(cfg.frame_embedding_size if scene_pooling == "frames" else cfg.embed_dim)
        # Output frames per patch time step, so that the hop is at most 50 ms (1 for 4-frame patches).
        step_ms = frontend.frame_ms * cfg.patch_time
        self.frame_repeat = math.ceil(step_ms / MAX_HOP_MS - 1e-9)
        if cfg.patch_time % self.frame_repeat:
            raise ValueError(f"patches of {cfg.patch_time} frames cannot be split into {self.frame_repeat} "
                             "equal output frames")
        self.frames_per_output = cfg.patch_time // self.frame_repeat  # feature frames per output frame
        self.frame_hop_ms = step_ms / self.frame_repeat  # 40 ms
        # Output frame i covers feature frames [i * k, i * k + k) (k = frames_per_output):
        # for SSAM's centred STFT, frames 4i..4i+3, centred at (4i + 1.5) * 10 ms.
        self.frame_offset_ms = self.frontend.first_frame_centre_ms + frontend.frame_ms * (self.frames_per_output - 1) / 2

    @property
    def device(self) -> torch.device:
        return self.encoder.cls_token.device

    def chunk_frames(self, spec: torch.Tensor, pad: int) -> torch.Tensor:
        """[n, 1, T, F] -> [n * C, 1, crop, F]: zero-pad `pad` frames, split into windows.

        Chunks are encoded independently (no state is carried across them), as in the paper.
        """
        crop = self.encoder.cfg.crop_frames
        spec = nn.functional.pad(spec, (0, 0, 0, pad), value=self.pad_value)
        n, _, Tp, F = spec.shape
        return spec.view(n, 1, Tp // crop, crop, F).transpose(1, 2).reshape(-1, 1, crop, F)

    def tokens_to_frames(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, N, D] encoded patches -> [B, n_t, n_f * D] frames (one per time step)."""
        B, N, D = tokens.shape
        if self.token_order == "official":  # the released '(f t)' reshape of time-major tokens
            n_f = self.encoder.cfg.grid[1]
            return tokens.view(B, n_f, N // n_f, D).transpose(1, 2).reshape(B, N // n_f, n_f * D)
        grid = self.encoder.tokens_to_grid(tokens)
        return grid.reshape(B, grid.shape[1], -1)

    def encode(self, chunks: torch.Tensor) -> torch.Tensor:
        """Frames [B, n_t, n_f * D] of chunks [B, 1, frames, F], `chunk_batch_size` at a time."""
        dtype = PRECISIONS[self.precision]
        with torch.autocast(chunks.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = [self.tokens_to_frames(self.encoder(chunks[i:i + self.chunk_batch_size])).float()
                   for i in range(0, chunks.shape[0], self.chunk_batch_size)]
        return torch.cat(out)

    def clip_frames(self, spec: torch.Tensor) -> torch.Tensor:
        """[n, 1, T, F] normalised log-mels -> [n, n_out, n_f * D] frames before trimming."""
        n, crop, pt = spec.shape[0], self.encoder.cfg.crop_frames, self.encoder.cfg.patch_time
        T = spec.shape[2]
        if self.token_order == "official":  # always pads, a whole extra chunk if T % crop == 0
            return self.encode(self.chunk_frames(spec, crop - T % crop)).reshape(n, -1, self.timestamp_embedding_size)
        if not self.encoder.is_causal:
            return self.encode(self.chunk_frames(spec, (-T) % crop)).reshape(n, -1, self.timestamp_embedding_size)
        # Causal encoder: the last chunk's padding cannot change its real tokens, so encode
        # that chunk cut to its real frames (rounded up to whole patches).
        n_full = (T - 1) // crop
        parts = []
        if n_full:
            full = self.chunk_frames(spec[:, :, :n_full * crop], 0)
            parts.append(self.encode(full).reshape(n, -1, self.timestamp_embedding_size))
        tail = spec[:, :, n_full * crop:]
        tail = nn.functional.pad(tail, (0, 0, 0, (-tail.shape[2]) % pt), value=self.pad_value)
        parts.append(self.encode(tail))
        return torch.cat(parts, dim=1)

    def frame_embeddings(self, audio: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """[n, samples] -> (frames [n, n_frames, D_t], centred timestamps [n, n_frames] in ms)."""
        n, n_samples = audio.shape
        spec = self.frontend(audio)
        frames = self.clip_frames(spec)
        duration_ms = 1000.0 * n_samples / self.sample_rate
        if self.token_order == "official":
            crop, n_t = self.encoder.cfg.crop_frames, self.encoder.cfg.grid[0]
            pad = crop - spec.shape[2] % crop
            n_keep = frames.shape[1] - int(n_t * pad / crop)
            stamps = (torch.arange(n_keep, dtype=torch.float64) + 0.5) * (duration_ms / n_keep)
        else:
            if self.frame_repeat > 1:  # one time step -> frame_repeat frames on the regular grid
                frames = frames.repeat_interleave(self.frame_repeat, dim=1)
            n_keep = self.n_frames(n_samples)
            stamps = centred_timestamps(n_keep, self.frame_offset_ms, self.frame_hop_ms, duration_ms)
        frames = frames[:, :n_keep]
        stamps = stamps.to(torch.float32).to(audio.device).expand(n, -1).contiguous()
        return frames, stamps

    def scene_embeddings(self, audio: torch.Tensor) -> torch.Tensor:
        """[n, samples] -> [n, scene_embedding_size], by `scene_pooling`."""
        frames, _ = self.frame_embeddings(audio)
        if self.scene_pooling == "tokens":  # every non-CLS token of the clip, frequency patches too
            return frames.reshape(frames.shape[0], -1, self.encoder.cfg.embed_dim).mean(dim=1)
        return frames.mean(dim=1)

    def n_frames(self, n_samples: int) -> int:
        """Frames whose centre lies inside the clip (so the last is within one hop of the end)."""
        return centred_frame_count(n_samples, self.sample_rate, self.frontend.n_frames(n_samples),
                                   self.frames_per_output, self.frame_offset_ms, self.frame_hop_ms)


def centred_timestamps(n_frames: int, offset_ms: float, hop_ms: float, duration_ms: float) -> torch.Tensor:
    """float64 [n_frames] centres offset_ms + i * hop_ms; a clip shorter than one frame gets
    its single frame at the clip's middle (never past its end)."""
    stamps = offset_ms + hop_ms * torch.arange(n_frames, dtype=torch.float64)
    return stamps.clamp(max=duration_ms / 2) if n_frames == 1 else stamps


def centred_frame_count(n_samples: int, sample_rate: int, n_feature_frames: int, frames_per_output: int,
                        offset_ms: float, hop_ms: float) -> int:
    """Output frames of a clip: those whose centre (offset_ms + i * hop_ms) lies inside it and
    that have feature frames under them; at least one (HEAR wants a frame for any clip)."""
    duration_ms = 1000.0 * n_samples / sample_rate
    available = math.ceil(n_feature_frames / frames_per_output)
    inside = math.floor((duration_ms - offset_ms) / hop_ms) + 1
    return max(1, min(available, inside))
