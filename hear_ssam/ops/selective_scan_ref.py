"""Reference selective scan: the S6 recurrence written as a plain loop over time.

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t
    y_t = <C_t, h_t> + D * u_t,      y = y * silu(z)

Same arguments and semantics as mamba_ssm's `selective_scan_fn` / `selective_scan_ref`
(time-varying B and C only), fp32 maths, differentiated by autograd. It is slow and keeps
every step for the backward pass; it exists so that every fast backend is tested against
something obviously right that ships with the package (mamba-ssm may not be installed).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def prepare_scan_inputs(u, delta, A, B, C, delta_bias=None, delta_softplus=False):
    """selective_scan_fn's input steps: everything to fp32, delta += bias, softplus(delta)."""
    u, delta, A, B, C = (t.float() for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.float()[..., None]
    if delta_softplus:
        delta = F.softplus(delta)
    return u, delta, A, B, C


def finish_scan_output(y, u, D=None, z=None, dtype=torch.float32):
    """selective_scan_fn's output steps: y + D * u, gated by silu(z), in the input dtype."""
    if D is not None:
        y = y + u * D.float()[..., None]
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(dtype)


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """u, delta, z: [batch, E, L]; A: [E, N]; B, C: [batch, N, L]; D, delta_bias: [E] -> y [batch, E, L]."""
    dtype_in = u.dtype
    u, delta, A, B, C = prepare_scan_inputs(u, delta, A, B, C, delta_bias, delta_softplus)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])  # [batch, E, N]
    ys = []
    for t in range(u.shape[2]):
        decay = torch.exp(delta[:, :, t, None] * A)
        h = decay * h + (delta[:, :, t] * u[:, :, t])[..., None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1))
    return finish_scan_output(torch.stack(ys, dim=-1), u, D, z, dtype_in)
