"""Stochastic depth ("drop path", timm's DropPath), as Vim / SSAMBA train with it.

In training, each sample's branch output is zeroed with probability p and the kept samples
are scaled by 1 / (1 - p), so the expected stream is unchanged; in eval mode (and at p = 0)
it is the identity and returns its input itself, so inference is bit-for-bit the same as
without it. It has no parameters and no buffers: state dicts and parameter counts are
unaffected.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn


def drop_path(x: torch.Tensor, p: float, training: bool,
              generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """x [B, ...] -> x with whole samples zeroed (probability p each), the others times 1/(1-p).

    One uniform draw per sample (a [B, 1, ..., 1] mask broadcast over the rest). With a
    `generator` the draws come from it, on its device (a CPU generator gives the same samples
    dropped whatever device x is on); without one, from the global RNG on x's device (timm).
    """
    if not training or p == 0.0:
        return x  # the input itself: eval-mode outputs are untouched
    keep = 1.0 - p
    device = generator.device if generator is not None else x.device
    kept = torch.rand(x.shape[0], generator=generator, device=device) < keep
    scale = kept.to(device=x.device, dtype=x.dtype) / keep
    return x * scale.view(-1, *(1,) * (x.ndim - 1))


class DropPath(nn.Module):
    """`drop_path` with a fixed rate p (0 <= p < 1), active in training mode only.

    `generator` (None: the global RNG) is set by `SpectrogramEncoder.set_drop_path_generator`,
    so that a training loop can make the draws a function of its own seeds.
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop-path rate must be in [0, 1), got {p}")
        self.p = float(p)
        self.generator: Optional[torch.Generator] = None

    def forward(self, x):
        """[B, ...] -> [B, ...]."""
        return drop_path(x, self.p, self.training, self.generator)

    def extra_repr(self) -> str:
        return f"p={self.p:g}"
