"""Build a pretraining corpus of real audio from Debian packages.

    python -m pretrain corpus --out data/pretrain_corpus

Downloads each source package with `apt-get download`, unpacks it with `dpkg-deb -x`, keeps
the audio files that soundfile can read, and writes `manifest.tsv` (path, package, licence,
seconds, sample rate, channels) and `SOURCES.md`. Finished packages are skipped on rerun.
The sources are disjoint from the packages the offline evaluation suite is built from
(`pretrain.debian.EVAL_PACKAGES`; `build` refuses them, and a test checks it). Clips are not committed: their licences (mostly
GPL-2 / CC-BY-SA) travel with the packages, and the manifest records them.
"""
from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

import soundfile as sf
from tqdm import tqdm

from .data import AUDIO_SUFFIXES
from .debian import EVAL_PACKAGES, fetch_package

log = logging.getLogger("pretrain.corpus")

# package -> what it holds. Speech in many languages, game sound effects, music.
SOURCES = {
    "supertux-data": "game music and sound effects",
    "wesnoth-1.16-music": "orchestral game music",
    "frozen-bubble-data": "game music and sound effects",
    "lincity-ng-data": "ambient music and sound effects",
    "pingus-data": "voices and sound effects",
    "sound-theme-freedesktop": "desktop notification sounds",
}


def licence_of(root: Path, package: str) -> str:
    copyright_file = root / "usr" / "share" / "doc" / package / "copyright"
    if copyright_file.exists():
        text = copyright_file.read_text(errors="replace")
        # DEP-5 short identifiers ("GPL-2+", "CC-BY-SA-3.0"), most frequent first
        found = re.findall(r"^License:\s*([A-Za-z][\w.+-]*)\s*$", text, re.M)
        if found:
            return max(set(found), key=found.count)
    return "see /usr/share/doc/%s/copyright" % package


def scan_audio(root: Path):
    """(path, info) for readable audio files; unreadable ones are counted, not fatal."""
    good, bad = [], []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()):
        try:
            info = sf.info(str(path))
            if info.frames == 0:
                raise ValueError("empty")
            good.append((path, info))
        except Exception as e:  # corrupt or unsupported: report and move on
            bad.append((path, str(e)))
    return good, bad


def build(out: Path, packages) -> Path:
    if set(packages) & EVAL_PACKAGES:
        raise ValueError(f"{sorted(set(packages) & EVAL_PACKAGES)} feed the evaluation suite; "
                         "pretraining on them would leak test audio")
    out.mkdir(parents=True, exist_ok=True)
    rows, summary = [], []
    for package in tqdm(packages, desc="packages", unit="pkg"):
        root = fetch_package(package, out)
        good, bad = scan_audio(root)
        licence = licence_of(root, package)
        seconds = sum(i.frames / i.samplerate for _, i in good)
        summary.append((package, len(good), len(bad), seconds / 3600, licence))
        for path, i in good:
            rows.append([str(path.resolve()), package, licence, f"{i.frames / i.samplerate:.3f}",
                         i.samplerate, i.channels])
        for path, err in bad:
            log.warning("skipped unreadable %s: %s", path, err)
    manifest = out / "manifest.tsv"
    with open(manifest.with_suffix(".tmp"), "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["path", "package", "licence", "seconds", "sample_rate", "channels"])
        w.writerows(rows)
    manifest.with_suffix(".tmp").replace(manifest)
    lines = ["# Pretraining corpus sources", "",
             "| package | what | files | unreadable | hours | licence |", "|---|---|---|---|---|---|"]
    lines += [f"| {p} | {SOURCES.get(p, '')} | {n} | {b} | {h:.2f} | {lic} |" for p, n, b, h, lic in summary]
    lines += ["", f"Total: {len(rows)} files, {sum(s[3] for s in summary):.2f} hours."]
    (out / "SOURCES.md").write_text("\n".join(lines) + "\n")
    log.info("wrote %s: %d files, %.2f h", manifest, len(rows), sum(s[3] for s in summary))
    return manifest
