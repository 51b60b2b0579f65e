"""HEAR runtime: whole clips -> windows (2 s by default) -> encoder -> 40 ms frames / clip embeddings.

A clip is normalised as a whole, cut into independent windows of the encoder's crop
(padded at the end with the frontend's padding value) and encoded `chunk_batch_size` windows
at a time. One output frame per patch time step (the frequency patches concatenated); a
step longer than 50 ms (SSAMBA's 16-frame patches: 160 ms) is repeated onto a regular grid of
at most 50 ms, as HEAR asks. Timestamps are the centres of the feature frames each output
frame covers, and only frames centred inside the clip are returned.

Overlapping patches (`load_model(patch_stride=...)`, SSAST / SSAMBA; stride s < patch p in
time): time step t covers feature frames [t * s, t * s + p), centred at frame t * s + p / 2,
and owns the s frames centred on it, [t * s + (p - s) / 2, ...), which its repeated output
frames split evenly (SSAMBA at stride 10: 100 ms steps, 2 frames of 50 ms). Windows of the
crop then start every n_t * s frames (n_t: time steps per window; every 1010 of SSAMBA's
1024 frames), so that the steps continue one regular grid across windows: step t of the
clip is step t % n_t of window t // n_t. Consecutive windows share crop - n_t * s frames
(SSAMBA: 14, which the earlier window's last patch covers only in part). With
non-overlapping patches s = p and windows start every crop, as above.

Runtimes (`load_model(runtime=...)`; each family's choice of frame layout and scene
pooling is data, `presets.Family.runtimes`):

| family              | runtime    | timestamp frames | scene embedding                                  |
|---------------------|------------|------------------|--------------------------------------------------|
| SSAM, SSAST, AxLSTM | "hear"     | "time-steps"     | "frames": mean of the clip's frames              |
| SSAM, SSAST, AxLSTM | "official" | "released"       | "frames": mean of those frames                   |
| SSAMBA              | "hear"     | "time-steps"     | "frames": mean of the clip's frames              |
| SSAMBA              | "official" | "time-steps" (*) | "window_tokens": `ft_avgtok` as released         |

(*) the released SSAMBA code has no frame-level output.

Frame layouts
- "time-steps": output frame t concatenates the frequency patches of time step t; windows are
  padded only to whole windows, and only frames centred inside the clip are kept.
- "released": the released SSAM/AxLSTM HEAR runtime: padding by `crop - T % crop` frames (a
  whole extra window when T is a multiple of the crop), the reshape `'b (f t) d -> b t (f d)'`,
  which treats the time-major tokens as frequency-major (so "frame" i mixes tokens 0.4 s
  apart), and its trim of `int(n_t * pad / crop)` frames; timestamps at the centres of equal
  slices of the clip.

Scene poolings (D values unless "frames": n_f * D)
- "frames": mean of the clip's output frames.
- "tokens": mean of the clip's non-CLS tokens (after the final norms), frequency patches too,
  under its kept frames (each time step weighted by its frames on the 40 ms grid). No runtime
  uses it (`HearSSAM(..., scene_pooling="tokens")` asks for it): averaging the frequency
  patches together discards the spectral shape, and SSAMBA's 1-2 s clips scored near chance
  with it on vowel and digit tasks that every "frames" pooling separates.
- "window_tokens": SSAMBA's released fine-tuning input and `ft_avgtok`: the clip's features
  padded with the padding value (zero fbank, normalised) or cut to one window (the first
  `crop_frames` frames: a clip longer than 10.24 s counts only its first 10.24 s), one encoder
  pass, mean of all its non-CLS tokens, padding included.

`token_order` is the older spelling of the runtime: "time-major" = "hear", "official" = "official".
"""
from __future__ import annotations

import math
import operator
from typing import Tuple

import torch
import torch.nn as nn

from .encoder import EncoderConfig, SpectrogramEncoder
from .frontend import FrontendConfig, build_frontend, pad_value
from .presets import SSAM_RUNTIMES, family_of_config

RUNTIMES = ("hear", "official")
TOKEN_ORDER_RUNTIMES = {"time-major": "hear", "official": "official"}  # the older spelling, `token_order`
TOKEN_ORDERS = tuple(TOKEN_ORDER_RUNTIMES)
FRAME_LAYOUTS = ("time-steps", "released")
SCENE_POOLINGS = ("frames", "tokens", "window_tokens")
PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}  # autocast dtype of the encoder
MAX_HOP_MS = 50.0  # HEAR's recommended maximum timestamp hop


