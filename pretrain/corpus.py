"""Build a pretraining corpus of real audio from Debian packages.

    python -m pretrain corpus --out data/pretrain_corpus

Steps, per package of `SOURCES` (a tqdm bar over packages, one over files, log lines):

1. fetch: `apt-get download` + `dpkg-deb -x` (pretrain.debian.fetch_package), once.
2. extract: audio members of game archives (.pk3 / .zip / .wz: zip files) are extracted
   under `unpacked/PACKAGE/_archives/ARCHIVE_PATH/`.
3. scan: every file soundfile decodes (suffixes `READABLE_SUFFIXES`, plus suffix-less files
   whose header is Ogg / FLAC / RIFF-WAVE; symlinks are skipped) is decoded once, giving its
   length, a content hash and a fingerprint. Cached in `scan/PACKAGE.tsv` + `.npy`, so a
   rerun skips finished packages.

Then, over all packages:

4. filter: files shorter than `MIN_SECONDS` (a 2 s training crop of a 0.2 s click is that
   click tiled ten times) and digitally silent files are dropped.
5. exact duplicates: same `content_sha256` = sha256 of (sample rate, channels, the decoded
   samples as 16-bit PCM), so the same audio in .wav and .flac, or renamed, is one file
   whatever the container, tags or file name.
6. near duplicates (the same recording re-encoded, resampled, at another gain, or trimmed):
   a. candidates: the cosine similarity of two files' fingerprints is >= `NEAR_CANDIDATE`
      and their lengths differ by at most 10 % + 0.25 s. The fingerprint: mono, from the
      first sample above -40 dB of the peak (leading silence removed), the first
      `FP_SPAN` s; log power in `FP_BANDS` mel bands (60 Hz - 5 kHz, computed in Hz, so the
      sample rate does not matter) pooled into `FP_FRAMES` equal time slices, minus its
      mean (gain invariant), unit norm.
   b. confirmation: the same `FP_SPAN` s of both files, mono, resampled to 8 kHz, have a
      normalised cross-correlation peak >= `NEAR_NCC` within +-0.5 s of lag (same
      waveform: a re-recording or another take of a line scores far lower; measured on this
      corpus: copies >= 0.95, sibling takes and different words 0.1 - 0.9).
   Confirmed pairs are joined (union-find); each group keeps one file: the highest sample
   rate, then the longest, then the earliest package of SOURCES, then the path. A pair's
   similarity depends only on the two content hashes: it is appended to
   scan/near_pairs.tsv as it is computed, so only a first build (or new files) pays for the
   check (~100k candidate pairs for the default sources), even after an interruption.
7. share cap: no package may hold more than `MAX_SHARE` of the kept hours; a package above
   it loses files in content-hash order (deterministic) until it fits.

Outputs: `manifest.tsv` (path relative to the manifest, package, licence, seconds,
sample_rate, channels, content_sha256, category; pretrain.data reads it), `dedup.tsv` (every
dropped file, why, and which kept file it duplicates), `SOURCES.md` (per-package table,
what each step removed, durations, disk use, corpus hash) and `corpus.json` (the same,
machine-readable). The corpus hash is sha256 over the sorted lines
"package<TAB>path inside the package<TAB>content_sha256" of the kept files (`corpus_hash`):
it changes when any kept audio changes, and not with the output folder or row order.

The sources are disjoint from the packages of the offline evaluation suite's projects
(`pretrain.debian.is_eval_package`; `build` refuses them) and from the packages reserved for
held-out evaluation (../shared/REFERENCE.md §6; tests/test_data_sources.py checks SOURCES).
Clips are not committed: their licences (mostly GPL / CC-BY-SA) travel with the packages,
the manifest records each package's, and /usr/share/doc/PACKAGE/copyright has per-file terms.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import shutil
import time
import zipfile
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath

import numpy as np
import soundfile as sf
from tqdm import tqdm

from .data import AUDIO_SUFFIXES
from .debian import fetch_package, is_eval_package

log = logging.getLogger("pretrain.corpus")


@dataclass(frozen=True)
class Source:
    category: str  # speech | music | effects | ui | instruments: what most of its hours are
    what: str
    licence: str   # of the audio, from /usr/share/doc/PACKAGE/copyright (per-file terms there)


CATEGORIES = ("speech", "music", "effects", "ui", "instruments")

# package -> what it holds. Real recordings only (no synthetic TTS voices). Surveyed in
# bookworm main; download sizes and hours are in SOURCES.md of a build. Left out: packages
# whose audio is a small part of a large download (0ad-data 1.4 GB for 3.8 h,
# supertuxkart-data, redeclipse-data, berusky2-data, torcs-data, nexuiz-data, ...), formats
# soundfile cannot read (.sf2/.sf3 soundfonts, tracker modules, WavPack, MIDI), packages
# whose clips are nearly all shorter than MIN_SECONDS (gcin-voice: 2,269 of 2,358 Mandarin
# syllables), the Tux4Kids games (tuxmath-data, tuxtype-data: the umbrella project of a
# held-out package), and the evaluation projects' and held-out families (tests/test_data_sources.py).
SOURCES: dict[str, Source] = {
    # speech: voice acting and spoken words in many languages (plus some music and effects)
    "fillets-ng-data": Source("speech", "Fish Fillets NG: English spoken dialogue, music, effects", "GPL-2"),
    "fillets-ng-data-cs": Source("speech", "Fish Fillets NG: Czech spoken dialogue", "GPL-2"),
    "fillets-ng-data-nl": Source("speech", "Fish Fillets NG: Dutch spoken dialogue", "GPL-2"),
    "ktuberling-data": Source("speech", "KTuberling: object names spoken in ~20 languages", "GPL-2+"),
    "qabcs-data": Source("speech", "qABCs: letters and words spoken in 7 languages, animal noises",
                         "GPL-3+ (some CC0-1.0 / public domain)"),
    "planetblupi-common": Source("speech", "Planet Blupi: character voices in 5 languages, effects", "GPL-3+"),
    "warmux-data": Source("speech", "WarMUX: character voices, weapon effects, music", "GPL-2+"),
    "megaglest-data": Source("speech", "MegaGlest: unit voices and battle effects, music", "CC-BY-SA-3.0"),
    "warzone2100-data": Source("speech", "Warzone 2100: spoken radio messages, effects", "GPL-2+"),
    "openarena-data": Source("speech", "OpenArena: announcer and player voices, effects", "GPL-2+"),
    "openarena-088-data": Source("speech", "OpenArena 0.8.8: voices, effects, music", "GPL-2+"),
    # music
    "warzone2100-music": Source("music", "Warzone 2100 soundtrack (Ogg Opus)", "GPL-2+"),
    "ufoai-music": Source("music", "UFO: Alien Invasion soundtrack",
                          "GPL-2+ / GPL-2 / CC-BY-3.0 / CC-BY-SA-3.0 (per track)"),
    "planetblupi-music-ogg": Source("music", "Planet Blupi soundtrack", "GPL-3+"),
    "wesnoth-1.16-music": Source("music", "Battle for Wesnoth orchestral soundtrack", "GPL-2+"),
    "nexuiz-music": Source("music", "Nexuiz electronic soundtrack", "GPL-2+"),
    "singularity-music": Source("music", "Endgame: Singularity soundtrack", "CC-BY-SA-3.0"),
    "drascula-music": Source("music", "Drascula adventure game soundtrack", "Drascula-License (BSD-like)"),
    "asc-music": Source("music", "Advanced Strategic Command soundtrack", "GPL-2+"),
    "hyperrogue-music": Source("music", "HyperRogue soundtrack and effects", "CC-BY-SA-3.0 / CC-BY-SA-4.0"),
    "naev-data": Source("music", "Naev space soundtrack and effects",
                        "GPL-2+ / GPL-3 / CC-BY-3.0 / CC-BY-SA-3.0 / public domain (per file)"),
    "marsshooter-data": Source("music", "M.A.R.S. soundtrack and effects",
                               "CC-BY-SA-3.0 (music) / CC-BY-3.0 / public domain"),
    "pushover-data": Source("music", "Pushover soundtrack and effects", "GPL-3+"),
    "starfighter-data": Source("music", "Project: Starfighter soundtrack and effects", "GPL-2+"),
    "blobwars-data": Source("music", "Blob Wars soundtrack and effects",
                            "CC-BY-SA-3.0 / CC-BY-3.0 (music); GPL-2+ / BSD-3-clause (effects)"),
    "openclonk-data": Source("music", "OpenClonk soundtrack", "ISC; some CC-BY-3.0 / CC0-1.0"),
    "trackballs-data": Source("music", "Trackballs soundtrack and effects",
                              "GPL-2+; Ethymonics Free Music License (3 tracks)"),
    "zaz-data": Source("music", "Zaz soundtrack and effects", "CC-BY-SA-3.0 (music) / GPL-3+"),
    "lordsawar-data": Source("music", "LordsAWar! soundtrack", "GPL-3+"),
    "xmoto-data": Source("music", "X-Moto soundtrack and effects", "GPL-2+"),
    "davegnukem-data": Source("music", "Dave Gnukem soundtrack and effects",
                              "Expat or GPL-2 or GPL-3; some CC0-1.0 / CC-BY-3.0"),
    # game sound effects (and some music)
    "supertux-data": Source("effects", "SuperTux music and sound effects", "GPL-2+ (music) / GPL-3+"),
    "frozen-bubble-data": Source("effects", "Frozen Bubble music and sound effects", "GPL-2"),
    "lincity-ng-data": Source("effects", "LinCity-NG ambient music and sound effects", "GPL-2+"),
    "colobot-common-sounds": Source("effects", "Colobot sound effects and music", "GPL-3+"),
    "freedroidrpg-data": Source("effects", "FreedroidRPG sound effects and music", "GPL-2+"),
    "ufoai-sound": Source("effects", "UFO: Alien Invasion sound effects and ambience",
                          "GPL-2+ / CC-BY-SA-3.0 / public domain (per file)"),
    "btanks-data": Source("effects", "Battle Tanks sound effects and music", "GPL-2 with Battle Tanks exception"),
    "enigma-data": Source("effects", "Enigma sound effects and music", "GPL-2"),
    "triplea": Source("effects", "TripleA battle sound effects", "GPL-2+"),
    "pinball-data": Source("effects", "Emilia Pinball sound effects and music", "GPL-2"),
    "holotz-castle-data": Source("effects", "Holotz's Castle sound effects and music", "GPL-2+"),
    "gigalomania-data": Source("effects", "Gigalomania sound effects and music",
                               "GPL-2+; some CC-BY-3.0 / CC0-1.0"),
    "plee-the-bear-data": Source("effects", "Plee the Bear sound effects, voices, music", "CC-BY-SA-3.0"),
    "extremetuxracer-data": Source("effects", "Extreme Tux Racer sound effects and music", "GPL-2+"),
    "searchandrescue-data": Source("effects", "Search and Rescue engine, radio and ambience sounds", "GPL"),
    "lugaru-data": Source("effects", "Lugaru combat sound effects and music", "CC-BY-SA-3.0"),
    "alienblaster-data": Source("effects", "Alien Blaster sound effects and music", "GPL-2+"),
    "chromium-bsu-data": Source("effects", "Chromium B.S.U. sound effects", "Clarified-Artistic"),
    "mirrormagic-data": Source("effects", "Mirror Magic sound effects", "GPL-2"),
    # desktop sound themes
    "sound-theme-freedesktop": Source("ui", "freedesktop.org notification sounds", "GPL-2+ / CC-BY-SA-3.0"),
    "oxygen-sounds": Source("ui", "KDE Oxygen notification sounds", "LGPL-3+"),
    "lomiri-sounds": Source("ui", "Lomiri ringtones and notification sounds",
                            "CC0-1.0 / CC-BY-3.0 / CC-BY-SA-3.0 / CC-BY-4.0 (per file)"),
    "deepin-sound-theme": Source("ui", "Deepin desktop sounds", "GPL-3"),
    "sound-icons": Source("ui", "speech-dispatcher sound icons", "GPL-2+"),
    # instrument and loop samples
    "sonic-pi-samples": Source("instruments", "Sonic Pi instrument, drum and ambient samples",
                               "CC0-1.0 (most) / CC-BY-SA-4.0"),
    "lmms-common": Source("instruments", "LMMS instrument and drum samples", "GPL-2+"),
}

# Ogg Opus (.opus) is an Ogg file that libsndfile >= 1.0.29 decodes; pretrain.data reads any
# path a manifest lists with soundfile, whatever its suffix.
READABLE_SUFFIXES = frozenset(AUDIO_SUFFIXES | {".opus"})
ARCHIVE_SUFFIXES = frozenset({".zip", ".pk3", ".wz"})
ARCHIVE_DIR = "_archives"
MIN_SECONDS = 0.5
SILENT_PEAK = 1e-4          # -80 dBFS: digital silence
NEAR_CANDIDATE = 0.80       # fingerprint cosine for a candidate pair
NEAR_NCC = 0.90             # waveform cross-correlation that confirms it
LENGTH_TOLERANCE = (0.10, 0.25)  # candidates' lengths differ by <= 10 % + 0.25 s
MAX_SHARE = 0.40
FP_BANDS, FP_FRAMES, FP_SPAN = 24, 32, 10.0
FP_WINDOW, FP_HOP, FP_FMIN, FP_FMAX = 0.05, 0.0125, 60.0, 5000.0
NCC_RATE, NCC_MAX_LAG = 8000, 0.5
ACTIVE_DB = -40.0
SCAN_VERSION = 1            # bump when the scan's hash or fingerprint changes
MANIFEST_COLUMNS = ["path", "package", "licence", "seconds", "sample_rate", "channels",
                    "content_sha256", "category"]


def licence_of(root: Path, package: str) -> str:
    """The DEP-5 licence identifiers of a package's copyright file, most frequent first."""
    copyright_file = root / "usr" / "share" / "doc" / package / "copyright"
    if copyright_file.exists():
        text = copyright_file.read_text(errors="replace")
        found = re.findall(r"^License:\s*([A-Za-z][\w.+-]*(?: or [\w.+-]+)*)\s*$", text, re.M)
        if found:
            return " / ".join(k for k, _ in Counter(found).most_common(4))
    return "see /usr/share/doc/%s/copyright" % package


