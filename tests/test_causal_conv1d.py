"""The causal depthwise convolution (+ SiLU) of the mixers: the compiled CPU kernel's forward and
gradients against PyTorch's conv1d in float64, every width and edge, dtypes and layouts the
mixers pass, thread-count independence, the dispatch, and the fallback when the build fails."""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from hear_ssam.ops import causal_conv1d, causal_conv1d_ref
from hear_ssam.ops.causal_conv1d import resolve_backend
from hear_ssam.ops.causal_conv1d_cpu import load_compiled
from hear_ssam.ops.errors import BackendUnavailable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def conv():
    try:
        return load_compiled()
    except BackendUnavailable as e:
        if shutil.which(os.environ.get("CXX", "c++").split()[0]) is None:
            pytest.skip(f"no C++ compiler: {e}")
        pytest.fail(f"the compiled conv did not build although a compiler exists: {e}")


def _inputs(B, D, L, K, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, D, L, generator=g), torch.randn(D, K, generator=g) / K ** 0.5,
            torch.randn(D, generator=g) if bias else None)


def _value_and_grads(fn, x, w, b, act, gy):
    leaves = [t.clone().requires_grad_() for t in (x, w) + ((b,) if b is not None else ())]
    y = fn(leaves[0], leaves[1], leaves[2] if b is not None else None, act)
    return [y.detach()] + list(torch.autograd.grad(y, leaves, gy.to(y.dtype)))


SHAPES = [  # batch, D, L, K: L = 1, L < K - 1, D not a multiple of the SIMD width, the widths
    (2, 5, 1, 4),   # the mixers use 2..4 unrolled; 5 takes the generic loop
    (3, 7, 2, 4),
    (2, 16, 37, 4),
    (1, 33, 513, 4),
    (2, 12, 20, 3),
    (2, 12, 20, 2),
    (2, 6, 19, 5),
    (2, 6, 9, 1),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("act", [None, "silu"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_matches_conv1d_in_float64(conv, shape, act, bias):
    x, w, b = _inputs(*shape, bias=bias)
    gy = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    got = _value_and_grads(conv, x, w, b, act, gy)
    want = _value_and_grads(causal_conv1d_ref, x.double(), w.double(), None if b is None else b.double(), act, gy)
    for name, g, r in zip(("y", "dx", "dweight", "dbias"), got, want):
        assert g.dtype == torch.float32 and g.shape == r.shape, name
        scale = r.abs().max().clamp(min=1.0).item()
        torch.testing.assert_close(g.double() / scale, r / scale, rtol=0, atol=2e-6, msg=lambda m: f"{name}: {m}")


def test_is_causal(conv):
    """Output t changes only when inputs <= t change."""
    x, w, b = _inputs(2, 8, 30, 4)
    y = conv(x, w, b, "silu")
    x2 = x.clone()
    x2[..., 17:] += 1.0
    y2 = conv(x2, w, b, "silu")
    assert torch.equal(y[..., :17], y2[..., :17]) and not torch.equal(y[..., 17:], y2[..., 17:])


def test_layouts_and_dtypes_the_mixers_pass(conv):
    """The mixers pass a strided view of in_proj's output ([B, L, 2E] -> [B, E, L]) and, under bf16
    autocast, bf16 tensors: the result is the same sum, in the input's dtype, with gradients."""
    B, L, E, K = 2, 25, 12, 4
    xz = torch.randn(B, L, 2 * E)
    x_view = xz.transpose(1, 2)[:, :E]
    _, w, b = _inputs(B, E, L, K)
    torch.testing.assert_close(conv(x_view, w, b, "silu"), conv(x_view.contiguous(), w, b, "silu"), rtol=0, atol=0)
    xb = x_view.to(torch.bfloat16).requires_grad_()
    wb = w.clone().requires_grad_()
    y = conv(xb, wb, b, "silu")
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert xb.grad.dtype == torch.bfloat16 and wb.grad.dtype == torch.float32
    torch.testing.assert_close(y.float(), causal_conv1d_ref(xb.detach().float(), w, b, "silu"), rtol=1e-2, atol=1e-2)


def test_threads_give_identical_results(conv):
    """Each task owns its rows and channels (no atomics): 1 and 2 threads agree bit for bit."""
    x, w, b = _inputs(4, 40, 200, 4)
    gy = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _value_and_grads(conv, x, w, b, "silu", gy)
        torch.set_num_threads(2)
        two = _value_and_grads(conv, x, w, b, "silu", gy)
    finally:
        torch.set_num_threads(threads)
    for a, c in zip(one, two):
        assert torch.equal(a, c)


def test_dispatch_and_named_errors(conv, monkeypatch):
    monkeypatch.delenv("HEAR_SSAM_CONV", raising=False)
    assert resolve_backend("cpu") == "compiled"
    assert resolve_backend("cuda") == "reference"
    assert resolve_backend("cpu", "reference") == "reference"
    assert resolve_backend("cpu", dtype=torch.float64) == "reference"  # the kernel computes in fp32
    monkeypatch.setenv("HEAR_SSAM_CONV", "reference")
    assert resolve_backend("cpu") == "reference"
    with pytest.raises(ValueError, match="unknown causal conv1d backend 'fast'; choose from"):
        causal_conv1d(torch.randn(1, 2, 3), torch.randn(2, 4), backend="fast")
    with pytest.raises(BackendUnavailable, match="runs on cpu tensors only, got cuda tensors"):
        resolve_backend("cuda", "compiled")
    with pytest.raises(NotImplementedError, match="activation must be one of"):
        conv(torch.randn(1, 2, 3), torch.randn(2, 4), None, "relu")


FALLBACK = textwrap.dedent("""
    import warnings
    records = []
    warnings.showwarning = lambda message, *a, **k: records.append(str(message))
    import torch
    from hear_ssam.ops import causal_conv1d, causal_conv1d_ref
    from hear_ssam.ops.causal_conv1d import resolve_backend
    x, w, b = torch.randn(2, 6, 11), torch.randn(6, 4), torch.randn(6)
    y = causal_conv1d(x, w, b, "silu")      # automatic choice
    causal_conv1d(x, w, b, "silu")
    torch.testing.assert_close(y, causal_conv1d_ref(x, w, b, "silu"), rtol=0, atol=0)
    print(repr((records, resolve_backend("cpu"))))
""")


def test_failed_build_falls_back_to_conv1d_with_one_warning(tmp_path):
    env = dict(os.environ, CXX="/bin/false", HEAR_SSAM_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    env.pop("HEAR_SSAM_CONV", None)
    out = subprocess.run([sys.executable, "-c", FALLBACK], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    records, backend = eval(out.stdout.strip().splitlines()[-1])
    assert len(records) == 1, records
    assert "compiled CPU causal conv1d unavailable" in records[0] and "using PyTorch's conv1d" in records[0]
    assert backend == "reference"
