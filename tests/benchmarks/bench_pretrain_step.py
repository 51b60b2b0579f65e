"""Benchmark: one pretraining step (forward + loss + backward, one micro-batch) in fp32 and
under CPU bf16 autocast, interleaved in the same process, for each tiny preset asked for.

    OMP_NUM_THREADS=2 .venv/bin/python tests/benchmarks/bench_pretrain_step.py [--presets ssam-tiny ssast-tiny]

Prints seconds per micro-batch (the best of --repeats, after one warm-up of each) and the
ratio fp32 / bf16, plus the relative difference of the bf16 loss and gradients from fp32 on
the same batch and mask, so the speed-up is read beside what it costs in numerics. bf16 is
fast only where the CPU has AVX512-BF16 or AMX (oneDNN); elsewhere expect a ratio below 1.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: pretrain/ is not installed
from hear_ssam.encoder import SpectrogramEncoder
from pretrain.config import TrainConfig
from pretrain.objectives import MASKINGS, MaskedSpectrogramModel


def step(model, spec, mask, bf16):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss, _ = model(spec, mask)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return loss.item(), grads


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["ssam-tiny", "ssast-tiny"])
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--mask-ratio", type=float, default=0.75)
    p.add_argument("--repeats", type=int, default=4)
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"{'preset':12s} {'fp32 s':>8s} {'bf16 s':>8s} {'fp32/bf16':>9s} {'loss rel.diff':>13s} {'grad rel.L2':>11s}")
    for preset in args.presets:
        torch.manual_seed(0)
        cfg = TrainConfig(preset=preset)
        model = MaskedSpectrogramModel(SpectrogramEncoder(cfg.encoder_config(), cfg.pretraining_options()), "mse_all")
        enc = model.encoder.cfg
        spec = torch.randn(args.micro_batch, 1, enc.crop_frames, enc.n_mels)
        mask = MASKINGS["unstructured"](args.micro_batch, enc.num_patches, args.mask_ratio,
                                        torch.Generator().manual_seed(0), "cpu")
        (l32, g32), (l16, g16) = step(model, spec, mask, False), step(model, spec, mask, True)
        times = {False: [], True: []}
        for _ in range(args.repeats):
            for bf16 in (False, True):
                t = time.perf_counter()
                step(model, spec, mask, bf16)
                times[bf16].append(time.perf_counter() - t)
        t32, t16 = min(times[False]), min(times[True])
        print(f"{preset:12s} {t32:8.3f} {t16:8.3f} {t32 / t16:9.2f} {abs(l16 - l32) / abs(l32):13.2e} "
              f"{((g16 - g32).norm() / g32.norm()).item():11.2e}")


if __name__ == "__main__":
    main()
