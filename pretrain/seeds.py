"""One way to derive a random seed from named keys (stdlib only; eval_suites uses it too).

Every random choice of pretraining (epoch order, crop start, mask) and of the offline suite
builder is drawn from a generator seeded by `derive_seed(purpose, run seed, position...)`,
never from a stateful stream, so a resumed run, another worker count or another rank
count sees exactly the same crops, order and masks.
"""
from __future__ import annotations

import hashlib


def derive_seed(*keys) -> int:
    """A 32-bit seed that depends on every key (str() of each), e.g. derive_seed("mask", 0, step, rank)."""
    return int(hashlib.sha1("/".join(map(str, keys)).encode()).hexdigest()[:8], 16)
