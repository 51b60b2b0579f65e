"""The Triton selective scan (hear_ssam.ops.selective_scan_triton) against the reference loop.

On CPU the kernels run under Triton's interpreter. TRITON_INTERPRET is read when
`@triton.jit` decorates, so every interpreter check runs in one child process that sets it
before importing anything; the tests assert on the errors that child reports (JSON). The
compiled kernels are checked by the CUDA tests at the end, on a GPU machine.

The interpreter runs tl.associative_scan / tl.reduce with a user combine function one
element at a time in Python; the child swaps in an equivalent version that applies the
combine to whole slices along the axis (same order of operations, bitwise the same
results), which makes these tests several times faster. One case runs on the stock
interpreter as a cross-check.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

triton_missing = False
try:
    import triton  # noqa: F401
except Exception:
    triton_missing = True

pytestmark = pytest.mark.skipif(triton_missing, reason="triton is not installed")

# Each case: shapes, which optional inputs, and launch overrides. Small tiles keep the
# interpreter fast; `chunk` (steps between saved states) is set small so that sequences
# span several chunks, with partial last chunks and tiles.
CASES = {
    # L = 1, every option
    "L1": dict(batch=1, E=3, L=1, N=4, chunk=8, block_e=2),
    # odd L, E not a multiple of the channel block, batch 2
    "oddL_N16": dict(batch=2, E=5, L=37, N=16, chunk=8, block_e=4, block_l=4),
    # N = 24 = 16 + 8 (two state parts), L = 3 * chunk + 5, several tiles per chunk
    "N24_split": dict(batch=2, E=5, L=3 * 16 + 5, N=24, chunk=16, block_e=4, block_l=8),
    # N = 24 as one padded part of 32
    "N24_padded": dict(batch=1, E=3, L=29, N=24, chunk=8, block_e=2, block_l=4, split_n=False),
    # no D, z, delta_bias, softplus
    "N6_plain": dict(batch=2, E=5, L=29, N=6, chunk=8, block_e=4, block_l=4,
                     D=False, z=False, bias=False, softplus=False),
    # z and softplus but no D / bias; N = 4
    "N4_z": dict(batch=1, E=6, L=37, N=4, chunk=16, block_e=4, block_l=8, D=False, bias=False),
    # N = 6 over 2 lanes: parts 2 x 2 + 1 x 2 entries
    "N6_lanes2": dict(batch=1, E=5, L=21, N=6, chunk=8, block_e=2, block_l=4, lanes_n=2),
    # odd N = 7 over 1 lane: parts 4 + 4 (the second padded), every tile its own chunk
    "N7_odd": dict(batch=1, E=3, L=19, N=7, chunk=4, block_e=2, block_l=4, lanes_n=1),
    # separate forward / backward tiles (forward 8 steps, backward 4), chunk 16
    "fwd_bwd_tiles": dict(batch=2, E=3, L=35, N=16, chunk=16, block_e=2, fwd=dict(block_l=8), bwd=dict(block_l=4)),
    # B and C as [batch, 1, N, L] views with a stride along L (not contiguous)
    "strided_BC": dict(batch=2, E=3, L=13, N=6, chunk=8, block_e=2, block_l=4, strided=True),
    # the default launch configuration (GPU-sized tiles), two 64-step chunks, the last partial
    "defaults_N24": dict(batch=1, E=9, L=64 + 37, N=24),
    # fp16 inputs (fp32 inside), output and gradients in fp16
    "fp16": dict(batch=1, E=3, L=21, N=6, chunk=8, block_e=2, block_l=4, dtype="float16"),
}
STOCK_INTERPRETER_CASE = "N6_lanes2"

CHILD = textwrap.dedent(r'''
    import json, os, sys, time
    import numpy as np
    assert os.environ.get("TRITON_INTERPRET") == "1"
    import torch
    torch.set_num_threads(1)
    cases = json.loads(sys.argv[1])
    stock_case = sys.argv[2]

    from triton.runtime import interpreter as interp
    import triton.language as tl
    stock = {"scan": interp.ScanOps.generic_scan, "reduce": interp.ReduceOps.generic_reduce}

    def _slices(self, input, axis):
        datas = [a.handle.data for a in input]
        for i in range(datas[0].shape[axis]):
            yield tuple(self.to_tensor(np.take(d, i, axis=axis), input[j].dtype) for j, d in enumerate(datas))

    def _combine(self, input, acc, cur):
        r = self.combine_fn.fn(*acc, *cur)
        r = r if isinstance(r, tuple) else (r,)
        return tuple(self.to_tensor(np.asarray(x.handle.data).reshape(np.shape(c.handle.data)), input[j].dtype)
                     for j, (x, c) in enumerate(zip(r, cur)))

    def fast_scan(self, input):
        axis = self.axis
        outs = [np.empty_like(a.handle.data) for a in input]
        acc = None
        for i, cur in enumerate(_slices(self, input, axis)):
            acc = cur if acc is None else _combine(self, input, acc, cur)
            for o, a in zip(outs, acc):
                idx = [slice(None)] * o.ndim
                idx[axis] = i
                o[tuple(idx)] = np.asarray(a.handle.data).reshape(o[tuple(idx)].shape)
        return [self.to_tensor(o, a.dtype) for o, a in zip(outs, input)]

    def fast_reduce(self, input):
        original_axis = self.axis
        input, axis = self.unravel(input, self.axis)
        in_shape = input[0].handle.data.shape
        out_shape = in_shape[:axis] + in_shape[axis + 1:]
        acc = None
        for cur in _slices(self, input, axis):
            acc = cur if acc is None else _combine(self, input, acc, cur)
        ret = []
        for a, x in zip(acc, input):
            data = np.asarray(a.handle.data).reshape(out_shape)
            if self.keep_dims:
                if original_axis is not None:
                    data = np.expand_dims(data, axis)
                else:
                    data = data.reshape((1,) * len(in_shape))
            elif original_axis is None:
                data = data.item()
            ret.append(self.to_tensor(data, x.dtype))
        return ret

    def use(fast):
        interp.ScanOps.generic_scan = fast_scan if fast else stock["scan"]
        interp.ReduceOps.generic_reduce = fast_reduce if fast else stock["reduce"]

    sys.path.insert(0, os.environ["HEAR_SSAM_ROOT"])
    from hear_ssam.ops.selective_scan_triton import selective_scan_triton, load_triton
    from hear_ssam.ops.selective_scan_ref import selective_scan_ref
    assert load_triton() is selective_scan_triton

    NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]

    def make(c, seed=0):
        g = torch.Generator().manual_seed(seed)
        b, E, L, N = c["batch"], c["E"], c["L"], c["N"]
        t = {
            "u": torch.randn(b, E, L, generator=g),
            "delta": torch.randn(b, E, L, generator=g) * 0.5,
            "A": -torch.exp(torch.randn(E, N, generator=g) * 0.5),
            "B": torch.randn(b, N, L, generator=g),
            "C": torch.randn(b, N, L, generator=g),
            "D": torch.randn(E, generator=g) if c.get("D", True) else None,
            "z": torch.randn(b, E, L, generator=g) if c.get("z", True) else None,
            "delta_bias": torch.randn(E, generator=g) * 0.3 if c.get("bias", True) else None,
        }
        if not c.get("softplus", True):
            t["delta"] = t["delta"].abs() * 0.5   # a positive step without softplus
        return t

    def run(fn, t, c, dtype, strided, **kw):
        xs = {k: (v.to(dtype) if k not in ("A", "D", "delta_bias") else v).clone().requires_grad_(True)
              if v is not None else None for k, v in t.items()}
        B, C = xs["B"], xs["C"]
        if strided:   # views whose L stride is 2; [batch, 1, N, L] (one group) for the Triton scan
            B = torch.stack([B, B], -1).reshape(*B.shape[:2], -1)[..., ::2]
            C = torch.stack([C, C], -1).reshape(*C.shape[:2], -1)[..., ::2]
            if fn is not selective_scan_ref:
                B, C = B.unsqueeze(1), C.unsqueeze(1)
        y = fn(xs["u"], xs["delta"], xs["A"], B, C, xs["D"], z=xs["z"], delta_bias=xs["delta_bias"],
               delta_softplus=c.get("softplus", True), **kw)
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y.dtype)
        y.backward(gy)
        return {"y": y.detach()}, {k: v.grad for k, v in xs.items() if v is not None}, y.dtype

    def errors(ref, got):
        out = {}
        for k in ref:
            a, b = ref[k].float(), got[k].float()
            scale = a.abs().max().item()
            out[k] = dict(err=(a - b).abs().max().item() / (scale or 1.0), scale=scale,  # 0: see _max_error
                          dtype=str(got[k].dtype), shape=list(got[k].shape), ref_shape=list(ref[k].shape))
        return out

    results = {}
    for name, c in cases.items():
        t0 = time.time()
        use(name != stock_case)
        dtype = getattr(torch, c.get("dtype", "float32"))
        kw = {k: c[k] for k in ("chunk", "block_e", "block_l", "lanes_n", "split_n", "fwd", "bwd") if k in c}
        t = make(c)
        y_ref, g_ref, _ = run(selective_scan_ref, t, c, dtype, c.get("strided", False))
        y_tri, g_tri, ydt = run(selective_scan_triton, t, c, dtype, c.get("strided", False), **kw)
        res = errors({**y_ref, **g_ref}, {**y_tri, **g_tri})
        # forward without autograd (no saved states), and the final state
        with torch.no_grad():
            y_ng, last = selective_scan_triton(
                *(t[k].to(dtype) if k not in ("A", "D", "delta_bias") and t[k] is not None else t[k]
                  for k in NAMES[:6]),
                z=None if t["z"] is None else t["z"].to(dtype), delta_bias=t["delta_bias"],
                delta_softplus=c.get("softplus", True), return_last_state=True, **kw)
            d = (t["delta"].to(dtype).float() + (t["delta_bias"][:, None] if t["delta_bias"] is not None else 0))
            if c.get("softplus", True):
                d = torch.nn.functional.softplus(d)
            h = torch.zeros(c["batch"], c["E"], c["N"])
            for s in range(c["L"]):
                h = torch.exp(d[:, :, s, None] * t["A"]) * h \
                    + (d[:, :, s] * t["u"].to(dtype).float()[:, :, s])[..., None] * t["B"].to(dtype).float()[:, None, :, s]
        res["y_nograd"] = dict(err=(y_ng.float() - y_tri["y"].float()).abs().max().item()
                               / max(y_tri["y"].float().abs().max().item(), 1e-30))
        res["last_state"] = dict(err=(last - h).abs().max().item() / max(h.abs().max().item(), 1e-30))
        res["out_dtype"] = str(ydt)
        res["seconds"] = time.time() - t0
        results[name] = res
    print("RESULTS " + json.dumps(results))
''')


@pytest.fixture(scope="module")
def interpreter_results():
    env = dict(os.environ, TRITON_INTERPRET="1", HEAR_SSAM_ROOT=ROOT, OMP_NUM_THREADS="1",
               CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(CASES), STOCK_INTERPRETER_CASE],
                          env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")]
    assert proc.returncode == 0 and lines, f"interpreter child failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json.loads(lines[-1][len("RESULTS "):])


TOL = {"float32": 1e-4, "float16": 1e-2}


@pytest.mark.parametrize("case", list(CASES))
def test_interpreted_scan_matches_reference(interpreter_results, case):
    """Forward output and every gradient, within TOL of each tensor's max abs value."""
    res = interpreter_results[case]
    dtype = CASES[case].get("dtype", "float32")
    tol = TOL[dtype]
    expected = ["y", "u", "delta", "A", "B", "C"] + [k for k, opt in (("D", "D"), ("z", "z"), ("delta_bias", "bias"))
                                                     if CASES[case].get(opt, True)]
    assert sorted(k for k in res if isinstance(res[k], dict) and "scale" in res[k]) == sorted(expected)
    for k in expected:
        r = res[k]
        assert r["shape"] == r["ref_shape"], (k, r)
        assert r["err"] < tol, f"{case}: {k} error {r['err']:.2e} (max |ref| {r['scale']:.3g})"
        if k in ("y", "u", "delta", "z"):
            assert r["dtype"] == f"torch.{dtype}", (k, r["dtype"])
    assert res["out_dtype"] == f"torch.{dtype}"
    assert res["y_nograd"]["err"] == 0.0          # same kernel without saving states
    assert res["last_state"]["err"] < tol


