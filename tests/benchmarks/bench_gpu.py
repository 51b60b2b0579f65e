"""GPU benchmark of the four families: pretraining step and HEAR embedding throughput.

    python tests/benchmarks/bench_gpu.py [--presets ...] [--micro-batch 256] [--clips 64] [--out results/gpu]

For each tiny preset (random init), on the CUDA device, in one process:
  train : one pretraining step (masked forward, MSE over all patches, backward, AdamW step) on
          a micro-batch of random 2 s log-mel crops (SSAMBA: its 10.24 s crop), fp32 and under
          fp16 autocast + GradScaler (the GPU configs' precision): crops per second.
  embed : hear_ssam.get_timestamp_embeddings on --clips clips of 10 s of noise, fp32 and fp16
          autocast: seconds of audio per wall second, and fp16's relative L2 distance from fp32.
Times are medians of --repeats after two warm-ups, with the device synchronised around each.
Writes OUT/gpu_bench.csv and prints each row beside ssast-tiny's (the Transformer) from the
same run.
"""
import argparse
import csv
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # pretrain/ is not installed
import hear_ssam  # noqa: E402
from hear_ssam.ops.selective_scan import resolve_backend  # noqa: E402
from pretrain.objectives import MASKINGS, MaskedSpectrogramModel  # noqa: E402


def timed(fn, repeats):
    """(median seconds of `repeats` calls after two warm-ups, the last call's result)."""
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def bench_train(preset, micro_batch, precision, repeats):
    torch.manual_seed(0)
    enc = hear_ssam.preset_encoder(preset).cuda().train()
    model = MaskedSpectrogramModel(enc, "mse_all")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    cfg = enc.cfg
    spec = torch.randn(micro_batch, 1, cfg.crop_frames, cfg.n_mels, device="cuda")
    mask = MASKINGS["unstructured"](micro_batch, cfg.num_patches, 0.5, torch.Generator().manual_seed(0), "cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.float16, enabled=precision == "fp16"):
            loss, _ = model(spec, mask)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    torch.cuda.reset_peak_memory_stats()
    seconds, _ = timed(step, repeats)
    return micro_batch / seconds, torch.cuda.max_memory_allocated() / 2**20


def bench_embed(preset, clips, repeats):
    torch.manual_seed(0)
    model = hear_ssam.HearSSAM(hear_ssam.preset_encoder(preset).eval()).cuda()
    audio = (torch.rand(clips, 160_000, generator=torch.Generator().manual_seed(1)) * 2 - 1).cuda()
    out = {}
    for precision in ("fp32", "fp16"):
        model.precision = precision
        with torch.no_grad():
            seconds, (emb, _) = timed(lambda: hear_ssam.get_timestamp_embeddings(audio, model), repeats)
        out[precision] = (clips * 10 / seconds, emb.double())
    diff = ((out["fp16"][1] - out["fp32"][1]).norm() / out["fp32"][1].norm()).item()
    return out["fp32"][0], out["fp16"][0], diff


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["ssam-tiny", "ssast-tiny", "axlstm-tiny", "ssamba-tiny"])
    p.add_argument("--micro-batch", type=int, default=256)
    p.add_argument("--clips", type=int, default=64)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "gpu")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_gpu: needs a CUDA device")
    warnings.simplefilter("ignore")
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}, scan backend {resolve_backend('cuda')}")
    rows = []
    for preset in args.presets:
        row = {"preset": preset, "device": torch.cuda.get_device_name(), "scan": resolve_backend("cuda")}
        for precision in ("fp32", "fp16"):
            rate, mb = bench_train(preset, args.micro_batch, precision, args.repeats)
            row[f"train_{precision}_crops_per_s"], row[f"train_{precision}_peak_mb"] = round(rate, 1), round(mb)
        e32, e16, diff = bench_embed(preset, args.clips, args.repeats)
        row.update(embed_fp32_audio_s_per_s=round(e32, 1), embed_fp16_audio_s_per_s=round(e16, 1),
                   embed_fp16_rel_l2=f"{diff:.2e}")
        rows.append(row)
        print(row, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "gpu_bench.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    base = next((r for r in rows if r["preset"] == "ssast-tiny"), None)
    keys = ["train_fp32_crops_per_s", "train_fp16_crops_per_s", "embed_fp32_audio_s_per_s", "embed_fp16_audio_s_per_s"]
    print(f"\n{'preset':12s} " + " ".join(f"{k:>26s}" for k in keys) + "  fp16 rel.L2")
    for r in rows:
        cells = [f"{r[k]:>10.1f}" + (f" ({r[k] / base[k]:.2f}x ssast)" if base else "") for k in keys]
        print(f"{r['preset']:12s} " + " ".join(f"{c:>26s}" for c in cells) + f"  {r['embed_fp16_rel_l2']}")


if __name__ == "__main__":
    main()
