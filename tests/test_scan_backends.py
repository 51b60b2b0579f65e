"""The selective-scan dispatch and every CPU backend, against the in-package reference
(always) and mamba_ssm's own pure-torch references (where mamba-ssm is installed)."""
import warnings

import pytest
import torch

from hear_ssam import ops
from hear_ssam.modules.mamba import Mamba
from hear_ssam.ops.causal_conv1d import resolve_backend as resolve_conv_backend
from hear_ssam.ops.dispatch import Dispatch
from hear_ssam.ops.selective_scan import AUTO_ORDER, BackendUnavailable, load_backend, resolve_backend
from hear_ssam.ops.selective_scan_chunked import auto_chunk_len, selective_scan_chunked
from hear_ssam.ops.selective_scan_ref import selective_scan_ref
from official_reference import ReferenceMamba


def scan_inputs(B, E, L, N, seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return dict(u=r(B, E, L), delta=r(B, E, L) * 0.5, A=-torch.rand(E, N, generator=g) * 8,
                B=r(B, N, L), C=r(B, N, L), D=r(E), z=r(B, E, L), delta_bias=r(E) * 0.3)


def cpu_backends():
    """Every backend that can run on CPU tensors here (the reference is the yardstick)."""
    names = []
    for name in ops.SCAN_BACKENDS:
        if name == "reference":
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                resolve_backend("cpu", name)
        except BackendUnavailable:
            continue
        names.append(name)
    return names


def assert_scan_matches(fn, ref_fn, x, **kw):
    ours = {k: v.clone().requires_grad_() for k, v in x.items()}
    ref = {k: v.clone().requires_grad_() for k, v in x.items()}
    y_ref = ref_fn(**ref, delta_softplus=True)
    y = fn(**ours, delta_softplus=True, **kw)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y_ref)
    (y_ref * g).sum().backward()
    (y * g).sum().backward()
    for k in x:
        scale = ref[k].grad.abs().max().clamp(min=1e-6)
        torch.testing.assert_close(ours[k].grad / scale, ref[k].grad / scale, rtol=0, atol=2e-5,
                                   msg=lambda m: f"gradient of {k}: {m}")


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("B,L,N", [(1, 1, 6), (2, 37, 6), (2, 70, 24), (1, 130, 13)])
def test_every_backend_matches_the_reference(backend, B, L, N):
    fn = load_backend(backend)
    assert_scan_matches(fn, selective_scan_ref, scan_inputs(B, 12, L, N, seed=L))


@pytest.mark.parametrize("L,chunk_len", [(1, None), (37, 4), (70, 16), (251, None), (130, 64)])
def test_chunked_scan_matches_selective_scan_ref_of_mamba_ssm(mamba_ref, L, chunk_len):
    assert_scan_matches(selective_scan_chunked, mamba_ref.selective_scan_ref, scan_inputs(2, 12, L, 6, seed=L),
                        chunk_len=chunk_len)


def test_in_package_reference_equals_mamba_ssms(mamba_ref):
    x = scan_inputs(2, 8, 41, 5, seed=1)
    torch.testing.assert_close(selective_scan_ref(**x, delta_softplus=True),
                               mamba_ref.selective_scan_ref(**x, delta_softplus=True), rtol=1e-6, atol=1e-6)


def test_without_optional_terms():
    x = scan_inputs(1, 8, 50, 4, seed=3)
    args = (x["u"], x["delta"], x["A"], x["B"], x["C"])
    for backend in cpu_backends():
        torch.testing.assert_close(load_backend(backend)(*args), selective_scan_ref(*args), rtol=1e-5, atol=1e-5)


def test_chunk_len_adapts_to_cache_and_stays_in_range():
    assert auto_chunk_len(16, 576, 24) == 8
    assert auto_chunk_len(8, 576, 24) == 16
    assert auto_chunk_len(1, 8, 4) == 64
    assert auto_chunk_len(4096, 3072, 24) == 4