def test_load_triton_refuses_without_cuda_or_interpreter():
    """No CUDA and no TRITON_INTERPRET: load_triton raises BackendUnavailable with a reason."""
    code = textwrap.dedent('''
        import sys
        sys.path.insert(0, sys.argv[1])
        from hear_ssam.ops.selective_scan import BackendUnavailable
        from hear_ssam.ops.selective_scan_triton import load_triton
        try:
            load_triton()
        except BackendUnavailable as e:
            print("UNAVAILABLE", e)
        else:
            print("LOADED")
    ''')
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    out = subprocess.run([sys.executable, "-c", code, ROOT], env=env, capture_output=True, text=True,
                         timeout=300).stdout
    assert out.startswith("UNAVAILABLE") and "CUDA" in out, out


# --------------------------------------------------------------------------------------
# Compiled kernels: CUDA only (they run on a GPU machine)
# --------------------------------------------------------------------------------------
cuda = pytest.mark.skipif(not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
                          reason="needs a CUDA device (compiled Triton kernels)")


def _cuda_inputs(batch, E, L, N, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = dict(u=torch.randn(batch, E, L, generator=g), delta=torch.randn(batch, E, L, generator=g) * 0.5,
             A=-torch.exp(torch.randn(E, N, generator=g) * 0.5), B=torch.randn(batch, N, L, generator=g),
             C=torch.randn(batch, N, L, generator=g), D=torch.randn(E, generator=g),
             z=torch.randn(batch, E, L, generator=g), delta_bias=torch.randn(E, generator=g) * 0.3)
    return {k: (v.to(dtype) if k in ("u", "delta", "B", "C", "z") else v).cuda() for k, v in t.items()}


def _run_cuda(fn, t, **kw):
    xs = {k: v.clone().requires_grad_(True) for k, v in t.items()}
    y = fn(xs["u"], xs["delta"], xs["A"], xs["B"], xs["C"], xs["D"], z=xs["z"], delta_bias=xs["delta_bias"],
           delta_softplus=True, **kw)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y)
    y.backward(gy)
    return {"y": y.detach(), **{k: v.grad for k, v in xs.items()}}