# -- audio analysis (numpy only) -----------------------------------------------------------

def _mono(audio: np.ndarray) -> np.ndarray:
    return audio.mean(axis=1) if audio.ndim == 2 else audio


def _active_start(x: np.ndarray) -> int | None:
    """First sample above ACTIVE_DB of the peak; None for digital silence."""
    peak = float(np.abs(x).max()) if x.size else 0.0
    if peak <= SILENT_PEAK:
        return None
    return int(np.argmax(np.abs(x) > peak * 10 ** (ACTIVE_DB / 20)))


def _active_span(x: np.ndarray) -> tuple[int, int] | None:
    """[first, last] samples above ACTIVE_DB of the peak."""
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

    Log mel power of the first FP_SPAN s after the leading silence, in FP_FRAMES equal
    slices of that span (or of the whole sound if shorter), minus its mean: invariant to
    gain and (above 10 kHz) to the sample rate, and to trimming silence.
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
    """sha256 of (rate, channels, samples as 16-bit PCM): the same decoded audio in any container."""
    audio = np.asarray(audio, dtype=np.float32)
    audio = audio[:, None] if audio.ndim == 1 else audio
    pcm = np.clip(np.round(audio * 32768.0), -32768, 32767).astype("<i2")
    h = hashlib.sha256(f"{int(rate)}:{audio.shape[1]}:".encode())
    h.update(np.ascontiguousarray(pcm).tobytes())
    return h.hexdigest()


