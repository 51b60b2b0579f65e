"""The HEAR 2021 API: load_model, get_timestamp_embeddings, get_scene_embeddings."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Tuple

import torch

from .baseline import BASELINES, LogMelBaseline
from .checkpoint import baseline_config, load_checkpoint, make_config
from .frontend import FrontendConfig
from .presets import family_of_config, preset_encoder
from .runtime import HearSSAM, resolve_runtime

DEFAULT_CHECKPOINT = Path(__file__).parent / "assets" / "ssam_tiny.safetensors"
RANDOM_INIT_SEED = 0
PATCH_STRIDE_FAMILIES = ("ssast", "ssamba")  # whose papers fine-tune with overlapping patches


def load_model(model_file_path: str = "", runtime: str | None = None,
               chunk_batch_size: int | None = None, window_seconds: float | None = None,
               precision: str = "fp32", token_order: str | None = None,
               patch_stride=None) -> HearSSAM | LogMelBaseline:
    """A HEAR model in eval mode, from our .safetensors, an official .pth, or the default;
    "logmel" (or a file from `python -m hear_ssam init logmel FILE`) gives the log-mel
    baseline (no weights; the options do not apply to it).

    runtime: None keeps the checkpoint's own ("hear" unless it says otherwise). "hear": true
    40 ms frames, scene embeddings pooled over the clip's real frames (SSAMBA: its real
    tokens). "official": what the family's released code computes (pretraining window only):
    SSAM / SSAST / AxLSTM: the released HEAR runtime's frame layout, padding and trim;
    SSAMBA: the released `ft_avgtok` scene vector of the clip padded or cut to 10.24 s, its
    timestamp embeddings as under "hear" (the released code has no frame-level output).
    See hear_ssam.runtime for the table.
    window_seconds: length of the independent windows a clip is cut into (default: the
    pretraining crop, 2 s for SSAM / SSAST / AxLSTM, 10.24 s for SSAMBA); longer windows
    extend the fixed sin-cos positions by their formula.
    chunk_batch_size: windows per encoder call (default: 32 s of audio per call).
    precision: "fp32" (default), or "fp16" / "bf16" autocast for the encoder (the official
    runtime embeds under fp16 autocast on GPU; outputs stay float32).
    token_order: the older spelling of runtime ("time-major" = "hear", "official" = "official").
    patch_stride: None keeps the checkpoint's patches (non-overlapping, as pretrained); an int s
    steps s frames and s bins between patches, a (time, freq) pair (tuple or list) each, at most
    the patch size. SSAST and SSAMBA only, whose papers fine-tune with overlapping patches
    (stride 10 of 16: SSAMBA's 10.24 s become 12 x 101 = 1212 tokens instead of 512, about
    2.4 times the tokens per window): the patch embedding keeps its weights and the positions
    are resampled as in the official code (`SpectrogramEncoder.set_patch_stride`); the
    checkpoint's own window only, and not with the SSAM-framework runtime="official" layout.
    Through heareval: --model-options '{"runtime": "official", "precision": "fp16"}'
    (a pair as a JSON list: '{"patch_stride": [10, 10]}').
    """
    if model_file_path in BASELINES:
        return LogMelBaseline().eval()
    baseline = baseline_config(model_file_path) if model_file_path else None
    if baseline is not None:  # a file written by `python -m hear_ssam init logmel FILE`
        return LogMelBaseline(FrontendConfig.from_dict(baseline["frontend"])).eval()
    if model_file_path:
        encoder, config = load_checkpoint(model_file_path)
    elif DEFAULT_CHECKPOINT.exists():
        encoder, config = load_checkpoint(DEFAULT_CHECKPOINT)
    else:
        warnings.warn("hear_ssam: no bundled checkpoint in this install; using a randomly "
                      f"initialised ssam-tiny (seed {RANDOM_INIT_SEED}). Its embeddings are "
                      "random features, not a pretrained model.", stacklevel=2)
        with torch.random.fork_rng(devices=[]):  # seed the init without touching the caller's RNG
            torch.manual_seed(RANDOM_INIT_SEED)
            encoder = preset_encoder("ssam-tiny").eval()
        config = make_config(encoder.cfg, encoder.pretraining,
                             provenance={"weights": f"random init, seed {RANDOM_INIT_SEED}"})
    runtime = resolve_runtime(runtime, token_order, default=config["runtime"])
    frontend = FrontendConfig.from_dict(config["frontend"])
    stride = None if patch_stride is None else patch_stride_of(patch_stride, encoder.cfg)
    window_frames = encoder.cfg.crop_frames if window_seconds is None else \
        window_frames_of(window_seconds, frontend, encoder.cfg.patch_time)
    if stride is not None and window_frames != encoder.cfg.crop_frames:
        raise ValueError(f"patch_stride resamples the positions of the pretraining window "
                         f"({encoder.cfg.crop_frames * frontend.frame_ms / 1000:g} s), as the official "
                         f"fine-tuning does; got window_seconds={window_seconds} as well: leave "
                         f"window_seconds out, or patch_stride")
    if window_frames != encoder.cfg.crop_frames:
        if runtime == "official":
            raise ValueError(f"runtime='official' reproduces the released runtime, which only "
                             f"uses {encoder.cfg.crop_frames * frontend.frame_ms / 1000:g} s windows; "
                             f"got window_seconds={window_seconds} (use runtime='hear')")
        encoder.extend_window(window_frames)
    if stride is not None and stride != (encoder.cfg.patch_stride_time, encoder.cfg.patch_stride_freq):
        encoder.set_patch_stride(*stride)
        config = dict(config, encoder=encoder.cfg.to_dict())  # the geometry that runs
    if chunk_batch_size is None:
        chunk_batch_size = max(1, round(3200 / encoder.cfg.crop_frames))
    return HearSSAM(encoder, runtime, chunk_batch_size, config, frontend=frontend, precision=precision).eval()


def patch_stride_of(patch_stride, cfg) -> tuple[int, int]:
    """(time, freq) stride of load_model's `patch_stride` (an int, or a (time, freq) tuple or
    list) for an encoder config, checked against its family and patch size."""
    family = family_of_config(cfg)
    if family is None or family.name not in PATCH_STRIDE_FAMILIES:
        name = family.name if family else f"a custom encoder ({cfg.block} blocks, {cfg.traversal} traversal)"
        raise ValueError(f"patch_stride applies to SSAST and SSAMBA, whose papers fine-tune with overlapping "
                         f"patches; {name} uses non-overlapping patches, as pretrained (leave patch_stride out)")
    is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    if is_int(patch_stride):
        stride = (patch_stride, patch_stride)
    elif isinstance(patch_stride, (tuple, list)) and len(patch_stride) == 2 and all(map(is_int, patch_stride)):
        stride = tuple(patch_stride)
    else:
        raise ValueError(f"patch_stride must be an int (both dimensions) or a (time, freq) pair of ints, "
                         f"got {patch_stride!r}")
    patch = (cfg.patch_time, cfg.patch_freq)
    for s, p, dim, unit in zip(stride, patch, ("time", "frequency"), ("frames", "bins")):
        if not 1 <= s <= p:
            fix = tuple(min(max(1, a), b) for a, b in zip(stride, patch))
            raise ValueError(f"patch_stride {patch_stride!r}: the {dim} stride {s} must be from 1 to the patch's "
                             f"{p} {unit} ({cfg.patch_time} frames x {cfg.patch_freq} bins; a larger stride "
                             f"would skip {unit}); give a (time, freq) pair such as {fix}")
    return stride


def window_frames_of(window_seconds, frontend: FrontendConfig, patch_time: int) -> int:
    """Feature frames of a window of `window_seconds` (a whole number of patches)."""
    try:
        seconds = float(window_seconds)
    except (TypeError, ValueError):
        raise ValueError(f"window_seconds must be a number of seconds, got {window_seconds!r}") from None
    frames = round(seconds * 1000 / frontend.frame_ms / patch_time) * patch_time
    if not 0 < seconds <= 1200 or frames <= 0:
        raise ValueError(f"window_seconds must be in (0, 1200] and at least one patch "
                         f"({patch_time * frontend.frame_ms:g} ms), got {window_seconds}")
    return frames


def _check(audio, model) -> None:
    """Reject bad input with a message that names the problem (before torch does, obscurely)."""
    if not isinstance(model, (HearSSAM, LogMelBaseline)):
        raise TypeError(f"model must come from hear_ssam.load_model(), got {type(model).__name__}")
    if not isinstance(audio, torch.Tensor):
        raise TypeError(f"audio must be a torch.Tensor [n_sounds, n_samples], got "
                        f"{type(audio).__module__}.{type(audio).__name__}")
    rate = model.frontend.cfg.sample_rate
    if model.sample_rate != rate:
        raise ValueError(f"model.sample_rate was set to {model.sample_rate}, but this model only "
                         f"works on {rate} Hz audio: leave it at {rate} and resample "
                         f"instead, e.g. torchaudio.functional.resample(audio, sr, {rate})")
    if audio.dtype != torch.float32:
        hint = ("integer PCM: convert to float32 in [-1, 1], e.g. audio.float() / 32768"
                if not audio.dtype.is_floating_point else "convert with audio.float()")
        raise TypeError(f"audio must be float32, got {audio.dtype} ({hint})")
    if audio.ndim != 2:
        hint = " (a single clip: use audio.unsqueeze(0))" if audio.ndim == 1 else \
            " (multi-channel? mix down to mono first)" if audio.ndim == 3 else ""
        raise ValueError(f"audio must have 2 dimensions [n_sounds, n_samples], got shape "
                         f"{tuple(audio.shape)}{hint}")
    n, n_samples = audio.shape
    if n == 0:
        raise ValueError("audio batch is empty: shape (0, n_samples)")
    if n_samples == 0:
        raise ValueError("audio clips are empty: zero-length clip (n_samples == 0)")
    if n_samples < model.frontend.min_samples:
        hint = " (is it [n_samples, n_channels]? transpose it)" if n > n_samples else ""
        raise ValueError(f"audio clips of {n_samples} samples are too short: need at least "
                         f"{model.frontend.min_samples} samples at {rate} Hz{hint}")
    if audio.device != model.device:
        raise ValueError(f"audio is on {audio.device} but the model is on {model.device}: "
                         "move one of them (model.to(audio.device))")
    bad = ~torch.isfinite(audio).all(dim=1)
    if bad.any():
        idx = bad.nonzero().flatten().tolist()
        raise ValueError(f"audio contains NaN or Inf values in clip(s) {idx[:10]}")


def get_timestamp_embeddings(audio: torch.Tensor, model: HearSSAM | LogMelBaseline
                             ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(float32 [n, frames, 5*D], centred timestamps [n, frames] in ms, 40 ms hop)."""
    _check(audio, model)
    with torch.no_grad():
        frames, stamps = model.frame_embeddings(audio)
    return frames.float(), stamps


def get_scene_embeddings(audio: torch.Tensor, model: HearSSAM | LogMelBaseline) -> torch.Tensor:
    """float32 [n, scene_embedding_size]: the mean of the clip's frame embeddings (SSAMBA:
    of its non-CLS tokens; with runtime "official", of the tokens of its first 10.24 s padded
    to one window; the log-mel baseline: mean and std of its log-mel frames)."""
    _check(audio, model)
    with torch.no_grad():
        return model.scene_embeddings(audio).float()
