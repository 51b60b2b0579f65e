"""SSAM / SSAST encoders for 2 s log-mel crops (Yadav & Tan, "Audio Mamba", 2024).

One `EncoderConfig` describes both families: `arch="ssam"` stacks uni-directional
Mamba blocks, `arch="ssast"` stacks pre-norm ViT blocks (the paper's baseline). Patching,
positions, CLS/mask tokens and the masked-reconstruction head are shared, and the
parameter names match the official checkpoints.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .mamba import Mamba


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    arch: str = "ssam"  # "ssam" (Mamba blocks) or "ssast" (ViT blocks)
    embed_dim: int = 192
    depth: int = 12
    n_mels: int = 80
    crop_frames: int = 200  # 2 s at a 10 ms hop
    patch_time: int = 4
    patch_freq: int = 16
    norm_eps: float = 1e-6
    # Mamba mixer
    d_state: int = 24
    d_conv: int = 4
    expand: int = 3
    # ViT blocks
    num_heads: int = 3
    mlp_ratio: float = 4.0

    def __post_init__(self):
        if self.arch not in ("ssam", "ssast"):
            raise ValueError(f"arch must be 'ssam' or 'ssast', got {self.arch!r}")
        if self.crop_frames % self.patch_time or self.n_mels % self.patch_freq:
            raise ValueError("crop_frames and n_mels must be multiples of the patch size")

    @property
    def grid(self) -> tuple[int, int]:
        """(time, freq) patches per crop: (50, 5) for the paper's models."""
        return self.crop_frames // self.patch_time, self.n_mels // self.patch_freq

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def patch_dim(self) -> int:
        return self.patch_time * self.patch_freq

    @property
    def frame_embedding_size(self) -> int:
        """One output frame = the freq patches of one time step, concatenated."""
        return self.grid[1] * self.embed_dim


_WIDTHS = {"tiny": (192, 3), "small": (384, 6), "base": (768, 12)}
PRESETS = {
    f"{arch}-{size}": EncoderConfig(arch=arch, embed_dim=dim, num_heads=heads)
    for arch in ("ssam", "ssast")
    for size, (dim, heads) in _WIDTHS.items()
}