def _max_error(ref, got):
    """max |got - ref| / max |ref|; the absolute error where the reference is exactly zero.
    A one-step sequence's dA is exactly 0 in the reference (h_{-1} = 0), and the kernel's
    h_t - dBu_t leaves rounding residue (~1e-8 after the GPU's fused multiply-adds; the
    interpreter gives 0): relative to zero that read as an error of 7e22 on an H200."""
    scale = ref.abs().max().item()
    return (ref - got).abs().max().item() / (scale or 1.0)


@cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("shape", [(2, 96, 251, 24), (1, 37, 1, 16), (2, 50, 333, 6), (1, 576, 2000, 24)])
def test_compiled_scan_matches_reference(dtype, tol, shape):
    from hear_ssam.ops.selective_scan_ref import selective_scan_ref
    from hear_ssam.ops.selective_scan_triton import load_triton
    fn = load_triton()
    t = _cuda_inputs(*shape, dtype)
    ref = _run_cuda(selective_scan_ref, t)
    got = _run_cuda(fn, t)
    for k in ref:
        a, b = ref[k].float(), got[k].float()
        assert got[k].dtype == ref[k].dtype, (k, got[k].dtype, ref[k].dtype)
        err = _max_error(a, b)
        assert err < tol, f"{shape} {dtype}: {k} error {err:.2e}"


@cuda
def test_compiled_scan_configs_and_no_grad():
    """Other launch configurations agree, and inference (no saved states) matches training."""
    from hear_ssam.ops.selective_scan_triton import selective_scan_triton
    t = _cuda_inputs(2, 80, 300, 24, torch.float32)
    base = _run_cuda(selective_scan_triton, t)
    for kw in (dict(chunk=16), dict(chunk=256), dict(split_n=False), dict(num_warps=1), dict(num_warps=8),
               dict(fwd=dict(block_l=8), bwd=dict(block_l=16, num_warps=4))):
        kw = dict(config={k: v for k, v in kw.items() if k in ("fwd", "bwd")},
                  **{k: v for k, v in kw.items() if k not in ("fwd", "bwd")})
        got = _run_cuda(selective_scan_triton, t, **kw)
        for k in base:
            err = (base[k] - got[k]).abs().max().item() / max(base[k].abs().max().item(), 1e-30)
            assert err < 1e-5, (kw, k, err)
    with torch.no_grad():
        y = selective_scan_triton(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], z=t["z"],
                                  delta_bias=t["delta_bias"], delta_softplus=True)
    assert torch.equal(y, base["y"])
