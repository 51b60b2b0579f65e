"""Suite definitions: which HEAR bundles, their primary metrics, the probe grid and seeds.

Suites are plain data. A probe grid is either heareval's PARAM_GRID format with names
instead of objects (see heareval_compat.resolve_grid), or the string `HEAREVAL_GRID`, which
means heareval's own grid as it ships (its PARAM_GRID + TASK_SPECIFIC_PARAM_GRID), of which
heareval trains `grid_points` = 8 points drawn at random after seeding (its defaults).

Suites and protocols:
- `ssam10`: the SSAM papers' ten tasks with their narrowed grid, 10 seeds.
- `mini`: the offline suite (python -m eval_suites build mini).
- `hear2021`: all 19 HEAR 2021 leaderboard tasks (20 bundles: Beehive has two, fold0 and
  fold1) with heareval's own protocol: its grid, 8 grid points, seed 42 (one run, as the
  leaderboard's). The Beehive column is the mean of its two bundles' primary scores
  (aucroc), per seed, and is left blank unless both bundles were scored for that seed: one
  fold alone is a different number, not a noisier estimate of the same one.
- `HEAREVAL_PROTOCOL` (grid, points and seeds only): what `python -m eval_suites run` uses for
  bundles no suite names, so an unknown bundle is probed as heareval would probe it.
`HEAR2021_COLUMNS` is the official leaderboard's column order (alphabetical, as hearbenchmark.com's leaderboard.csv has it).
"""
from __future__ import annotations

import dataclasses

# heareval 2021.1.3's score names (heareval.score.available_scores); the first entry of a
# bundle's task_metadata.json "evaluation" is its primary metric.
HEAREVAL_SCORES = ("top1_acc", "pitch_acc", "chroma_acc", "mAP", "d_prime", "aucroc",
                   "event_onset_200ms_fms", "event_onset_50ms_fms",
                   "event_onset_offset_50ms_20perc_fms", "segment_1s_er")
LOWER_IS_BETTER = ("segment_1s_er",)  # an error rate; every other score is maximised

HEAREVAL_GRID = "heareval default grid"  # Suite.grid value: heareval's own PARAM_GRID
HEAREVAL_GRID_POINTS = 8  # heareval's --grid-points default
HEAREVAL_SEED = 42  # heareval's fixed seed_everything(42)
ALL_GRID_POINTS = 1000  # "every point": our dict grids are far smaller than this


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
    grid: dict | str  # PARAM_GRID with names as strings, or HEAREVAL_GRID
    seeds: tuple
    description: str = ""
    grid_points: int | None = None  # None: every point of a dict grid, heareval's 8 for HEAREVAL_GRID

    def task(self, bundle: str) -> TaskSpec:
        for t in self.tasks:
            if t.bundle == bundle:
                return t
        raise KeyError(f"{bundle} is not a task of suite {self.name}")

    @property
    def points(self) -> int:
        """How many grid points heareval trains per task (it draws them after seeding)."""
        if self.grid_points is not None:
            return self.grid_points
        return HEAREVAL_GRID_POINTS if self.grid == HEAREVAL_GRID else ALL_GRID_POINTS

    @property
    def labels(self) -> list:
        """Leaderboard columns in the suite's order (a column may hold several bundles)."""
        return list(dict.fromkeys(t.label for t in self.tasks))

    def protocol_text(self) -> str:
        if self.grid == HEAREVAL_GRID:
            grid = f"heareval's PARAM_GRID, {self.points} random points"
        else:
            n = _count_points(self.grid)
            grid = f"{n}-point grid" + (f", {self.points} random points" if self.points < n else ", every point")
        return f"{grid}, seeds {list(self.seeds)}"


def _count_points(grid: dict) -> int:
    n = 1
    for values in grid.values():
        n *= len(values)
    return n


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

