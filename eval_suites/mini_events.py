"""mini_drum_events: a sound event detection task (timestamp embeddings) from real drum strokes.

It mirrors HEAR 2021's DCASE 2016 task 2 (office sounds mixed into scenes over background
noise at several event-to-background ratios, onset F-measure with a 200 ms collar as primary
score, 1-s segment error rate second) at a size that five encoders can embed on 2 CPU cores:

| | |
|---|---|
| source | hydrogen-drumkits: `mini._kit_strokes` (first velocity layer) of the 13 kits with strokes |
| classes | kick, snare, hihat, tom, cymbal, clap (a class some fold lacks is dropped) |
| clips | 4 folds x `clips_per_fold` (40) clips of `seconds` (4 s): 160 clips, 10.7 minutes |
| events | 5-8 per clip, classes dealt from a shuffled balanced deck per fold |
| folds | `new_split_kfold`, 4 disjoint by kit; every fold has 2+ samples of every class (`assign_kits`) |

Rules (all numbers are module constants):
- Onset: a stroke sample is trimmed before its first sample whose magnitude reaches -40 dB of
  the sample's peak (`ONSET_DB`), so the labelled start is where the stroke's attack begins.
- Offset: the end of the last 10 ms frame whose RMS is within 40 dB of the loudest frame
  (`OFFSET_DB`), capped at 1 s (`MAX_EVENT_S`). The audio is cut there with a 20 ms
  raised-cosine fade, so nothing of the stroke sounds after its label ends. A label lasts at
  least 250 ms (`MIN_LABEL_S`) even when the stroke is shorter: heareval's event post-processing
  for DCASE 2016 task 2 (median filter 250 ms, minimum predicted duration 125 or 250 ms) would
  otherwise erase every correctly predicted short stroke (closed hi-hats and claps are 50-100 ms).
  The primary score looks at onsets only and the second at 1-s segments, so the floor changes
  what can be detected, not what is measured.
- Placement: onsets are uniform in [50 ms, clip end - 250 ms], at least 150 ms apart
  (`MIN_ONSET_GAP_S`), and two events of one class never overlap (a frame-level multilabel probe
  could not separate them); events of different classes may overlap, as in DCASE 2016's
  polyphonic scenes. An event that finds no place in 200 tries is dropped. Labels are cut at the
  clip end.
- Level: each stroke is peak-normalised and scaled by a random gain in [-12, 0] dB (velocity).
- Background: pink (1/f) noise at a random event-to-background ratio drawn per clip in
  [6, 30] dB (`EBR_DB`): EBR = mean RMS of the clip's events over their sounding extents /
  RMS of the noise. Noise rather than other recordings, so nothing unlabelled that sounds like
  a class sits in the background. The mixture is peak-normalised to 0.9.

Post-processing and early stopping: for dcase2016_task2 heareval applies its default
EVENT_POSTPROCESSING_GRID (median_filter_ms [250], min_duration [125, 250]) and picks the
epoch and the post-processing by the event score on the validation fold, at every validation
check. That scoring (sed_eval over every clip, twice) made one probe cost 1-6 minutes per
seed on 2 cores, over the main job's budget for 5 models x 5 seeds. So this task uses
heareval's other documented mode, the one HEAR's Maestro task uses:
`"use_scoring_for_early_stopping": false` (early stopping on the validation loss) with one
post-processing, median filter 250 ms and minimum duration 125 ms (the shorter of DCASE's two:
with the 250 ms label floor below, the true labels score 0.979 under it, 0.785 under 250 ms).
The task's metadata states both, so a future heareval default cannot change them, and
keeps the probe's batch at 1024 and its patience at 5 checks (`TASK_PARAM_GRID`: the probe
sees frames, not clips).
`sample_duration` is the fixed clip length in seconds (heareval sizes embedding batches
from it: 0.7 * 120 / 4 = 21 clips per batch).

Everything is deterministic: sorted kits and samples, one generator per clip seeded by
`derive_seed("drum_events", fold, clip)`, one per fold for the class deck. The task is written
to a hidden temporary folder and renamed when complete.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from eval_suites.mini import KITS_DIR, SR, _kit_strokes, load_mono
from pretrain.seeds import derive_seed

log = logging.getLogger("eval_suites.mini_events")

TASK_NAME = "mini_drum_events"
VERSION = "v1.0"
NFOLDS = 4
EVENTS_PER_CLIP = (5, 8)  # inclusive
ONSET_DB = -40.0
OFFSET_DB = -40.0
ENVELOPE_MS = 10
MAX_EVENT_S = 1.0
MIN_LABEL_S = 0.25
FADE_S = 0.02
MIN_ONSET_GAP_S = 0.15
FIRST_ONSET_S = 0.05
GAIN_DB = (-12.0, 0.0)
EBR_DB = (6.0, 30.0)
PEAK = 0.9
# One of heareval's EVENT_POSTPROCESSING_GRID points (it applies the grid to dcase2016_task2);
# one point, because loss-based early stopping allows only one (see the docstring).
POSTPROCESSING = {"median_filter_ms": [250], "min_duration": [125]}
# The probe trains on frames (about 12,000 per training split at a 40 ms hop), so it keeps the
# papers' batch of 1024: a suite's small-data batch (64) would make an epoch 190 steps; and a
# patience of 5 checks (10 epochs): heareval's frame dataset costs about a second an epoch in
# Python, and the validation loss on 12,000 frames is smooth enough not to need more. heareval
# applies a bundle's task_specific_param_grid over any grid (as it does for dcase2016_task2).
TASK_PARAM_GRID = {"batch_size": [1024], "patience": [5]}


# ------------------------------------------------------------------ strokes

def prepare_stroke(x: np.ndarray) -> np.ndarray:
    """A stroke sample cut to its labelled extent: onset and offset rules of the module doc."""
    x = np.asarray(x, np.float32)
    peak = float(np.abs(x).max()) if len(x) else 0.0
    if peak <= 0:
        return np.zeros(0, np.float32)
    x = x[int(np.argmax(np.abs(x) >= peak * 10 ** (ONSET_DB / 20))):] / peak
    hop = SR * ENVELOPE_MS // 1000
    n = -(-len(x) // hop)
    frames = np.pad(x, (0, n * hop - len(x))).reshape(n, hop)
    rms = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
    last = int(np.nonzero(rms >= rms.max() * 10 ** (OFFSET_DB / 20))[0][-1])
    end = min(len(x), (last + 1) * hop, int(MAX_EVENT_S * SR))
    x = x[:end].copy()
    fade = min(int(FADE_S * SR), end)
    x[end - fade:] *= (0.5 + 0.5 * np.cos(np.linspace(0, np.pi, fade))).astype(np.float32)
    return x


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS pink (1/f power) noise, shaped in the frequency domain (flat below 20 Hz)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SR)
    spec /= np.sqrt(np.maximum(f, 20.0))
    spec[0] = 0
    y = np.fft.irfft(spec, n)
    return (y / (np.sqrt(np.mean(y ** 2)) + 1e-12)).astype(np.float32)


def assign_kits(classes_by_kit: dict, nfolds: int = NFOLDS) -> dict:
    """{kit: fold}, disjoint by kit, spreading each class's samples over the folds.

    Start from round robin over the kit names (sorted); then, while one exists, apply the first
    move of one kit to another fold, or swap of two kits, that raises (1) the smallest number of
    samples any fold has of any class (among classes at least nfolds kits have), then (2) the
    number of samples each fold has of each class, each counted up to the class's fair share
    (its total // nfolds), then lowers (3) the spread of fold sizes. Deterministic.
    """
    kits = sorted(classes_by_kit)
    # classes fewer than nfolds kits have cannot reach every fold: they do not count
    classes = sorted(c for c in {c for cs in classes_by_kit.values() for c in cs}
                     if sum(c in cs for cs in classes_by_kit.values()) >= nfolds)
    share = {c: sum(cs.count(c) for cs in classes_by_kit.values()) // nfolds for c in classes}
    fold = {k: i % nfolds for i, k in enumerate(kits)}

    def score(assign):
        count = [Counter() for _ in range(nfolds)]
        for k, f in assign.items():
            count[f].update(classes_by_kit[k])
        worst = min((count[f][c] for f in range(nfolds) for c in classes), default=0)
        fair = sum(min(count[f][c], share[c]) for f in range(nfolds) for c in classes)
        sizes = [sum(c.values()) for c in count]
        return (worst, fair, min(sizes) - max(sizes))

    best = score(fold)
    improved = True
    while improved:
        improved = False
        moves = [{a: f} for a in kits for f in range(nfolds) if f != fold[a]]
        moves += [{a: fold[b], b: fold[a]} for i, a in enumerate(kits) for b in kits[i + 1:] if fold[a] != fold[b]]
        for m in moves:
            trial = dict(fold, **m)
            if score(trial) > best:
                fold, best, improved = trial, score(trial), True
                break
    return fold


def kit_folds(kits_dir: Path, nfolds: int = NFOLDS):
    """[[(kit name, [(sample path, class)])]] per fold (kits with strokes only; `assign_kits`)."""
    kits = sorted(p for p in kits_dir.iterdir() if (p / "drumkit.xml").exists())
    strokes = {kit.name: sorted(_kit_strokes(kit), key=lambda t: (t[1], str(t[0]))) for kit in kits}
    strokes = {k: v for k, v in strokes.items() if v}
    fold_of = assign_kits({k: [c for _, c in v] for k, v in strokes.items()}, nfolds)
    return [[(k, strokes[k]) for k in sorted(strokes) if fold_of[k] == f] for f in range(nfolds)]


# ------------------------------------------------------------------ clips

def _place(rng, durations, classes, seconds):
    """Onsets (s) for events in order, or None for one that found no place (module doc rules)."""
    placed = []  # (onset, label end, class)
    out = []
    latest = seconds - MIN_LABEL_S
    for dur, cls in zip(durations, classes):
        onset = None
        for _ in range(200):
            t = float(rng.uniform(FIRST_ONSET_S, latest))
            t = round(t * SR) / SR
            end = min(t + dur, seconds)
            if all(abs(t - o) >= MIN_ONSET_GAP_S for o, _, _ in placed) and \
                    all(c != cls or end <= o or t >= e for o, e, c in placed):
                onset = t
                placed.append((t, end, cls))
                break
        out.append(onset)
    return out


def make_clip(rng: np.random.Generator, classes: list, pool: dict, seconds: float, ebr_db):
    """One mixture and its events (a list of HEAR event dicts, ms) and its EBR (dB or None).

    classes: the clip's event classes; pool: class -> [prepared strokes].
    """
    n = int(seconds * SR)
    strokes = [pool[c][int(rng.integers(len(pool[c])))] for c in classes]
    gains = [10 ** (float(rng.uniform(*GAIN_DB)) / 20) for _ in classes]
    durations = [max(len(s) / SR, MIN_LABEL_S) for s in strokes]
    onsets = _place(rng, durations, classes, seconds)
    mix = np.zeros(n, np.float64)
    events, levels = [], []
    for cls, x, g, dur, t in zip(classes, strokes, gains, durations, onsets):
        if t is None:
            continue
        i = round(t * SR)
        seg = (g * x)[: n - i]
        mix[i:i + len(seg)] += seg
        levels.append(np.sqrt(np.mean(seg.astype(np.float64) ** 2)))
        events.append({"label": cls, "start": round(1000.0 * i / SR, 4),
                       "end": round(1000.0 * min(t + dur, seconds), 4)})
    ebr = None
    if ebr_db is not None:
        ebr = float(rng.uniform(*ebr_db))
        level = float(np.mean(levels)) if levels else 0.1
        mix += pink_noise(n, rng) * (level / 10 ** (ebr / 20))
    peak = np.abs(mix).max()
    if peak > 0:
        mix *= PEAK / peak
    events.sort(key=lambda e: (e["start"], e["label"]))
    return mix.astype(np.float32), events, ebr


# ------------------------------------------------------------------ bundle

class EventBundleWriter:
    """A k-fold HEAR event bundle, written to a hidden temp folder and renamed when complete."""

    def __init__(self, tasks_dir: Path, seconds: float, nfolds: int):
        self.final = tasks_dir / f"{TASK_NAME}-{VERSION}-full"
        tasks_dir.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".building-{TASK_NAME}-", dir=tasks_dir))
        self.tmp.chmod(0o755)  # mkdtemp makes it private
        self.seconds = seconds
        self.splits = [f"fold{i:02d}" for i in range(nfolds)]
        self.labels = {s: {} for s in self.splits}

    def add(self, fold: int, name: str, audio: np.ndarray, events: list):
        split = self.splits[fold]
        path = self.tmp / "16000" / split / name
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, audio, SR, subtype="PCM_16")
        self.labels[split][name] = events

    def finish(self, vocab, provenance: dict):
        meta = {"task_name": TASK_NAME, "version": VERSION, "embedding_type": "event",
                "prediction_type": "multilabel", "split_mode": "new_split_kfold",
                "nfolds": len(self.splits), "sample_duration": self.seconds,
                "evaluation": ["event_onset_200ms_fms", "segment_1s_er"],
                "evaluation_params": {"event_postprocessing_grid": POSTPROCESSING,
                                      "task_specific_param_grid": TASK_PARAM_GRID},
                "use_scoring_for_early_stopping": False,
                "splits": self.splits, "provenance": provenance}
        for split, labels in self.labels.items():
            (self.tmp / f"{split}.json").write_text(json.dumps(labels, indent=1))
        (self.tmp / "labelvocabulary.csv").write_text(
            "idx,label\n" + "".join(f"{i},{lab}\n" for i, lab in enumerate(vocab)))
        (self.tmp / "task_metadata.json").write_text(json.dumps(meta, indent=1))
        self.tmp.rename(self.final)

    def abort(self):
        shutil.rmtree(self.tmp, ignore_errors=True)


def build_drum_events(root: Path, tasks_dir: Path, clips_per_fold: int = 40, seconds: float = 4.0,
                      ebr_db=EBR_DB, kits_dir: Path | None = None):
    """Write mini_drum_events-v1.0-full into tasks_dir from the unpacked hydrogen-drumkits.

    root: the unpack folder holding hydrogen-drumkits/ (as mini.build_drums); kits_dir overrides
    the kit folder. ebr_db: (low, high) event-to-background ratio in dB, None for no background.
    """
    tasks_dir = Path(tasks_dir)
    final = tasks_dir / f"{TASK_NAME}-{VERSION}-full"
    for stale in tasks_dir.glob(f".building-{TASK_NAME}-*"):  # an interrupted earlier build
        shutil.rmtree(stale)
    if (final / "task_metadata.json").exists():
        log.info("%s already built in %s", final.name, tasks_dir)
        return final
    kits_dir = Path(kits_dir) if kits_dir else Path(root) / "hydrogen-drumkits" / KITS_DIR
    folds = kit_folds(kits_dir)
    cache = {}

    def stroke(path):
        if path not in cache:
            cache[path] = prepare_stroke(load_mono(path))
        return cache[path]

    pools = []  # per fold: class -> [prepared strokes]
    for fold in folds:
        pool = {}
        for _, strokes in fold:
            for path, cls in strokes:
                x = stroke(path)
                if len(x):
                    pool.setdefault(cls, []).append(x)
        pools.append(pool)
    vocab = sorted(set.intersection(*(set(p) for p in pools)))
    dropped = sorted(set().union(*(set(p) for p in pools)) - set(vocab))
    if dropped:
        log.info("%s: dropping classes missing from some fold: %s", TASK_NAME, dropped)
    if not vocab:
        raise RuntimeError(f"no drum class is present in every fold under {kits_dir}")

    w = EventBundleWriter(tasks_dir, float(seconds), len(folds))
    counts = [Counter() for _ in folds]
    ebrs = []
    try:
        bar = tqdm(total=len(folds) * clips_per_fold, desc=TASK_NAME, leave=False)
        for f, pool in enumerate(pools):
            # events per clip, then a balanced class deck: each class as often as the others (+-1)
            deck_rng = np.random.default_rng(derive_seed("drum_events", f, "deck"))
            ks = deck_rng.integers(EVENTS_PER_CLIP[0], EVENTS_PER_CLIP[1] + 1, size=clips_per_fold)
            deck = [vocab[i % len(vocab)] for i in deck_rng.permutation(int(ks.sum()))]
            starts = np.concatenate([[0], np.cumsum(ks)])
            for c in range(clips_per_fold):
                rng = np.random.default_rng(derive_seed("drum_events", f, c))
                classes = deck[starts[c]:starts[c + 1]]
                audio, events, ebr = make_clip(rng, classes, pool, seconds, ebr_db)
                w.add(f, f"f{f}_{c:03d}.wav", audio, events)
                counts[f].update(e["label"] for e in events)
                if ebr is not None:
                    ebrs.append(ebr)
                bar.update()
        bar.close()
        provenance = {
            "source": "hydrogen-drumkits (Debian): first velocity layer of each kit instrument",
            "licence": "GPL-2+ / CC",
            "kits": [name for fold in folds for name, _ in fold],
            "fold_kits": {w.splits[f]: [name for name, _ in fold] for f, fold in enumerate(folds)},
            "classes_dropped": dropped,
            "clips_per_fold": clips_per_fold, "seconds": seconds,
            "events_per_clip": list(EVENTS_PER_CLIP),
            "events_per_class": {w.splits[f]: dict(sorted(c.items())) for f, c in enumerate(counts)},
            "onset_rule": f"first sample within {-ONSET_DB:g} dB of the stroke's peak",
            "offset_rule": (f"end of the last {ENVELOPE_MS} ms frame within {-OFFSET_DB:g} dB of the loudest "
                            f"frame, capped at {MAX_EVENT_S:g} s (audio faded out there); labels last at "
                            f"least {MIN_LABEL_S:g} s; cut at the clip end"),
            "placement": (f"uniform onsets >= {MIN_ONSET_GAP_S:g} s apart; one class never overlaps "
                          "itself; different classes may overlap"),
            "gain_db": list(GAIN_DB),
            "background": ("none" if ebr_db is None else
                           f"pink noise, event-to-background ratio uniform in {list(ebr_db)} dB per clip"),
            "seeds": 'derive_seed("drum_events", fold, clip); deck: derive_seed("drum_events", fold, "deck")',
        }
        w.finish(vocab, provenance)
    except BaseException:
        w.abort()
        raise
    total = sum(sum(c.values()) for c in counts)
    log.info("built %s: %d clips (%.1f min), %d events, %d classes %s, per fold %s", final.name,
             len(folds) * clips_per_fold, len(folds) * clips_per_fold * seconds / 60, total, len(vocab),
             vocab, [sum(c.values()) for c in counts])
    return final

