"""Write small HEAR task bundles of synthesised audio (tones in noise), for tool tests."""
import json
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16000


def _tone(freq, seconds, rng, start=0.0, stop=None, total=None):
    total = total or seconds
    t = np.arange(int(total * SR)) / SR
    x = 0.05 * rng.standard_normal(t.shape)
    on = (t >= start) & (t < (stop if stop is not None else total))
    x[on] += 0.5 * np.sin(2 * np.pi * freq * t[on])
    return x.astype(np.float32)


def write_scene_task(root: Path, n_per_split=4, seconds=1.0, seed=0):
    """Two classes (low/high tone), train/valid/test, multiclass scene task."""
    rng = np.random.default_rng(seed)
    task = root / "tones-v1.0-full"
    splits = ["train", "valid", "test"]
    for split in splits:
        labels = {}
        (task / "16000" / split).mkdir(parents=True)
        for i in range(n_per_split):
            label = "low" if i % 2 == 0 else "high"
            name = f"{split}_{i:03d}.wav"
            sf.write(task / "16000" / split / name, _tone(220 if label == "low" else 1760, seconds, rng), SR)
            labels[name] = [label]
        (task / f"{split}.json").write_text(json.dumps(labels))
    (task / "labelvocabulary.csv").write_text("idx,label\n0,low\n1,high\n")
    (task / "task_metadata.json").write_text(json.dumps({
        "task_name": "tones", "version": "v1.0", "embedding_type": "scene",
        "prediction_type": "multiclass", "split_mode": "trainvaltest", "splits": splits,
        "sample_duration": seconds, "evaluation": ["top1_acc"]}))
    return task


def write_event_task(root: Path, n_per_split=3, seconds=3.0, seed=1):
    """One tone burst per clip, with onset/offset in ms: an event (timestamp) task."""
    rng = np.random.default_rng(seed)
    task = root / "bursts-v1.0-full"
    splits = ["train", "valid", "test"]
    for split in splits:
        labels = {}
        (task / "16000" / split).mkdir(parents=True)
        for i in range(n_per_split):
            start = float(rng.uniform(0.2, 1.5))
            stop = start + 0.8
            label = "beep" if i % 2 == 0 else "boop"
            name = f"{split}_{i:03d}.wav"
            audio = _tone(880 if label == "beep" else 440, seconds, rng, start, stop, seconds)
            sf.write(task / "16000" / split / name, audio, SR)
            labels[name] = [{"label": label, "start": start * 1000, "end": stop * 1000}]
        (task / f"{split}.json").write_text(json.dumps(labels))
    (task / "labelvocabulary.csv").write_text("idx,label\n0,beep\n1,boop\n")
    (task / "task_metadata.json").write_text(json.dumps({
        "task_name": "bursts", "version": "v1.0", "embedding_type": "event",
        "prediction_type": "multilabel", "split_mode": "trainvaltest", "splits": splits,
        "sample_duration": seconds, "evaluation": ["event_onset_200ms_fms"]}))
    return task
