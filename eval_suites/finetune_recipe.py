"""The fine-tuning recipe as data: every choice of `python -m eval_suites finetune`, with its
source in SSAST's code (which SSAMBA reuses) and where our defaults differ, why. Kept apart from
the training loop (eval_suites.finetune) so that the command line is built without torch."""
from __future__ import annotations

import dataclasses

POOLINGS = ("tokens", "frames")
LOSSES = ("auto", "ce", "bce")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class FinetuneError(ValueError):
    """A bundle or a model cannot be fine-tuned as asked (names the problem and the fix)."""


# ------------------------------------------------------------------ the recipe

@dataclasses.dataclass(frozen=True)
class Recipe:
    """Every choice of a fine-tuning run; each is a flag of `python -m eval_suites finetune`.

    Defaults: SSAST's ESC-50 patch recipe (src/finetune/esc50/run_esc_patch.sh of the SSAST
    code, which SSAMBA reuses) scaled to small bundles on a CPU: fewer epochs and a smaller
    batch (the mini suite's splits hold 200-400 training clips), the same optimiser, head
    learning-rate factor, noise, masking proportions and step decay. docs/finetuning.md."""
    epochs: int = 20                  # SSAST: 50 (ESC-50), 30 (Speech Commands)
    batch_size: int = 16              # SSAST: 48 (ESC-50), 128 (Speech Commands)
    lr: float = 1e-4                  # the encoder's; SSAST: 1e-4 (ESC-50), 2.5e-4 (Speech Commands)
    head_lr_factor: float = 10.0      # the head trains at lr x this (SSAST's head_lr: 10 for patch models)
    weight_decay: float = 5e-7        # Adam's L2 term, as SSAST's traintest.py
    betas: tuple = (0.95, 0.999)
    lr_decay_start: int = 5           # from this epoch (1-based) on, lr x lr_decay after each epoch
    lr_decay: float = 0.85
    warmup_steps: int = 0             # SSAST: 1000 linear steps for Speech Commands / AudioSet, none for ESC-50
    freq_mask: float = 24 / 128       # SpecAugment frequency mask: at most this share of the bins (SSAST: 24 of 128)
    time_mask: float = 96 / 512       # time mask: at most this share of the window (SSAST: 96 of 512 frames)
    mixup: float = 0.0                # probability that a training clip is mixed (SSAST: 0 ESC-50, 0.6 SC)
    noise: bool = True                # SSAST's noise: + U(0, 1) * U(0, 0.1) per bin, and a roll of -10..9 frames
    pooling: str = "auto"             # "tokens" (ft_avgtok), "frames" (the scene embedding), auto: the family's
    patch_stride: str = "auto"        # "auto", "none", "S" or "T,F" (frames, bins)
    window_seconds: float = 0.0       # 0: the bundle's clip length where the positions extend, else the model's
    lr_floor: float = 1 / 64          # stop once lr < lr x this after epoch 10 (SSAST: ESC-50 then ends at 30)
    loss: str = "auto"                # auto: cross-entropy (multiclass), binary cross-entropy (multilabel)
    precision: str = "auto"           # auto: bf16 autocast on a GPU that has it (else fp16 + scaling), fp32 on CPU

    def __post_init__(self):
        checks = [(self.epochs >= 1, "epochs must be >= 1"), (self.batch_size >= 1, "batch_size must be >= 1"),
                  (self.lr > 0 and self.head_lr_factor > 0, "lr and head_lr_factor must be > 0"),
                  (0 <= self.freq_mask < 1 and 0 <= self.time_mask < 1, "freq_mask and time_mask are shares in [0, 1)"),
                  (0 <= self.mixup <= 1, "mixup is a probability in [0, 1]"),
                  (0 < self.lr_decay <= 1, "lr_decay must be in (0, 1]"),
                  (self.warmup_steps >= 0 and self.lr_decay_start >= 0, "warmup_steps and lr_decay_start must be >= 0"),
                  (self.weight_decay >= 0 and self.window_seconds >= 0, "weight_decay and window_seconds must be >= 0"),
                  (0 <= self.lr_floor < 1, "lr_floor must be in [0, 1)"),
                  (self.pooling in ("auto",) + POOLINGS, f"pooling must be auto or one of {POOLINGS}"),
                  (self.loss in LOSSES, f"loss must be one of {LOSSES}"),
                  (self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}")]
        for ok, message in checks:
            if not ok:
                raise FinetuneError(message)
        parse_patch_stride(self.patch_stride)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def lr_at(self, epoch: int, step: int) -> float:
        """The encoder's lr in `epoch` (0-based) at global `step`: SSAST's MultiStepLR (x lr_decay
        after every epoch from lr_decay_start on) times its linear warm-up."""
        decays = max(0, epoch + 1 - self.lr_decay_start)
        warm = min(1.0, step / self.warmup_steps) if self.warmup_steps else 1.0
        return self.lr * self.lr_decay ** decays * warm


    def stops_after(self, epoch: int) -> bool:
        """SSAST's early stop after `epoch` (0-based): its lr has fallen below lr x lr_floor and
        more than 10 epochs have run."""
        return epoch + 2 > 10 and self.lr_at(epoch + 1, 10 ** 9) < self.lr * self.lr_floor  # SSAST's counter, +1


def parse_patch_stride(text: str):
    """'auto' | 'none' | 'S' | 'T,F' -> 'auto', None, or (time, freq)."""
    text = str(text).strip().lower()
    if text in ("auto", "none"):
        return None if text == "none" else "auto"
    try:
        parts = [int(p) for p in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise FinetuneError(f"patch_stride must be auto, none, S or T,F (frames, bins), got {text!r}")
    return tuple(parts)
