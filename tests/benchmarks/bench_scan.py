"""Benchmark: the CPU selective scans side by side, and HEAR embedding throughput.

    OMP_NUM_THREADS=2 .venv/bin/python tests/benchmarks/bench_scan.py [--batch 8 --tokens 251 --d-model 192]
    HEAR_SSAM_SCAN=chunked .venv/bin/python tests/benchmarks/bench_scan.py --hear-only

Scan methods, at B x E x L with E = 3 * d_model (expand 3) and N = 24, all options on
(D, z gate, delta_bias, softplus):
  ref        mamba_ssm's pure-torch `selective_scan_ref` (the yardstick for speed-ups)
  reference  hear_ssam.ops.selective_scan_ref (the plain loop the package tests against)
  chunked    hear_ssam.ops.selective_scan_chunked (pure PyTorch, bounded memory)
  compiled   hear_ssam.ops.selective_scan_cpu (C++, built on first use, before timing)
Modes: inference (forward under no_grad) and train (forward + backward into every input).

Each (method, mode) runs in a fresh subprocess so that its peak RSS (ru_maxrss) minus the RSS
after building the inputs is that method's own peak extra memory; the first call is the
warm-up and sets the peak, the timed calls follow. A method whose warm-up is slow is timed on
fewer calls; `reference` is skipped when one call takes longer than --slow-limit seconds.

The HEAR part embeds 4 clips of 10 s with ssam-tiny and ssast-tiny through the automatic scan
choice, or the backend named by HEAR_SSAM_SCAN (e.g. chunked, compiled): run it once per value
to compare.
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

METHODS = {
    "ref": "mamba_ssm selective_scan_ref",
    "reference": "hear_ssam reference",
    "chunked": "hear_ssam chunked",
    "compiled": "hear_ssam compiled",
}


def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _busy_s():
    """CPU seconds all processes have spent since boot (Linux), or None."""
    try:
        with open("/proc/stat") as f:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None


def _own_s():
    """CPU seconds of this process and its finished children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _scan_fn(method):
    if method == "ref":
        import mamba_reference
        ref = mamba_reference.load()
        if ref is None:
            raise SystemExit("mamba-ssm is not installed")
        return ref.selective_scan_ref
    if method == "reference":
        from hear_ssam.ops.selective_scan_ref import selective_scan_ref
        return selective_scan_ref
    if method == "chunked":
        from hear_ssam.ops.selective_scan_chunked import selective_scan_chunked
        return selective_scan_chunked
    if method == "compiled":
        from hear_ssam.ops.selective_scan_cpu import load_compiled
        return load_compiled()
    raise SystemExit(f"unknown method {method!r}")


def child(method, mode, B, L, d_model, repeats, budget_s):
    import torch
    fn = _scan_fn(method)  # imports, and for `compiled` loads (or builds) the extension: not timed
    torch.manual_seed(0)
    E, N = 3 * d_model, 24
    u, dt, z = (torch.randn(B, E, L) for _ in range(3))
    Bm, Cm = torch.randn(B, N, L), torch.randn(B, N, L)
    A, D, bias = -torch.exp(torch.randn(E, N) * 0.5), torch.randn(E), torch.randn(E) * 0.3
    train = mode == "train"
    tensors = [t.requires_grad_(train) for t in (u, dt, A, Bm, Cm, D, z, bias)]

    def once():
        with torch.set_grad_enabled(train):
            y = fn(*tensors[:6], z=tensors[6], delta_bias=tensors[7], delta_softplus=True)
            if train:
                y.sum().backward()
        for t in tensors:
            t.grad = None

    base = _rss_mb()
    t0 = time.perf_counter()
    once()  # warm-up, also sets the peak
    warm = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    n = max(1, min(repeats, int(budget_s / max(warm, 1e-9))))
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        once()
    ms = (time.perf_counter() - t0) / n * 1000
    cpu_ms = (time.process_time() - c0) / n * 1000
    print(json.dumps({"ms": ms, "cpu_ms": cpu_ms, "peak_mb": peak, "calls": n, "threads": torch.get_num_threads()}))


def throughput(seconds=10.0, n=4, repeats=2):
    import torch
    import hear_ssam
    from hear_ssam.ops import resolve_backend
    torch.manual_seed(0)
    audio = torch.rand(n, int(seconds * 16000)) * 2 - 1
    rows = []
    for preset in ("ssam-tiny", "ssast-tiny", "axlstm-tiny"):
        model = hear_ssam.HearSSAM(hear_ssam.preset_encoder(preset).eval())
        hear_ssam.get_scene_embeddings(audio[:1], model)  # warm-up (and the compiled scan's build)
        t0 = time.perf_counter()
        for _ in range(repeats):
            hear_ssam.get_scene_embeddings(audio, model)
        dt = (time.perf_counter() - t0) / repeats
        rows.append((preset, n * seconds / dt))
    return resolve_backend("cpu"), rows


