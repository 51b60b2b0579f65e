"""A view of a HEAR task bundle at the model's sample rate, for a bundle that only carries
another rate's audio.

hear-preprocess writes one audio folder per rate, RATE/<split>/*.wav (16000, 22050, 32000,
44100, 48000), each derived from the original audio and padded/trimmed to the task's
sample_duration; heareval reads the folder at the model's rate only. A bundle with just
44100/ (a small CI bundle, one rate's tarball) is made usable by a view:

    VIEWS/<bundle>/task_metadata.json ...    links to every top-level entry of the bundle
                                             except its rate folders
    VIEWS/<bundle>/16000/<split>/*.wav        the clips resampled from the source rate
    VIEWS/<bundle>/view.json                  source folder, source rate, clip count, ...

The view is built in VIEWS/.<bundle>.partial/ and renamed when complete, so a killed run
leaves no half view; a view whose marker matches the bundle is reused.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

from tqdm import tqdm

MARKER = "view.json"
# What the view was made with; the marker records it so that a reader knows.
METHOD = "torchaudio.functional.resample (sinc_interp_hann, lowpass_filter_width 6, rolloff 0.99), 16-bit PCM"


def rate_folders(bundle: Path, splits) -> list:
    """Rates of the bundle's complete audio folders: all-digit subfolders holding a folder per split."""
    bundle = Path(bundle)
    if not bundle.is_dir():
        return []
    return sorted(int(d.name) for d in bundle.iterdir()
                  if d.is_dir() and d.name.isdigit() and all((d / s).is_dir() for s in splits))


def choose_source_rate(rates, target: int) -> int | None:
    """The rate to resample from: None when `target` is among `rates` (or there are none);
    else the lowest rate above `target` (downsampling only, as hear-preprocess derives every
    rate from the original audio), else the highest below."""
    rates = set(rates)
    if not rates or target in rates:
        return None
    above = [r for r in rates if r > target]
    return min(above) if above else max(rates)


