"""Numerics, apart from the nn.Modules that use them (mamba_ssm's `ops/` vs `modules/`)."""
from .selective_scan import (SCAN_BACKENDS, SCAN_ENV, BackendUnavailable, resolve_backend,
                             selective_scan)
from .selective_scan_ref import selective_scan_ref

__all__ = ["selective_scan", "selective_scan_ref", "resolve_backend", "SCAN_BACKENDS", "SCAN_ENV",
           "BackendUnavailable"]
