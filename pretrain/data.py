"""Random 2 s feature crops of audio files, deterministic per (seed, epoch, position).

Every random choice is derived from (seed, epoch, position in the epoch), never from
a stateful generator, so a resumed run sees exactly the crops and order of an
uninterrupted one, whatever the number of workers or processes.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import Dataset, Sampler
from tqdm import tqdm

from hear_ssam.frontend import FrontendConfig, build_frontend, pad_value, to_mono_16k

from .seeds import derive_seed

log = logging.getLogger("pretrain.data")
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".mp3"}


_FILLER = None  # the dataset a cache-filling worker process computes features for


def _init_filler(dataset):
    global _FILLER
    torch.set_num_threads(1)  # one file per process: the processes are the parallelism
    _FILLER = dataset


def _fill_one(i):
    return _FILLER._cache_one(i)


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


def _lcm(a: int, b: int) -> int:
    return a * b // math.gcd(a, b)


# How a file shorter than a crop fills it (CropDataset's `short_files`, TrainConfig's too).
SHORT_FILES = ("tile", "pad")


class CropDataset(Dataset):
    """Item (epoch, position, file index) -> standardised feature crop [1, crop_frames, F].

    A crop is `crop_frames` consecutive feature frames of a file's whole-file features
    (the frontend of `frontend_cfg`), starting at a frame drawn from
    derive_seed("crop", seed, epoch, position). A file shorter than a crop fills it as
    `short_files` says: "tile" repeats its frames; "pad" follows its normalised frames with
    padding frames of the frontend's `pad_value` (SSAST / SSAMBA's loaders, and this plugin's
    runtime for the last window of a clip). Two paths give the same crops: with a cache,
    whole-file features are computed once (`fill_cache`, fp16 .npy) and sliced; without one,
    only a window of audio around the crop is read, resampled on the 16 kHz grid of the whole
    file and trimmed of a margin wider than the STFT window, so its frames equal the
    whole-file ones.
    """

    MARGIN_FRAMES = 3  # > n_fft / 2 samples of context on each side of a window

    def __init__(self, files, crop_frames=200, seed=0, cache_dir=None, frontend_cfg: FrontendConfig | None = None,
                 short_files: str = "tile"):
        if short_files not in SHORT_FILES:
            raise ValueError(f"short_files must be one of {SHORT_FILES}, got {short_files!r}")
        self.short_files = short_files
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
        self.frontend_cfg = frontend_cfg or FrontendConfig()
        self.pad_value = pad_value(self.frontend_cfg)  # the normalised value of padding frames
        self.frontend = build_frontend(self.frontend_cfg)
        self.hop = self.frontend_cfg.hop_length
        self.sample_rate = self.frontend_cfg.sample_rate
        self.cache_dir = None
        if cache_dir:  # one folder per frontend, so a changed frontend never reads stale features
            key = hashlib.sha1(json.dumps(self.frontend_cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:10]
            self.cache_dir = Path(cache_dir) / f"{self.frontend_cfg.kind}-{key}"

    @property
    def hours(self) -> float:
        return sum(f / r for f, r in zip(self.frames, self.rates)) / 3600

    def length_weights(self, cap_seconds: float) -> torch.Tensor:
        """[n_files] min(length in s, cap_seconds): a file's chance of being drawn (EpochSampler)."""
        return torch.tensor([min(f / r, cap_seconds) for f, r in zip(self.frames, self.rates)], dtype=torch.float64)

    def __len__(self):
        return len(self.files)

    def _samples_16k(self, i) -> int:
        """Length of file i after resampling (torchaudio's output length)."""
        return math.ceil(self.frames[i] * self.sample_rate / self.rates[i])

    def _features(self, audio_16k: torch.Tensor) -> torch.Tensor:
        """[samples] -> un-normalised features [T, F]; clips too short for the STFT are repeated."""
        need = self.frontend.min_samples
        if audio_16k.numel() < need:
            audio_16k = audio_16k.repeat(math.ceil(need / max(1, audio_16k.numel())))
        return self.frontend.features(audio_16k.unsqueeze(0))[0]

    def _whole_file_features(self, i) -> torch.Tensor:
        audio, rate = sf.read(self.files[i], dtype="float32", always_2d=True)
        return self._features(to_mono_16k(audio, rate))

    # -- audio path: a window of the file, aligned with the whole file's frame grid
    def _window_features(self, i, start, stop) -> tuple[torch.Tensor, int]:
        """Features of frames [start, stop) of file i (plus context): (features, first frame)."""
        rate, n16 = self.rates[i], self._samples_16k(i)
        # Window starts must fall on a 16 kHz sample that is also a source sample and a frame start.
        align = _lcm(self.sample_rate // math.gcd(self.sample_rate, rate), self.hop)
        a16 = max(0, (start - self.MARGIN_FRAMES) * self.hop) // align * align
        b16 = min(n16, (stop + self.MARGIN_FRAMES) * self.hop)
        if a16 == 0 and b16 == n16:
            return self._whole_file_features(i), 0
        a_src = a16 * rate // self.sample_rate
        b_src = min(self.frames[i], math.ceil(b16 * rate / self.sample_rate) + 1)
        audio, _ = sf.read(self.files[i], start=a_src, frames=b_src - a_src, dtype="float32", always_2d=True)
        x = to_mono_16k(audio, rate)[: b16 - a16]
        return self._features(x), a16 // self.hop

    def _crop(self, i, rng) -> torch.Tensor:
        """Un-normalised [crop_frames, F] crop of file i (a short file's [T <= crop_frames, F]
        frames when `short_files` is "pad": __getitem__ pads after normalising)."""
        n_frames = self.frontend.n_frames(self._samples_16k(i))
        cached = self.cache_dir is not None and self._cache_path(i).exists()
        if n_frames <= self.crop_frames:  # short file: the whole of it, tiled or (later) padded
            feats = self._cached(i) if cached else self._whole_file_features(i)
            if self.short_files == "pad":
                return feats
            return feats.repeat(math.ceil(self.crop_frames / feats.shape[0]), 1)[: self.crop_frames]
        start = int(rng.integers(0, n_frames - self.crop_frames + 1))
        if cached:
            return self._cached(i, start)
        feats, first = self._window_features(i, start, start + self.crop_frames)
        return feats[start - first: start - first + self.crop_frames]

    # -- cache path: whole-file features, computed once
    def _cache_path(self, i) -> Path:
        return self.cache_dir / (hashlib.sha1(self.files[i].encode()).hexdigest() + ".npy")

    def fill_cache(self, workers: int | None = None):
        """Compute the missing whole-file features with `workers` processes (default: every
        core; the fill runs before training, on one rank, while the others wait at a barrier).
        Decoding a long mp3 / ogg is single-threaded, so one process left a core idle for the
        quarter of an hour the corpus's soundtracks take. Each file is written to a name of its
        own process and renamed: an interrupted fill leaves no partial file, and a rerun (or a
        second filler) computes only what is missing."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        todo = [i for i in range(len(self)) if not self._cache_path(i).exists()]
        workers = max(1, min(workers or os.cpu_count() or 1, len(todo)))
        bar = tqdm(total=len(todo), desc=f"caching features ({workers} process{'es' if workers > 1 else ''})", unit="file")
        if workers == 1:
            results = map(self._cache_one, todo)
        else:  # spawn: a forked child of a process that already ran torch ops can hang in OpenMP
            pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"),
                                       initializer=_init_filler, initargs=(self,))
            results = pool.map(_fill_one, todo)
        try:
            for file, error in results:
                if error:
                    log.warning("cannot cache %s: %s", file, error)
                bar.update(1)
        finally:
            bar.close()
            if workers > 1:
                pool.shutdown(cancel_futures=True)

    def _cache_one(self, i) -> tuple[str, str | None]:
        """Write file i's fp16 features to the cache: (file, None) or (file, why it failed)."""
        path = self._cache_path(i)
        if path.exists():  # another filler got there first
            return self.files[i], None
        try:
            feats = self._whole_file_features(i).numpy().astype(np.float16)
        except Exception as e:
            return self.files[i], str(e)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, feats)
        tmp.replace(path)
        return self.files[i], None

    def _cached(self, i, start=None) -> torch.Tensor:
        feats = np.load(self._cache_path(i), mmap_mode="r")
        if start is not None:
            feats = feats[start:start + self.crop_frames]
        return torch.from_numpy(np.asarray(feats, dtype=np.float32))

    def __getitem__(self, item):
        epoch, position, i = item
        errors = []
        for attempt in range(len(self)):
            j = (i + attempt) % len(self)
            rng = np.random.default_rng(derive_seed("crop", self.seed, epoch, position))
            try:
                crop = self.frontend.normalise(self._crop(j, rng).unsqueeze(0))[0]  # per crop
                missing = self.crop_frames - crop.shape[1]  # > 0 only for a padded short file
                if missing:
                    crop = torch.nn.functional.pad(crop, (0, 0, 0, missing), value=self.pad_value)
                return crop
            except Exception as e:  # a file that broke after the check: use the next one
                log.warning("cannot read %s (%s); using the next file", self.files[j], e)
                errors.append(f"{self.files[j]}: {type(e).__name__}: {e}")
                if len(errors) >= 20:
                    break
        raise RuntimeError(f"no readable crop for item {item}: {len(errors)} files failed in a row, "
                           f"last {errors[-1]}")


class EpochSampler(Sampler):
    """This process's share of one epoch, from a given step on: (epoch, position, file).

    Without `weights`, an epoch visits every file equally often (shuffled, repeated as needed).
    With `weights` [n_files], files are drawn with replacement in proportion to them
    (CropDataset.length_weights: a 30 min soundtrack holds more distinct crops than a 1 s
    word, so it should be drawn more often, but not 1,800 times more)."""

    def __init__(self, n_files, epoch_clips, seed, epoch, rank=0, world=1, start=0, weights=None):
        self.n_files, self.epoch_clips, self.seed, self.epoch = n_files, epoch_clips, seed, epoch
        self.rank, self.world, self.start = rank, world, start
        if weights is not None and (len(weights) != n_files or not (weights >= 0).all() or weights.sum() <= 0):
            raise ValueError(f"weights must be {n_files} non-negative numbers with a positive sum")
        self.weights = weights

    def order(self):
        g = torch.Generator().manual_seed(derive_seed("order", self.seed, self.epoch))
        if self.weights is not None:
            return torch.multinomial(self.weights, self.epoch_clips, replacement=True, generator=g).tolist()
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