def _metadata(bundle: Path) -> dict | None:
    try:
        meta = json.loads((Path(bundle) / "task_metadata.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    ok = isinstance(meta, dict) and isinstance(meta.get("splits"), list) and meta["splits"]
    return meta if ok and all(isinstance(s, str) for s in meta["splits"]) else None


def source_rate(bundle: Path, target: int) -> int | None:
    """The rate folder a view of `bundle` at `target` Hz is made from; None when the bundle
    has a complete `target` folder, or no complete folder of another rate, or metadata that
    does not name its splits (check_bundle says why)."""
    meta = _metadata(bundle)
    if meta is None:
        return None
    return choose_source_rate(rate_folders(bundle, meta["splits"]), target)


def _clips(bundle: Path, splits) -> dict | None:
    """{split: [clip file names]} from the split files; None if one is unreadable."""
    clips = {}
    for split in splits:
        try:
            entries = json.loads((Path(bundle) / f"{split}.json").read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            return None
        if not isinstance(entries, dict):
            return None
        clips[split] = list(entries)
    return clips


def _marker(bundle: Path, rate: int, target: int) -> dict | None:
    """What the marker of an up-to-date view of `bundle` holds; None if the bundle cannot say.
    The split files' hash stands for the clip list: a bundle whose clips were renamed, added or
    relabelled gets a new view."""
    meta = _metadata(bundle)
    clips = _clips(bundle, meta["splits"]) if meta else None
    if clips is None:
        return None
    digest = hashlib.sha256()
    for split in meta["splits"]:
        digest.update((Path(bundle) / f"{split}.json").read_bytes())
    return {"source": str(Path(bundle).resolve()), "source_rate": rate, "rate": target,
            "clips": sum(map(len, clips.values())), "sample_duration": meta.get("sample_duration"),
            "splits_sha256": digest.hexdigest()}


def view_is_current(view: Path, bundle: Path, rate: int, target: int) -> bool:
    """Whether `view` was built, completely, from `bundle`'s `rate` folder as it is now (same
    folder, rate, clip count and sample_duration): a rerun reuses it."""
    try:
        marker = json.loads((Path(view) / MARKER).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    want = _marker(bundle, rate, target)
    return want is not None and isinstance(marker, dict) and all(marker.get(k) == v for k, v in want.items())


def output_length(frames: int, rate: int, target: int, sample_duration) -> int:
    """Samples of a clip at `target` Hz: round(sample_duration * target) for a fixed duration
    (hear-preprocess pads/trims every rate to it), else ceil(frames * target / rate)."""
    if sample_duration is not None:
        return round(sample_duration * target)
    return math.ceil(frames * target / rate)


def resample_clip(audio, rate: int, target: int, sample_duration=None, resampler=None):
    """Mono float32 audio [n] at `rate` -> float32 numpy [output_length] at `target`, with
    torchaudio's default (windowed sinc) resampler, zero-padded/trimmed to a fixed duration.

    resampler: a torchaudio.transforms.Resample(rate, target, dtype=torch.float32), whose
    kernel is computed once for many clips (the same samples as torchaudio.functional.resample)."""
    import numpy as np
    import torch
    import torchaudio

    x = torch.as_tensor(np.asarray(audio, dtype=np.float32))
    if x.ndim != 1:
        raise ValueError(f"resample_clip needs mono audio [n], got shape {tuple(x.shape)}; "
                         f"mix the channels down first")
    y = (resampler(x) if resampler is not None else torchaudio.functional.resample(x, rate, target)).numpy()
    n = output_length(len(x), rate, target, sample_duration)
    return y[:n] if len(y) >= n else np.pad(y, (0, n - len(y)))


def build_view(bundle: Path, view: Path, rate: int, target: int) -> int:
    """Write the view of `bundle` at `target` Hz, made from its `rate`/ folder -> clips written.

    Expects a bundle check_bundle passed at `rate` (readable metadata and split files, every
    clip present, mono). Builds in `<view parent>/.<view name>.partial/` and renames it to
    `view` when complete (an existing `view` is replaced).
    """
    import soundfile as sf
    import torch
    import torchaudio

    bundle, view = Path(bundle).absolute(), Path(view).absolute()
    marker, meta = _marker(bundle, rate, target), _metadata(bundle)
    if marker is None:
        raise ValueError(f"{bundle}: task_metadata.json or a split file is unreadable; "
                         f"run check_bundle on it and fix what it names")
    partial = view.parent / f".{view.name}.partial"
    if partial.exists():  # left by a killed run
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    for entry in sorted(bundle.iterdir()):
        if not (entry.is_dir() and entry.name.isdigit()) and entry.name != MARKER:
            (partial / entry.name).symlink_to(entry)
    # The kernel functional.resample builds for float32 audio, built once (it costs about as much
    # as resampling a 10 s clip); without dtype, Resample builds it in float64 (samples ~1e-5 apart).
    resampler = torchaudio.transforms.Resample(rate, target, dtype=torch.float32)
    with tqdm(total=marker["clips"], desc=f"resample {bundle.name}", unit="clip", dynamic_ncols=True) as bar:
        for split, names in _clips(bundle, meta["splits"]).items():
            for name in names:
                if name in ("", ".", "..") or Path(name).name != name or "\\" in name:
                    raise ValueError(f"{split}.json lists the clip {name!r}, which is not a plain file name: "
                                     f"a HEAR bundle's clips are files of {rate}/{split}/ (fix the split file)")
                source = bundle / str(rate) / split / name
                audio, sr = sf.read(str(source), dtype="float32")
                if sr != rate:
                    raise ValueError(f"{source} is {sr} Hz, not {rate} Hz like its folder "
                                     f"(check_bundle names such files)")
                y = resample_clip(audio, rate, target, meta.get("sample_duration"), resampler)
                out = partial / str(target) / split / name
                out.parent.mkdir(parents=True, exist_ok=True)
                # hear-preprocess's wavs are 16-bit PCM; soundfile clips ringing past full scale.
                sf.write(str(out), y, target, subtype="PCM_16")
                bar.update()
    (partial / MARKER).write_text(json.dumps(dict(marker, method=METHOD), indent=1) + "\n")
    if view.is_symlink() or view.is_file():
        view.unlink()
    elif view.exists():  # a view of an older bundle, or one without a marker
        shutil.rmtree(view)
    partial.rename(view)
    return marker["clips"]
