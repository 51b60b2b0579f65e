"""PNG of input / masked input / reconstruction spectrograms during pretraining."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def save_reconstruction(path: Path, encoder, spec, mask, pred, step, loss):
    """spec [1, T, F], mask [N], pred [N, pt*pf] (patchify's layout, any patch order)."""
    spec = spec[0].float().cpu()  # [T, F]
    target = encoder.patchify(spec[None, None])[0]
    shown = target.clone()
    shown[mask.cpu()] = float("nan")
    as_image = lambda patches: encoder.unpatchify(patches[None])[0, 0]  # noqa: E731
    panels = [("input (normalised features)", spec), (f"masked input ({int(mask.sum())} of {mask.numel()} patches)",
              as_image(shown)), ("reconstruction", as_image(pred.float().cpu()))]
    fig, axes = plt.subplots(3, 1, figsize=(10, 7), sharex=True)
    vmin, vmax = torch.quantile(spec, 0.01).item(), torch.quantile(spec, 0.99).item()
    for ax, (title, img) in zip(axes, panels):
        ax.imshow(img.T.numpy(), origin="lower", aspect="auto", vmin=vmin, vmax=vmax, cmap="magma")
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("mel bin")
    axes[-1].set_xlabel("frame (10 ms)")
    fig.suptitle(f"step {step}, loss {loss:.4f}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def save_training_curve(path: Path, metrics_csv: Path, global_batch: int, title: str = "",
                        start_crops: int = 0):
    """PNG of metrics.csv: loss against crops seen (step x global_batch, after the `start_crops`
    a second stage's start weights had already seen), lr on a second axis."""
    import csv
    with open(metrics_csv) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    crops = [start_crops + int(r["step"]) * global_batch for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(crops, [float(r["loss"]) for r in rows], lw=1, color="C0", label="training loss")
    ax.set_xlabel(f"crops seen (the first {start_crops:,} by the start weights)" if start_crops else "crops seen")
    ax.set_ylabel("loss (logged every few steps)", color="C0")
    ax.grid(alpha=0.3)
    lr_ax = ax.twinx()
    lr_ax.plot(crops, [float(r["lr"]) for r in rows], lw=1, color="C1", ls="--")
    lr_ax.set_ylabel("learning rate", color="C1")
    ax.set_title(title or f"pretraining: final loss {float(rows[-1]['loss']):.4f} after {crops[-1]:,} crops")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