# Offline mini suite: the papers' probe family (one hidden layer of 1024 + BatchNorm, Adam,
# xavier-normal init), one grid point, sized for minutes on 2 CPU cores: batch 64 (the tasks
# have 300-600 training clips, so the papers' 1024 would be one step per epoch and early
# stopping would pick near-random epochs: most of the v1 suite's seed-to-seed spread), lr 1e-3
# (measured on Mini pitch: 3x faster than the papers' 1e-4 at batch 64, with a seed spread as
# small), validation every 2 epochs, patience 10 checks, at most 150 epochs, 5 seeds (the 95 %
# interval is t(4) = 2.78 standard errors, against t(2) = 4.30 with 3 seeds).
MINI_GRID = dict(PAPER_GRID, dropout=[0.1], lr=[1e-3], batch_size=[64], max_epochs=[150], patience=[10],
                 check_val_every_n_epoch=[2])

# The mini suite's linear probe for event tasks (python -m eval_suites families): MINI_GRID with
# hidden_layers 0. heareval's FullyConnectedPrediction then has no hidden block (an Identity):
# one torch.nn.Linear(embedding dim, labels) on each frame embedding, initialised as the grid says
# (xavier-normal, gain 1), sigmoid + BCE for a multilabel task, trained as the MLP (Adam, lr, batch,
# patience; a bundle's task_specific_param_grid still applies) and tested through heareval's event
# post-processing. hidden_dim, dropout and hidden_norm are unused without a hidden layer, and
# embedding_norm is built but never applied in heareval's forward: the frames are not standardised.
MINI_LINEAR_GRID = dict(MINI_GRID, hidden_layers=[0])

MINI = Suite(
    name="mini",
    description="Offline suite built from real recordings in Debian packages (python -m eval_suites build mini).",
    tasks=(
        TaskSpec("mini_phrases-v2.0-full", "Mini phrases", "top1_acc", "4-fold by voice"),
        TaskSpec("mini_drums-v2.0-full", "Mini drum strokes", "top1_acc", "4-fold by kit"),
        TaskSpec("mini_pitch-v2.0-full", "Mini pitch", "pitch_acc", "4-fold by instrument"),
        TaskSpec("mini_count-v2.0-full", "Mini speaker count", "top1_acc", "3-fold by voice"),
        TaskSpec("mini_drum_events-v1.0-full", "Mini drum events", "event_onset_200ms_fms", "4-fold by kit"),
    ),
    grid=MINI_GRID,
    seeds=(0, 1, 2, 3, 4),
)

# All 19 HEAR 2021 leaderboard tasks, bundles named as hear-preprocess writes them (REFERENCE
# §4b). Beehive's two bundles share one column (the mean of the two, see the docstring).
HEAR2021 = Suite(
    name="hear2021",
    description="All 19 HEAR 2021 leaderboard tasks (20 bundles), heareval's own protocol.",
    tasks=(
        TaskSpec("beehive_states_fold0-v2-full", "Beehive", "aucroc", "train/valid/test"),
        TaskSpec("beehive_states_fold1-v2-full", "Beehive", "aucroc", "train/valid/test"),
        TaskSpec("beijing_opera-v1.0-hear2021-full", "Beijing Opera", "top1_acc", "5-fold"),
        TaskSpec("tfds_crema_d-1.0.0-full", "CREMA-D", "top1_acc", "5-fold"),
        TaskSpec("dcase2016_task2-hear2021-full", "DCASE 2016", "event_onset_200ms_fms", "train/valid/test"),
        TaskSpec("esc50-v2.0.0-full", "ESC-50", "top1_acc", "5-fold"),
        TaskSpec("fsd50k-v1.0-full", "FSD50K", "mAP", "train/valid/test"),
        TaskSpec("tfds_gtzan-1.0.0-full", "GTZAN Genre", "top1_acc", "10-fold"),
        TaskSpec("tfds_gtzan_music_speech-1.0.0-full", "GTZAN Music/Speech", "top1_acc", "10-fold"),
        TaskSpec("gunshot_triangulation-v1.0-full", "Gunshot", "top1_acc", "7-fold"),
        TaskSpec("libricount-v1.0.0-hear2021-full", "Libricount", "top1_acc", "5-fold"),
        TaskSpec("maestro-v3.0.0-5h", "Maestro 5h", "event_onset_50ms_fms", "5-fold"),
        TaskSpec("mridangam_stroke-v1.5-full", "Mridangam Stroke", "top1_acc", "5-fold"),
        TaskSpec("mridangam_tonic-v1.5-full", "Mridangam Tonic", "top1_acc", "5-fold"),
        TaskSpec("nsynth_pitch-v2.2.3-50h", "NSynth Pitch 50h", "pitch_acc", "train/valid/test"),
        TaskSpec("nsynth_pitch-v2.2.3-5h", "NSynth Pitch 5h", "pitch_acc", "train/valid/test"),
        TaskSpec("speech_commands-v0.0.2-5h", "Speech commands 5h", "top1_acc", "train/valid/test"),
        TaskSpec("speech_commands-v0.0.2-full", "Speech commands full", "top1_acc", "train/valid/test"),
        TaskSpec("vocal_imitation-v1.1.3-full", "Vocal Imitation", "mAP", "3-fold"),
        TaskSpec("vox_lingua_top10-hear2021-full", "VoxLingua107 top 10", "top1_acc", "5-fold"),
    ),
    grid=HEAREVAL_GRID,
    seeds=(HEAREVAL_SEED,),
)

