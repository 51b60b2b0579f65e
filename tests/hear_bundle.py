"""Write small HEAR task bundles of synthesised audio (tones in noise), for tool tests.

Each writer's `rate` names the one audio folder it writes, RATE/<split>/ (hear-preprocess
writes one per rate; the default is the plugin's 16000)."""
import json
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16000
SPLITS = ["train", "valid", "test"]


def _tone(freq, seconds, rng, start=0.0, stop=None, rate=SR):
    t = np.arange(int(seconds * rate)) / rate
    x = 0.05 * rng.standard_normal(t.shape)
    on = (t >= start) & (t < (stop if stop is not None else seconds))
    x[on] += 0.5 * np.sin(2 * np.pi * freq * t[on])
    return x.astype(np.float32)


def _write_task(task: Path, n_per_split, make_clip, vocab, metadata, rate=SR):
    """make_clip(split, i) -> (audio at `rate`, label entry); writes a train/valid/test bundle."""
    for split in SPLITS:
        labels = {}
        (task / str(rate) / split).mkdir(parents=True)
        for i in range(n_per_split):
            name = f"{split}_{i:03d}.wav"
            audio, labels[name] = make_clip(split, i)
            sf.write(task / str(rate) / split / name, audio, rate)
        (task / f"{split}.json").write_text(json.dumps(labels))
    (task / "labelvocabulary.csv").write_text("idx,label\n" + "".join(f"{i},{v}\n" for i, v in enumerate(vocab)))
    (task / "task_metadata.json").write_text(json.dumps(dict(metadata, split_mode="trainvaltest", splits=SPLITS)))
    return task


def write_scene_task(root: Path, n_per_split=4, seconds=1.0, seed=0, rate=SR):
    """Two classes (low/high tone), multiclass scene task."""
    rng = np.random.default_rng(seed)

    def clip(split, i):
        label = "low" if i % 2 == 0 else "high"
        return _tone(220 if label == "low" else 1760, seconds, rng, rate=rate), [label]
    return _write_task(root / "tones-v1.0-full", n_per_split, clip, ["low", "high"], {
        "task_name": "tones", "version": "v1.0", "embedding_type": "scene",
        "prediction_type": "multiclass", "sample_duration": seconds, "evaluation": ["top1_acc"]}, rate)


def write_event_task(root: Path, n_per_split=3, seconds=3.0, seed=1, rate=SR):
    """One tone burst per clip, with onset/offset in ms: an event (timestamp) task."""
    rng = np.random.default_rng(seed)

    def clip(split, i):
        start = float(rng.uniform(0.2, 1.5))
        label = "beep" if i % 2 == 0 else "boop"
        audio = _tone(880 if label == "beep" else 440, seconds, rng, start, start + 0.8, rate)
        return audio, [{"label": label, "start": start * 1000, "end": (start + 0.8) * 1000}]
    return _write_task(root / "bursts-v1.0-full", n_per_split, clip, ["beep", "boop"], {
        "task_name": "bursts", "version": "v1.0", "embedding_type": "event",
        "prediction_type": "multilabel", "sample_duration": seconds,
        "evaluation": ["event_onset_200ms_fms"]}, rate)
