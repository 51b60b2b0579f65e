"""The compiled CPU selective scan: forward and every gradient against both references (fp32),
race-free threading, and the fallback when the C++ build fails."""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from hear_ssam.ops.errors import BackendUnavailable
from hear_ssam.ops.selective_scan_cpu import CHUNK_LEN, build_dir, load_compiled
from hear_ssam.ops.selective_scan_ref import selective_scan_ref

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIONAL = ("D", "z", "delta_bias")


@pytest.fixture(scope="module")
def scan():
    try:
        return load_compiled()
    except BackendUnavailable as e:
        if shutil.which(os.environ.get("CXX", "c++").split()[0]) is None:
            pytest.skip(f"no C++ compiler: {e}")
        pytest.fail(f"the compiled scan did not build although a compiler exists: {e}")


def _inputs(B, E, L, N, seed, softplus=True):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    # Without softplus delta + bias must stay positive, or the recurrence grows without bound.
    pos = (lambda t: t) if softplus else torch.abs  # noqa: E731
    return dict(u=r(B, E, L), delta=pos(r(B, E, L)) * 0.5, A=-torch.rand(E, N, generator=g) * 8, B=r(B, N, L),
                C=r(B, N, L), D=r(E), z=r(B, E, L), delta_bias=pos(r(E)) * 0.3)


def _check(fn_a, fn_b, x, keys, softplus, rtol=1e-5, atol=1e-5, gtol=2e-5):
    """Forward and the gradient of every input in `keys` agree (gradients within gtol of their max).

    The forward's atol scales with the output's magnitude (at least 1): two fp32 scans that round
    differently (exp, summation order) differ by ~1e-6 of the scale of y, and long slow-decaying
    sequences reach |y| ~ 50 (test_as_accurate_as_the_fp32_reference checks against float64)."""
    a = {k: x[k].clone().requires_grad_() for k in keys}
    b = {k: x[k].clone().requires_grad_() for k in keys}
    ya, yb = fn_a(**a, delta_softplus=softplus), fn_b(**b, delta_softplus=softplus)
    torch.testing.assert_close(ya, yb, rtol=rtol, atol=atol * max(1.0, yb.abs().max().item()))
    g = torch.randn(yb.shape, generator=torch.Generator().manual_seed(1))
    (ya * g).sum().backward()
    (yb * g).sum().backward()
    for k in keys:
        scale = b[k].grad.abs().max().clamp(min=1e-6)
        torch.testing.assert_close(a[k].grad / scale, b[k].grad / scale, rtol=0, atol=gtol,
                                   msg=lambda m: f"gradient of {k}: {m}")


SHAPES = [  # batch, E, L, N: L = 1, odd L, N not a multiple of 8, E not a multiple of the SIMD width
    (2, 12, 1, 6),
    (1, 16, 37, 13),
    (3, 40, 251, 24),
    (2, 33, 3 * CHUNK_LEN + 5, 8),  # crosses chunk boundaries
]
OPTIONS = {  # name -> (optional inputs used, delta_softplus)
    "all": (OPTIONAL, True),
    "none": ((), False),
    "D+softplus": (("D",), True),
    "z+bias": (("z", "delta_bias"), False),
}


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("opts", list(OPTIONS), ids=str)
def test_matches_package_reference(scan, shape, opts):
    used, softplus = OPTIONS[opts]
    x = _inputs(*shape, seed=sum(shape), softplus=softplus)
    _check(scan, selective_scan_ref, x, ("u", "delta", "A", "B", "C") + used, softplus)


@pytest.mark.parametrize("shape", [(2, 24, 70, 24), (1, 576, 251, 24), (3, 17, 2 * CHUNK_LEN, 5)],
                         ids=lambda s: "x".join(map(str, s)))
def test_matches_mamba_ssm_selective_scan_ref(scan, mamba_ref, shape):
    x = _inputs(*shape, seed=7)
    _check(scan, mamba_ref.selective_scan_ref, x, tuple(x), True)


def _scan_float64(u, delta, A, B, C, D, z, delta_bias):
    """The recurrence in float64, softplus on: the ground truth both fp32 scans approximate."""
    u, delta, A, B, C, D, z, delta_bias = (t.double() for t in (u, delta, A, B, C, D, z, delta_bias))
    delta = torch.nn.functional.softplus(delta + delta_bias[:, None])
    h, ys = u.new_zeros(u.shape[0], u.shape[1], A.shape[1]), []
    for t in range(u.shape[2]):
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[..., None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1))
    return (torch.stack(ys, -1) + u * D[:, None]) * torch.nn.functional.silu(z)


def test_as_accurate_as_the_fp32_reference(scan):
    x = _inputs(3, 40, 251, 24, seed=318)
    truth = _scan_float64(**x)
    err = (scan(**x, delta_softplus=True).double() - truth).abs()
    err_ref = (selective_scan_ref(**x, delta_softplus=True).double() - truth).abs()
    assert err.mean() <= 1.5 * err_ref.mean() and err.max() <= 3 * err_ref.max(), (err.max(), err_ref.max())


def test_last_state_matches_mamba_ssm(scan, mamba_ref):
    x = _inputs(2, 20, 150, 24, seed=3)
    y, last = scan(**x, delta_softplus=True, return_last_state=True)
    y_ref, last_ref = mamba_ref.selective_scan_ref(**x, delta_softplus=True, return_last_state=True)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last, last_ref, rtol=1e-5, atol=1e-5)


