"""GPU benchmark of the selective scan: the Triton kernels vs mamba_ssm's CUDA kernel and reference.

    .venv/bin/python tests/benchmarks/bench_scan_gpu.py                 # full table
    .venv/bin/python tests/benchmarks/bench_scan_gpu.py --quick         # L 251 / 2000, E 576, fp32
    .venv/bin/python tests/benchmarks/bench_scan_gpu.py --sweep         # Triton launch configs at one size

For each (E, L, input dtype) at batch 8, N = 24 (SSAM's mixer: E = 3 x 192 = 576 for
ssam-tiny, 1536 for a 512-wide model), it times forward ("fwd") and forward + backward
("train") of
  triton : hear_ssam.ops.selective_scan_triton.selective_scan_triton
  cuda   : mamba_ssm.ops.selective_scan_interface.selective_scan_fn (when its compiled
           extension imports)
  ref    : mamba_ssm's selective_scan_ref (pure PyTorch; loaded from the installed files
           without the compiled extension if needed, else hear_ssam's own reference)
and prints median milliseconds, the ratio to the CUDA kernel, and the peak extra GPU memory
of the call (torch.cuda.max_memory_allocated minus what was allocated before it).
A method that runs out of memory is reported as OOM. `--check` also compares the Triton
outputs and gradients with the CUDA kernel's.
"""
import argparse
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for mamba_reference

import torch  # noqa: E402


def load_methods(want_ref=True):
    methods = {}
    from hear_ssam.ops.selective_scan_triton import load_triton
    methods["triton"] = load_triton()
    cuda_fn = ref_fn = None
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as cuda_fn
        from mamba_ssm.ops.selective_scan_interface import selective_scan_ref as ref_fn
    except Exception as e:  # no compiled selective_scan_cuda
        print(f"# mamba_ssm's CUDA kernel does not import ({type(e).__name__}: {e}); no 'cuda' column")
    if cuda_fn is not None:
        methods["cuda"] = cuda_fn
    if want_ref:
        if ref_fn is None:
            try:
                import mamba_reference
                ns = mamba_reference.load()
                ref_fn = ns.selective_scan_ref if ns is not None else None
            except Exception as e:
                print(f"# mamba_ssm's reference does not load ({type(e).__name__}: {e})")
        if ref_fn is None:
            from hear_ssam.ops.selective_scan_ref import selective_scan_ref as ref_fn
            print("# 'ref' is hear_ssam's selective_scan_ref (mamba-ssm is not installed)")
        methods["ref"] = ref_fn
    return methods


def make_inputs(batch, E, L, N, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
    u, delta, z = rnd(batch, E, L), rnd(batch, E, L) * 0.5 - 2.0, rnd(batch, E, L)
    B, C = rnd(batch, N, L), rnd(batch, N, L)
    # mamba_ssm's init: A = -(1..N) per channel, D = 1, dt bias = softplus^-1(dt), dt in [1e-3, 1e-1]
    A = -torch.arange(1, N + 1, device="cuda", dtype=torch.float32).repeat(E, 1)
    D = torch.ones(E, device="cuda")
    dt = torch.exp(torch.rand(E, device="cuda", generator=g) * (torch.log(torch.tensor(0.1)) - torch.log(torch.tensor(1e-3)))
                   + torch.log(torch.tensor(1e-3)))
    bias = dt + torch.log(-torch.expm1(-dt))
    act = dict(u=u, delta=delta, B=B, C=C, z=z)
    act = {k: v.to(dtype) for k, v in act.items()}
    return dict(**act, A=A, D=D, delta_bias=bias)


def call(fn, t, train, grad_out=None):
    if train:
        xs = {k: v.detach().requires_grad_(True) for k, v in t.items()}
    else:
        xs = t
    with torch.set_grad_enabled(train):
        y = fn(xs["u"], xs["delta"], xs["A"], xs["B"], xs["C"], xs["D"], z=xs["z"],
               delta_bias=xs["delta_bias"], delta_softplus=True)
        if train:
            y.backward(grad_out if grad_out is not None else torch.ones_like(y))
            return y, {k: v.grad for k, v in xs.items()}
    return y, None


def timed(fn, t, train, reps, warmup=2):
    """(median ms, peak extra MB), or None on out-of-memory."""
    grad_out = torch.randn(t["u"].shape, device="cuda").to(t["u"].dtype) if train else None
    try:
        for _ in range(warmup):
            call(fn, t, train, grad_out)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        call(fn, t, train, grad_out)
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        times = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call(fn, t, train, grad_out)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times), peak
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None
    except Exception as e:  # report and go on with the other methods
        print(f"# {getattr(fn, '__name__', fn)} failed: {type(e).__name__}: {e}")
        torch.cuda.empty_cache()
        return "error"


def reps_for(method, L):
    if method == "ref":
        return 2 if L >= 2000 else 3
    return 20 if L <= 2000 else 10


