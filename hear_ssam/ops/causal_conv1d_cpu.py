"""Compiled CPU causal depthwise convolution (+ SiLU): C++ forward and backward, built on first use.

    from hear_ssam.ops.causal_conv1d_cpu import load_compiled
    conv = load_compiled()      # builds once (~15 s), later loads from the cache; or BackendUnavailable
    y = conv(x, weight, bias, activation="silu")      # x [batch, D, L], weight [D, K], bias [D]

causal_conv1d's `causal_conv1d_fn` arguments and semantics, fp32 maths (inputs of other dtypes
are cast, the result is returned in x's dtype, as the compiled scan does), gradients for x,
weight and bias. The kernels are in csrc/causal_conv1d_cpu.cpp (which says why they are written
by hand), built by `cpu_build.CpuExtension` like the scan's, in their own cache folder. Its
sigmoid repeats the scan's exp2 polynomial rather than sharing a header: torch's
`cpp_extension.load` decides on a rebuild from the listed sources only, so a cached library
would not notice a changed header.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .cpu_build import CpuExtension

_EXT = CpuExtension("hear_ssam_conv_cpu", "causal_conv1d_cpu.cpp", "compiled CPU causal conv1d",
                    fallback="PyTorch's conv1d")
ACTIVATIONS = (None, "silu", "swish")  # causal_conv1d's names: "swish" is SiLU


class _CompiledConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, silu):
        ctx.silu = silu
        ctx.save_for_backward(x, weight, bias)
        return _EXT.load().fwd(x, weight, bias, silu)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight, bias = ctx.saved_tensors
        dx, dw, db = _EXT.load().bwd(x, weight, bias, dy.float().contiguous(), ctx.silu)
        return dx, dw, (db if bias is not None else None), None


def causal_conv1d_compiled(x, weight, bias=None, activation=None):
    """x [batch, D, L], weight [D, K], bias [D] or None -> [batch, D, L] in x's dtype."""
    if activation not in ACTIVATIONS:
        raise NotImplementedError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if x.device.type != "cpu":
        raise ValueError(f"the compiled causal conv1d runs on CPU tensors, got {x.device}")
    dtype_in = x.dtype
    args = [None if t is None else t.float().contiguous() for t in (x, weight, bias)]
    silu = activation is not None
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args):
        y = _CompiledConv.apply(*args, silu)
    else:  # inference: no autograd node, nothing saved
        y = _EXT.load().fwd(*args, silu)
    return y.to(dtype_in)


def load_compiled():
    """`causal_conv1d_compiled` once the extension is built and loaded; else BackendUnavailable."""
    _EXT.load()
    return causal_conv1d_compiled
