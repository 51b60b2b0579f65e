"""Vision Mamba's bidirectional mixer ("bimamba v2", as SSAMBA uses it) and its block.

`BiMamba` is the Mamba-1 mixer (`modules.mamba.Mamba`: same names, shapes and init) plus a
second SSM parameter set for the time-reversed direction, with Vim's names:

    x, z = in_proj(u)                                         (shared)
    y_f  = ssm(x, z;  conv1d,   x_proj,   dt_proj,   A_log,   D)
    y_b  = ssm(flip(x), flip(z); conv1d_b, x_proj_b, dt_proj_b, A_b_log, D_b)
    out  = out_proj((y_f + flip(y_b)) / 2)                    (shared)

where ssm = causal depthwise conv + SiLU -> x_proj -> (dt, B, C) -> selective scan with the
D skip, gated by SiLU(z) (`Mamba.ssm`, which both directions run), and flip reverses time.
Both directions are always computed (Vim's own non-fused path silently returns the forward
branch alone). The /2 is Vim's `if_devide_out`, which every SSAMBA script and config sets to
true. State dicts of a Vim / SSAMBA layer's `mixer` load into `BiMamba` strictly.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .drop_path import DropPath
from .mamba import Mamba, MambaBlock, init_dt_proj, init_for_depth

DT_B_INITS = ("vim", "mamba")


class BiMamba(Mamba):
    """Bimamba v2 mixer: [B, L, d_model] -> [B, L, d_model], each token sees the whole sequence.

    Init of the backward set, `dt_b_init`:
    - "vim" (Vim / SSAMBA's code): `conv1d_b`, `x_proj_b`, `dt_proj_b` keep PyTorch's default
      init (for dt_proj_b.weight that is U(+-R^-1/2), the same law as dt_proj's), and
      `dt_proj_b.bias` is not protected from the model-wide init, which zeroes it
      (`BiMambaBlock.init_encoder`), so the backward step sizes start at softplus(~0) ~ 0.69;
    - "mamba": dt_proj_b gets dt_proj's Mamba init (log-uniform dt in [dt_min, dt_max]).
    A_b_log = log(1..N) and D_b = 1 either way.
    """

    def __init__(self, d_model, d_state=16, d_conv=4, expand=2, dt_rank="auto",
                 dt_min=1e-3, dt_max=1e-1, dt_init_floor=1e-4, dt_scale=1.0,
                 conv_bias=True, bias=False, dt_b_init="vim"):
        if dt_b_init not in DT_B_INITS:
            raise ValueError(f"dt_b_init must be one of {DT_B_INITS}, got {dt_b_init!r}")
        super().__init__(d_model, d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank,
                         dt_min=dt_min, dt_max=dt_max, dt_init_floor=dt_init_floor, dt_scale=dt_scale,
                         conv_bias=conv_bias, bias=bias)
        E, R = self.d_inner, self.dt_rank
        self.A_b_log = nn.Parameter(self.A_log.detach().clone())  # log(1..N) per channel
        self.A_b_log._no_weight_decay = True
        self.conv1d_b = nn.Conv1d(E, E, kernel_size=d_conv, groups=E, padding=d_conv - 1, bias=conv_bias)
        self.x_proj_b = nn.Linear(E, R + 2 * d_state, bias=False)
        self.dt_proj_b = nn.Linear(R, E, bias=True)
        self.D_b = nn.Parameter(torch.ones(E))
        self.D_b._no_weight_decay = True
        if dt_b_init == "mamba":  # the forward set's Mamba init, drawn afresh for the backward set
            init_dt_proj(self.dt_proj_b, dt_min, dt_max, dt_init_floor, dt_scale)

    def forward(self, hidden_states):
        """[B, L, d_model] -> [B, L, d_model]."""
        x, z = self.project_in(hidden_states)  # [B, E, L] each
        y_f = self.ssm(x, z, self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D)
        y_b = self.ssm(x.flip(-1), z.flip(-1), self.conv1d_b, self.x_proj_b, self.dt_proj_b,
                       self.A_b_log, self.D_b)
        return self.project_out((y_f + y_b.flip(-1)) / 2)


class BiMambaBlock(nn.Module):
    """Vim's Block around `BiMamba`, as SSAMBA configures it (LayerNorm with bias, eps 1e-5; no
    RMSNorm, no fused add-norm): residual += drop_path(hidden); hidden = mixer(norm(residual)).
    The stream is hidden + residual, the residual kept in fp32. `drop_path` is Vim's, placed as
    in `MambaBlock` (SSAMBA trains with drop_path_rate 0.1; the encoder sets each block's rate)."""
    causal = False  # the backward scan makes every token depend on every other
    supports_drop_path = True

    def __init__(self, dim: int, norm_eps: float = 1e-5, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_b_init: str = "vim", drop_path: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.mixer = BiMamba(dim, d_state=d_state, d_conv=d_conv, expand=expand, dt_b_init=dt_b_init)
        self.drop_path = DropPath(drop_path)

    forward = MambaBlock.forward  # the same add -> norm -> mixer step

    @staticmethod
    def init_encoder(encoder: nn.Module, depth: int) -> None:
        """Vim's `_init_weights` as VisionMamba applies it (SSAMBA keeps it unchanged), over the
        blocks only (Vim applies it to its backbone, whose other Linear is an unused head; SSAMBA's
        heads live outside it and keep PyTorch's default init): zero every Linear bias not marked
        `_no_reinit` (in a BiMamba layer only dt_proj_b's, with dt_b_init="vim"), and re-draw
        each mixer's out_proj weight (kaiming-uniform, a=sqrt(5)) scaled by 1/sqrt(depth)
        (n_residuals_per_layer = 1; depth = the number of blocks, 24 in SSAMBA)."""
        init_for_depth([m for m in encoder.modules() if isinstance(m, BiMambaBlock)], depth)
