"""The AxLSTM block: a pre-LN residual mLSTM block in plain PyTorch, official parameter names.

AxLSTM (Yadav, Theodoridis, Tan, Interspeech 2025) uses the Vision-LSTM / xLSTM "mLSTM layer"
as its only mixer. This module re-implements that block so that a state dict of the official
code loads key for key (``norm.weight``, ``layer.proj_up.weight``, ...; docs/families.md lists them).

Shapes: ``D`` model width, ``E = expansion * D`` inner width, ``NH`` cell heads (4 in AxLSTM,
whatever the model's "num_heads" config says), ``DH = E / NH`` head width.

Layer maths, input x [B, L, D]::

    x_m, z = split(proj_up(x), 2)                    # [B, L, E] each
    x_c    = silu(causal_depthwise_conv_k4(x_m))     # [B, L, E]
    q, k   = q_proj(x_c), k_proj(x_c)                # block-diagonal, blocks of 4x4
    v      = v_proj(x_m)                             # note: v from x_m, not x_c
    i~, f~ = igate(cat[q, k, v]), fgate(cat[q, k, v])   # [B, L, NH] pre-activations
    h~     = mLSTM(q, k, v, i~, f~)                  # per head, [B, NH, L, DH]
    h      = groupnorm_per_head(h~) * (1 + outnorm.weight)
    y      = proj_down((h + learnable_skip * x_c) * silu(z))    # [B, L, D]

The cell itself (stabilisation, and its parallel / chunkwise / recurrent forms) is numerics:
`hear_ssam.ops.mlstm`.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import causal_conv1d
from ..ops.mlstm import BACKENDS, mlstm_chunkwise, mlstm_parallel, mlstm_recurrent

__all__ = [
    "mLSTMBlock", "mLSTMLayer", "mLSTMCell", "OffsetLayerNorm", "MultiHeadOffsetNorm",
    "BlockDiagonalLinear", "CausalDepthwiseConv1d",
]

# ----------------------------------------------------------------------------------------------
# Sub-modules (official key names)
# ----------------------------------------------------------------------------------------------

class OffsetLayerNorm(nn.Module):
    """LayerNorm without bias whose scale is stored as an offset: y = LN(x) * (1 + weight).

    Deliberately not an ``nn.LayerNorm`` subclass, so generic "LayerNorm weight = 1" inits do not
    touch it. x [..., D] -> [..., D].
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (self.dim,), 1.0 + self.weight, None, self.eps)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, scale=1+weight, bias=False"


