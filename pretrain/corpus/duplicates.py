"""Exact and near duplicates among the scanned files, and which copy of each is kept.

Exact: the same content hash (the same decoded samples, whatever the container).
Near (the same recording re-encoded, resampled, at another gain, or trimmed):
  a. candidates: fingerprint cosine >= NEAR_CANDIDATE and lengths within LENGTH_TOLERANCE;
  b. confirmation: waveform_similarity of the two files' ncc_snippets >= NEAR_NCC (measured
     on the Debian corpus: copies score >= 0.95; sibling takes of a line and different words
     0.1 - 0.9).
Confirmed pairs are joined into groups (union-find). Each group of either kind keeps one
file (`preference`): the highest sample rate, then the longest, then the earliest package
of the build's list, then the path.

A row is a dict from scan.load_scan: package, relpath, seconds, rate, sha, ...
"""
from __future__ import annotations

import logging
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from contextlib import closing
from functools import lru_cache
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .audio_analysis import fingerprint, ncc_snippet, read_audio, read_head, waveform_similarity
from .pair_cache import load_pair_cache, open_pair_cache, pair_line

log = logging.getLogger(__name__)

NEAR_CANDIDATE = 0.80       # fingerprint cosine for a candidate pair
NEAR_NCC = 0.90             # waveform cross-correlation that confirms it
LENGTH_TOLERANCE = (0.10, 0.25)  # candidates' lengths differ by <= 10 % + 0.25 s
_PAIRS_PER_JOB = 500


def preference(row: dict, package_rank: dict) -> tuple:
    """Which copy of a duplicate group is kept: the smallest key."""
    return (-row["rate"], -row["seconds"], package_rank.get(row["package"], len(package_rank)), row["relpath"])


def exact_duplicates(rows: list[dict], package_rank: dict) -> tuple[list[dict], list[tuple[dict, dict]]]:
    """(one row per content hash, ordered by package rank then path, [(dropped row, kept row)])."""
    by_sha = defaultdict(list)
    for row in rows:
        by_sha[row["sha"]].append(row)
    unique, dropped = [], []
    for group in by_sha.values():
        group.sort(key=lambda r: preference(r, package_rank))
        unique.append(group[0])
        dropped += [(r, group[0]) for r in group[1:]]
    unique.sort(key=lambda r: (package_rank[r["package"]], r["relpath"]))
    log.info("exact duplicates: %d files dropped", len(dropped))
    return unique, dropped


def near_duplicate(path_a, path_b) -> tuple[float, float]:
    """(fingerprint cosine, waveform similarity) of two files; both >= the thresholds = near duplicate."""
    (xa, ra), (xb, rb) = read_audio(path_a), read_audio(path_b)
    cos = float(fingerprint(xa, ra) @ fingerprint(xb, rb))
    return cos, waveform_similarity(ncc_snippet(xa, ra), ncc_snippet(xb, rb))


def candidate_pairs(fps: np.ndarray, seconds: np.ndarray, threshold: float = NEAR_CANDIDATE, block: int = 512):
    """(i, j, cosine) with i < j, similar lengths and fingerprint cosine >= threshold, in order of length.

    fps: [files, dims] unit-norm fingerprints; seconds: [files]. Files are sorted by length
    and compared a block at a time with the later ones within LENGTH_TOLERANCE only.
    """
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


def _compare(chunks: list[tuple[list[int], list[tuple[str, str]]]], workers: int, progress: bool):
    """Yield (pair indices, similarities) per chunk of (indices, path pairs), in order."""
    bar = tqdm(total=sum(len(ks) for ks, _ in chunks), desc="near-duplicate check", unit="pair", leave=False,
               disable=not progress)
    pool = ProcessPoolExecutor(workers) if workers > 1 and len(chunks) > 1 else None
    try:
        work = [paths for _, paths in chunks]
        results = pool.map(_compare_chunk, work) if pool else map(_compare_chunk, work)
        for (ks, _), sims in zip(chunks, results):
            yield ks, sims
            bar.update(len(ks))
    finally:
        bar.close()
        if pool:
            pool.shutdown(cancel_futures=True)


def find_near_duplicates(rows: list[dict], fps: np.ndarray, path_of, package_rank: dict, progress=True,
                         workers: int = 1, cache: Path | None = None):
    """([(dropped row, kept row, waveform similarity)], number of candidate pairs) among rows.

    fps: [len(rows), dims] their fingerprints; path_of(row) -> the file. Pairs already in
    `cache` (pair_cache) are not compared again; new ones are appended as they are computed.
    """
    seconds = np.array([r["seconds"] for r in rows])
    pairs = candidate_pairs(fps, seconds)  # in order of length
    known = load_pair_cache(cache)
    key = [tuple(sorted((rows[i]["sha"], rows[j]["sha"]))) for i, j, _ in pairs]
    todo = [k for k in range(len(pairs)) if key[k] not in known]
    if todo:
        _snippet.cache_clear()
        jobs = [(str(path_of(rows[pairs[k][0]])), str(path_of(rows[pairs[k][1]]))) for k in todo]
        chunks = [(todo[c:c + _PAIRS_PER_JOB], jobs[c:c + _PAIRS_PER_JOB])
                  for c in range(0, len(jobs), _PAIRS_PER_JOB)]
        sink = open_pair_cache(cache, resume=bool(known)) if cache is not None else None
        try:
            # closing(): stop the workers at once on an error or Ctrl-C, not whenever the generator is collected
            with closing(_compare(chunks, workers, progress)) as compared:
                for ks, sims in compared:
                    for k, sim in zip(ks, sims):
                        if sim is not None:
                            known[key[k]] = sim
                            if sink:
                                sink.write(pair_line(key[k], sim))
                    if sink:
                        sink.flush()
        finally:
            if sink:
                sink.close()
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
            keep = min(members, key=lambda k: preference(rows[k], package_rank))
            dropped += [(rows[k], rows[keep], score.get(k, 0.0)) for k in members if k != keep]
    log.info("near duplicates: %d candidate pairs (%d compared now), %d files in duplicate groups dropped",
             len(pairs), len(todo), len(dropped))
    return dropped, len(pairs)
