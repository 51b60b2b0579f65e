"""Chunked selective scan (the S6 recurrence of Mamba-1) in plain PyTorch.

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t
    y_t = <C_t, h_t> + D * u_t,      y = y * silu(z)

Why hand-written: mamba_ssm only ships CUDA kernels, and its pure-torch reference
(`selective_scan_ref`) materialises two [B, E, L, N] tensors and autograd keeps every
step, which is slow and memory hungry on CPU. Here the time axis is processed in
chunks of `chunk_len` steps, so memory is O(B*E*N*chunk_len) whatever L is, and the
inner loop is a single fused in-place multiply-add per step. Gradients come from a
reverse-time scan written out by hand (recomputing each chunk's states from saved
chunk-boundary states), so training memory is bounded the same way.

Layout follows mamba_ssm: u, delta, z are [B, E, L]; A is [E, N]; B, C are [B, N, L].
"""
from __future__ import annotations

import torch

from .selective_scan_ref import finish_scan_output, prepare_scan_inputs

CHUNK_ELEMENTS = 2 ** 21  # ~8 MB per [K, B, E, N] buffer: stays in L2/L3 on CPUs


def auto_chunk_len(batch, channels, d_state):
    """Time steps per chunk so that a chunk's buffers stay cache-sized (4..64, power of 2)."""
    k = max(1, CHUNK_ELEMENTS // max(1, batch * channels * d_state))
    return int(min(64, max(4, 2 ** (k.bit_length() - 1))))


def _time_major(t):
    """[B, X, L] -> contiguous [L, B, X]; broadcasts of strided views would stay strided."""
    return t.permute(2, 0, 1).contiguous()


def _chunk_inputs(delta_t, u_t, B_t, A):
    """exp(delta A) and delta*u*B for one time chunk, time-major [K, B, E, N]."""
    dA = torch.exp(delta_t.unsqueeze(-1) * A)
    dBu = (delta_t * u_t).unsqueeze(-1) * B_t.unsqueeze(-2)
    return dA, dBu


def _scan_chunk_(dA, dBu, h):
    """In place: dBu[k] becomes h_k = dA[k] * h_{k-1} + dBu[k]; returns h_last."""
    for k in range(dA.shape[0]):
        h = dBu[k].addcmul_(dA[k], h)
    return h


class SelectiveScan(torch.autograd.Function):
    """y_t = <C_t, h_t> for the recurrence above, without the D skip and z gate."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, chunk_len):
        # Time-major views: each step then touches one contiguous [B, E, N] slab.
        uT, dT, BT, CT = (_time_major(t) for t in (u, delta, B, C))  # [L, B, E|N]
        L, batch, E = uT.shape
        h = u.new_zeros(batch, E, A.shape[1])
        y = u.new_empty(L, batch, E)
        starts = list(range(0, L, chunk_len))
        boundary = u.new_empty(len(starts), batch, E, A.shape[1])
        for i, t0 in enumerate(starts):
            t1 = min(t0 + chunk_len, L)
            boundary[i] = h
            dA, hs = _chunk_inputs(dT[t0:t1], uT[t0:t1], BT[t0:t1], A)
            h = _scan_chunk_(dA, hs, h)
            y[t0:t1] = torch.matmul(hs, CT[t0:t1].unsqueeze(-1)).squeeze(-1)
        ctx.save_for_backward(u, delta, A, B, C, boundary)
        ctx.chunk_len = chunk_len
        return y.permute(1, 2, 0).contiguous()

    @staticmethod
    def backward(ctx, gy):
        u, delta, A, B, C, boundary = ctx.saved_tensors
        chunk_len = ctx.chunk_len
        uT, dT, BT, CT, gyT = (_time_major(t) for t in (u, delta, B, C, gy))
        L = uT.shape[0]
        gu, gdelta = torch.empty_like(uT), torch.empty_like(dT)
        gB, gC = torch.empty_like(BT), torch.empty_like(CT)
        gA = torch.zeros_like(A)
        carry = torch.zeros_like(boundary[0])  # dL/dh flowing back into the previous chunk
        starts = list(range(0, L, chunk_len))
        for i in reversed(range(len(starts))):
            t0 = starts[i]
            t1 = min(t0 + chunk_len, L)
            d, uu, Bc, Cc, g = dT[t0:t1], uT[t0:t1], BT[t0:t1], CT[t0:t1], gyT[t0:t1]
            dA, hs = _chunk_inputs(d, uu, Bc, A)
            _scan_chunk_(dA, hs, boundary[i])
            h_prev = torch.cat([boundary[i].unsqueeze(0), hs[:-1]])
            # G[k] = dL/dh_k = g_k C_k + dA[k+1] G[k+1]   (reverse-time scan)
            G = g.unsqueeze(-1) * Cc.unsqueeze(-2)
            G[-1] += carry
            for k in range(G.shape[0] - 2, -1, -1):
                G[k].addcmul_(dA[k + 1], G[k + 1])
            carry = dA[0] * G[0]
            gC[t0:t1] = torch.matmul(g.unsqueeze(-2), hs).squeeze(-2)
            du = d * uu
            g_du = torch.matmul(G, Bc.unsqueeze(-1)).squeeze(-1)
            gB[t0:t1] = torch.matmul(du.unsqueeze(-2), G).squeeze(-2)
            W = G.mul_(h_prev).mul_(dA)  # dL/d(delta*A), G no longer needed
            gdelta[t0:t1] = g_du * uu + (W * A).sum(-1)
            gA += W.mul_(d.unsqueeze(-1)).sum((0, 1))  # in place: an einsum would permute-copy W
            gu[t0:t1] = g_du * d
        back = lambda t: t.permute(1, 2, 0)  # noqa: E731
        return back(gu), back(gdelta), gA, back(gB), back(gC), None


def selective_scan_chunked(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                           chunk_len=None):
    """Drop-in for mamba_ssm's `selective_scan_fn` (same arguments, fp32 maths)."""
    dtype_in = u.dtype
    u, delta, A, B, C = prepare_scan_inputs(u, delta, A, B, C, delta_bias, delta_softplus)
    chunk_len = chunk_len or auto_chunk_len(u.shape[0], u.shape[1], A.shape[1])
    return finish_scan_output(SelectiveScan.apply(u, delta, A, B, C, chunk_len), u, D, z, dtype_in)
