"""The corpus build's outputs: manifest.tsv, dedup.tsv, corpus.json, SOURCES.md, and the corpus hash.

manifest.tsv: the kept files, MANIFEST_COLUMNS, paths relative to the manifest (pretrain.data
reads it). dedup.tsv: every dropped file, why, and which kept file it duplicates.
corpus.json: per-package and per-step counts, durations, settings, disk use, corpus hash;
SOURCES.md: the same as tables.
"""
from __future__ import annotations

import csv
import hashlib
from collections import Counter
from pathlib import Path

import numpy as np

from .audio_analysis import FP_BANDS, FP_FMAX, FP_FMIN, FP_FRAMES, FP_SPAN, SCAN_VERSION
from .duplicates import LENGTH_TOLERANCE, NEAR_CANDIDATE, NEAR_NCC
from .sources import SOURCES

MANIFEST_COLUMNS = ["path", "package", "licence", "seconds", "sample_rate", "channels",
                    "content_sha256", "category"]
DEDUP_COLUMNS = ["path", "package", "reason", "duplicate_of", "score"]
# why a file was dropped, in the order the build applies the steps
STEPS = ("unreadable", "short", "silent", "exact", "near", "capped")
DURATION_BINS = (0.5, 1, 2, 5, 30, 120, float("inf"))


def corpus_hash(rows) -> str:
    """sha256 over the sorted "package\\tpath-in-package\\tcontent_sha256\\n" lines of (package, relpath, sha) rows.

    It changes when any kept audio changes, and not with the output folder or row order.
    """
    h = hashlib.sha256()
    for line in sorted(f"{p}\t{r}\t{s}\n" for p, r, s in rows):
        h.update(line.encode())
    return h.hexdigest()


def licence(package: str, infos: dict) -> str:
    """The catalogue's licence of a package, else the one its copyright file states (the scan's)."""
    return SOURCES[package].licence if package in SOURCES else infos[package]["licence_dep5"]


def category(package: str) -> str:
    return SOURCES[package].category if package in SOURCES else ""


def write_tsv(path: Path, header, rows):
    """Write atomically (a .tmp file renamed), so an interrupted build leaves the old file whole."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    tmp.replace(path)


def write_manifest(out: Path, kept: list[dict], path_of, infos: dict):
    write_tsv(out / "manifest.tsv", MANIFEST_COLUMNS, (
        [path_of(r).relative_to(out).as_posix(), r["package"], licence(r["package"], infos),
         f"{r['seconds']:.3f}", r["rate"], r["channels"], r["sha"], category(r["package"])] for r in kept))


def write_dedup(out: Path, removed: list[tuple], path_of):
    """removed: (row, reason, kept row or None, score) in the order the files were dropped."""
    write_tsv(out / "dedup.tsv", DEDUP_COLUMNS, (
        [path_of(r).relative_to(out).as_posix(), r["package"], reason,
         path_of(o).relative_to(out).as_posix() if o else "", score] for r, reason, o, score in removed))


def summary(packages, infos, stats, kept, digest, n_pairs, min_seconds, max_share, seconds) -> dict:
    """corpus.json's content. stats: package -> Counter of files_STEP / seconds_STEP (plus found,
    before_dedup, kept); infos: package -> scan.scan_package's facts; seconds: this run's time."""
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
        by_category[category(r["package"]) or "other"] += r["seconds"] / 3600
    disk_debs = sum(i["download_bytes"] for i in infos.values())
    disk_unpacked = sum(i["unpacked_bytes"] for i in infos.values())
    return {
        "corpus_sha256": digest,
        "corpus_hash_rows": "sorted lines 'package\\tpath inside unpacked/PACKAGE\\tcontent_sha256\\n' of kept files",
        "kept": {"files": len(kept), "hours": round(float(sum(r["seconds"] for r in kept)) / 3600, 3)},
        "found": {"files": total["files_found"], "hours": round(total["seconds_found"] / 3600, 3)},
        "removed": {k: {"files": total[f"files_{k}"], "hours": round(total[f"seconds_{k}"] / 3600, 3)} for k in STEPS},
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
            "package": p, "category": category(p), "what": SOURCES[p].what if p in SOURCES else "",
            "licence": licence(p, infos), "deb": infos[p]["deb"],
            "download_mb": round(infos[p]["download_bytes"] / 1e6, 1),
            "unpacked_mb": round(infos[p]["unpacked_bytes"] / 1e6, 1),
            **{f"files_{k}": stats[p][f"files_{k}"] for k in ("found",) + STEPS + ("kept",)},
            "hours_found": round(stats[p]["seconds_found"] / 3600, 3),
            "hours_before_dedup": round(stats[p]["seconds_before_dedup"] / 3600, 3),
            "hours_kept": round(stats[p]["seconds_kept"] / 3600, 3),
        } for p in packages],
    }


def sources_md(s: dict) -> str:
    """SOURCES.md from a summary()."""
    k, r = s["kept"], s["removed"]
    lines = [
        "# Pretraining corpus sources", "",
        "Built by `python -m pretrain corpus` (pretrain/corpus/, whose package docstring describes each step).",
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
        f"| over the {s['settings']['max_share']:.0%} per-package cap | "
        f"{r['capped']['files']} | {r['capped']['hours']:.2f} |",
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
