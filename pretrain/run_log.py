"""What a run writes for people to watch: OUT/metrics.csv (+ OUT/tb for TensorBoard when it is
installed), OUT/training_curve.png redrawn from metrics.csv, and OUT/plots/step_*.png."""
from __future__ import annotations

import csv
import logging
import time
from pathlib import Path

log = logging.getLogger("pretrain")  # the training loop's logger: one name for all its lines


class MetricsLog:
    """metrics.csv (+ TensorBoard when installed); rows past a resumed step are dropped.
    A joint objective adds its metrics (e.g. nce, mse, acc) as columns. The throughput and the
    elapsed time of a row are measured from the previous row (or this segment's start)."""
    FIELDS = ["step", "epoch", "loss", "lr", "grad_norm", "clips_per_s", "elapsed_s"]

    def __init__(self, out: Path, resume_step: int, global_batch: int, extra_fields=()):
        self.extra = list(extra_fields)
        self.FIELDS = self.FIELDS[:3] + self.extra + self.FIELDS[3:]
        self.path = out / "metrics.csv"
        rows = []
        if self.path.exists() and resume_step > 0:
            with open(self.path) as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, self.FIELDS)
            w.writeheader()
            w.writerows(rows)
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(out / "tb"), purge_step=resume_step + 1 if resume_step else None)
        except ImportError:
            log.warning("tensorboard is not installed: logging to metrics.csv only")
        self.global_batch = global_batch
        self.started = self.last_time = time.time()
        self.last_step = resume_step

    def write(self, step: int, epoch: int, loss: float, lr: float, grad_norm, metrics: dict) -> float:
        """One row for `step` (metrics: the objective's extra columns); returns its clips/s."""
        now = time.time()
        rate = (step - self.last_step) * self.global_batch / max(1e-9, now - self.last_time)
        self.last_step, self.last_time = step, now
        row = {"step": step, "epoch": epoch, "loss": f"{loss:.6f}", "lr": f"{lr:.6e}",
               "grad_norm": f"{float(grad_norm):.4f}", "clips_per_s": f"{rate:.2f}",
               "elapsed_s": f"{now - self.started:.1f}", **{k: f"{v:.6f}" for k, v in metrics.items()}}
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.FIELDS).writerow(row)
        if self.tb:
            for k in ["loss", *self.extra, "lr", "grad_norm", "clips_per_s"]:
                self.tb.add_scalar(f"train/{k}", row[k], row["step"])
        return rate

    def redraw_curve(self, title: str, start_crops: int = 0) -> None:
        """OUT/training_curve.png from every row so far (start_crops: a second stage's start)."""
        from .plots import save_training_curve  # matplotlib: only when a curve is drawn
        save_training_curve(self.path.parent / "training_curve.png", self.path, self.global_batch, title,
                            start_crops=start_crops)

    def close(self):
        if self.tb:
            self.tb.close()


def plot_reconstruction(out: Path, step: int, encoder, spec, mask, pred, loss: float) -> None:
    """OUT/plots/step_NNNNNNN.png of a micro-batch's first clip: spec [B, 1, T, F]; mask [B, N],
    or [n_masks, B, N] for an objective with several passes; pred [B, N, patch_dim], the last pass's."""
    from .plots import save_reconstruction  # matplotlib: only when a plot is drawn
    shown = mask[-1] if mask.ndim == 3 else mask  # the mask of the pass that `pred` reconstructs
    save_reconstruction(out / "plots" / f"step_{step:07d}.png", encoder, spec[0], shown[0], pred[0].detach(),
                        step, loss)