class MultiHeadOffsetNorm(OffsetLayerNorm):
    """Per-head group norm over the head width (NH groups over E channels), scale 1 + weight,
    no bias. x [B, NH, L, DH] -> [B, L, NH * DH]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, NH, L, DH = x.shape
        y = x.transpose(1, 2).reshape(B * L, NH * DH)
        y = F.group_norm(y, NH, 1.0 + self.weight, None, self.eps)
        return y.view(B, L, NH * DH)


class BlockDiagonalLinear(nn.Module):
    """Block-diagonal linear map without bias: E/bs blocks of bs x bs.

    ``weight`` [E/bs, bs(out), bs(in)]; y[..., h*bs + o] = sum_i weight[h, o, i] x[..., h*bs + i].
    x [..., E] -> [..., E].
    """

    def __init__(self, dim: int, block_size: int = 4):
        super().__init__()
        if dim % block_size:
            raise ValueError(f"dim {dim} is not a multiple of block_size {block_size}")
        self.dim, self.block_size = dim, block_size
        self.weight = nn.Parameter(torch.empty(dim // block_size, block_size, block_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # the official module's own default (overwritten by mLSTMLayer.reset_parameters); kept so
        # that seeded construction draws the same random numbers as the official code
        nn.init.normal_(self.weight, mean=0.0, std=math.sqrt(2 / 5 / self.block_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xb = x.unflatten(-1, (self.dim // self.block_size, self.block_size))  # [..., nb, bs]
        return torch.einsum("...hi,hoi->...ho", xb, self.weight).flatten(-2)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, block_size={self.block_size}, bias=False"


class CausalDepthwiseConv1d(nn.Module):
    """Causal depthwise conv over time, with bias (key ``conv.weight`` [E, 1, k], ``conv.bias``).

    Output t sees inputs t-k+1 .. t (zeros before the start). PyTorch's default Conv1d init
    (U(+-1/sqrt(k)) for weight and bias), as in the official code. x [B, L, E] -> [B, L, E].
    """

    def __init__(self, dim: int, kernel_size: int = 4, bias: bool = True):
        super().__init__()
        self.dim, self.kernel_size = dim, kernel_size
        self.conv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size - 1, groups=dim, bias=bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.conv.reset_parameters()

    def forward(self, x: torch.Tensor, activation: str | None = None) -> torch.Tensor:
        """x [B, L, E] -> [B, L, E]; activation "silu" fuses the SiLU that follows (one pass on CPU)."""
        return causal_conv1d(x.transpose(1, 2), self.conv.weight.squeeze(1), self.conv.bias,
                             activation=activation).transpose(1, 2)


class mLSTMCell(nn.Module):
    """Gates + multi-head mLSTM + per-head output norm.

    Keys: ``igate.weight|bias`` [NH, 3E] / [NH], ``fgate.weight|bias``, ``outnorm.weight`` [E].
    q, k, v [B, L, E] -> [B, L, E].
    """

    def __init__(self, dim: int, num_heads: int = 4, norm_eps: float = 1e-5,
                 backend: str = "auto", chunk_size: int = 64, parallel_max_len: int = 1024):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"inner dim {dim} is not a multiple of num_heads {num_heads}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.dim, self.num_heads = dim, num_heads
        self.backend, self.chunk_size, self.parallel_max_len = backend, chunk_size, parallel_max_len
        self.igate = nn.Linear(3 * dim, num_heads)
        self.fgate = nn.Linear(3 * dim, num_heads)
        self.outnorm = MultiHeadOffsetNorm(dim, eps=norm_eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.outnorm.reset_parameters()
        nn.init.zeros_(self.fgate.weight)
        with torch.no_grad():
            self.fgate.bias.copy_(torch.linspace(3.0, 6.0, self.num_heads))
        nn.init.zeros_(self.igate.weight)
        nn.init.normal_(self.igate.bias, mean=0.0, std=0.1)

    def resolve_backend(self, seq_len: int) -> str:
        if self.backend != "auto":
            return self.backend
        return "parallel" if seq_len <= self.parallel_max_len else "chunkwise"

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        B, L, _ = q.shape
        gate_in = torch.cat([q, k, v], dim=-1)
        igate = self.igate(gate_in).transpose(1, 2)                    # [B, NH, L]
        fgate = self.fgate(gate_in).transpose(1, 2)
        q, k, v = (t.view(B, L, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))
        backend = self.resolve_backend(L)
        if backend == "parallel":
            h = mlstm_parallel(q, k, v, igate, fgate)
        elif backend == "chunkwise":
            h = mlstm_chunkwise(q, k, v, igate, fgate, chunk_size=self.chunk_size)
        else:
            h = mlstm_recurrent(q, k, v, igate, fgate)
        return self.outnorm(h)                                         # [B, L, E]

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, backend={self.backend!r}, "
                f"chunk_size={self.chunk_size}, parallel_max_len={self.parallel_max_len}")


class mLSTMLayer(nn.Module):
    """The AxLSTM / Vision-LSTM mLSTM layer (no norm, no residual). x [B, L, D] -> [B, L, D].

    Args: dim D; expansion (E = expansion * D); num_heads of the cell (4 in AxLSTM);
    conv_kernel (4); qkv_block_size (4); norm_eps of the per-head outnorm (1e-5);
    backend "auto" | "parallel" | "chunkwise" | "recurrent" (see the module docstring; "auto" =
    parallel up to ``parallel_max_len`` tokens, chunkwise beyond); chunk_size of the chunkwise
    form. The backend can be changed later through ``layer.mlstm_cell.backend``.

    Init (official): proj_up, q/k/v_proj N(0, sqrt(2 / (5 D))) ("small init", D the block width
    even for q/k/v); proj_down N(0, 2 / sqrt(D)) ("wang init" with num_blocks = 1); conv PyTorch
    default; igate weight 0, bias N(0, 0.1); fgate weight 0, bias linspace(3, 6, NH);
    learnable_skip 1; outnorm offsets 0. Sub-modules are built in the official order with the
    official default inits first, so a seeded construction draws the same random numbers.
    """

    def __init__(self, dim: int, expansion: int = 2, num_heads: int = 4, conv_kernel: int = 4,
                 qkv_block_size: int = 4, norm_eps: float = 1e-5, backend: str = "auto",
                 chunk_size: int = 64, parallel_max_len: int = 1024):
        super().__init__()
        inner = expansion * dim
        self.dim, self.inner_dim = dim, inner
        self.proj_up = nn.Linear(dim, 2 * inner, bias=False)
        self.q_proj = BlockDiagonalLinear(inner, qkv_block_size)
        self.k_proj = BlockDiagonalLinear(inner, qkv_block_size)
        self.v_proj = BlockDiagonalLinear(inner, qkv_block_size)
        self.conv1d = CausalDepthwiseConv1d(inner, conv_kernel)
        self.mlstm_cell = mLSTMCell(inner, num_heads, norm_eps=norm_eps, backend=backend,
                                    chunk_size=chunk_size, parallel_max_len=parallel_max_len)
        self.learnable_skip = nn.Parameter(torch.ones(inner))
        self.proj_down = nn.Linear(inner, dim, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        small = math.sqrt(2 / (5 * self.dim))
        nn.init.normal_(self.proj_up.weight, mean=0.0, std=small)
        nn.init.normal_(self.proj_down.weight, mean=0.0, std=2 / math.sqrt(self.dim))
        nn.init.ones_(self.learnable_skip)
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.normal_(proj.weight, mean=0.0, std=small)
        self.mlstm_cell.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_m, z = self.proj_up(x).chunk(2, dim=-1)                      # [B, L, E] each
        x_c = self.conv1d(x_m, activation="silu")
        h = self.mlstm_cell(self.q_proj(x_c), self.k_proj(x_c), self.v_proj(x_m))
        return self.proj_down((h + self.learnable_skip * x_c) * F.silu(z))


class mLSTMBlock(nn.Module):
    """AxLSTM block: ``x + layer(norm(x))`` (keys ``norm.weight``, ``layer.*``).

    House block contract: ``forward(hidden, residual)`` with hidden, residual [B, L, D]
    (residual may be None = 0); the stream is x = hidden + residual and the block returns
    (x + layer(norm(x)), None), the whole stream in the first slot. Causal: output token t
    depends only on input tokens <= t (AxLSTM's odd blocks run right to left: the encoder flips
    the sequence around them).

    Args: dim D; norm_eps of the block LN and the outnorm (1e-5); num_heads of the mLSTM cell
    (4 in AxLSTM for every width: the official cell gets qkv_block_size as its head count, not
    the model's num_heads); expansion (2); conv_kernel (4); qkv_block_size (4). Any other option
    raises TypeError. To choose the cell's form, set ``block.layer.mlstm_cell.backend``
    ("auto" by default; see ``mLSTMLayer``).
    """
    causal = True
    supports_drop_path = False

    def __init__(self, dim: int, norm_eps: float = 1e-5, num_heads: int = 4, expansion: int = 2,
                 conv_kernel: int = 4, qkv_block_size: int = 4, **unused_never):
        if unused_never:
            raise TypeError(f"mLSTMBlock got unknown option(s): {', '.join(sorted(unused_never))}")
        super().__init__()
        self.norm = OffsetLayerNorm(dim, eps=norm_eps)
        self.layer = mLSTMLayer(dim, expansion=expansion, num_heads=num_heads,
                                conv_kernel=conv_kernel, qkv_block_size=qkv_block_size,
                                norm_eps=norm_eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.layer.reset_parameters()
        self.norm.reset_parameters()

    def forward(self, hidden: torch.Tensor, residual: Optional[torch.Tensor]):
        x = hidden if residual is None else hidden + residual
        return x + self.layer(self.norm(x)), None

    @staticmethod
    def init_encoder(encoder: nn.Module, depth: int) -> None:
        """No-op: the official model-wide init only resets ``nn.LayerNorm`` modules (the encoder
        norm); the blocks keep their own init (wang init uses num_blocks = 1, so no depth
        scaling)."""
        return None
