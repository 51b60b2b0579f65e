"""Per package: fetch, extract archives, decode every audio file once; cached under out/scan.

What is decoded: files with a suffix in READABLE_SUFFIXES, plus suffix-less files whose
header is Ogg / FLAC / RIFF-WAVE; symlinks are skipped (their targets are scanned). Each
file gives its length, rate, channels, peak, content hash and fingerprint, or the decoding
error. Cached in scan/PACKAGE.tsv (one row per file), .npy (the readable files'
fingerprints, in row order) and .json (package facts), so a rerun skips finished packages.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import re
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..debian import fetch_package
from .archives import extract_archives
from .audio_analysis import (FP_BANDS, FP_FRAMES, READABLE_SUFFIXES, SCAN_VERSION, content_hash, fingerprint,
                             read_audio)

log = logging.getLogger(__name__)

SCAN_COLUMNS = ["relpath", "seconds", "sample_rate", "channels", "peak", "content_sha256", "error"]


def licence_of(root: Path, package: str) -> str:
    """The DEP-5 licence identifiers of a package's copyright file, most frequent first."""
    copyright_file = root / "usr" / "share" / "doc" / package / "copyright"
    if copyright_file.exists():
        text = copyright_file.read_text(errors="replace")
        found = re.findall(r"^License:\s*([A-Za-z][\w.+-]*(?: or [\w.+-]+)*)\s*$", text, re.M)
        if found:
            return " / ".join(k for k, _ in Counter(found).most_common(4))
    return "see /usr/share/doc/%s/copyright" % package


def _sniff_audio(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(12)
    return head[:4] in (b"OggS", b"fLaC") or (head[:4] == b"RIFF" and head[8:12] == b"WAVE")


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
    """Decode a file once: length, rate, channels, peak, content hash, float16 fingerprint (or the error)."""
    try:
        audio, rate = read_audio(path)
        if audio.shape[0] == 0:
            raise ValueError("empty")
    except Exception as e:  # corrupt or unsupported: counted, not fatal
        return {"error": (str(e).strip() or type(e).__name__).replace("\t", " ").replace("\n", " ")[:200]}
    return {"seconds": audio.shape[0] / rate, "rate": int(rate), "channels": int(audio.shape[1]),
            "peak": float(np.abs(audio).max()), "sha": content_hash(audio, rate),
            "fp": fingerprint(audio, rate).astype(np.float16)}


def _scan_paths(out: Path, package: str) -> tuple[Path, Path, Path]:
    d = out / "scan"
    return d / f"{package}.tsv", d / f"{package}.npy", d / f"{package}.json"


def scan_package(out: Path, package: str, workers: int = 1) -> dict:
    """Fetch, extract and decode one package; returns its facts (deb, sizes, licence, scan time).

    Cached under out/scan: a rerun returns the cached facts unless SCAN_VERSION changed.
    """
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
    # the .json is written last: a scan interrupted before it is redone
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
    """(rows, float32 [readable files, FP_FRAMES * FP_BANDS] fingerprints) of a package's scan.

    A readable row holds package, relpath, seconds, rate, channels, peak, sha and fp (its
    fingerprint's row); an unreadable one package, relpath and error.
    """
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


def load_scans(out: Path, packages: list[str]) -> tuple[list[dict], np.ndarray]:
    """The scans of `packages` joined, in order: rows' fp index the joined fingerprints."""
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
    return rows, fps
