"""Random 2 s log-mel crops of audio files, deterministic per (seed, epoch, position).

Every random choice is derived from (seed, epoch, position in the epoch), never from
a stateful generator, so a resumed run sees exactly the crops and order of an
uninterrupted one, whatever the number of workers or processes.
"""
from __future__ import annotations

import csv
import hashlib
import logging
import math
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio
from torch.utils.data import Dataset, Sampler
from tqdm import tqdm

from hear_ssam.frontend import HOP_LENGTH, SAMPLE_RATE, LogMelFrontend

log = logging.getLogger("pretrain.data")
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".mp3"}


def list_audio(source) -> list[str]:
    """Audio files of a folder (recursive), or of a manifest (.tsv with a 'path' column,
    or one path per line; relative paths are relative to the manifest)."""
    source = Path(source)
    if source.is_dir():
        files = sorted(str(p) for p in source.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    elif source.is_file():
        with open(source, newline="") as f:
            first = f.readline()
            f.seek(0)
            if "\t" in first and "path" in first.split("\t"):
                paths = [row["path"] for row in csv.DictReader(f, delimiter="\t")]
            else:
                paths = [line.strip() for line in f if line.strip() and not line.startswith("#")]
        files = [p if Path(p).is_absolute() else str(source.parent / p) for p in paths]
    else:
        raise FileNotFoundError(f"--data {source}: no such folder or manifest file")
    if not files:
        raise ValueError(f"--data {source}: no audio files ({', '.join(sorted(AUDIO_SUFFIXES))})")
    return files


def check_files(files):
    """(readable files with their (frames, rate)), [(unreadable file, reason)]."""
    good, bad = [], []
    for f in tqdm(files, desc="checking audio", unit="file", leave=False):
        try:
            info = sf.info(f)
            if info.frames == 0:
                raise ValueError("zero-length")
            good.append((f, info.frames, info.samplerate))
        except Exception as e:
            bad.append((f, str(e).strip() or type(e).__name__))
    return good, bad


def to_mono_16k(audio: np.ndarray, rate: int) -> torch.Tensor:
    """[frames, channels] float32 at `rate` -> mono [samples] at 16 kHz."""
    x = torch.from_numpy(audio.mean(axis=1))
    return torchaudio.functional.resample(x, rate, SAMPLE_RATE) if rate != SAMPLE_RATE else x


def _rng(seed, epoch, position):
    return np.random.default_rng([seed, epoch, position])


class CropDataset(Dataset):
    """Item (epoch, position, file index) -> normalised log-mel crop [1, crop_frames, 80]."""

    def __init__(self, files, crop_frames=200, seed=0, cache_dir=None):
        good, bad = check_files(files)
        if bad:
            log.warning("skipping %d unreadable of %d files, e.g. %s (%s)", len(bad), len(files), *bad[0])
        if not good:
            raise ValueError("no readable audio files")
        self.files = [g[0] for g in good]
        self.frames = [g[1] for g in good]
        self.rates = [g[2] for g in good]
        self.skipped = bad
        self.crop_frames, self.seed = crop_frames, seed
        self.crop_samples = crop_frames * HOP_LENGTH  # 200 frames need 31,840+ samples; use 32,000
        self.frontend = LogMelFrontend()
        self.cache_dir = Path(cache_dir) if cache_dir else None
        if self.cache_dir:
            self._fill_cache()

    @property
    def hours(self) -> float:
        return sum(f / r for f, r in zip(self.frames, self.rates)) / 3600

    def __len__(self):
        return len(self.files)

    # -- audio path
    def _read_crop(self, i, rng) -> torch.Tensor:
        rate, total = self.rates[i], self.frames[i]
        need = math.ceil(self.crop_samples * rate / SAMPLE_RATE) + 1
        start = int(rng.integers(0, total - need + 1)) if total > need else 0
        audio, _ = sf.read(self.files[i], start=start, frames=need, dtype="float32", always_2d=True)
        x = to_mono_16k(audio, rate)
        if x.numel() < self.crop_samples:  # short clip: tile it
            x = x.repeat(math.ceil(self.crop_samples / max(1, x.numel())))
        return x[: self.crop_samples]

    # -- cache path: un-normalised log-mels of whole files, cropped in frames
    def _cache_path(self, i) -> Path:
        return self.cache_dir / (hashlib.sha1(self.files[i].encode()).hexdigest() + ".npy")

    def _fill_cache(self):
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        todo = [i for i in range(len(self)) if not self._cache_path(i).exists()]
        for i in tqdm(todo, desc="caching log-mels", unit="file"):
            try:
                audio, rate = sf.read(self.files[i], dtype="float32", always_2d=True)
                x = to_mono_16k(audio, rate)
                if x.numel() <= self.frontend.min_samples:
                    x = x.repeat(math.ceil((self.frontend.min_samples + 1) / max(1, x.numel())))
                mel = self.frontend.log_mel(x.unsqueeze(0))[0].numpy().astype(np.float16)
            except Exception as e:
                log.warning("cannot cache %s: %s", self.files[i], e)
                continue
            tmp = self._cache_path(i).with_suffix(".tmp.npy")
            np.save(tmp, mel)
            tmp.replace(self._cache_path(i))

    def _cached_crop(self, i, rng) -> torch.Tensor:
        mel = np.load(self._cache_path(i), mmap_mode="r")
        T = mel.shape[0]
        if T >= self.crop_frames:
            s = int(rng.integers(0, T - self.crop_frames + 1))
            mel = np.asarray(mel[s:s + self.crop_frames], dtype=np.float32)
        else:
            mel = np.tile(np.asarray(mel, dtype=np.float32), (math.ceil(self.crop_frames / T), 1))[: self.crop_frames]
        return torch.from_numpy(mel)

    def __getitem__(self, item):
        epoch, position, i = item
        for attempt in range(len(self)):
            j = (i + attempt) % len(self)
            rng = _rng(self.seed, epoch, position)
            try:
                if self.cache_dir and self._cache_path(j).exists():
                    mel = self._cached_crop(j, rng)
                else:
                    mel = self.frontend.log_mel(self._read_crop(j, rng).unsqueeze(0))[0, : self.crop_frames]
                break
            except Exception as e:  # a file that broke after the check: use the next one
                log.warning("cannot read %s (%s); using the next file", self.files[j], e)
        mel = (mel - mel.mean()) / (mel.std() + 1e-8)  # per-crop normalisation, as the recipe
        return mel.unsqueeze(0)


class EpochSampler(Sampler):
    """This process's share of one epoch, from a given step on: (epoch, position, file)."""

    def __init__(self, n_files, epoch_clips, seed, epoch, rank=0, world=1, start=0):
        self.n_files, self.epoch_clips, self.seed, self.epoch = n_files, epoch_clips, seed, epoch
        self.rank, self.world, self.start = rank, world, start

    def order(self):
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        reps = math.ceil(self.epoch_clips / self.n_files)
        perm = torch.cat([torch.randperm(self.n_files, generator=g) for _ in range(reps)])
        return perm[: self.epoch_clips].tolist()

    def __iter__(self):
        order = self.order()
        mine = list(range(self.rank, len(order), self.world))
        for position in mine[self.start:]:
            yield self.epoch, position, order[position]

    def __len__(self):
        return max(0, len(range(self.rank, self.epoch_clips, self.world)) - self.start)
