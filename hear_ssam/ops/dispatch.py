"""The rules by which every op of this package picks its backend, stated once.

    CONV = Dispatch("causal conv1d", CONV_BACKENDS, env="HEAR_SSAM_CONV", fallback="reference",
                    auto_order={"cpu": ("compiled", "reference")}, device_only={"compiled": "cpu"},
                    dtype_auto={torch.float64: "reference"})
    y = CONV.load(CONV.resolve(x.device.type, backend, x.dtype))(x, weight, bias, activation)

An op is a registry, a plain dict {name: loader}, where a loader returns the op's function or
raises `BackendUnavailable` saying why it cannot run here; an op's differences from another
are data given to `Dispatch`. The choice, first match wins:

1. the `backend=` argument;
2. the op's environment variable (for tests and benchmarks);
3. automatic: `dtype_auto[dtype]` if the dtype is listed (a backend whose maths is narrower
   than the input's must not be picked silently), else the first backend of
   `auto_order[device type]` that loads, else `fallback` (which runs on any device).

A backend asked for by name must load (else its `BackendUnavailable`, with the reason, is
raised) and, if it is in `device_only`, be given tensors of its device, unless it is in
`interpreted_on_any_device` and that environment variable is set (an interpreter running
device kernels on CPU, for tests). The automatic choice skips what does not load. What a
loader gives, a function or the reason it cannot run, is cached per op, so an unavailable
backend costs one try per process (a failed C++ build also remembers its failure across
loaders, `cpu_build.CpuExtension`, and warns once).
"""
from __future__ import annotations

import functools
import itertools
import os

from .errors import BackendUnavailable


def _env_on(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0")


class Dispatch:
    """Which backend of one op runs for tensors of a device type (and dtype), and its function.

    op: the op's name in messages ("selective-scan"); backends: its registry, kept by reference
    (entries added later are seen); env: the environment variable naming a backend;
    auto_order: {device type: backend names, fastest first}; fallback: the backend for device
    types not in auto_order and when none of the order loads; device_only: {backend: the
    device type it needs}; interpreted_on_any_device: {backend: environment variable that lets
    it take tensors of any device}; dtype_auto: {dtype: backend the automatic choice takes}.
    """

    def __init__(self, op: str, backends: dict, *, env: str, auto_order: dict, fallback: str,
                 device_only: dict | None = None, interpreted_on_any_device: dict | None = None,
                 dtype_auto: dict | None = None):
        self.op, self.backends, self.env = op, backends, env
        self.auto_order, self.fallback = auto_order, fallback
        self.device_only = device_only or {}
        self.interpreted_on_any_device = interpreted_on_any_device or {}
        self.dtype_auto = dtype_auto or {}
        named = {fallback, *itertools.chain(*auto_order.values()), *self.device_only,
                 *self.interpreted_on_any_device, *self.dtype_auto.values()}
        if named - set(backends):
            raise ValueError(f"the {op} dispatch names backends {sorted(named - set(backends))} that its "
                             f"registry lacks; register them or drop them from the rules")
        cached = functools.lru_cache(maxsize=None)(self._function_or_reason)

        def load(name: str):
            """The function of backend `name`, or BackendUnavailable saying why not. Both are
            cached: a backend that cannot run here (mamba_ssm's kernels on a machine without
            them) is not tried again at every call of every layer."""
            found = cached(name)
            if isinstance(found, BackendUnavailable):
                raise BackendUnavailable(str(found))
            return found
        load.cache_clear = cached.cache_clear  # a test that edits the registry starts afresh
        self.load = load

    def _function_or_reason(self, name: str):
        if name not in self.backends:
            raise ValueError(f"unknown {self.op} backend {name!r}; choose from {sorted(self.backends)}")
        try:
            return self.backends[name]()
        except BackendUnavailable as reason:
            return reason

    def available(self, name: str) -> bool:
        try:
            self.load(name)
            return True
        except BackendUnavailable:
            return False

    def resolve(self, device_type: str, backend: str | None = None, dtype=None) -> str:
        """The backend name used for tensors on `device_type` (of `dtype`), by the rules above."""
        requested = backend or os.environ.get(self.env) or None
        if requested:
            self.load(requested)  # raises with the reason if it cannot run
            only = self.device_only.get(requested)
            interpreter_env = self.interpreted_on_any_device.get(requested)
            if only and only != device_type and not (interpreter_env and _env_on(interpreter_env)):
                raise BackendUnavailable(
                    f"{self.op} backend {requested!r} runs on {only} tensors only, got {device_type} tensors; "
                    f"leave backend= and {self.env} unset for the automatic choice")
            return requested
        if dtype in self.dtype_auto:
            return self.dtype_auto[dtype]
        for name in self.auto_order.get(device_type, (self.fallback,)):
            if self.available(name):
                return name
        return self.fallback