def test_dispatch_by_argument_environment_and_device(monkeypatch):
    monkeypatch.delenv(ops.SCAN_ENV, raising=False)
    assert resolve_backend("cpu") == next(n for n in AUTO_ORDER["cpu"] if n in cpu_backends() + ["chunked"])
    assert resolve_backend("cpu", "reference") == "reference"
    monkeypatch.setenv(ops.SCAN_ENV, "reference")
    assert resolve_backend("cpu") == "reference"
    assert resolve_backend("cpu", "chunked") == "chunked"  # the argument wins over the environment
    calls = []
    monkeypatch.setitem(ops.SCAN_BACKENDS, "spy", lambda: lambda *a, **k: calls.append(a) or a[0])
    load_backend.cache_clear()
    try:
        x = scan_inputs(1, 4, 3, 2, seed=0)
        ops.selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], backend="spy")
        assert len(calls) == 1
    finally:
        load_backend.cache_clear()


def test_dispatch_errors_name_the_problem(monkeypatch):
    monkeypatch.delenv(ops.SCAN_ENV, raising=False)
    with pytest.raises(ValueError, match="unknown selective-scan backend 'fast'.*choose from"):
        resolve_backend("cpu", "fast")
    monkeypatch.setenv(ops.SCAN_ENV, "nope")
    with pytest.raises(ValueError, match="unknown selective-scan backend 'nope'"):
        resolve_backend("cpu")
    monkeypatch.delenv(ops.SCAN_ENV)
    with pytest.raises(BackendUnavailable, match="cuda"):
        resolve_backend("cpu", "cuda")  # mamba_ssm's kernels either don't import or need CUDA tensors
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(BackendUnavailable, match="CUDA|cuda"):
        resolve_backend("cpu", "triton")  # no GPU here, or CPU tensors given to a CUDA kernel



def test_dispatch_applies_its_rules_as_data(monkeypatch):
    """The shared mechanism on a toy op: order, skipping what does not load, caching what does,
    fallback, dtype rule, device-only refusal with its interpreter exception, environment."""
    loads = []

    def no_compiler():
        raise BackendUnavailable("no compiler here")
    registry = {"fast": no_compiler, "gpu": lambda: loads.append("gpu") or "gpu-fn", "plain": lambda: "plain-fn"}
    toy = Dispatch("toy", registry, env="TOY_BACKEND", fallback="plain",
                   auto_order={"cpu": ("fast", "plain"), "cuda": ("gpu", "plain")},
                   device_only={"fast": "cpu", "gpu": "cuda"}, interpreted_on_any_device={"gpu": "TOY_INTERPRET"},
                   dtype_auto={torch.float64: "plain"})
    for name in ("TOY_BACKEND", "TOY_INTERPRET"):
        monkeypatch.delenv(name, raising=False)
    assert toy.resolve("cpu") == "plain"  # "fast" does not load: skipped
    assert toy.resolve("cuda") == "gpu" and toy.load("gpu") == "gpu-fn" and toy.resolve("cuda") == "gpu"
    assert loads == ["gpu"]  # loaded once
    assert toy.resolve("cuda", dtype=torch.float64) == "plain"
    assert toy.resolve("cuda", "gpu", dtype=torch.float64) == "gpu"  # a named backend wins over the dtype rule
    assert toy.resolve("mps") == "plain"  # a device type without an order
    with pytest.raises(BackendUnavailable, match="no compiler here"):
        toy.resolve("cpu", "fast")
    with pytest.raises(BackendUnavailable, match="toy backend 'gpu' runs on cuda tensors only, got cpu tensors; "
                                                 "leave backend= and TOY_BACKEND unset"):
        toy.resolve("cpu", "gpu")
    monkeypatch.setenv("TOY_INTERPRET", "1")
    assert toy.resolve("cpu", "gpu") == "gpu"
    monkeypatch.setenv("TOY_INTERPRET", "0")
    with pytest.raises(BackendUnavailable, match="runs on cuda tensors only"):
        toy.resolve("cpu", "gpu")
    monkeypatch.setenv("TOY_BACKEND", "gpu")
    assert toy.resolve("cuda") == "gpu"
    with pytest.raises(ValueError, match=r"unknown toy backend 'x'; choose from \['fast', 'gpu', 'plain'\]"):
        toy.resolve("cuda", "x")
    with pytest.raises(ValueError, match=r"names backends \['turbo'\] that its registry lacks"):
        Dispatch("toy", registry, env="TOY_BACKEND", auto_order={"cpu": ("turbo",)}, fallback="plain")


