"""Compiled CPU selective scan: C++ (OpenMP threads + SIMD) forward and backward, built on first use.

    from hear_ssam.ops.selective_scan_cpu import load_compiled
    scan = load_compiled()      # builds once (~30 s), later loads from the cache; or BackendUnavailable
    y = scan(u, delta, A, B, C, D, z=z, delta_bias=b, delta_softplus=True)

Same arguments and semantics as mamba_ssm's `selective_scan_fn` (time-varying B and C only),
fp32 maths, gradients for every input that requires one. The kernels are in
csrc/selective_scan_cpu.cpp, built by `cpu_build.CpuExtension` into a cache keyed by torch
version, Python version and instruction set (`build_dir()`; cpu_build.py says where, how the
instruction set is chosen and forced, and how a failed build is reported): a failure makes
`load_compiled` raise `BackendUnavailable` with the reason on every call, and the first one
warns once that the slower pure-PyTorch scan is used instead.

Memory: only when a gradient is needed, the forward keeps the hidden state at the start of
every CHUNK_LEN steps ([batch, L / CHUNK_LEN, E, N], 1.8 MB at batch 8, L 251, E 576, N 24);
the backward recomputes each chunk's states from it, so nothing of size [batch, E, L, N] exists.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .cpu_build import CpuExtension
from .cpu_build import build_dir as _build_dir
from .cpu_build import cpu_isa  # noqa: F401  (re-exported: the instruction set builds target)

CHUNK_LEN = 64  # time steps per chunk: state checkpoints (forward) and recompute unit (backward)
_EXT = CpuExtension("hear_ssam_scan_cpu", "selective_scan_cpu.cpp", "compiled CPU selective scan",
                    fallback="the slower pure-PyTorch scan")


def build_dir(isa: str | None = None) -> str:
    """Where the scan's extension for this torch, Python and instruction set is built and cached."""
    return _build_dir(_EXT.name, isa)


def _load_extension():
    """The compiled module; raises BackendUnavailable (and remembers why) when it cannot be had."""
    return _EXT.load()


class _CompiledScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
        ext = _load_extension()
        out, states, last = ext.fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, CHUNK_LEN, True,
                                    return_last_state)
        ctx.delta_softplus = delta_softplus
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, states)
        if return_last_state:
            ctx.mark_non_differentiable(last)
            return out, last
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dout, *unused):
        u, delta, A, B, C, D, z, delta_bias, states = ctx.saved_tensors
        du, ddelta, dA, dB, dC, dD, dz, dbias = _load_extension().bwd(
            u, delta, A, B, C, D, z, delta_bias, dout.float().contiguous(), states, ctx.delta_softplus, CHUNK_LEN)
        return du, ddelta, dA, dB, dC, dD, dz, dbias, None, None


def _f32(t):
    return None if t is None else t.float().contiguous()


def selective_scan_compiled(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                            return_last_state=False):
    """mamba_ssm's `selective_scan_fn` on CPU: u, delta, z [batch, E, L]; A [E, N]; B, C [batch, N, L];
    D, delta_bias [E]. Returns y [batch, E, L] in u's dtype (and, with return_last_state, the last
    state [batch, E, N] in fp32, which like mamba_ssm's is not differentiated)."""
    if B.dim() == 4 and B.shape[1] == 1:  # [batch, 1 group, N, L]
        B = B.squeeze(1)
    if C.dim() == 4 and C.shape[1] == 1:
        C = C.squeeze(1)
    if A.is_complex() or B.dim() != 3 or C.dim() != 3:
        raise NotImplementedError("compiled selective scan: real A and time-varying B, C [batch, N, L] only")
    if u.device.type != "cpu":
        raise ValueError(f"the compiled selective scan runs on CPU tensors, got {u.device}")
    dtype_in = u.dtype
    args = [_f32(t) for t in (u, delta, A, B, C, D, z, delta_bias)]
    softplus, want_last = bool(delta_softplus), bool(return_last_state)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args):
        res = _CompiledScan.apply(*args, softplus, want_last)
    else:  # inference: no autograd node, no saved states
        out, _, last = _load_extension().fwd(*args, softplus, CHUNK_LEN, False, want_last)
        res = (out, last) if want_last else out
    if want_last:
        return res[0].to(dtype_in), res[1]
    return res.to(dtype_in)


def load_compiled():
    """`selective_scan_compiled` once the extension is built and loaded; else BackendUnavailable."""
    _load_extension()
    return selective_scan_compiled


def extension_isa() -> str:
    """What the loaded build vectorises with: 'avx512/w16', 'avx2/w8' or 'generic/w4'."""
    return _load_extension().isa()