def print_throughput():
    backend, rows = throughput()
    scan_env = os.environ.get("HEAR_SSAM_SCAN") or "automatic"
    print(f"\nHEAR embedding throughput, 4 x 10 s clips (audio seconds per wall second); "
          f"HEAR_SSAM_SCAN={scan_env} -> scan backend {backend!r} (only ssam-tiny scans)")
    base = dict(rows)["ssast-tiny"]
    for preset, rate in rows:
        print(f"  {preset:<12}{rate:>8.1f}   {rate / base:5.2f}x ssast-tiny")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tokens", type=int, default=251)
    p.add_argument("--d-model", type=int, default=192)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--budget", type=float, default=30.0, help="seconds of timed calls per (method, mode) at most")
    p.add_argument("--slow-limit", type=float, default=60.0, help="skip `reference` past this many seconds")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--hear-only", action="store_true")
    p.add_argument("--no-hear", action="store_true")
    p.add_argument("--child", nargs=2)
    a = p.parse_args()
    if a.child:
        return child(*a.child, a.batch, a.tokens, a.d_model, a.repeats, a.budget)
    if not a.hear_only:
        bench_scans(a)
    if not a.no_hear:
        print_throughput()


def bench_scans(a):
    import torch
    methods = [m for m in a.methods.split(",") if m]
    isa = ""
    if "compiled" in methods:  # build once here, so that no child pays for it
        from hear_ssam.ops import selective_scan_cpu
        t0 = time.perf_counter()
        try:
            selective_scan_cpu.load_compiled()
            isa = f", compiled scan {selective_scan_cpu.extension_isa()} (load/build {time.perf_counter() - t0:.1f} s)"
        except Exception as e:
            print(f"compiled scan unavailable: {e}")
            methods.remove("compiled")
    E = 3 * a.d_model
    print(f"selective scan, B={a.batch} L={a.tokens} E={E} (d_model {a.d_model}, expand 3) N=24, D+z+bias+softplus, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}{isa}")
    busy0, own0, wall0 = _busy_s(), _own_s(), time.perf_counter()
    print(f"{'mode':<10}{'method':<30}{'wall ms':>10}{'cpu ms':>10}{'calls':>6}{'peak MB':>10}{'speed-up':>10}"
          f"{'mem/chunked':>12}")
    for mode in ("inference", "train"):
        res = {}
        for method in methods:
            cmd = [sys.executable, __file__, "--child", method, mode, "--batch", str(a.batch),
                   "--tokens", str(a.tokens), "--d-model", str(a.d_model), "--repeats", str(a.repeats),
                   "--budget", str(a.budget)]
            limit = a.slow_limit + 60 if method == "reference" else None  # + imports and input set-up
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=limit)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                if method == "reference" and r["ms"] > a.slow_limit * 1000:
                    r = None
            except subprocess.TimeoutExpired:
                r = None
            except subprocess.CalledProcessError as e:
                print(f"{mode:<10}{METHODS[method]:<30} failed: {e.stderr.strip().splitlines()[-1:]}")
                continue
            res[method] = r
        ref, chunked = res.get("ref"), res.get("chunked")
        for method, r in res.items():
            name = METHODS[method]
            if r is None:
                print(f"{mode:<10}{name:<30}{'skipped: one call > %.0f s' % a.slow_limit:>48}")
                continue
            speed = f"{ref['ms'] / r['ms']:>9.1f}x" if ref else f"{'-':>10}"
            mem = f"{r['peak_mb'] / max(chunked['peak_mb'], 1e-9):>11.2f}x" if chunked else f"{'-':>12}"
            print(f"{mode:<10}{name:<30}{r['ms']:>10.1f}{r['cpu_ms']:>10.1f}{r['calls']:>6}{r['peak_mb']:>10.1f}"
                  f"{speed}{mem}")
    print("speed-up = wall time of selective_scan_ref / wall time; mem/chunked = peak extra MB / chunked's")
    busy1 = _busy_s()
    if busy0 is not None and busy1 is not None:
        others = max(0.0, (busy1 - busy0) - (_own_s() - own0))
        wall = time.perf_counter() - wall0
        print(f"other processes used {others / wall:.2f} of {os.cpu_count()} cores on average during these "
              f"{wall:.0f} s (anything above ~0.05 inflates the wall times above)")


if __name__ == "__main__":
    main()
