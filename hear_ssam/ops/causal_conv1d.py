"""The one dispatch point for the causal depthwise convolution of a Mamba / mLSTM mixer.

    y = causal_conv1d(x, weight, bias, activation="silu")   # x [batch, D, L], weight [D, K], bias [D]
      = silu(conv1d(x, weight[:, None], bias, padding=K - 1, groups=D)[..., :L])

(causal_conv1d's `causal_conv1d_fn`, which mamba_ssm's Mamba calls). The choice, first match
wins: the `backend=` argument; the environment variable HEAR_SSAM_CONV (`compiled` or
`reference`); automatic, by the device of `x`: on CPU the compiled C++ kernel (built on first
use, else PyTorch's conv1d with one warning), elsewhere PyTorch's conv1d (cuDNN on CUDA).
float64 inputs always get PyTorch's conv1d automatically (the compiled kernel computes in fp32),
so the float64 parity tests of the mixers stay float64 end to end. The compiled kernel asked
for by name refuses non-CPU tensors. These rules are data given to `ops.dispatch.Dispatch`,
which applies them for every op.
Both are fp32-exact restatements of the same sum; tests/test_causal_conv1d.py holds them to
each other, values and gradients.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .dispatch import Dispatch

CONV_ENV = "HEAR_SSAM_CONV"


def causal_conv1d_ref(x, weight, bias=None, activation=None):
    """PyTorch's conv1d, padded K - 1 on both sides and cut to the first L outputs (causal)."""
    K, L = weight.shape[-1], x.shape[-1]
    y = F.conv1d(x, weight.unsqueeze(1), bias, padding=K - 1, groups=x.shape[1])[..., :L]
    return F.silu(y) if activation in ("silu", "swish") else y


def _compiled():
    from .causal_conv1d_cpu import load_compiled
    return load_compiled()


CONV_BACKENDS = {
    "compiled": _compiled,                  # C++ forward + backward, SiLU fused (CPU tensors only)
    "reference": lambda: causal_conv1d_ref,  # PyTorch's conv1d (oneDNN on CPU, cuDNN on CUDA)
}
AUTO_ORDER = {"cpu": ("compiled", "reference")}
CONV = Dispatch("causal conv1d", CONV_BACKENDS, env=CONV_ENV, auto_order=AUTO_ORDER, fallback="reference",
                device_only={"compiled": "cpu"}, dtype_auto={torch.float64: "reference"})
load_backend = CONV.load  # name -> conv function (cached), or BackendUnavailable


def resolve_backend(device_type: str, backend: str | None = None, dtype=None) -> str:
    """The backend name that `causal_conv1d` uses for tensors on `device_type` (of `dtype`)."""
    return CONV.resolve(device_type, backend, dtype)


def causal_conv1d(x, weight, bias=None, activation=None, backend: str | None = None):
    """x [batch, D, L], weight [D, K], bias [D] or None, activation None | "silu" -> [batch, D, L]."""
    return load_backend(resolve_backend(x.device.type, backend, x.dtype))(x, weight, bias, activation)