# The official HEAR 2021 leaderboard's task columns, in its (alphabetical) order.
HEAR2021_COLUMNS = (
    "Beehive", "Beijing Opera", "CREMA-D", "DCASE 2016", "ESC-50", "FSD50K", "GTZAN Genre",
    "GTZAN Music/Speech", "Gunshot", "Libricount", "Maestro 5h", "Mridangam Stroke",
    "Mridangam Tonic", "NSynth Pitch 50h", "NSynth Pitch 5h", "Speech commands 5h",
    "Speech commands full", "Vocal Imitation", "VoxLingua107 top 10",
)

# heareval's own protocol, for bundles no suite names (a protocol: no tasks of its own).
HEAREVAL_PROTOCOL = Suite(
    name="heareval",
    description="heareval's defaults: its PARAM_GRID, 8 random grid points, seed 42.",
    tasks=(), grid=HEAREVAL_GRID, seeds=(HEAREVAL_SEED,),
)

SUITES = {s.name: s for s in (HEAR2021, SSAM10, MINI)}
# Probe protocols by name (`run --protocol`): heareval's, or any suite's grid and seeds.
PROTOCOLS = {"heareval": HEAREVAL_PROTOCOL, **SUITES}

# Every bundle a suite names -> its spec (hear2021 first: its labels are the leaderboard's).
KNOWN_TASKS = {}
for _suite in SUITES.values():
    for _t in _suite.tasks:
        KNOWN_TASKS.setdefault(_t.bundle, _t)


def split_text(metadata: dict) -> str:
    """'train/valid/test' or 'K-fold', from a task_metadata.json."""
    if metadata.get("split_mode") == "trainvaltest":
        return "train/valid/test"
    return f"{len(metadata.get('splits') or [])}-fold"


def bundle_task_specs(metadata: dict) -> dict:
    """{bundle: task_metadata.json dict} -> {bundle: TaskSpec} for any bundles.

    A bundle a suite names keeps that suite's spec (so known HEAR 2021 bundles get their
    leaderboard column); any other is labelled by its task_name with its first
    "evaluation" entry as the primary metric. Two bundles would otherwise share a column
    (same task_name, e.g. two versions of one task): those are labelled by bundle name.
    """
    specs, by_label = {}, {}
    for bundle in sorted(metadata):
        if bundle in KNOWN_TASKS:
            specs[bundle] = KNOWN_TASKS[bundle]
        else:
            meta = metadata[bundle]
            specs[bundle] = TaskSpec(bundle, str(meta["task_name"]), str(meta["evaluation"][0]), split_text(meta))
    for bundle, spec in specs.items():
        by_label.setdefault(spec.label, []).append(bundle)
    known_labels = {t.label for t in KNOWN_TASKS.values()}
    for label, bundles in by_label.items():
        unknown = [b for b in bundles if b not in KNOWN_TASKS]
        if unknown and (len(bundles) > 1 or label in known_labels):
            for b in unknown:
                specs[b] = dataclasses.replace(specs[b], label=b)
    return specs
