"""The ViT block of the SSAST baseline (timm's pre-norm block, qkv bias, GELU MLP)."""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        """[B, L, D] -> [B, L, D], bidirectional."""
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
    """x += attn(norm1(x)); x += mlp(norm2(x)). The whole stream travels in `hidden`."""
    causal = False  # attention sees every token
    supports_drop_path = False  # (timm's per-branch placement is not implemented)

    def __init__(self, dim: int, norm_eps: float = 1e-6, num_heads: int = 3, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, hidden, residual):
        """hidden, residual: [B, L, D] (stream = hidden + residual) -> (stream', None)."""
        x = hidden if residual is None else hidden + residual
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x)), None

    @staticmethod
    def init_encoder(encoder: nn.Module, depth: int) -> None:
        """PyTorch's default layer init (as this project's SSAST baseline has always used)."""