def resolve_runtime(runtime: str | None = None, token_order: str | None = None,
                    default: str | None = "hear") -> str | None:
    """The runtime asked for by `runtime` or by its older spelling `token_order` (`default`
    when neither is given, which may be None: the caller's own choice comes later); both may
    be given only if they mean the same runtime."""
    if token_order is not None:
        if token_order not in TOKEN_ORDER_RUNTIMES:
            raise ValueError(f"token_order must be one of {TOKEN_ORDERS}, got {token_order!r} "
                             f"(token_order is the older spelling of runtime, one of {RUNTIMES})")
        if runtime is not None and runtime != TOKEN_ORDER_RUNTIMES[token_order]:
            raise ValueError(f"runtime={runtime!r} and token_order={token_order!r} ask for different "
                             f"runtimes; give only runtime (token_order is its older spelling: "
                             "'time-major' = 'hear', 'official' = 'official')")
        runtime = TOKEN_ORDER_RUNTIMES[token_order]
    runtime = default if runtime is None else runtime
    if runtime is None:
        return None
    if runtime not in RUNTIMES:
        hint = f" (the older token_order {runtime!r} is runtime {TOKEN_ORDER_RUNTIMES[runtime]!r})" \
            if runtime in TOKEN_ORDER_RUNTIMES else ""
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}{hint}")
    return runtime


def runtime_plan(cfg: EncoderConfig, runtime: str) -> dict:
    """{"frame_layout": ..., "scene_pooling": ...} that `runtime` means for the family of an
    encoder config (an encoder of no family: SSAM's)."""
    family = family_of_config(cfg)
    return dict((family.runtimes if family else SSAM_RUNTIMES)[resolve_runtime(runtime)])


