"""Benchmark: our selective scan vs mamba_ssm's selective_scan_ref, and HEAR throughput.

    .venv/bin/python tests/benchmarks/bench_scan.py [--batch 8 --tokens 251 --d-model 192]

Each (method, mode) runs in a fresh subprocess so that its peak RSS (ru_maxrss) minus
the RSS after building the inputs is that method's own peak extra memory.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for mamba_reference


def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(method, mode, B, L, d_model, repeats):
    import torch
    torch.manual_seed(0)
    E, N = 3 * d_model, 24
    u, dt, z = (torch.randn(B, E, L) for _ in range(3))
    Bm, Cm = torch.randn(B, N, L), torch.randn(B, N, L)
    A, D, bias = -torch.exp(torch.randn(E, N) * 0.5), torch.randn(E), torch.randn(E) * 0.3
    train = mode == "train"
    tensors = [t.requires_grad_(train) for t in (u, dt, A, Bm, Cm, D, z, bias)]
    if method == "ref":
        import mamba_reference
        fn = mamba_reference.load().selective_scan_ref
    else:
        from hear_ssam.ops.selective_scan_chunked import selective_scan_chunked as fn

    def once():
        with torch.set_grad_enabled(train):
            y = fn(*tensors[:6], z=tensors[6], delta_bias=tensors[7], delta_softplus=True)
            if train:
                y.sum().backward()

    base = _rss_mb()
    once()  # warm-up, also sets the peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    t0 = time.perf_counter()
    for _ in range(repeats):
        once()
    ms = (time.perf_counter() - t0) / repeats * 1000
    print(json.dumps({"ms": ms, "peak_mb": peak}))


def throughput(seconds=10.0, n=4, repeats=2):
    import torch
    import hear_ssam
    torch.manual_seed(0)
    audio = torch.rand(n, int(seconds * 16000)) * 2 - 1
    rows = []
    for preset in ("ssam-tiny", "ssast-tiny"):
        model = hear_ssam.HearSSAM(hear_ssam.SSAMEncoder(hear_ssam.PRESETS[preset]).eval())
        hear_ssam.get_scene_embeddings(audio[:1], model)
        t0 = time.perf_counter()
        for _ in range(repeats):
            hear_ssam.get_scene_embeddings(audio, model)
        dt = (time.perf_counter() - t0) / repeats
        rows.append((preset, n * seconds / dt))
    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tokens", type=int, default=251)
    p.add_argument("--d-model", type=int, default=192)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--child", nargs=2)
    a = p.parse_args()
    if a.child:
        return child(*a.child, a.batch, a.tokens, a.d_model, a.repeats)
    import torch
    print(f"selective scan, B={a.batch} L={a.tokens} d_model={a.d_model} (E={3 * a.d_model}, N=24), "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'mode':<10}{'method':<22}{'ms':>10}{'peak MB':>10}{'speed-up':>10}{'mem ratio':>10}")
    for mode in ("inference", "train"):
        res = {}
        for method in ("ref", "ours"):
            out = subprocess.run([sys.executable, __file__, "--child", method, mode,
                                  "--batch", str(a.batch), "--tokens", str(a.tokens),
                                  "--d-model", str(a.d_model), "--repeats", str(a.repeats)],
                                 capture_output=True, text=True, check=True)
            res[method] = json.loads(out.stdout.strip().splitlines()[-1])
        ref = res["ref"]
        for method, name in (("ref", "selective_scan_ref"), ("ours", "hear_ssam chunked")):
            r = res[method]
            print(f"{mode:<10}{name:<22}{r['ms']:>10.1f}{r['peak_mb']:>10.1f}"
                  f"{ref['ms'] / r['ms']:>9.2f}x{r['peak_mb'] / max(ref['peak_mb'], 1e-9):>10.2f}")
    print("\nHEAR embedding throughput, 4 x 10 s clips (audio seconds per wall second)")
    for preset, rate in throughput():
        print(f"  {preset:<12}{rate:>8.1f}")


if __name__ == "__main__":
    main()
