"""scan/near_pairs.tsv: the waveform similarity of every candidate pair compared so far.

A pair's similarity depends only on the two files' content hashes (and the settings in
NEAR_CACHE_KEY, the file's first line), so it is appended as soon as it is computed: only
a first build, or new files, pay for the check (~100k candidate pairs for the default
sources), even after an interruption. Lines: "sha_a<TAB>sha_b<TAB>similarity" with
sha_a < sha_b and the similarity as "%.4f".
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TextIO

from .audio_analysis import ACTIVE_DB, FP_SPAN, NCC_MAX_LAG, NCC_RATE, SCAN_VERSION

NEAR_CACHE_KEY = f"ncc v{SCAN_VERSION} rate={NCC_RATE} lag={NCC_MAX_LAG} span={FP_SPAN} active={ACTIVE_DB}"


def load_pair_cache(path: Path | None) -> dict[tuple[str, str], float]:
    """(sha_a, sha_b) -> similarity; {} if there is no cache or it was computed with other settings."""
    if path is None or not path.exists():
        return {}
    with open(path) as f:
        if f.readline().rstrip("\n") != NEAR_CACHE_KEY:
            return {}
        known = {}
        for line in f:
            parts = line.rstrip("\n").split("\t")
            # a line cut short by an interrupted run is ignored
            if len(parts) == 3 and re.fullmatch(r"\d+\.\d{4}", parts[2]):
                known[(parts[0], parts[1])] = float(parts[2])
        return known


def open_pair_cache(path: Path, resume: bool) -> TextIO:
    """The cache opened for appending pair_line()s: after the pairs loaded from it if resume, else afresh."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sink = open(path, "a" if resume else "w")
    if not resume:
        sink.write(NEAR_CACHE_KEY + "\n")
    elif not path.read_bytes().endswith(b"\n"):  # an interrupted run's last line
        sink.write("\n")
    return sink


def pair_line(key: tuple[str, str], similarity: float) -> str:
    return f"{key[0]}\t{key[1]}\t{similarity:.4f}\n"
