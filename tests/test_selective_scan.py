"""Parity of our scan and mixer with mamba_ssm's own pure-torch references (fp32)."""
import pytest
import torch

from hear_ssam.mamba import Mamba
from hear_ssam.selective_scan import auto_chunk_len, selective_scan


def _inputs(B, E, L, N, seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return dict(u=r(B, E, L), delta=r(B, E, L) * 0.5, A=-torch.rand(E, N, generator=g) * 8,
                B=r(B, N, L), C=r(B, N, L), D=r(E), z=r(B, E, L), delta_bias=r(E) * 0.3)


@pytest.mark.parametrize("L,chunk_len", [(1, None), (37, 4), (70, 16), (251, None), (130, 64)])
def test_forward_and_gradients_match_selective_scan_ref(mamba_ref, L, chunk_len):
    x = _inputs(2, 12, L, 6, seed=L)
    ours = {k: v.clone().requires_grad_() for k, v in x.items()}
    ref = {k: v.clone().requires_grad_() for k, v in x.items()}
    y_ref = mamba_ref.selective_scan_ref(**ref, delta_softplus=True)
    y = selective_scan(**ours, delta_softplus=True, chunk_len=chunk_len)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y_ref)
    (y_ref * g).sum().backward()
    (y * g).sum().backward()
    for k in x:
        scale = ref[k].grad.abs().max().clamp(min=1e-6)
        torch.testing.assert_close(ours[k].grad / scale, ref[k].grad / scale, rtol=0, atol=2e-5,
                                   msg=lambda m: f"gradient of {k}: {m}")


def test_without_optional_terms_matches_reference(mamba_ref):
    x = _inputs(1, 8, 50, 4, seed=3)
    y_ref = mamba_ref.selective_scan_ref(x["u"], x["delta"], x["A"], x["B"], x["C"])
    y = selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"])
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)


def test_chunk_len_adapts_to_cache_and_stays_in_range():
    assert auto_chunk_len(16, 576, 24) == 8
    assert auto_chunk_len(8, 576, 24) == 8 or auto_chunk_len(8, 576, 24) == 16
    assert auto_chunk_len(1, 8, 4) == 64
    assert auto_chunk_len(4096, 3072, 24) == 4


def test_mamba_module_matches_mamba_simple_both_ways(mamba_ref):
    torch.manual_seed(0)
    theirs = mamba_ref.Mamba(d_model=32, d_state=24, d_conv=4, expand=3)
    ours = Mamba(32, d_state=24, d_conv=4, expand=3)
    # Same names and shapes, so state dicts load strictly in both directions.
    ours.load_state_dict(theirs.state_dict(), strict=True)
    theirs.load_state_dict(ours.state_dict(), strict=True)
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
