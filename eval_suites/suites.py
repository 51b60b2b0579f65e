"""Suite definitions: which HEAR bundles, their primary metrics, the probe grid and seeds.

A probe grid is heareval's PARAM_GRID format with names instead of objects, so suites
stay plain data (see heareval_compat.resolve_grid).
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    bundle: str  # task folder name, e.g. "esc50-v2.0.0-full"
    label: str  # column name in the HEAR leaderboard CSV
    metric: str  # primary metric (heareval score name)
    split: str  # "5-fold", "train/valid/test", ...


@dataclasses.dataclass(frozen=True)
class Suite:
    name: str
    tasks: tuple
    grid: dict
    seeds: tuple
    description: str = ""

    def task(self, bundle: str) -> TaskSpec:
        for t in self.tasks:
            if t.bundle == bundle:
                return t
        raise KeyError(f"{bundle} is not a task of suite {self.name}")


# The SSAM papers' narrowed heareval grid: one hidden layer of 1024 + BatchNorm, dropout
# {0.1, 0.25}, Adam lr 1e-4, batch 1024, up to 500 epochs, patience 20, validation every
# 3 epochs, xavier-normal init; the best of the 2 on validation is tested.
PAPER_GRID = {
    "hidden_layers": [1], "hidden_dim": [1024], "dropout": [0.1, 0.25], "lr": [1e-4],
    "patience": [20], "max_epochs": [500], "check_val_every_n_epoch": [3], "batch_size": [1024],
    "hidden_norm": ["BatchNorm1d"], "norm_after_activation": [False], "embedding_norm": ["Identity"],
    "initialization": ["xavier_normal_"], "optim": ["Adam"],
}

SSAM10 = Suite(
    name="ssam10",
    description="The ten HEAR tasks of the SSAM papers, with their probe protocol (10 seeds).",
    tasks=(
        TaskSpec("beijing_opera-v1.0-hear2021-full", "Beijing Opera", "top1_acc", "5-fold"),
        TaskSpec("tfds_crema_d-1.0.0-full", "CREMA-D", "top1_acc", "5-fold"),
        TaskSpec("esc50-v2.0.0-full", "ESC-50", "top1_acc", "5-fold"),
        TaskSpec("libricount-v1.0.0-hear2021-full", "Libricount", "top1_acc", "5-fold"),
        TaskSpec("mridangam_stroke-v1.5-full", "Mridangam Stroke", "top1_acc", "5-fold"),
        TaskSpec("mridangam_tonic-v1.5-full", "Mridangam Tonic", "top1_acc", "5-fold"),
        TaskSpec("nsynth_pitch-v2.2.3-5h", "NSynth Pitch 5h", "pitch_acc", "train/valid/test"),
        TaskSpec("speech_commands-v0.0.2-5h", "Speech commands 5h", "top1_acc", "train/valid/test"),
        TaskSpec("fsd50k-v1.0-full", "FSD50K", "mAP", "train/valid/test"),
        TaskSpec("vox_lingua_top10-hear2021-full", "VoxLingua107 top 10", "top1_acc", "5-fold"),
    ),
    grid=PAPER_GRID,
    seeds=tuple(range(10)),
)

# Offline mini suite: same probe family, sized for minutes on 2 CPU cores (one grid
# point, validation every 2 epochs, shorter patience, 3 seeds).
MINI_GRID = dict(PAPER_GRID, dropout=[0.1], max_epochs=[150], patience=[10],
                 check_val_every_n_epoch=[2], lr=[1e-3])

MINI = Suite(
    name="mini",
    description="Offline suite built from real recordings in Debian packages (python -m eval_suites build mini).",
    tasks=(
        TaskSpec("mini_phrases-v1.0-full", "Mini phrases", "top1_acc", "4-fold by voice"),
        TaskSpec("mini_drums-v1.0-full", "Mini drum strokes", "top1_acc", "4-fold by kit"),
        TaskSpec("mini_pitch-v1.0-full", "Mini pitch", "pitch_acc", "4-fold by instrument"),
        TaskSpec("mini_count-v1.0-full", "Mini speaker count", "top1_acc", "3-fold by voice"),
    ),
    grid=MINI_GRID,
    seeds=(0, 1, 2),
)

SUITES = {s.name: s for s in (SSAM10, MINI)}
