"""The per-package share cap: no package may hold more than MAX_SHARE of the kept hours.

Without it one large soundtrack or voice pack would dominate what the model hears. A
package above the cap loses files in content-hash order (deterministic, and unrelated to
file names or lengths) until it fits.
"""
from __future__ import annotations

import logging
from collections import Counter

log = logging.getLogger(__name__)

MAX_SHARE = 0.40


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
    max_share of the hours; returns the dropped rows and edits rows in place.

    rows: dicts with package, seconds and sha (content hash)."""
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
