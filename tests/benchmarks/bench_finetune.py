"""Fine-tuning throughput: training clips per second of each model under the fine-tuning recipe.

    .venv/bin/python tests/benchmarks/bench_finetune.py --model NAME=CKPT [--model NAME=CKPT ...]
        [--seconds 2] [--batch-size 16] [--steps 6] [--rounds 3] [--out DIR]

Each model is built exactly as `python -m eval_suites finetune` builds it for a bundle of
`--seconds` clips (eval_suites.finetune.build_model: its window, the recipe's patch stride and
pooling, the head), then runs `--steps` full training steps (augmentation, forward, loss,
backward, Adam step) on a batch of `--batch-size` synthetic clips, after one warm-up step.
Rounds interleave the models (model A, B, ..., A, B, ...), so a machine whose load changes
affects them alike; the median round is reported. The same run prints each model's ratio to
the first model. On a GPU, under the recipe's precision ("auto": bf16 autocast).

Prints a table and writes DIR/finetune_throughput.csv (model, family, stride, tokens,
clips_per_s median/min/max, device, threads).
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from eval_suites.finetune import Bundle, augment, autocast_dtype, build_model  # noqa: E402
from eval_suites.finetune_recipe import Recipe  # noqa: E402
from eval_suites.runner import ModelSpec  # noqa: E402


def synthetic_bundle(seconds: float, n_labels: int = 10) -> Bundle:
    meta = {"sample_duration": seconds, "prediction_type": "multiclass", "evaluation": ["top1_acc"],
            "embedding_type": "scene", "split_mode": "trainvaltest", "splits": ["train", "valid", "test"]}
    return Bundle("synthetic", Path("."), meta, [str(i) for i in range(n_labels)], {})


def time_steps(model, plugin, recipe, batch, steps, device):
    """Seconds for `steps` training steps (after one warm-up step)."""
    dtype, scaled = autocast_dtype(recipe, device)
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=scaled)
    spec, targets, real = batch
    model.train()

    def step(i):
        x, y = augment(spec, targets, recipe, i, plugin.pad_value)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(x.unsqueeze(1).to(device), real.to(device)).float()
        loss = F.cross_entropy(logits, y.to(device))
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    step(0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(steps):
        step(i + 1)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, help="NAME=CKPT")
    p.add_argument("--seconds", type=float, default=2.0, help="clip length of the synthetic bundle")
    p.add_argument("--batch-size", type=int, default=Recipe().batch_size)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    recipe, bundle = Recipe(batch_size=a.batch_size), synthetic_bundle(a.seconds)
    built = []
    for text in a.model:
        spec = ModelSpec.parse(text)
        model, plugin, geometry = build_model(spec, recipe, bundle, head_seed=0)
        model.to(device)
        cfg = model.encoder.cfg
        g = torch.Generator().manual_seed(0)
        spec_batch = torch.randn(a.batch_size, cfg.crop_frames, cfg.n_mels, generator=g)
        targets = torch.eye(len(bundle.labels))[torch.randint(0, len(bundle.labels), (a.batch_size,), generator=g)]
        real = torch.full((a.batch_size,), cfg.grid[0])
        built.append((spec.name, model, plugin, geometry, (spec_batch, targets, real)))
    times = {name: [] for name, *_ in built}
    for _ in range(a.rounds):
        for name, model, plugin, _, batch in built:
            times[name].append(time_steps(model, plugin, recipe, batch, a.steps, device))
    rows = []
    for name, model, _, geometry, _ in built:
        rates = [a.steps * a.batch_size / t for t in times[name]]
        rows.append({"model": name, "family": geometry["family"], "stride": "x".join(map(str, geometry["stride"])),
                     "tokens": geometry["grid"][0] * geometry["grid"][1], "window_frames": geometry["window_frames"],
                     "clips_per_s": statistics.median(rates), "clips_per_s_min": min(rates),
                     "clips_per_s_max": max(rates), "device": torch.cuda.get_device_name() if device.type == "cuda"
                     else "cpu", "threads": torch.get_num_threads()})
    first = rows[0]["clips_per_s"]
    print(f"{'model':<24}{'family':<8}{'stride':<8}{'tokens':>7}{'clips/s':>10}{'min':>8}{'max':>8}{'ratio':>8}")
    for r in rows:
        print(f"{r['model']:<24}{r['family']:<8}{r['stride']:<8}{r['tokens']:>7}{r['clips_per_s']:>10.2f}"
              f"{r['clips_per_s_min']:>8.2f}{r['clips_per_s_max']:>8.2f}{r['clips_per_s'] / first:>8.2f}")
    print(f"device {rows[0]['device']}, {rows[0]['threads']} threads, batch {a.batch_size}, {a.seconds:g} s clips, "
          f"{a.steps} steps x {a.rounds} rounds (median round)")
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        with open(a.out / "finetune_throughput.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    main()
