"""Mamba-1 mixer with mamba_ssm's parameter names, shapes and initialisation.

State dicts of `mamba_ssm.modules.mamba_simple.Mamba` (and the official SSAM checkpoints,
which are built from it) load into this module strictly. On CUDA, when mamba_ssm's
compiled kernels import, the fused kernels run on the same parameters; everywhere else
the chunked pure-PyTorch scan in `selective_scan.py` does.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .selective_scan import selective_scan


def _cuda_kernels():
    """mamba_ssm's fused functions, or None when they are not installed/compiled."""
    try:
        from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn, selective_scan_fn
    except Exception:  # ImportError, or a CUDA extension that fails to load
        return None
    try:
        from causal_conv1d import causal_conv1d_fn
    except Exception:
        causal_conv1d_fn = None
    return mamba_inner_fn, selective_scan_fn, causal_conv1d_fn


_KERNELS = "unprobed"


def cuda_kernels():
    global _KERNELS
    if _KERNELS == "unprobed":
        _KERNELS = _cuda_kernels()
    return _KERNELS


class Mamba(nn.Module):
    def __init__(self, d_model, d_state=16, d_conv=4, expand=2, dt_rank="auto",
                 dt_min=1e-3, dt_max=1e-1, dt_init_floor=1e-4, dt_scale=1.0,
                 conv_bias=True, bias=False, use_fast_path=True):
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.use_fast_path = use_fast_path

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, kernel_size=d_conv,
                                groups=self.d_inner, padding=d_conv - 1, bias=conv_bias)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

        # dt_proj: weight keeps the variance of dt; softplus(bias) is log-uniform in [dt_min, dt_max].
        std = self.dt_rank ** -0.5 * dt_scale
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        log_dt = torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        dt = torch.exp(log_dt).clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.dt_proj.bias._no_reinit = True

        # S4D-real: A = -(1..N) per channel, stored as log so that A stays negative.
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True

    def forward(self, hidden_states):
        """hidden_states: [B, L, d_model] -> [B, L, d_model]."""
        seqlen = hidden_states.shape[1]
        A = -torch.exp(self.A_log.float())
        xz = self.in_proj(hidden_states).transpose(1, 2)  # [B, 2E, L]
        kernels = cuda_kernels() if (self.use_fast_path and xz.is_cuda) else None
        if kernels is not None and kernels[2] is not None:
            mamba_inner_fn = kernels[0]
            return mamba_inner_fn(
                xz, self.conv1d.weight, self.conv1d.bias, self.x_proj.weight,
                self.dt_proj.weight, self.out_proj.weight, self.out_proj.bias, A, None, None,
                self.D.float(), delta_bias=self.dt_proj.bias.float(), delta_softplus=True)

        x, z = xz.chunk(2, dim=1)
        x = F.silu(self.conv1d(x)[..., :seqlen])  # causal: keep the first L outputs
        dt, B, C = torch.split(self.x_proj(x.transpose(1, 2)),
                               [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = (dt @ self.dt_proj.weight.t()).transpose(1, 2)  # bias is added inside the scan
        B, C = B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous()
        scan = kernels[1] if kernels is not None else selective_scan
        y = scan(x.contiguous(), dt.contiguous(), A, B, C, self.D.float(), z=z.contiguous(),
                 delta_bias=self.dt_proj.bias.float(), delta_softplus=True)
        return self.out_proj(y.transpose(1, 2))