def sincos_pos_embed_2d(dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos table for a time-major (T, F) grid, CLS row of zeros first.

    The first half of the channels encodes the frequency index, the second half the time
    index (MAE's meshgrid(w, h) convention, as in the released checkpoints).
    """
    def one_axis(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2))
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    n_t, n_f = grid
    f_idx, t_idx = np.meshgrid(np.arange(n_f, dtype=np.float64), np.arange(n_t, dtype=np.float64))
    table = np.concatenate([one_axis(dim // 2, f_idx), one_axis(dim // 2, t_idx)], axis=1)
    table = np.concatenate([np.zeros((1, dim)), table], axis=0)
    return torch.from_numpy(table).float().unsqueeze(0)


class PatchEmbed(nn.Module):
    """[B, 1, T, F] -> [B, T/pt * F/pf, D], tokens in time-major order (t * n_f + f)."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        k = (cfg.patch_time, cfg.patch_freq)
        self.proj = nn.Conv2d(1, cfg.embed_dim, kernel_size=k, stride=k)
        nn.init.xavier_uniform_(self.proj.weight.view(cfg.embed_dim, -1))
        nn.init.zeros_(self.proj.bias)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class MambaBlock(nn.Module):
    """mamba_ssm's Block without fusion: residual += hidden; hidden = mixer(norm(residual))."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mixer = Mamba(cfg.embed_dim, d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand)

    def forward(self, hidden, residual: Optional[torch.Tensor]):
        residual = hidden if residual is None else residual + hidden
        hidden = self.norm(residual.to(self.norm.weight.dtype))
        return self.mixer(hidden), residual.float()  # residual kept in fp32


class Attention(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, L, D))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class ViTBlock(nn.Module):
    """timm's pre-norm block: x += attn(norm1(x)); x += mlp(norm2(x))."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg.embed_dim, cfg.num_heads)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mlp = Mlp(cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SSAMEncoder(nn.Module):
    """Patch embedding + CLS + fixed positions -> blocks -> encoder_norm (+ `pred` head)."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(sincos_pos_embed_2d(D, cfg.grid), requires_grad=False)
        block = MambaBlock if cfg.arch == "ssam" else ViTBlock
        self.blocks = nn.ModuleList(block(cfg) for _ in range(cfg.depth))
        self.encoder_norm = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.pred = nn.Sequential(nn.Linear(D, D), nn.GELU(), nn.Linear(D, cfg.patch_dim))
        self._init_weights()

    def _init_weights(self):
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        if self.cfg.arch == "ssam":
            # mamba_ssm's recipe, applied model-wide as the official code does: zero Linear
            # biases (except dt_proj's), shrink each mixer's out_proj by 1/sqrt(depth).
            for m in self.modules():
                if isinstance(m, nn.Linear) and m.bias is not None and not getattr(m.bias, "_no_reinit", False):
                    nn.init.zeros_(m.bias)
            for blk in self.blocks:
                w = blk.mixer.out_proj.weight
                nn.init.kaiming_uniform_(w, a=math.sqrt(5))
                with torch.no_grad():
                    w /= math.sqrt(self.cfg.depth)

    def embed(self, spec, mask: Optional[torch.Tensor] = None):
        """[B, 1, T, F] -> tokens [B, 1 + N, D]; masked patches become the (position-free) mask token."""
        x = self.patch_embed(spec)
        x = x + self.pos_embed[:, 1:1 + x.shape[1]]
        if mask is not None:
            x = torch.where(mask.unsqueeze(-1), self.mask_token.to(x.dtype), x)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        return torch.cat([cls.to(x.dtype), x], dim=1)

    def forward_blocks(self, x):
        if self.cfg.arch == "ssast":
            for blk in self.blocks:
                x = blk(x)
            return self.encoder_norm(x)
        hidden, residual = x, None
        for blk in self.blocks:
            hidden, residual = blk(hidden, residual)
        return self.encoder_norm((residual + hidden).to(self.encoder_norm.weight.dtype))

    @property
    def is_causal(self) -> bool:
        """Token k depends only on tokens <= k (uni-directional Mamba), not on later padding."""
        return self.cfg.arch == "ssam"

    def forward(self, spec, mask: Optional[torch.Tensor] = None):
        """Encoded patch tokens [B, N, D] (CLS dropped) for a batch of crops [B, 1, T, F].

        A causal encoder also accepts a crop cut short (T < crop_frames, T a multiple of the
        patch time): it yields the first T / patch_time time steps of tokens, exactly as the
        full zero-padded crop would, at a fraction of the cost.
        """
        self._check_input(spec, allow_prefix=self.is_causal and mask is None)
        return self.forward_blocks(self.embed(spec, mask))[:, 1:]

    def reconstruct(self, spec, mask):
        """Pretraining forward: predicted patches [B, N, patch_dim] from a masked crop."""
        self._check_input(spec)
        return self.pred(self.forward_blocks(self.embed(spec, mask)))[:, 1:]

    def patchify(self, spec):
        """[B, 1, T, F] -> [B, N, pt*pf] targets, patch order as the tokens, time-major inside."""
        n_t, n_f = self.cfg.grid
        pt, pf = self.cfg.patch_time, self.cfg.patch_freq
        x = spec.reshape(spec.shape[0], n_t, pt, n_f, pf)
        return x.permute(0, 1, 3, 2, 4).reshape(spec.shape[0], n_t * n_f, pt * pf)

    def _check_input(self, spec, allow_prefix=False):
        want = (1, self.cfg.crop_frames, self.cfg.n_mels)
        got = tuple(spec.shape[1:]) if spec.ndim == 4 else None
        if allow_prefix and got and got[0::2] == want[0::2] and 0 < got[1] <= want[1] \
                and got[1] % self.cfg.patch_time == 0:
            return
        if got != want:
            raise ValueError(f"encoder input must be [batch, {want[0]}, {want[1]}, {want[2]}] "
                             f"log-mel crops, got {tuple(spec.shape)}")

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
