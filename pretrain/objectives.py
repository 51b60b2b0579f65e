"""What pretraining optimises, as named choices: masking strategies and objectives.

    MASKINGS["unstructured"](batch, n_patches, ratio, generator, device) -> [B, N] bool (True = masked)
    OBJECTIVES["mse_all"](pred, target, mask) -> scalar loss

Today's recipe (SSAM / AxLSTM): unstructured masking of 50 % of the patches, MSE over all
patches ("mse_all", the official choice) or over the masked ones only ("mse_masked").
SSAST's joint objective (InfoNCE + 10 x MSE on masked patches) and cluster masking are
new entries here.
"""
from __future__ import annotations

import torch
import torch.nn as nn


def unstructured_mask(batch, n_patches, ratio, generator, device):
    """The `ratio` of patches with the largest uniform noise, per sample (argsort of noise)."""
    noise = torch.rand(batch, n_patches, generator=generator)
    rank = noise.argsort(dim=1).argsort(dim=1)
    return (rank >= int(n_patches * (1 - ratio))).to(device)


def mse_all(pred, target, mask):
    """Mean squared error over every patch, masked and visible (the official SSAM loss)."""
    return (pred.float() - target).pow(2).mean()


def mse_masked(pred, target, mask):
    """Mean squared error over the masked patches only (MAE's choice)."""
    err = (pred.float() - target).pow(2).mean(-1)  # [B, N]
    return (err * mask).sum() / mask.sum()


MASKINGS = {"unstructured": unstructured_mask}
OBJECTIVES = {"mse_all": mse_all, "mse_masked": mse_masked}


class MaskedSpectrogramModel(nn.Module):
    """Encoder + head with the loss inside forward(), so DDP sees one module call."""

    def __init__(self, encoder, objective: str = "mse_all"):
        super().__init__()
        self.encoder, self.objective = encoder, OBJECTIVES[objective]

    def forward(self, spec, mask):
        """spec [B, 1, T, F], mask [B, N] -> (loss, predicted patches [B, N, pt * pf])."""
        pred = self.encoder.reconstruct(spec, mask)
        return self.objective(pred, self.encoder.patchify(spec), mask), pred