class HearSSAM(nn.Module):
    """What `load_model` returns: frontend + encoder + the HEAR attributes (plain ints)."""

    def __init__(self, encoder: SpectrogramEncoder, runtime: str = "hear",
                 chunk_batch_size: int = 16, config: dict | None = None,
                 frontend: FrontendConfig | None = None, scene_pooling: str | None = None,
                 precision: str = "fp32"):
        """`runtime`: "hear" or "official" (module docstring); it picks the frame layout and the
        scene pooling of the encoder's family (`presets.Family.runtimes`). `scene_pooling`
        overrides the pooling. `frontend`: the features the encoder was trained on (default:
        the config's, else SSAM's)."""
        super().__init__()
        plan = runtime_plan(encoder.cfg, runtime)
        frame_layout, scene_pooling = plan["frame_layout"], scene_pooling or plan["scene_pooling"]
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        if scene_pooling not in SCENE_POOLINGS:
            raise ValueError(f"scene_pooling must be one of {SCENE_POOLINGS}, got {scene_pooling!r}")
        if frame_layout not in FRAME_LAYOUTS:
            raise ValueError(f"frame_layout must be one of {FRAME_LAYOUTS}, got {frame_layout!r}")
        if frame_layout == "released" and encoder.cfg.patch_order != "time-major":
            raise ValueError(f"runtime={runtime!r} reproduces the released SSAM/AxLSTM runtime's reshape "
                             "of time-major tokens; this model's tokens are frequency-major (use runtime='hear')")
        if frame_layout == "released" and encoder.cfg.overlapping:
            raise ValueError(f"runtime={runtime!r} reproduces the released SSAM/AxLSTM runtime, which has "
                             "non-overlapping patches; this model's patches overlap (use runtime='hear', or "
                             "load without patch_stride)")
        self.config = dict(config or {})
        if frontend is None:
            frontend = FrontendConfig.from_dict(self.config["frontend"]) if "frontend" in self.config \
                else FrontendConfig(n_mels=encoder.cfg.n_mels)
        if frontend.n_mels != encoder.cfg.n_mels:
            raise ValueError(f"frontend gives {frontend.n_mels} bins, the encoder expects {encoder.cfg.n_mels}")
        self.config.pop("token_order", None)  # the older spelling of "runtime"
        self.config.update(frontend=frontend.to_dict(), runtime=runtime,  # what actually runs
                           window_seconds=encoder.cfg.crop_frames * frontend.frame_ms / 1000,
                           frame_layout=frame_layout, scene_pooling=scene_pooling, precision=precision)
        self.frontend = build_frontend(frontend)
        self.pad_value = pad_value(frontend)
        self.encoder = encoder
        self.runtime = runtime
        self.frame_layout = frame_layout
        self.scene_pooling = scene_pooling
        # The official runtime embeds under fp16 autocast on GPU; the frontend stays fp32.
        self.precision = precision
        try:
            windows = None if isinstance(chunk_batch_size, bool) else operator.index(chunk_batch_size)
        except TypeError:
            windows = None
        if windows is None or windows < 1:
            raise ValueError(f"chunk_batch_size is the number of windows per encoder call, a whole number >= 1; "
                             f"got {chunk_batch_size!r} (leave it out for about 32 s of audio per call)")
        self.chunk_batch_size = windows
        self.sample_rate = int(frontend.sample_rate)
        cfg = encoder.cfg
        self.timestamp_embedding_size = int(cfg.frame_embedding_size)
        self.scene_embedding_size = int(cfg.frame_embedding_size if scene_pooling == "frames" else cfg.embed_dim)
        # Output frames per patch time step, so that the hop is at most 50 ms (1 for 4-frame patches).
        stride = cfg.patch_stride_time  # frames between time steps (the patch time unless patches overlap)
        step_ms = frontend.frame_ms * stride
        self.frame_repeat = math.ceil(step_ms / MAX_HOP_MS - 1e-9)
        if not cfg.overlapping and cfg.patch_time % self.frame_repeat:
            raise ValueError(f"patches of {cfg.patch_time} frames cannot be split into {self.frame_repeat} "
                             "equal output frames")
        # Feature frames per output frame; with overlapping patches an odd stride may split into
        # fractional frames (stride 7 at 10 ms: 2 frames of 35 ms), which only the timestamps see.
        self.frames_per_output = stride // self.frame_repeat if stride % self.frame_repeat == 0 \
            else stride / self.frame_repeat
        self.frame_hop_ms = step_ms / self.frame_repeat  # 40 ms
        # Where step 0's own frames start: (p - s) / 2 centres them on its patch (0: no overlap).
        self.first_output_frame = (cfg.patch_time - stride) / 2 if cfg.overlapping else 0
        # Output frame i covers feature frames [f0 + i * k, f0 + i * k + k) (k = frames_per_output,
        # f0 = first_output_frame): for SSAM's centred STFT, frames 4i..4i+3, centred at
        # (4i + 1.5) * 10 ms.
        self.frame_offset_ms = self.frontend.first_frame_centre_ms + frontend.frame_ms * (self.frames_per_output - 1) / 2
        if self.first_output_frame:
            self.frame_offset_ms += frontend.frame_ms * self.first_output_frame
        # Windows start every n_t * stride frames: the crop, unless patches overlap.
        self.window_hop_frames = cfg.grid[0] * stride

    @property
    def device(self) -> torch.device:
        return self.encoder.cls_token.device

    def chunk_frames(self, spec: torch.Tensor, pad: int) -> torch.Tensor:
        """[n, 1, T, F] -> [n * C, 1, crop, F]: zero-pad `pad` frames, split into windows that
        start every `window_hop_frames` (the crop; less with overlapping patches).

        Chunks are encoded independently (no state is carried across them), as in the paper.
        """
        crop, hop = self.encoder.cfg.crop_frames, self.window_hop_frames
        spec = nn.functional.pad(spec, (0, 0, 0, pad), value=self.pad_value)
        n, _, Tp, F = spec.shape
        if hop == crop:
            return spec.view(n, 1, Tp // crop, crop, F).transpose(1, 2).reshape(-1, 1, crop, F)
        windows = spec.unfold(2, crop, hop)  # [n, 1, C, F, crop]
        return windows.permute(0, 2, 1, 4, 3).reshape(-1, 1, crop, F)

    def padding_frames(self, n_frames: int) -> int:
        """Frames to append to a clip of `n_frames` feature frames so that whole windows hold
        every time step that starts inside the clip."""
        cfg = self.encoder.cfg
        if self.window_hop_frames == cfg.crop_frames:
            return (-n_frames) % cfg.crop_frames
        steps = math.ceil(n_frames / cfg.patch_stride_time)
        windows = math.ceil(steps / cfg.grid[0])
        return (windows - 1) * self.window_hop_frames + cfg.crop_frames - n_frames

    def tokens_to_frames(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, N, D] encoded patches -> [B, n_t, n_f * D] frames (one per time step)."""
        B, N, D = tokens.shape
        if self.frame_layout == "released":  # the released '(f t)' reshape of time-major tokens
            n_f = self.encoder.cfg.grid[1]
            return tokens.view(B, n_f, N // n_f, D).transpose(1, 2).reshape(B, N // n_f, n_f * D)
        grid = self.encoder.tokens_to_grid(tokens)
        return grid.reshape(B, grid.shape[1], -1)

    def encode_tokens(self, chunks: torch.Tensor) -> torch.Tensor:
        """Tokens [B, N, D] (float32) of windows [B, 1, frames, F], `chunk_batch_size` at a time."""
        dtype = PRECISIONS[self.precision]
        with torch.autocast(chunks.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = [self.encoder(chunks[i:i + self.chunk_batch_size]).float()
                   for i in range(0, chunks.shape[0], self.chunk_batch_size)]
        return torch.cat(out)

    def encode(self, chunks: torch.Tensor) -> torch.Tensor:
        """Frames [B, n_t, n_f * D] of windows [B, 1, frames, F]."""
        return self.tokens_to_frames(self.encode_tokens(chunks))

    def clip_frames(self, spec: torch.Tensor) -> torch.Tensor:
        """[n, 1, T, F] normalised log-mels -> [n, n_out, n_f * D] frames before trimming."""
        n, crop, pt = spec.shape[0], self.encoder.cfg.crop_frames, self.encoder.cfg.patch_time
        T = spec.shape[2]
        if self.frame_layout == "released":  # always pads, a whole extra chunk if T % crop == 0
            return self.encode(self.chunk_frames(spec, crop - T % crop)).reshape(n, -1, self.timestamp_embedding_size)
        if not self.encoder.is_causal:
            chunks = self.chunk_frames(spec, self.padding_frames(T))
            return self.encode(chunks).reshape(n, -1, self.timestamp_embedding_size)
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
        if self.frame_layout == "released":
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

    def window_tokens(self, audio: torch.Tensor) -> torch.Tensor:
        """[n, samples] -> tokens [n, N, D] of one window: the clip's features padded with the
        padding value or cut to `crop_frames` (SSAMBA's released fine-tuning input)."""
        spec = self.frontend(audio)[:, :, :self.encoder.cfg.crop_frames]
        return self.encode_tokens(self.chunk_frames(spec, self.encoder.cfg.crop_frames - spec.shape[2]))

    def scene_embeddings(self, audio: torch.Tensor) -> torch.Tensor:
        """[n, samples] -> [n, scene_embedding_size], by `scene_pooling`."""
        if self.scene_pooling == "window_tokens":  # every token of the window, padding included
            return self.window_tokens(audio).mean(dim=1)
        frames, _ = self.frame_embeddings(audio)
        if self.scene_pooling == "tokens":  # every non-CLS token of the clip, frequency patches too
            return frames.reshape(frames.shape[0], -1, self.encoder.cfg.embed_dim).mean(dim=1)
        return frames.mean(dim=1)

    def n_frames(self, n_samples: int) -> int:
        """Frames whose centre lies inside the clip (so the last is within one hop of the end)."""
        return centred_frame_count(n_samples, self.sample_rate, self.frontend.n_frames(n_samples),
                                   self.frames_per_output, self.frame_offset_ms, self.frame_hop_ms,
                                   first_frame=self.first_output_frame)


def centred_timestamps(n_frames: int, offset_ms: float, hop_ms: float, duration_ms: float) -> torch.Tensor:
    """float64 [n_frames] centres offset_ms + i * hop_ms; a clip shorter than one frame gets
    its single frame at the clip's middle (never past its end)."""
    stamps = offset_ms + hop_ms * torch.arange(n_frames, dtype=torch.float64)
    return stamps.clamp(max=duration_ms / 2) if n_frames == 1 else stamps


def centred_frame_count(n_samples: int, sample_rate: int, n_feature_frames: int, frames_per_output: float,
                        offset_ms: float, hop_ms: float, first_frame: float = 0) -> int:
    """Output frames of a clip: those whose centre (offset_ms + i * hop_ms) lies inside it and
    that have feature frames under them (output frame i covers feature frames from
    first_frame + i * frames_per_output); at least one (HEAR wants a frame for any clip)."""
    duration_ms = 1000.0 * n_samples / sample_rate
    available = math.ceil((n_feature_frames - first_frame) / frames_per_output)
    inside = math.floor((duration_ms - offset_ms) / hop_ms) + 1
    return max(1, min(available, inside))
