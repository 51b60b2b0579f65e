"""What the corpus builder measures of a sound (numpy only): content hash, fingerprint, waveform.

`content_hash` identifies the same decoded audio in any container (exact duplicates);
`fingerprint` finds candidate near duplicates cheaply; `ncc_snippet` + `waveform_similarity`
confirm them. Audio is float32 [frames] or [frames, channels] at `rate` Hz.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np
import soundfile as sf

from ..data import AUDIO_SUFFIXES

# Ogg Opus (.opus) is an Ogg file that libsndfile >= 1.0.29 decodes; pretrain.data reads any
# path a manifest lists with soundfile, whatever its suffix.
READABLE_SUFFIXES = frozenset(AUDIO_SUFFIXES | {".opus"})
SILENT_PEAK = 1e-4          # -80 dBFS: digital silence
ACTIVE_DB = -40.0           # the sound starts at the first sample this far below its peak
FP_BANDS, FP_FRAMES, FP_SPAN = 24, 32, 10.0
FP_WINDOW, FP_HOP, FP_FMIN, FP_FMAX = 0.05, 0.0125, 60.0, 5000.0
NCC_RATE, NCC_MAX_LAG = 8000, 0.5
SCAN_VERSION = 1            # bump when the content hash or the fingerprint changes: rescans every package


def _mono(audio: np.ndarray) -> np.ndarray:
    return audio.mean(axis=1) if audio.ndim == 2 else audio


def _active_start(x: np.ndarray) -> int | None:
    """First sample of mono x above ACTIVE_DB of the peak; None for digital silence."""
    peak = float(np.abs(x).max()) if x.size else 0.0
    if peak <= SILENT_PEAK:
        return None
    return int(np.argmax(np.abs(x) > peak * 10 ** (ACTIVE_DB / 20)))


def _active_span(x: np.ndarray) -> tuple[int, int] | None:
    """[first, last] samples of mono x above ACTIVE_DB of the peak."""
    a = _active_start(x)
    if a is None:
        return None
    above = np.abs(x) > np.abs(x).max() * 10 ** (ACTIVE_DB / 20)
    return a, len(x) - int(np.argmax(above[::-1]))


@lru_cache(maxsize=64)
def _mel_bank(n_fft: int, rate: int) -> np.ndarray:
    """[FP_BANDS, n_fft // 2 + 1] triangular mel filters between FP_FMIN and FP_FMAX Hz."""
    def mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / rate)
    edges = 700.0 * (10 ** (np.linspace(mel(FP_FMIN), mel(FP_FMAX), FP_BANDS + 2) / 2595.0) - 1.0)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    return np.clip(np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)), 0.0, None)


def fingerprint(audio: np.ndarray, rate: int) -> np.ndarray:
    """[frames(, channels)] audio -> unit-norm float32 [FP_FRAMES * FP_BANDS] (zeros if silent).

    Mono, from the first sample above ACTIVE_DB of the peak (leading silence removed), the
    first FP_SPAN s; log power in FP_BANDS mel bands (FP_FMIN - FP_FMAX Hz, computed in Hz,
    so the sample rate does not matter above 10 kHz) pooled into FP_FRAMES equal time slices
    of that span (or of the whole sound if shorter), minus its mean (gain invariant).
    """
    x = _mono(np.asarray(audio, dtype=np.float32))
    span = _active_span(x)
    if span is None:
        return np.zeros(FP_FRAMES * FP_BANDS, np.float32)
    a, b = span
    x = x[a:min(b, a + int(FP_SPAN * rate))].astype(np.float64)
    n_fft, hop = max(8, int(round(FP_WINDOW * rate))), max(1, int(round(FP_HOP * rate)))
    if len(x) < n_fft:
        x = np.pad(x, (0, n_fft - len(x)))
    n = 1 + (len(x) - n_fft) // hop
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop][:n]
    power = np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=1)) ** 2
    bands = power @ _mel_bank(n_fft, rate).T  # [n, FP_BANDS]
    edges = np.linspace(0, n, FP_FRAMES + 1)
    starts = np.minimum(edges[:-1].astype(int), n - 1)
    stops = np.maximum(edges[1:].astype(int), starts + 1)
    pooled = np.stack([bands[s:e].mean(axis=0) for s, e in zip(starts, stops)])
    v = np.log10(pooled + pooled.max() * 1e-6 + 1e-30).ravel()
    v -= v.mean()
    norm = np.linalg.norm(v)
    return (v / norm if norm > 0 else v).astype(np.float32)


def content_hash(audio: np.ndarray, rate: int) -> str:
    """sha256 of (rate, channels, samples as 16-bit PCM): the same decoded audio in any container.

    So the same audio in .wav and .flac, or renamed, or with other tags, has one hash.
    """
    audio = np.asarray(audio, dtype=np.float32)
    audio = audio[:, None] if audio.ndim == 1 else audio
    pcm = np.clip(np.round(audio * 32768.0), -32768, 32767).astype("<i2")
    h = hashlib.sha256(f"{int(rate)}:{audio.shape[1]}:".encode())
    h.update(np.ascontiguousarray(pcm).tobytes())
    return h.hexdigest()


def ncc_snippet(audio: np.ndarray, rate: int) -> np.ndarray:
    """Mono NCC_RATE Hz float32 [samples] from NCC_MAX_LAG s before the sound starts, FP_SPAN s + 2 lags long."""
    x = _mono(np.asarray(audio, dtype=np.float32))
    a = _active_start(x)
    if a is None:
        return np.zeros(1, np.float32)
    x = x[max(0, a - int(NCC_MAX_LAG * rate)): a + int((FP_SPAN + NCC_MAX_LAG) * rate)].astype(np.float64)
    n = max(1, int(round(len(x) * NCC_RATE / rate)))
    spec = np.fft.rfft(x)[: n // 2 + 1]  # band-limit to NCC_RATE / 2 and resample in one step
    spec = np.pad(spec, (0, n // 2 + 1 - len(spec)))
    return (np.fft.irfft(spec, n) * (n / len(x))).astype(np.float32)


def waveform_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Peak |normalised cross-correlation| of two ncc_snippets within +-NCC_MAX_LAG s of lag.

    High only for the same waveform: a re-recording or another take of a line scores far lower.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 or nb == 0:
        return 0.0
    n = 1 << int(np.ceil(np.log2(len(a) + len(b))))
    c = np.fft.irfft(np.fft.rfft(a, n) * np.conj(np.fft.rfft(b, n)), n)
    lag = int(2 * NCC_MAX_LAG * NCC_RATE)  # snippets start up to NCC_MAX_LAG early: allow twice
    c = np.concatenate([c[-lag:], c[: lag + 1]])
    return float(np.abs(c).max() / (na * nb))


def read_audio(path) -> tuple[np.ndarray, int]:
    """(float32 [frames, channels], rate) of a file soundfile decodes."""
    return sf.read(str(path), dtype="float32", always_2d=True)


def read_head(path, seconds: float = 60.0) -> tuple[np.ndarray, int]:
    """The first `seconds` of a file (enough for an ncc_snippet), or all of it if that is silent."""
    rate = sf.info(str(path)).samplerate
    audio, rate = sf.read(str(path), frames=int(seconds * rate), dtype="float32", always_2d=True)
    if _active_start(_mono(audio)) is None:
        return read_audio(path)
    return audio, rate