def check(methods, t, label):
    if "cuda" not in methods:
        return
    y0, g0 = call(methods["cuda"], t, True)
    y1, g1 = call(methods["triton"], t, True)
    worst = []
    for k, a, b in [("y", y0, y1)] + [(k, g0[k], g1[k]) for k in g0]:
        err = (a.float() - b.float()).abs().max().item() / max(a.float().abs().max().item(), 1e-30)
        worst.append(f"{k}:{err:.1e}")
    print(f"# check {label}: triton vs cuda, max error / max |cuda| : " + " ".join(worst))


def table(args):
    methods = load_methods(want_ref=not args.no_ref)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    print(f"# {torch.cuda.get_device_name()}  torch {torch.__version__}  batch {args.batch}  N {args.N}  "
          f"softplus + delta_bias + D + z")
    cols = [m for m in ("triton", "cuda", "ref") if m in methods]
    head = f"{'E':>5} {'L':>5} {'dtype':>5} {'mode':>5} | " + " | ".join(f"{m + ' ms':>10} {'x cuda':>6} {'peak MB':>8}"
                                                                      for m in cols)
    print(head)
    print("-" * len(head))
    for E in args.E:
        for L in args.L:
            for dname in args.dtypes:
                t = make_inputs(args.batch, E, L, args.N, dtypes[dname])
                if args.check:
                    check(methods, t, f"E={E} L={L} {dname}")
                for mode in ("fwd", "train"):
                    res = {}
                    for m in cols:
                        if m == "ref" and L > args.ref_max_l:
                            res[m] = "skip"
                            continue
                        res[m] = timed(methods[m], t, mode == "train", reps_for(m, L))
                    base = res.get("cuda")
                    cells = []
                    for m in cols:
                        r = res[m]
                        if r == "skip":
                            cells.append(f"{'skipped':>10} {'':>6} {'':>8}")
                        elif r is None or r == "error":
                            cells.append(f"{'OOM' if r is None else 'error':>10} {'':>6} {'':>8}")
                        else:
                            ratio = f"{r[0] / base[0]:6.2f}" if isinstance(base, tuple) else f"{'-':>6}"
                            cells.append(f"{r[0]:10.3f} {ratio} {r[1]:8.0f}")
                    print(f"{E:>5} {L:>5} {dname:>5} {mode:>5} | " + " | ".join(cells), flush=True)
                del t
                torch.cuda.empty_cache()


def sweep(args):
    """Time a few Triton launch configurations (forward and backward separately) at one size."""
    from hear_ssam.ops.selective_scan_triton import selective_scan_triton, scan_configs
    E, L = args.E[0], args.L[0]
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtypes[0]]
    t = make_inputs(args.batch, E, L, args.N, dtype)
    print(f"# sweep E={E} L={L} {args.dtypes[0]} batch {args.batch} N {args.N}; default {scan_configs(args.N)}")
    fwd_cfgs = [dict(block_l=bl, num_warps=w) for bl in (8, 16) for w in (1, 2, 4, 8)]
    for split in (True, False):
        for c in fwd_cfgs:
            fn = lambda *a, c=c, split=split, **k: selective_scan_triton(*a, config=dict(fwd=c), split_n=split, **k)  # noqa: E731
            r = timed(fn, t, False, 20)
            print(f"fwd   split_n={split!s:5} {c}: {r[0]:.3f} ms" if isinstance(r, tuple) else f"fwd {c}: {r}",
                  flush=True)
    for chunk in (64, 128):
        for c in [dict(block_l=bl, num_warps=w) for bl in (4, 8, 16) for w in (1, 2, 4)]:
            fn = lambda *a, c=c, chunk=chunk, **k: selective_scan_triton(*a, config=dict(bwd=c), chunk=chunk, **k)  # noqa: E731
            r = timed(fn, t, True, 10)
            print(f"train chunk={chunk:3d} bwd {c}: {r[0]:.3f} ms, peak {r[1]:.0f} MB" if isinstance(r, tuple)
                  else f"train {c}: {r}", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--N", type=int, default=24)
    p.add_argument("--E", type=int, nargs="+", default=[576, 1536])
    p.add_argument("--L", type=int, nargs="+", default=[251, 2000, 8000])
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    p.add_argument("--ref-max-l", type=int, default=8000, help="skip the pure-PyTorch reference above this L")
    p.add_argument("--no-ref", action="store_true", help="skip the pure-PyTorch reference entirely")
    p.add_argument("--check", action="store_true", help="compare Triton with the CUDA kernel at every size")
    p.add_argument("--quick", action="store_true", help="E 576, L 251 and 2000, fp32")
    p.add_argument("--sweep", action="store_true", help="time Triton launch configurations at the first E, L, dtype")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("bench_scan_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False); nothing to measure.")
        sys.exit(2)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: the benchmark times the compiled Triton kernels")
        sys.exit(2)
    if args.quick:
        args.E, args.L, args.dtypes = [576], [251, 2000], ["fp32"]
    torch.backends.cuda.matmul.allow_tf32 = False
    if args.sweep:
        sweep(args)
    else:
        table(args)


if __name__ == "__main__":
    main()
