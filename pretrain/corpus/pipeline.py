"""`build`: the corpus pipeline, step by step (the package docstring describes the steps)."""
from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from ..debian import is_eval_package
from .audio_analysis import SILENT_PEAK
from .duplicates import exact_duplicates, find_near_duplicates
from .report import corpus_hash, sources_md, summary, write_dedup, write_manifest
from .scan import load_scans, scan_package
from .share_cap import MAX_SHARE, cap_shares

log = logging.getLogger(__name__)

# A 2 s training crop of a 0.2 s click is that click tiled ten times: too short to learn from.
MIN_SECONDS = 0.5


def check_packages(packages) -> None:
    """Refuse packages of the evaluation suite's projects: pretraining on them would leak test audio."""
    bad = sorted(p for p in packages if is_eval_package(p))
    if bad:
        raise ValueError(f"{bad} feed the evaluation suite (or belong to its projects); "
                         "pretraining on them would leak test audio")


def _workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def build(out: Path, packages, *, min_seconds: float = MIN_SECONDS, max_share: float = MAX_SHARE,
          workers: int | None = None) -> Path:
    """Fetch, scan, filter and deduplicate `packages` into out/manifest.tsv; returns its path.

    packages: Debian package names, in order of preference (it breaks ties between
    duplicate copies). Also writes out/dedup.tsv, corpus.json and SOURCES.md; out/debs,
    out/unpacked and out/scan are reused by a rerun.
    """
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
    rows, fps = load_scans(out, packages)

    def path_of(row):
        return out / "unpacked" / row["package"] / row["relpath"]

    stats = {p: Counter() for p in packages}  # files_STEP / seconds_STEP per package
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

    unique, exact = exact_duplicates(readable, rank)
    for r, keep in exact:
        drop(r, "exact", keep, "1")
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
    write_manifest(out, kept, path_of, infos)
    write_dedup(out, removed, path_of)
    result = summary(packages, infos, stats, kept, digest, n_pairs, min_seconds, max_share, time.time() - t0)
    (out / "corpus.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "SOURCES.md").write_text(sources_md(result))
    log.info("wrote %s: %d files, %.2f h, corpus sha256 %s", out / "manifest.tsv", len(kept),
             result["kept"]["hours"], digest)
    return out / "manifest.tsv"
