"""Mamba-1 mixer with mamba_ssm's parameter names, shapes and initialisation, and its block.

State dicts of `mamba_ssm.modules.mamba_simple.Mamba` (and the official SSAM checkpoints,
which are built from it) load into `Mamba` strictly. The scan and the causal convolution are
numerics, each chosen by its one dispatch point, `hear_ssam.ops.selective_scan` (mamba_ssm's
fused CUDA kernel when it imports, else the fastest available implementation for the device)
and `hear_ssam.ops.causal_conv1d` (the `conv1d` module holds the weights; the compiled kernel
computes conv + SiLU on CPU).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..ops import causal_conv1d, selective_scan
from .drop_path import DropPath


class Mamba(nn.Module):
    def __init__(self, d_model, d_state=16, d_conv=4, expand=2, dt_rank="auto",
                 dt_min=1e-3, dt_max=1e-1, dt_init_floor=1e-4, dt_scale=1.0,
                 conv_bias=True, bias=False):
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank

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
        """[B, L, d_model] -> [B, L, d_model]."""
        A = -torch.exp(self.A_log.float())
        xz = self.in_proj(hidden_states).transpose(1, 2)  # [B, 2E, L]
        x, z = xz.chunk(2, dim=1)
        x = causal_conv1d(x, self.conv1d.weight.squeeze(1), self.conv1d.bias, activation="silu")
        dt, B, C = torch.split(self.x_proj(x.transpose(1, 2)),
                               [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = (dt @ self.dt_proj.weight.t()).transpose(1, 2)  # bias is added inside the scan
        B, C = B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous()
        y = selective_scan(x.contiguous(), dt.contiguous(), A, B, C, self.D.float(), z=z.contiguous(),
                           delta_bias=self.dt_proj.bias.float(), delta_softplus=True)
        return self.out_proj(y.transpose(1, 2))


class MambaBlock(nn.Module):
    """mamba_ssm's Block without fusion: residual += hidden; hidden = mixer(norm(residual)).

    The stream is hidden + residual; the residual is kept in fp32 (as mamba_ssm's
    `residual_in_fp32`).

    `drop_path` (Vim's Block; 0 = mamba_ssm's): in training, the incoming hidden, i.e. the
    previous block's mixer output, is dropped per sample at this rate before it is added to
    the residual (at the first block, residual None, nothing is dropped). The encoder gives
    block i the rate of mixer i - 1 and drops the last mixer's output itself.
    """
    causal = True  # output token k depends only on tokens <= k
    supports_drop_path = True  # takes `drop_path=`, applied Vim's way (see above)

    def __init__(self, dim: int, norm_eps: float = 1e-6, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 drop_path: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.mixer = Mamba(dim, d_state=d_state, d_conv=d_conv, expand=expand)
        self.drop_path = DropPath(drop_path)

    def forward(self, hidden, residual):
        """hidden, residual: [B, L, D] (residual None at the first block) -> (hidden, residual)."""
        residual = hidden if residual is None else residual + self.drop_path(hidden)
        hidden = self.norm(residual.to(self.norm.weight.dtype))
        return self.mixer(hidden), residual.float()

    @staticmethod
    def init_encoder(encoder: nn.Module, depth: int) -> None:
        """mamba_ssm's recipe, applied model-wide as the official code does: zero every Linear
        bias (except dt_proj's), and shrink each mixer's out_proj by 1/sqrt(depth)."""
        for m in encoder.modules():
            if isinstance(m, nn.Linear) and m.bias is not None and not getattr(m.bias, "_no_reinit", False):
                nn.init.zeros_(m.bias)
        for m in encoder.modules():
            if isinstance(m, Mamba):
                w = m.out_proj.weight
                nn.init.kaiming_uniform_(w, a=math.sqrt(5))
                with torch.no_grad():
                    w /= math.sqrt(depth)
