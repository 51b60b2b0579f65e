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
from typing import Iterable

import torch
import torch.nn as nn

from ..ops import causal_conv1d, selective_scan
from .drop_path import DropPath


def init_dt_proj(dt_proj: nn.Linear, dt_min: float, dt_max: float, dt_init_floor: float, dt_scale: float) -> None:
    """Mamba's init of a dt projection [dt_rank -> d_inner]: the weight keeps the variance of dt
    (U(+-dt_scale / sqrt(dt_rank))), and softplus(bias) is log-uniform in [dt_min, dt_max]
    (floored at dt_init_floor). The bias is marked `_no_reinit` so that the model-wide init
    (`init_for_depth`) keeps it."""
    std = dt_proj.in_features ** -0.5 * dt_scale
    nn.init.uniform_(dt_proj.weight, -std, std)
    log_dt = torch.rand(dt_proj.out_features) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
    dt = torch.exp(log_dt).clamp(min=dt_init_floor)
    with torch.no_grad():
        dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
    dt_proj.bias._no_reinit = True


def init_for_depth(scopes: Iterable[nn.Module], depth: int) -> None:
    """mamba_ssm's `_init_weights` for n_residuals_per_layer = 1, over each module of `scopes` in
    turn: zero every Linear bias not marked `_no_reinit`, then re-draw the out_proj weight of
    each `Mamba` in it (kaiming-uniform, a=sqrt(5), PyTorch's Linear default) scaled by
    1/sqrt(depth), so that the residual stream's variance does not grow with depth. The scope
    is the caller's: the official code applies it to the whole model, Vim to its blocks."""
    for scope in scopes:
        for m in scope.modules():
            if isinstance(m, nn.Linear) and m.bias is not None and not getattr(m.bias, "_no_reinit", False):
                nn.init.zeros_(m.bias)
        for m in scope.modules():
            if isinstance(m, Mamba):
                w = m.out_proj.weight
                nn.init.kaiming_uniform_(w, a=math.sqrt(5))
                with torch.no_grad():
                    w /= math.sqrt(depth)


def channels_first_linear(weight, bias, x):
    """A Linear's map on channels-first input: x [B, in, L] -> weight @ x (+ bias) [B, out, L],
    contiguous. A batched matmul over the weight broadcast with stride 0 reads x in place and
    writes the channels-first product directly: F.linear (or torch.matmul, which folds the
    batch into one matrix) would compute channels-last and copy."""
    y = torch.bmm(weight.expand(x.shape[0], -1, -1), x)
    return y if bias is None else y + bias.to(y.dtype)[:, None]


class Mamba(nn.Module):
    """mamba_ssm's `Mamba` mixer (no inference cache): [B, L, d_model] -> [B, L, d_model]."""

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

        init_dt_proj(self.dt_proj, dt_min, dt_max, dt_init_floor, dt_scale)

        # S4D-real: A = -(1..N) per channel, stored as log so that A stays negative.
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True

    def forward(self, hidden_states):
        """[B, L, d_model] -> [B, L, d_model]."""
        x, z = self.project_in(hidden_states)
        y = self.ssm(x, z, self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D)
        return self.project_out(y)

    def project_in(self, hidden_states):
        """in_proj, written channels-first: [B, L, d_model] -> x, z [B, E, L], each contiguous.

        The conv and the scan take channels-first tensors; computing W @ h^T per half gives
        them that layout straight from the matmul (which reads the transposed operand in
        place), where in_proj(h).transpose(1, 2).chunk(2) would leave two strided halves for
        the kernels to copy. Same products, same sums."""
        h_t = hidden_states.transpose(1, 2)  # [B, D, L], a view
        w, b = self.in_proj.weight, self.in_proj.bias
        x, z = (channels_first_linear(w[i * self.d_inner:(i + 1) * self.d_inner],
                                      None if b is None else b[i * self.d_inner:(i + 1) * self.d_inner], h_t)
                for i in (0, 1))
        return x, z

    def project_out(self, y):
        """out_proj of channels-first y [B, E, L] -> [B, L, d_model] (a transposed view of the
        [B, d_model, L] product: the residual add that follows reads it in place)."""
        return channels_first_linear(self.out_proj.weight, self.out_proj.bias, y).transpose(1, 2)

    def ssm(self, x, z, conv1d, x_proj, dt_proj, A_log, D):
        """One direction's SSM with the given parameter set: x, z [B, E, L] -> y [B, E, L].

        causal conv + SiLU -> x_proj -> dt, B, C -> selective scan (D skip, SiLU(z) gate).
        The parameters are arguments so that `BiMamba` runs its time-reversed set through the
        same path."""
        A = -torch.exp(A_log.float())
        x = causal_conv1d(x, conv1d.weight.squeeze(1), conv1d.bias, activation="silu")
        x_dbl = channels_first_linear(x_proj.weight, None, x)  # [B, R + 2N, L]
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=1)
        dt = channels_first_linear(dt_proj.weight, None, dt)  # [B, E, L]; the bias is added inside the scan
        return selective_scan(x.contiguous(), dt.contiguous(), A, B.contiguous(), C.contiguous(), D.float(),
                              z=z.contiguous(), delta_bias=dt_proj.bias.float(), delta_softplus=True)


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
        """mamba_ssm's recipe, applied model-wide (heads included) as the official SSAM code does:
        zero every Linear bias (except dt_proj's), and shrink each mixer's out_proj by 1/sqrt(depth)."""
        init_for_depth([encoder], depth)
