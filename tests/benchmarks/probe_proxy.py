"""A fast proxy of the mini suite for checkpoints in the middle of a pretraining run: scene
embeddings of the four scene tasks, standardised, a ridge classifier (alpha QP_ALPHA, default
100) fitted on all folds but one, accuracy on that fold, mean over folds. Minutes per model
with one thread instead of the main job's quarter of an hour, and deterministic. It is NOT the
leaderboard's protocol (heareval's MLP probe, 5 seeds): use it to compare checkpoints with each
other, and the main job for anything reported as a score.

    QP_THREADS=1 .venv/bin/python tests/benchmarks/probe_proxy.py data/tasks MODEL [MODEL ...]

MODEL: anything hear_ssam.load_model takes (a .safetensors or .pth file, "logmel").
"""
import json
import os
import sys
from pathlib import Path
import numpy as np, soundfile as sf, torch
from sklearn.linear_model import RidgeClassifier
from sklearn.preprocessing import StandardScaler
from sklearn.pipeline import make_pipeline
import hear_ssam
torch.set_num_threads(int(os.environ.get("QP_THREADS", "2")))
tasks_dir = Path(sys.argv[1]); models = sys.argv[2:]
tasks = [p for p in sorted(tasks_dir.iterdir()) if (p / "task_metadata.json").exists()
         and json.load(open(p / "task_metadata.json"))["embedding_type"] == "scene"]
cache = {}
def load_task(t):
    if t in cache: return cache[t]
    meta = json.load(open(t / "task_metadata.json"))
    folds = sorted(p for p in t.glob("fold*.json"))
    items = []
    for fi, fp in enumerate(folds):
        for name, labels in json.load(open(fp)).items():
            items.append((fi, t / "16000" / fp.stem / name, labels[0]))
    audio = [sf.read(p, dtype="float32")[0] for _, p, _ in items]
    cache[t] = (items, audio); return cache[t]
for m in models:
    model = hear_ssam.load_model(m)
    row = []
    for t in tasks:
        items, audio = load_task(t)
        embs = []
        with torch.no_grad():
            for i in range(0, len(audio), 64):
                x = torch.tensor(np.stack(audio[i:i+64]))
                embs.append(hear_ssam.get_scene_embeddings(x, model).numpy())
        X = np.concatenate(embs); y = np.array([l for _, _, l in items]); f = np.array([fi for fi, _, _ in items])
        accs = []
        for k in np.unique(f):
            clf = make_pipeline(StandardScaler(), RidgeClassifier(alpha=float(os.environ.get('QP_ALPHA', '100'))))
            clf.fit(X[f != k], y[f != k]); accs.append((clf.predict(X[f == k]) == y[f == k]).mean())
        row.append(float(np.mean(accs)))
    print(f"{m:60s} " + " ".join(f"{t.name[:14]}={a:.3f}" for t, a in zip(tasks, row)) + f"  mean={np.mean(row):.4f}", flush=True)
