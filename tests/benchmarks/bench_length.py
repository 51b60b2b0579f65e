"""Length benchmark: one window of W seconds, batch 1, per family: wall time and peak memory.

    .venv/bin/python tests/benchmarks/bench_length.py [--device cpu|cuda] [--out results/length]
        [--presets ssam-tiny ssast-tiny axlstm-tiny] [--seconds 2 5 10 30 60 120]

This is SSAMBA's efficiency claim (time and memory vs tokens, Transformer vs state-space
model) measured in our framework: each encoder (random init, eval mode, no_grad) encodes one
window of W s of random features, built for that window (fixed sin-cos positions by their
formula, as `extend_window` does; SSAMBA's learned positions sized for it, as in its paper's
benchmark with random fbank inputs). Tokens per second: 125 for 4x16 patches, 50 for
SSAMBA's 16x16. Each (preset, W) runs in a fresh subprocess:
on CPU its peak extra memory is the peak RSS (ru_maxrss) minus the RSS after building the
model and the input; on CUDA it is torch.cuda.max_memory_allocated over the forward. The scan
backend is the automatic one unless HEAR_SSAM_SCAN says otherwise.

Writes OUT/length_DEVICE.csv (preset, seconds, tokens, ms, peak_mb, scan backend) and
OUT/length_DEVICE.png (log-log: time and memory vs tokens), and prints ratios vs the
Transformer (ssast-tiny) measured in the same run.
"""
import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(preset, seconds, device, min_time):
    import torch
    sys.path.insert(0, str(ROOT))
    import hear_ssam
    from hear_ssam.ops import resolve_backend
    from hear_ssam.presets import family_of_preset
    import dataclasses
    torch.manual_seed(0)
    cfg = hear_ssam.PRESETS[preset]
    frames = int(round(seconds * 100 / cfg.patch_time)) * cfg.patch_time
    # Built for the window directly: for fixed sin-cos positions this is extend_window's table;
    # learned positions (SSAMBA) are sized for the window, as its efficiency benchmark does.
    options = family_of_preset(preset).pretraining_options()
    enc = hear_ssam.SpectrogramEncoder(dataclasses.replace(cfg, crop_frames=frames), options).eval().to(device)
    spec = torch.randn(1, 1, frames, enc.cfg.n_mels, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def once():
        with torch.no_grad():
            enc(spec)
        sync()

    base = _rss_mb()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        start_mem = torch.cuda.memory_allocated()
    once()  # warm-up (and the peak)
    if device == "cuda":
        peak = (torch.cuda.max_memory_allocated() - start_mem) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    times = []
    while sum(times) < min_time or len(times) < 2:
        t0 = time.perf_counter()
        once()
        times.append(time.perf_counter() - t0)
        if len(times) >= 20:
            break
    print(json.dumps({"preset": preset, "seconds": seconds, "tokens": 1 + enc.cfg.num_patches,
                      "ms": 1000 * min(times), "peak_mb": peak, "device": device,
                      "scan": resolve_backend(device) if enc.cfg.block == "mamba" else "",
                      "threads": torch.get_num_threads()}))


def plot(rows, path: Path, device: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for preset in dict.fromkeys(r["preset"] for r in rows):
        mine = [r for r in rows if r["preset"] == preset]
        x = [r["tokens"] for r in mine]
        axes[0].plot(x, [r["ms"] / 1000 for r in mine], "o-", label=preset)
        axes[1].plot(x, [max(r["peak_mb"], 1e-1) for r in mine], "o-", label=preset)
    for ax, title in zip(axes, ("wall time of one window (s)", "peak extra memory (MB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tokens per window")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"hear_ssam encoders vs window length, batch 1, {device}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["ssam-tiny", "ssast-tiny", "axlstm-tiny", "ssamba-tiny"])
    p.add_argument("--seconds", nargs="+", type=float, default=[2, 5, 10, 30, 60, 120])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--out", type=Path, default=ROOT / "results" / "length")
    p.add_argument("--min-time", type=float, default=1.0, help="seconds of timed repeats per point")
    p.add_argument("--child", nargs=2)
    a = p.parse_args()
    if a.child:
        return child(a.child[0], float(a.child[1]), a.device, a.min_time)
    a.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for preset in a.presets:
        for seconds in a.seconds:
            r = subprocess.run([sys.executable, __file__, "--child", preset, str(seconds), "--device", a.device,
                                "--min-time", str(a.min_time)], capture_output=True, text=True)
            if r.returncode:
                print(f"{preset} {seconds:g} s failed: {r.stderr.strip().splitlines()[-1:]}", flush=True)
                continue
            row = json.loads(r.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{preset:<14}{seconds:>6g} s{row['tokens']:>8} tokens{row['ms']:>11.1f} ms"
                  f"{row['peak_mb']:>10.1f} MB  {row['scan']}", flush=True)
    csv_path = a.out / f"length_{a.device}.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, ["preset", "seconds", "tokens", "ms", "peak_mb", "device", "scan", "threads"])
        w.writeheader()
        w.writerows({**r, "ms": f"{r['ms']:.2f}", "peak_mb": f"{r['peak_mb']:.1f}"} for r in rows)
    plot(rows, a.out / f"length_{a.device}.png", a.device)
    base = {r["seconds"]: r for r in rows if r["preset"] == "ssast-tiny"}
    if base:
        print("\nvs ssast-tiny (same run): speed-up = its time / ours, memory = ours / its")
        for r in rows:
            b = base.get(r["seconds"])
            if b and r["preset"] != "ssast-tiny":
                print(f"  {r['preset']:<14}{r['seconds']:>6g} s  {b['ms'] / r['ms']:6.2f}x faster, "
                      f"memory {r['peak_mb'] / max(b['peak_mb'], 1e-9):6.2f}x")
    print(f"\nwrote {csv_path} and {csv_path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
