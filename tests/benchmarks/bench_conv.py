"""Benchmark: the mixers' causal depthwise conv (+ SiLU), compiled C++ kernel against PyTorch's
conv1d (oneDNN), alone and inside one pretraining step of each recurrent tiny preset, the two
interleaved in the same process so that the ratio is read on the same machine state.

    OMP_NUM_THREADS=2 .venv/bin/python tests/benchmarks/bench_conv.py [--presets ssam-tiny ssamba-tiny axlstm-tiny]

Prints milliseconds (best of --repeats after one warm-up of each) and reference / compiled.
The op rows time forward + backward at the mixer's shape for a micro-batch (bf16 input, as
under the CPU configs' autocast); the step rows time forward + loss + backward of the
preset's own objective on random spectrograms, under bf16 autocast as the CPU configs run.
"""
import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: pretrain/ is not installed
from hear_ssam.encoder import SpectrogramEncoder
from hear_ssam.ops import causal_conv1d_ref
from hear_ssam.ops.causal_conv1d import CONV_ENV, load_backend
from pretrain.config import TrainConfig
from pretrain.objectives import MASKINGS, MaskedSpectrogramModel, masks_per_step

PRESET_CONFIG = {  # the objective and masking of each preset's CPU config
    "ssam-tiny": dict(objective="mse_all", masking="unstructured", mask_ratio=0.5),
    "axlstm-tiny": dict(objective="mse_all", masking="unstructured", mask_ratio=0.5),
    "ssamba-tiny": dict(objective="ssast_joint", masking="cluster", mask_ratio=0.5859375),
}


def best_ms(fns, repeats):
    """{name: best time in ms}, the callables interleaved, each warmed up once."""
    for f in fns.values():
        f()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: min(v) * 1e3 for k, v in times.items()}


def op_case(B, E, L, K):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, L, 2 * E, generator=g).to(torch.bfloat16).transpose(1, 2)[:, :E]
    w = torch.randn(E, K, generator=g).requires_grad_()
    b = torch.randn(E, generator=g).requires_grad_()
    gy = torch.randn(B, E, L, generator=g)

    def run(fn):
        xi = x.detach().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = fn(xi, w, b, "silu")
        y.float().backward(gy)
    return run


def step_case(preset, micro_batch):
    torch.manual_seed(0)
    cfg = TrainConfig(preset=preset, **PRESET_CONFIG[preset])
    encoder = SpectrogramEncoder(cfg.encoder_config(), cfg.pretraining_options())
    model = MaskedSpectrogramModel(encoder, cfg.objective).train()
    enc = model.encoder.cfg
    spec = torch.randn(micro_batch, 1, enc.crop_frames, enc.n_mels)
    g = torch.Generator().manual_seed(0)
    grid = (*enc.grid, enc.patch_order)
    masks = torch.stack([MASKINGS[cfg.masking](micro_batch, enc.num_patches, cfg.mask_ratio, g, "cpu", grid=grid)
                         for _ in range(masks_per_step(cfg.objective))])

    def run():
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = model(spec, masks if masks.shape[0] > 1 else masks[0])
        loss.backward()
    return run


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["ssam-tiny", "ssamba-tiny", "axlstm-tiny"])
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    compiled = load_backend("compiled")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, micro-batch {args.micro_batch}")
    print(f"{'what':34s} {'conv1d ms':>10s} {'compiled ms':>11s} {'ratio':>6s}")
    for name, shape in (("op ssam-tiny [B, 576, 250] K 4", (576, 250)), ("op ssamba-tiny [B, 384, 512] K 4", (384, 512)),
                        ("op axlstm-tiny [B, 384, 250] K 4", (384, 250))):
        run = op_case(args.micro_batch, *shape, 4)
        t = best_ms({"ref": lambda: run(causal_conv1d_ref), "compiled": lambda: run(compiled)}, args.repeats)
        print(f"{name:34s} {t['ref']:10.1f} {t['compiled']:11.1f} {t['ref'] / t['compiled']:6.2f}")
    for preset in args.presets:
        run = step_case(preset, args.micro_batch)

        def with_backend(b):
            def f():
                os.environ[CONV_ENV] = b
                try:
                    run()
                finally:
                    os.environ.pop(CONV_ENV, None)
            return f
        t = best_ms({"ref": with_backend("reference"), "compiled": with_backend("compiled")}, args.repeats)
        print(f"{'step ' + preset:34s} {t['ref']:10.1f} {t['compiled']:11.1f} {t['ref'] / t['compiled']:6.2f}")


if __name__ == "__main__":
    main()