def ncc_snippet(audio: np.ndarray, rate: int) -> np.ndarray:
    """Mono 8 kHz float32 audio from NCC_MAX_LAG s before the sound starts, FP_SPAN s + 2 lags long."""
    x = _mono(np.asarray(audio, dtype=np.float32))
    a = _active_start(x)
    if a is None:
        return np.zeros(1, np.float32)
    x = x[max(0, a - int(NCC_MAX_LAG * rate)): a + int((FP_SPAN + NCC_MAX_LAG) * rate)].astype(np.float64)
    n = max(1, int(round(len(x) * NCC_RATE / rate)))
    spec = np.fft.rfft(x)[: n // 2 + 1]  # band-limit to 4 kHz and resample in one step
    spec = np.pad(spec, (0, n // 2 + 1 - len(spec)))
    return (np.fft.irfft(spec, n) * (n / len(x))).astype(np.float32)


def waveform_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Peak |normalised cross-correlation| of two ncc_snippets within +-NCC_MAX_LAG s."""
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
    return sf.read(str(path), dtype="float32", always_2d=True)


def read_head(path, seconds: float = 60.0) -> tuple[np.ndarray, int]:
    """The first `seconds` of a file (enough for an ncc_snippet), or all of it if that is silent."""
    rate = sf.info(str(path)).samplerate
    audio, rate = sf.read(str(path), frames=int(seconds * rate), dtype="float32", always_2d=True)
    if _active_start(_mono(audio)) is None:
        return read_audio(path)
    return audio, rate


def near_duplicate(path_a, path_b) -> tuple[float, float]:
    """(fingerprint cosine, waveform similarity) of two files; both >= the thresholds = near duplicate."""
    (xa, ra), (xb, rb) = read_audio(path_a), read_audio(path_b)
    cos = float(fingerprint(xa, ra) @ fingerprint(xb, rb))
    return cos, waveform_similarity(ncc_snippet(xa, ra), ncc_snippet(xb, rb))


# -- package tree -> candidate files ---------------------------------------------------------

def _sniff_audio(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(12)
    return head[:4] in (b"OggS", b"fLaC") or (head[:4] == b"RIFF" and head[8:12] == b"WAVE")


def extract_archives(root: Path) -> int:
    """Extract the audio members of zip archives (.pk3, .zip, .wz) under root/_archives, once."""
    done = root / ARCHIVE_DIR / ".complete"
    if done.exists():
        return int(done.read_text() or 0)
    shutil.rmtree(root / ARCHIVE_DIR, ignore_errors=True)
    count = 0
    for archive in sorted(p for p in root.rglob("*") if p.suffix.lower() in ARCHIVE_SUFFIXES
                          and p.is_file() and not p.is_symlink()):
        if not zipfile.is_zipfile(archive):
            continue
        dest = root / ARCHIVE_DIR / archive.relative_to(root)
        with zipfile.ZipFile(archive) as z:
            for m in z.infolist():
                parts = [p for p in PurePosixPath(m.filename).parts if p not in ("", ".", "..", "/")]
                if m.is_dir() or not parts or PurePosixPath(parts[-1]).suffix.lower() not in READABLE_SUFFIXES:
                    continue
                target = dest.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(m) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                count += 1
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text(str(count))
    return count


def audio_candidates(root: Path) -> tuple[list[Path], int]:
    """(files to decode, symlinks skipped): readable suffixes, or no suffix and an audio header."""
    files, links = [], 0
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            links += p.suffix.lower() in READABLE_SUFFIXES
            continue
        if not p.is_file():
            continue
        suffix = p.suffix.lower()
        if suffix in READABLE_SUFFIXES or (suffix == "" and p.stat().st_size > 64 and _sniff_audio(p)):
            files.append(p)
    return files, links


def analyse(path) -> dict:
    """Decode a file once: length, rate, channels, peak, content hash, fingerprint (or the error)."""
    try:
        audio, rate = read_audio(path)
        if audio.shape[0] == 0:
            raise ValueError("empty")
    except Exception as e:  # corrupt or unsupported: counted, not fatal
        return {"error": (str(e).strip() or type(e).__name__).replace("\t", " ").replace("\n", " ")[:200]}
    return {"seconds": audio.shape[0] / rate, "rate": int(rate), "channels": int(audio.shape[1]),
            "peak": float(np.abs(audio).max()), "sha": content_hash(audio, rate),
            "fp": fingerprint(audio, rate).astype(np.float16)}


# -- per-package scan, cached -------------------------------------------------------------

SCAN_COLUMNS = ["relpath", "seconds", "sample_rate", "channels", "peak", "content_sha256", "error"]


def _scan_paths(out: Path, package: str) -> tuple[Path, Path, Path]:
    d = out / "scan"
    return d / f"{package}.tsv", d / f"{package}.npy", d / f"{package}.json"


def scan_package(out: Path, package: str, workers: int = 1) -> dict:
    """Fetch, extract and decode one package; cached under out/scan (reruns skip it)."""
    tsv, npy, meta = _scan_paths(out, package)
    if tsv.exists() and meta.exists():
        info = json.loads(meta.read_text())
        if info.get("version") == SCAN_VERSION:
            return info
    t0 = time.time()
    root = fetch_package(package, out)
    members = extract_archives(root)
    files, links = audio_candidates(root)
    results = []
    bar = tqdm(total=len(files), desc=package, unit="file", leave=False)
    if workers > 1 and len(files) > 8:
        with ProcessPoolExecutor(workers) as pool:
            for r in pool.map(analyse, [str(f) for f in files], chunksize=8):
                results.append(r)
                bar.update()
    else:
        for f in files:
            results.append(analyse(f))
            bar.update()
    bar.close()
    tsv.parent.mkdir(parents=True, exist_ok=True)
    fps = np.stack([r["fp"] for r in results if "fp" in r]) if any("fp" in r for r in results) \
        else np.zeros((0, FP_FRAMES * FP_BANDS), np.float16)
    np.save(npy.with_suffix(".tmp.npy"), fps)
    npy.with_suffix(".tmp.npy").replace(npy)
    with open(tsv.with_suffix(".tmp"), "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(SCAN_COLUMNS)
        for path, r in zip(files, results):
            rel = path.relative_to(root).as_posix()
            if "error" in r:
                w.writerow([rel, "", "", "", "", "", r["error"]])
            else:
                w.writerow([rel, f"{r['seconds']:.6f}", r["rate"], r["channels"], f"{r['peak']:.6g}", r["sha"], ""])
    debs = sorted((out / "debs").glob(f"{package}_*.deb"))
    info = {"version": SCAN_VERSION, "package": package, "deb": debs[-1].name if debs else None,
            "download_bytes": debs[-1].stat().st_size if debs else 0,
            "unpacked_bytes": _tree_bytes(root), "archive_members": members, "symlinks_skipped": links,
            "licence_dep5": licence_of(root, package), "scan_seconds": round(time.time() - t0, 1)}
    tsv.with_suffix(".tmp").replace(tsv)
    meta.write_text(json.dumps(info, indent=1))
    ok = [r for r in results if "error" not in r]
    log.info("%s: %d audio files (%d in archives), %.2f h, %d unreadable, %.0f s",
             package, len(ok), members, sum(r["seconds"] for r in ok) / 3600, len(results) - len(ok),
             info["scan_seconds"])
    return info


def _tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


def load_scan(out: Path, package: str) -> tuple[list[dict], np.ndarray]:
    """Rows of a package's scan (readable ones with their fingerprint index) and fingerprints."""
    tsv, npy, _ = _scan_paths(out, package)
    fps = np.load(npy).astype(np.float32)
    rows, k = [], 0
    with open(tsv, newline="") as f:
        for r in csv.DictReader(f, delimiter="\t"):
            if r["error"]:
                rows.append({"package": package, "relpath": r["relpath"], "error": r["error"]})
                continue
            rows.append({"package": package, "relpath": r["relpath"], "seconds": float(r["seconds"]),
                         "rate": int(r["sample_rate"]), "channels": int(r["channels"]),
                         "peak": float(r["peak"]), "sha": r["content_sha256"], "fp": k})
            k += 1
    return rows, fps


# -- corpus-level steps ---------------------------------------------------------------------

def corpus_hash(rows) -> str:
    """sha256 over the sorted "package\\tpath-in-package\\tcontent_sha256" lines of (package, relpath, sha) rows."""
    h = hashlib.sha256()
    for line in sorted(f"{p}\t{r}\t{s}\n" for p, r, s in rows):
        h.update(line.encode())
    return h.hexdigest()


class _UnionFind:
    def __init__(self, n):
        self.parent = list(range(n))

    def find(self, i):
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i, j):
        self.parent[self.find(i)] = self.find(j)


def candidate_pairs(fps: np.ndarray, seconds: np.ndarray, threshold: float = NEAR_CANDIDATE, block: int = 512):
    """(i, j, cosine) with i < j, similar lengths and fingerprint cosine >= threshold, in order of length."""
    rel, extra = LENGTH_TOLERANCE
    order = np.argsort(seconds, kind="stable")
    s, v = seconds[order], fps[order]
    pairs = []
    for a in range(0, len(s), block):
        b = min(len(s), a + block)
        hi = int(np.searchsorted(s, s[b - 1] * (1 + rel) + extra, side="right"))
        sim = v[a:b] @ v[a:hi].T
        later = np.arange(a, hi)[None, :] > np.arange(a, b)[:, None]
        close = s[None, a:hi] <= s[a:b, None] * (1 + rel) + extra
        for i, j in zip(*np.nonzero((sim >= threshold) & later & close)):
            pairs.append((int(order[a + i]), int(order[a + j]), float(sim[i, j])))
    return pairs


def _preference(row: dict, package_rank: dict) -> tuple:
    """Which copy of a duplicate group is kept: the smallest key."""
    return (-row["rate"], -row["seconds"], package_rank.get(row["package"], len(package_rank)), row["relpath"])


@lru_cache(maxsize=4096)
def _snippet(path: str) -> np.ndarray:
    """ncc_snippet of a file, cached per process (pairs come in order of length: good locality)."""
    return ncc_snippet(*read_head(path)).astype(np.float16)


def _compare_chunk(paths_and_pairs) -> list[float | None]:
    """Waveform similarity of (path_a, path_b) pairs, in order (None: unreadable); a worker's job."""
    out = []
    for a, b in paths_and_pairs:
        try:
            out.append(waveform_similarity(_snippet(a), _snippet(b)))
        except Exception as e:  # a file that broke since the scan: not a duplicate
            log.warning("cannot compare %s and %s: %s", a, b, e)
            out.append(None)
    return out


NEAR_CACHE_KEY = f"ncc v{SCAN_VERSION} rate={NCC_RATE} lag={NCC_MAX_LAG} span={FP_SPAN} active={ACTIVE_DB}"


def _load_near_cache(path: Path | None) -> dict:
    if path is None or not path.exists():
        return {}
    with open(path) as f:
        if f.readline().rstrip("\n") != NEAR_CACHE_KEY:
            return {}
        known = {}
        for line in f:
            parts = line.rstrip("\n").split("\t")
            # lines are written as "%.4f"; one cut short by an interrupted run is ignored
            if len(parts) == 3 and re.fullmatch(r"\d+\.\d{4}", parts[2]):
                known[(parts[0], parts[1])] = float(parts[2])
        return known


def find_near_duplicates(rows: list[dict], fps: np.ndarray, path_of, package_rank: dict, progress=True,
                         workers: int = 1, cache: Path | None = None):
    """([(dropped row, kept row, waveform similarity)], number of candidate pairs) among rows.

    Candidate pairs (similar length, fingerprint cosine >= NEAR_CANDIDATE) are confirmed by
    waveform similarity >= NEAR_NCC. A pair's similarity depends only on the two content
    hashes, so it is appended to `cache` as it is computed (reruns, even of an interrupted
    check, skip the pairs already compared)."""
    seconds = np.array([r["seconds"] for r in rows])
    pairs = candidate_pairs(fps, seconds)  # in order of length
    known = _load_near_cache(cache)
    key = [tuple(sorted((rows[i]["sha"], rows[j]["sha"]))) for i, j, _ in pairs]
    todo = [k for k in range(len(pairs)) if key[k] not in known]
    if todo:
        _snippet.cache_clear()
        jobs = [(str(path_of(rows[pairs[k][0]])), str(path_of(rows[pairs[k][1]]))) for k in todo]
        size = 500
        chunks = [(todo[c:c + size], jobs[c:c + size]) for c in range(0, len(jobs), size)]
        sink = None
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            sink = open(cache, "a" if known else "w")  # known: the file exists with this key
            if not known:
                sink.write(NEAR_CACHE_KEY + "\n")
            elif not cache.read_bytes().endswith(b"\n"):  # an interrupted run's last line
                sink.write("\n")
        bar = tqdm(total=len(jobs), desc="near-duplicate check", unit="pair", leave=False, disable=not progress)
        pool = ProcessPoolExecutor(workers) if workers > 1 and len(chunks) > 1 else None
        try:
            work = [c[1] for c in chunks]
            results = pool.map(_compare_chunk, work) if pool else map(_compare_chunk, work)
            for (ks, _), sims in zip(chunks, results):
                for k, sim in zip(ks, sims):
                    if sim is not None:
                        known[key[k]] = sim
                        if sink:
                            sink.write(f"{key[k][0]}\t{key[k][1]}\t{sim:.4f}\n")
                if sink:
                    sink.flush()
                bar.update(len(ks))
        finally:
            bar.close()
            if sink:
                sink.close()
            if pool:
                pool.shutdown(cancel_futures=True)
    uf, score = _UnionFind(len(rows)), {}
    for (i, j, _), k in zip(pairs, key):
        sim = known.get(k)
        if sim is not None and sim >= NEAR_NCC:
            uf.union(i, j)
            score[i] = max(score.get(i, 0.0), sim)
            score[j] = max(score.get(j, 0.0), sim)
    groups = defaultdict(list)
    for i in range(len(rows)):
        groups[uf.find(i)].append(i)
    dropped = []
    for members in groups.values():
        if len(members) > 1:
            keep = min(members, key=lambda k: _preference(rows[k], package_rank))
            dropped += [(rows[k], rows[keep], score.get(k, 0.0)) for k in members if k != keep]
    log.info("near duplicates: %d candidate pairs (%d compared now), %d files in duplicate groups dropped",
             len(pairs), len(todo), len(dropped))
    return dropped, len(pairs)


def share_ceiling(hours: list[float], max_share: float) -> float | None:
    """Hours c such that capping every package at c leaves each at most max_share of the total:
    the largest c with c = max_share * sum(min(h, c)) (water-filling). inf if nothing needs
    capping; None if the cap cannot be met (fewer than 1 / max_share packages)."""
    h = sorted(hours, reverse=True)
    for k in range(len(h)):  # k packages capped at c, the rest kept whole
        if 1 - k * max_share <= 0:
            break
        c = max_share * sum(h[k:]) / (1 - k * max_share)
        if h[k] <= c + 1e-9 and (k == 0 or h[k - 1] >= c):
            return float("inf") if k == 0 else c
    return None


def cap_shares(rows: list[dict], max_share: float) -> list[dict]:
    """Drop rows (in content-hash order, per package) so that no package holds more than
    max_share of the hours; returns the dropped rows and edits rows in place."""
    hours = Counter()
    for r in rows:
        hours[r["package"]] += r["seconds"]
    ceiling = share_ceiling(list(hours.values()), max_share)
    if ceiling is None:
        log.warning("a %.0f%% cap per package cannot hold with %d packages; not capping", 100 * max_share, len(hours))
        return []
    dropped = []
    for package, h in hours.items():
        if h <= ceiling:
            continue
        acc = 0.0
        for r in sorted((r for r in rows if r["package"] == package), key=lambda r: r["sha"]):
            if acc + r["seconds"] <= ceiling:
                acc += r["seconds"]
            else:
                dropped.append(r)
        log.info("%s: %.2f h > %.0f%% of the corpus, capped at %.2f h", package, h / 3600, 100 * max_share, acc / 3600)
    gone = {id(r) for r in dropped}
    rows[:] = [r for r in rows if id(r) not in gone]
    return dropped


def check_packages(packages) -> None:
    bad = sorted(p for p in packages if is_eval_package(p))
    if bad:
        raise ValueError(f"{bad} feed the evaluation suite (or belong to its projects); "
                         "pretraining on them would leak test audio")


def _workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def build(out: Path, packages, *, min_seconds: float = MIN_SECONDS, max_share: float = MAX_SHARE,
          workers: int | None = None) -> Path:
    """Fetch, scan, filter and deduplicate `packages` into out/manifest.tsv (see the module doc)."""
    packages = list(dict.fromkeys(packages))
    check_packages(packages)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    workers = workers or _workers()
    infos = {}
    for package in tqdm(packages, desc="packages", unit="pkg"):
        infos[package] = scan_package(out, package, workers)

    rank = {p: i for i, p in enumerate(packages)}
    rows, fps_all = [], []
    for package in packages:
        r, f = load_scan(out, package)
        offset = sum(len(x) for x in fps_all)
        for row in r:
            if "fp" in row:
                row["fp"] += offset
        rows += r
        fps_all.append(f)
    fps = np.concatenate(fps_all) if fps_all else np.zeros((0, FP_FRAMES * FP_BANDS), np.float32)

    def path_of(row):
        return out / "unpacked" / row["package"] / row["relpath"]

    stats = {p: Counter() for p in packages}  # files_/seconds_ per step
    removed = []  # (row, reason, duplicate_of, score)

    def drop(row, reason, other=None, score=""):
        removed.append((row, reason, other, score))
        stats[row["package"]][f"files_{reason}"] += 1
        stats[row["package"]][f"seconds_{reason}"] += row.get("seconds", 0.0)

    readable = []
    for row in rows:
        s = stats[row["package"]]
        if "error" in row:
            drop(row, "unreadable", score=row["error"])
            continue
        s["files_found"] += 1
        s["seconds_found"] += row["seconds"]
        if row["seconds"] < min_seconds:
            drop(row, "short")
        elif row["peak"] <= SILENT_PEAK:
            drop(row, "silent")
        else:
            readable.append(row)
    for row in readable:
        stats[row["package"]]["files_before_dedup"] += 1
        stats[row["package"]]["seconds_before_dedup"] += row["seconds"]

    by_sha = defaultdict(list)
    for row in readable:
        by_sha[row["sha"]].append(row)
    unique = []
    for group in by_sha.values():
        group.sort(key=lambda r: _preference(r, rank))
        unique.append(group[0])
        for r in group[1:]:
            drop(r, "exact", group[0], "1")
    unique.sort(key=lambda r: (rank[r["package"]], r["relpath"]))
    log.info("exact duplicates: %d files dropped", sum(len(g) - 1 for g in by_sha.values()))

    near, n_pairs = find_near_duplicates(unique, fps[[r["fp"] for r in unique]] if unique else fps[:0],
                                         path_of, rank, workers=workers, cache=out / "scan" / "near_pairs.tsv")
    gone = set()
    for r, keep, score in near:
        drop(r, "near", keep, f"{score:.3f}")
        gone.add(id(r))
    kept = [r for r in unique if id(r) not in gone]
    for r in cap_shares(kept, max_share):
        drop(r, "capped")
    for r in kept:
        stats[r["package"]]["files_kept"] += 1
        stats[r["package"]]["seconds_kept"] += r["seconds"]

    digest = corpus_hash((r["package"], r["relpath"], r["sha"]) for r in kept)
    _write_tsv(out / "manifest.tsv", MANIFEST_COLUMNS, (
        [path_of(r).relative_to(out).as_posix(), r["package"], _licence(r["package"], infos),
         f"{r['seconds']:.3f}", r["rate"], r["channels"], r["sha"], _category(r["package"])] for r in kept))
    _write_tsv(out / "dedup.tsv", ["path", "package", "reason", "duplicate_of", "score"], (
        [path_of(r).relative_to(out).as_posix(), r["package"], reason,
         path_of(o).relative_to(out).as_posix() if o else "", score] for r, reason, o, score in removed))
    summary = _summary(out, packages, infos, stats, kept, digest, n_pairs, min_seconds, max_share,
                       time.time() - t0)
    (out / "corpus.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "SOURCES.md").write_text(_sources_md(summary))
    log.info("wrote %s: %d files, %.2f h, corpus sha256 %s", out / "manifest.tsv", len(kept),
             summary["kept"]["hours"], digest)
    return out / "manifest.tsv"


def _licence(package, infos):
    return SOURCES[package].licence if package in SOURCES else infos[package]["licence_dep5"]


def _category(package):
    return SOURCES[package].category if package in SOURCES else ""


def _write_tsv(path: Path, header, rows):
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    tmp.replace(path)


DURATION_BINS = (0.5, 1, 2, 5, 30, 120, float("inf"))


def _summary(out, packages, infos, stats, kept, digest, n_pairs, min_seconds, max_share, seconds):
    steps = ("unreadable", "short", "silent", "exact", "near", "capped")
    total = Counter()
    for s in stats.values():
        total.update(s)
    secs = np.array([r["seconds"] for r in kept]) if kept else np.zeros(1)
    bins = []
    lo = min_seconds
    for hi in DURATION_BINS[1:]:
        m = (secs >= lo) & (secs < hi)
        bins.append({"from_s": lo, "to_s": hi if hi != float("inf") else None, "files": int(m.sum()),
                     "hours": round(float(secs[m].sum()) / 3600, 3)})
        lo = hi
    by_category = Counter()
    for r in kept:
        by_category[_category(r["package"]) or "other"] += r["seconds"] / 3600
    disk_debs = sum(i["download_bytes"] for i in infos.values())
    disk_unpacked = sum(i["unpacked_bytes"] for i in infos.values())
    return {
        "corpus_sha256": digest,
        "corpus_hash_rows": "sorted lines 'package\\tpath inside unpacked/PACKAGE\\tcontent_sha256\\n' of kept files",
        "kept": {"files": len(kept), "hours": round(float(sum(r["seconds"] for r in kept)) / 3600, 3)},
        "found": {"files": total["files_found"], "hours": round(total["seconds_found"] / 3600, 3)},
        "removed": {k: {"files": total[f"files_{k}"], "hours": round(total[f"seconds_{k}"] / 3600, 3)} for k in steps},
        "near_candidate_pairs": n_pairs,
        "hours_by_category": {k: round(v, 3) for k, v in sorted(by_category.items(), key=lambda kv: -kv[1])},
        "durations": {"quantiles_s": {q: round(float(np.quantile(secs, float(q))), 2)
                                      for q in ("0.05", "0.25", "0.5", "0.75", "0.95", "1.0")},
                      "bins": bins},
        "settings": {"min_seconds": min_seconds, "max_share": max_share, "near_candidate": NEAR_CANDIDATE,
                     "near_ncc": NEAR_NCC, "length_tolerance": LENGTH_TOLERANCE,
                     "fingerprint": {"bands": FP_BANDS, "frames": FP_FRAMES, "span_s": FP_SPAN,
                                     "fmin": FP_FMIN, "fmax": FP_FMAX},
                     "scan_version": SCAN_VERSION},
        "disk_bytes": {"debs": disk_debs, "unpacked": disk_unpacked},
        "build_seconds_this_run": round(seconds, 1),
        "scan_seconds_total": round(sum(i["scan_seconds"] for i in infos.values()), 1),
        "packages": [{
            "package": p, "category": _category(p), "what": SOURCES[p].what if p in SOURCES else "",
            "licence": _licence(p, infos), "deb": infos[p]["deb"],
            "download_mb": round(infos[p]["download_bytes"] / 1e6, 1),
            "unpacked_mb": round(infos[p]["unpacked_bytes"] / 1e6, 1),
            **{f"files_{k}": stats[p][f"files_{k}"] for k in ("found",) + steps + ("kept",)},
            "hours_found": round(stats[p]["seconds_found"] / 3600, 3),
            "hours_before_dedup": round(stats[p]["seconds_before_dedup"] / 3600, 3),
            "hours_kept": round(stats[p]["seconds_kept"] / 3600, 3),
        } for p in packages],
    }


def _sources_md(s: dict) -> str:
    k, r = s["kept"], s["removed"]
    lines = [
        "# Pretraining corpus sources", "",
        "Built by `python -m pretrain corpus` (pretrain/corpus.py, whose docstring describes each step).",
        f"**{k['files']} files, {k['hours']:.2f} h** of real audio from {len(s['packages'])} Debian packages.",
        f"Corpus hash (sha256 over the sorted `package<TAB>path-in-package<TAB>content_sha256` lines "
        f"of the kept files): `{s['corpus_sha256']}`", "",
        "| step | files | hours |", "|---|---|---|",
        f"| audio files decoded | {s['found']['files']} | {s['found']['hours']:.2f} |",
        f"| unreadable (soundfile cannot decode) | {r['unreadable']['files']} | - |",
        f"| shorter than {s['settings']['min_seconds']} s | {r['short']['files']} | {r['short']['hours']:.2f} |",
        f"| digitally silent | {r['silent']['files']} | {r['silent']['hours']:.2f} |",
        f"| exact duplicates (same decoded PCM) | {r['exact']['files']} | {r['exact']['hours']:.2f} |",
        f"| near duplicates (same recording re-encoded / resampled / gain / trimmed) | "
        f"{r['near']['files']} | {r['near']['hours']:.2f} |",
        f"| over the {s['settings']['max_share']:.0%} per-package cap | {r['capped']['files']} | {r['capped']['hours']:.2f} |",
        f"| **kept** | **{k['files']}** | **{k['hours']:.2f}** |", "",
        "Hours by category (each package counted under what most of its audio is): "
        + ", ".join(f"{c} {h:.2f}" for c, h in s["hours_by_category"].items()) + ".", "",
        "Durations of the kept files: quantiles " + ", ".join(
            f"{float(q):.0%} {v} s" for q, v in s["durations"]["quantiles_s"].items()) + "; "
        + ", ".join(f"{b['from_s']}-{b['to_s'] if b['to_s'] else ''} s: {b['files']} files / {b['hours']:.2f} h"
                    for b in s["durations"]["bins"]) + ".", "",
        f"Disk: {s['disk_bytes']['debs'] / 1e9:.2f} GB of .deb files + {s['disk_bytes']['unpacked'] / 1e9:.2f} GB "
        f"unpacked (including extracted archive members). Scan time summed over packages: "
        f"{s['scan_seconds_total']:.0f} s; this run: {s['build_seconds_this_run']:.0f} s.", "",
        "| package | category | what | licence | download MB | files decoded | unreadable | short | "
        "exact dup | near dup | capped | files kept | hours decoded | hours before dedup | hours kept |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in s["packages"]:
        lines.append(f"| {p['package']} | {p['category']} | {p['what']} | {p['licence']} | {p['download_mb']:.1f} | "
                     f"{p['files_found']} | {p['files_unreadable']} | {p['files_short'] + p['files_silent']} | "
                     f"{p['files_exact']} | {p['files_near']} | {p['files_capped']} | {p['files_kept']} | "
                     f"{p['hours_found']:.2f} | {p['hours_before_dedup']:.2f} | {p['hours_kept']:.2f} |")
    lines += ["", "Licences: of the package's audio as its /usr/share/doc/PACKAGE/copyright states "
              "(per-file terms there). Every dropped file, with the reason and the kept copy it duplicates, "
              "is listed in dedup.tsv."]
    return "\n".join(lines) + "\n"