@pytest.mark.parametrize("op", ["scan", "conv"])
def test_both_ops_refuse_a_cpu_only_backend_on_cuda_alike(op, monkeypatch):
    resolve, env = ((resolve_backend, ops.SCAN_ENV) if op == "scan" else (resolve_conv_backend, ops.CONV_ENV))
    monkeypatch.delenv(env, raising=False)
    try:
        resolve("cpu", "compiled")
    except BackendUnavailable as e:
        pytest.skip(f"the compiled {op} kernel is unavailable here: {e}")
    with pytest.raises(BackendUnavailable, match=f"backend 'compiled' runs on cpu tensors only, got cuda tensors; "
                                                 f"leave backend= and {env} unset for the automatic choice"):
        resolve("cuda", "compiled")


def test_triton_scan_takes_cpu_tensors_only_under_its_interpreter(monkeypatch):
    monkeypatch.delenv(ops.SCAN_ENV, raising=False)
    monkeypatch.setitem(ops.SCAN_BACKENDS, "triton", lambda: selective_scan_ref)  # loads without triton or a GPU
    load_backend.cache_clear()
    try:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert resolve_backend("cpu", "triton") == "triton"
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(BackendUnavailable, match="'triton' runs on cuda tensors only, got cpu tensors"):
            resolve_backend("cpu", "triton")
        assert resolve_backend("cpu") != "triton"
    finally:
        load_backend.cache_clear()


def assert_mixer_matches(ours, theirs):
    """Forward, input gradient and every parameter gradient of two mixers with the same weights."""
    x = torch.randn(3, 45, 32)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = theirs(xa), ours(xb)
    torch.testing.assert_close(yb, ya, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(ya)
    (ya * g).sum().backward()
    (yb * g).sum().backward()
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-4, atol=1e-5)
    params_a, params_b = dict(theirs.named_parameters()), dict(ours.named_parameters())
    for name, p in params_a.items():
        scale = p.grad.abs().max().clamp(min=1e-12)
        torch.testing.assert_close(params_b[name].grad / scale, p.grad / scale, rtol=0, atol=5e-5,
                                   msg=lambda m: f"gradient of {name}: {m}")


def test_mamba_module_matches_the_reference_maths():
    """Our mixer = mamba_ssm's non-fused Mamba path restated with a per-step loop in the tests (forward + grads)."""
    torch.manual_seed(0)
    ours = Mamba(32, d_state=24, d_conv=4, expand=3)
    restated = ReferenceMamba(32, d_state=24, d_conv=4, expand=3)
    restated.load_state_dict(ours.state_dict(), strict=True)
    assert_mixer_matches(ours, restated)


def test_mamba_module_matches_mamba_simple_both_ways(mamba_ref):
    torch.manual_seed(0)
    theirs = mamba_ref.Mamba(d_model=32, d_state=24, d_conv=4, expand=3)
    ours = Mamba(32, d_state=24, d_conv=4, expand=3)
    # Same names and shapes, so state dicts load strictly in both directions.
    ours.load_state_dict(theirs.state_dict(), strict=True)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    assert_mixer_matches(ours, theirs)


def test_mamba_init_follows_mamba_ssm():
    torch.manual_seed(0)
    m = Mamba(192, d_state=24, d_conv=4, expand=3)
    assert m.dt_rank == 12 and m.d_inner == 576
    torch.testing.assert_close(m.A_log, torch.log(torch.arange(1.0, 25.0)).repeat(576, 1))
    assert torch.equal(m.D, torch.ones(576))
    dt = torch.nn.functional.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6
    assert m.dt_proj.weight.abs().max() <= 12 ** -0.5
    assert m.in_proj.bias is None and m.out_proj.bias is None
