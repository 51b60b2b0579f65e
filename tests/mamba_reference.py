"""Load mamba_ssm's pure-PyTorch references from an installed mamba-ssm without its kernels.

`import mamba_ssm` runs `mamba_ssm/__init__.py`, which needs the compiled
`selective_scan_cuda`. We register an empty package object whose __path__ points at the
installed files, so submodules import from disk while __init__ never runs, and stand in
an empty module for `selective_scan_cuda` (only the fused path would call into it).
"""
import importlib
import importlib.util
import sys
import types

import torch.nn.functional as F


def load():
    """mamba_ssm's references, or None when mamba-ssm is not installed. Safe to call again
    (the stub package registered by the first call has no __spec__ for find_spec to read)."""
    if not hasattr(sys.modules.get("mamba_ssm"), "_hear_ssam_stub"):
        try:
            spec = importlib.util.find_spec("mamba_ssm")
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            return None
        pkg = types.ModuleType("mamba_ssm")
        pkg.__path__ = list(spec.submodule_search_locations)
        pkg._hear_ssam_stub = True
        sys.modules["mamba_ssm"] = pkg
        sys.modules.setdefault("selective_scan_cuda", types.ModuleType("selective_scan_cuda"))
    ssi = importlib.import_module("mamba_ssm.ops.selective_scan_interface")
    simple = importlib.import_module("mamba_ssm.modules.mamba_simple")
    # Its non-fused path calls selective_scan_fn (CUDA); route it to mamba_ssm's own reference.
    simple.selective_scan_fn = ssi.selective_scan_ref
    simple.causal_conv1d_fn = None
    return types.SimpleNamespace(selective_scan_ref=ssi.selective_scan_ref, Mamba=simple.Mamba,
                                 mamba_inner_ref=_mamba_inner_ref(ssi))


def _causal_conv1d_ref(x, weight, bias=None, activation=None):
    """causal_conv1d's `causal_conv1d_fn` semantics in plain torch: depthwise, left padding."""
    out = F.conv1d(x, weight.unsqueeze(1), bias, padding=weight.shape[-1] - 1, groups=x.shape[1])[..., :x.shape[-1]]
    return F.silu(out) if activation in ("silu", "swish") else out


def _mamba_inner_ref(ssi):
    """mamba_ssm's own `mamba_inner_ref`, run with its module globals `causal_conv1d_fn` (the
    causal-conv1d package, absent) and `selective_scan_fn` (CUDA) bound to pure-torch
    references; the installed module itself is left untouched."""
    fn = ssi.mamba_inner_ref
    env = dict(fn.__globals__, causal_conv1d_fn=_causal_conv1d_ref, selective_scan_fn=ssi.selective_scan_ref)
    return types.FunctionType(fn.__code__, env, fn.__name__, fn.__defaults__, fn.__closure__)
