"""The learning rate per step: linear warm-up, then a half-cosine to zero (SSAM, SSAST, AxLSTM)
or the peak times a plateau schedule's scale (SSAMBA).

Hand-written rather than torch.optim.lr_scheduler: the lr is a pure function of the step (and,
for the plateau, of a six-number JSON state kept in the training checkpoint), so a resumed run
sets exactly the lr the uninterrupted run set. LambdaLR would count its own steps and round
`peak * ((step + 1) / warmup)` where the warm-up rounds `peak * (step + 1) / warmup` (another last
bit at about a third of the steps, so other losses); ReduceLROnPlateau cuts
the optimizer's current lr, which the warm-up rewrites every step, and neither SequentialLR nor
ChainedScheduler accepts it behind a warm-up.
"""
from __future__ import annotations

import logging
import math

from .config import TrainConfig

log = logging.getLogger("pretrain")  # the training loop's logger: one name for all its lines


def lr_at(step, total, warmup, peak):
    """Linear warm-up, then half-cosine to zero, per step."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def lr_plateau(step, warmup, peak, scale):
    """Linear warm-up to the peak, times the plateau schedule's current scale (1, 0.5, ...).

    (SSAST / SSAMBA raise the lr in 50-step stairs from 0, `step / 1000 * lr` at every 50th step;
    this is the same ramp without the stairs, the house's warm-up.)"""
    return peak * scale * min(1.0, (step + 1) / warmup) if warmup else peak * scale


class Plateau:
    """torch's ReduceLROnPlateau (rel threshold 1e-4, cooldown 0, min_lr 0, eps 1e-8) acting on
    a scale of the peak lr, fed the mean of a training metric over each interval of steps.
    Its whole state is a small JSON dict, saved in the training checkpoint for an exact resume."""

    def __init__(self, peak, mode="min", factor=0.5, patience=2, threshold=1e-4, eps=1e-8):
        self.peak, self.mode, self.factor, self.patience = peak, mode, factor, patience
        self.threshold, self.eps = threshold, eps
        self.best, self.bad, self.scale, self.total, self.count, self.checks = None, 0, 1.0, 0.0, 0, 0

    def observe(self, value: float) -> None:
        """One step's metric (non-finite values, e.g. an fp16 overflow step, are left out)."""
        if math.isfinite(value):
            self.total += value
            self.count += 1

    def _better(self, value):
        if not math.isfinite(value):  # an interval without a finite value is never an improvement
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best * (1 - self.threshold)
        return value > self.best * (1 + self.threshold)

    def step(self):
        """End of an interval: compare its mean with the best so far; maybe halve the scale.
        Returns the interval's mean (None if it had no finite value)."""
        value = self.total / self.count if self.count else float("nan")
        self.total, self.count, self.checks = 0.0, 0, self.checks + 1
        if self._better(value):
            self.best, self.bad = value, 0
        else:
            self.bad += 1
        if self.bad > self.patience:
            old = self.peak * self.scale
            if old - old * self.factor > self.eps:
                self.scale *= self.factor
            self.bad = 0
        return value if math.isfinite(value) else None

    def state_dict(self) -> dict:
        return {"best": self.best, "bad": self.bad, "scale": self.scale, "total": self.total,
                "count": self.count, "checks": self.checks}

    def load_state_dict(self, state: dict) -> None:
        for k in ("best", "bad", "scale", "total", "count", "checks"):
            setattr(self, k, state[k])


class LrSchedule:
    """The run's lr at each step, as `cfg.schedule` names it: "cosine" (lr_at) or "plateau"
    (lr_plateau, its scale cut by a Plateau fed `cfg.plateau_metric` every step and checked
    every `cfg.plateau_every` steps). `log_cuts`: log each cut (the main process only)."""

    def __init__(self, cfg: TrainConfig, total: int, warmup: int, log_cuts: bool = True):
        self.cfg, self.total, self.warmup, self.log_cuts = cfg, total, warmup, log_cuts
        self.plateau = None
        if cfg.schedule == "plateau":
            self.plateau = Plateau(cfg.lr, mode="max" if cfg.plateau_metric == "accuracy" else "min",
                                   factor=cfg.plateau_factor, patience=cfg.plateau_patience)

    def lr(self, step: int) -> float:
        """The lr of the optimizer step that turns `step` steps into `step + 1`."""
        if self.plateau is not None:
            return lr_plateau(step, self.warmup, self.cfg.lr, self.plateau.scale)
        return lr_at(step, self.total, self.warmup, self.cfg.lr)

    def after_step(self, step: int, loss: float, metrics: dict) -> None:
        """Feed the plateau the metric of the step that made `step` (loss, or the objective's
        `acc` for plateau_metric "accuracy"); at the end of an interval, maybe cut the lr."""
        if self.plateau is None:
            return
        cfg, plateau = self.cfg, self.plateau
        plateau.observe(metrics["acc"] if cfg.plateau_metric == "accuracy" else loss)
        if step % cfg.plateau_every == 0:
            scale = plateau.scale
            mean = plateau.step()
            if self.log_cuts and plateau.scale != scale:
                log.info("step %d: mean %s %s, no better than %.4f for %d checks: lr x %g (now %.2e)",
                         step, cfg.plateau_metric, "nan" if mean is None else f"{mean:.4f}",
                         plateau.best, cfg.plateau_patience + 1, cfg.plateau_factor, cfg.lr * plateau.scale)

    def state_dict(self) -> dict:
        """What a checkpoint's metadata keeps for an exact resume: {"plateau": ...} or nothing."""
        return {"plateau": self.plateau.state_dict()} if self.plateau is not None else {}

    def load_state_dict(self, metadata: dict) -> None:
        """From a checkpoint's metadata; one without a plateau state leaves the schedule fresh."""
        if self.plateau is not None and "plateau" in metadata:
            self.plateau.load_state_dict(metadata["plateau"])