def test_threads_are_race_free_and_deterministic(scan):
    """Same gradients for 1, 2 and 3 threads (3 splits channels into groups), bit-identical reruns."""
    x = _inputs(1, 50, 140, 24, seed=11)
    before = torch.get_num_threads()
    grads = {}
    try:
        for threads in (1, 2, 2, 3):
            torch.set_num_threads(threads)
            t = {k: v.clone().requires_grad_() for k, v in x.items()}
            (scan(**t, delta_softplus=True) * x["z"]).sum().backward()
            g = torch.cat([t[k].grad.flatten() for k in x])
            if threads in grads:
                assert torch.equal(g, grads[threads])
            grads[threads] = g
    finally:
        torch.set_num_threads(before)
    for threads in (2, 3):
        torch.testing.assert_close(grads[threads], grads[1], rtol=1e-5, atol=1e-5)


def test_dtypes_layouts_and_partial_gradients(scan):
    x = _inputs(2, 16, 40, 8, seed=5)
    # float64 in -> float64 out (fp32 maths), gradients in the inputs' dtype.
    x64 = {k: v.double().requires_grad_(k in ("u", "A")) for k, v in x.items()}
    y = scan(**x64, delta_softplus=True)
    assert y.dtype == torch.float64
    y.sum().backward()
    assert x64["u"].grad.dtype == torch.float64 and x64["delta"].grad is None
    torch.testing.assert_close(y.float(), selective_scan_ref(**x, delta_softplus=True), rtol=1e-5, atol=1e-5)
    # bfloat16 in -> bfloat16 out.
    assert scan(**{k: v.bfloat16() for k, v in x.items()}, delta_softplus=True).dtype == torch.bfloat16
    # Non-contiguous views are fine.
    u_t = x["u"].transpose(1, 2).contiguous().transpose(1, 2)
    torch.testing.assert_close(scan(**{**x, "u": u_t}, delta_softplus=True),
                               selective_scan_ref(**x, delta_softplus=True), rtol=1e-5, atol=1e-5)
    # No gradient needed: plain inference under no_grad.
    with torch.no_grad():
        assert not scan(**x).requires_grad


FALLBACK = textwrap.dedent("""
    import warnings, torch
    records = []
    warnings.showwarning = lambda message, *a, **k: records.append(str(message))
    warnings.simplefilter("always")
    import importlib
    ss = importlib.import_module("hear_ssam.ops.selective_scan")
    from hear_ssam.ops.selective_scan_cpu import load_compiled
    from hear_ssam.ops.selective_scan_ref import selective_scan_ref
    g = torch.Generator().manual_seed(0)
    B, E, L, N = 2, 8, 30, 4
    x = dict(u=torch.randn(B, E, L, generator=g), delta=torch.randn(B, E, L, generator=g),
             A=-torch.rand(E, N, generator=g), B=torch.randn(B, N, L, generator=g),
             C=torch.randn(B, N, L, generator=g), D=torch.randn(E, generator=g))
    y = ss.selective_scan(**x, delta_softplus=True)      # no backend argument: automatic choice
    ss.selective_scan(**x, delta_softplus=True)
    warned_by_scan = len(records)
    try:
        load_compiled()
        raise SystemExit("load_compiled() did not raise")
    except ss.BackendUnavailable as e:
        reason = str(e)
    torch.testing.assert_close(y, selective_scan_ref(**x, delta_softplus=True), rtol=1e-5, atol=1e-5)
    print(repr((warned_by_scan, records, reason, ss.resolve_backend("cpu"))))
""")


def _run_without_compiler(tmp_path, cxx):
    env = dict(os.environ, CXX=cxx, HEAR_SSAM_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    env.pop("HEAR_SSAM_SCAN", None)  # the automatic choice is under test
    out = subprocess.run([sys.executable, "-c", FALLBACK], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return eval(out.stdout.strip().splitlines()[-1])


def test_failed_build_falls_back_to_chunked_with_one_warning(tmp_path):
    warned_by_scan, records, reason, backend = _run_without_compiler(tmp_path, "/bin/false")
    assert warned_by_scan == 1, f"the automatic CPU choice should try the compiled scan first: {records}"
    assert len(records) == 1, records  # not again on later calls, nor from load_compiled()
    assert "compiled CPU selective scan unavailable" in records[0]
    assert "using the slower pure-PyTorch scan" in records[0]
    assert "compiled CPU selective scan unavailable" in reason
    assert backend == "chunked"


def test_missing_compiler_is_named(tmp_path):
    _, records, reason, backend = _run_without_compiler(tmp_path, "/nonexistent/c++")
    assert "no C++ compiler" in reason and len(records) == 1 and backend == "chunked"


def test_truncated_cached_library_is_relinked_not_loaded(scan, tmp_path):
    """A cached library cut short (a killed link) would crash dlopen: it is dropped and relinked."""
    cache = tmp_path / "cache"
    copy = cache / os.path.relpath(build_dir(), os.path.dirname(os.path.dirname(os.path.dirname(build_dir()))))
    shutil.copytree(build_dir(), copy)  # keeps mtimes: the object file stays up to date
    (lib,) = [p for p in copy.iterdir() if p.suffix == ".so"]
    lib.write_bytes(lib.read_bytes()[:1000])
    code = ("import torch; from hear_ssam.ops.selective_scan_cpu import load_compiled; "
            "x = torch.randn(1, 4, 5); A = -torch.rand(4, 2); B = torch.randn(1, 2, 5); "
            "print(load_compiled()(x, x.abs(), A, B, B).shape)")
    env = dict(os.environ, HEAR_SSAM_CACHE=str(cache), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "torch.Size([1, 4, 5])" in out.stdout and len(lib.read_bytes()) > 1000
