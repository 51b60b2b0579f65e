"""Numerics, apart from the nn.Modules that use them (mamba_ssm's `ops/` vs `modules/`)."""
from .causal_conv1d import CONV_BACKENDS, CONV_ENV, causal_conv1d, causal_conv1d_ref
from .selective_scan import (SCAN_BACKENDS, SCAN_ENV, BackendUnavailable, resolve_backend,
                             selective_scan)
from .selective_scan_ref import selective_scan_ref

__all__ = ["selective_scan", "selective_scan_ref", "resolve_backend", "SCAN_BACKENDS", "SCAN_ENV",
           "causal_conv1d", "causal_conv1d_ref", "CONV_BACKENDS", "CONV_ENV", "BackendUnavailable"]
