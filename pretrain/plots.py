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
