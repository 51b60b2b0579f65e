"""PNG of input / masked input / reconstruction spectrograms during pretraining."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def unpatchify(patches, cfg):
    """[N, pt*pf] (token order t*n_f + f, time-major inside) -> [T, F]."""
    n_t, n_f = cfg.grid
    x = patches.reshape(n_t, n_f, cfg.patch_time, cfg.patch_freq)
    return x.permute(0, 2, 1, 3).reshape(n_t * cfg.patch_time, n_f * cfg.patch_freq)


def save_reconstruction(path: Path, encoder, spec, mask, pred, step, loss):
    cfg = encoder.cfg
    spec = spec[0].float().cpu()  # [T, F]
    target = encoder.patchify(spec[None, None])[0]
    shown = target.clone()
    shown[mask.cpu()] = float("nan")
    panels = [("input (normalised log-mel)", spec), (f"masked input ({int(mask.sum())} of {mask.numel()} patches)",
              unpatchify(shown, cfg)), ("reconstruction", unpatchify(pred.float().cpu(), cfg))]
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
