"""Tests of the AxLSTM mLSTM block (hear_ssam/modules/mlstm.py) and its cell (hear_ssam/ops/mlstm.py).

The reference (tests/axlstm_reference.py) restates the official AxLSTM / Vision-LSTM equations (docs/families.md) from
scratch, as plain functions of a state dict with the official key names: a LayerNorm written out,
the causal conv as a sum of shifted taps, the block-diagonal projections as one dense
block-diagonal matrix, and the mLSTM cell as a loop over time of the stabilised recurrence. It
imports nothing from the module under test; the module is used only to build the weights that
are copied in.
"""
import math

import pytest
import torch

from axlstm_reference import NH, ref_block
from hear_ssam.modules import mlstm as M
from hear_ssam.ops import mlstm as cell


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

def randomise_(block, seed=0, igate_shift=0.0):
    """Random (not init) weights of realistic size, every parameter off its init value."""
    g = torch.Generator().manual_seed(seed)
    D, E = block.layer.dim, block.layer.inner_dim
    scales = {
        "norm.weight": 0.3, "layer.proj_up.weight": 1 / math.sqrt(D),
        "layer.q_proj.weight": 0.5, "layer.k_proj.weight": 0.5, "layer.v_proj.weight": 0.5,
        "layer.conv1d.conv.weight": 0.5, "layer.conv1d.conv.bias": 0.3,
        "layer.mlstm_cell.igate.weight": 0.3 / math.sqrt(E), "layer.mlstm_cell.igate.bias": 2.0,
        "layer.mlstm_cell.fgate.weight": 0.3 / math.sqrt(E), "layer.mlstm_cell.fgate.bias": 2.0,
        "layer.mlstm_cell.outnorm.weight": 0.3, "layer.learnable_skip": 0.5,
        "layer.proj_down.weight": 1 / math.sqrt(E),
    }
    offsets = {"layer.learnable_skip": 1.0, "layer.mlstm_cell.fgate.bias": 2.0,
               "layer.mlstm_cell.igate.bias": igate_shift}
    with torch.no_grad():
        for name, prm in block.named_parameters():
            prm.copy_(torch.randn(prm.shape, generator=g) * scales[name] + offsets.get(name, 0.0))
    return block


def make_block(D=32, seed=0, dtype=torch.float32, **kw):
    torch.manual_seed(seed)
    return randomise_(M.mLSTMBlock(D), seed, **kw).to(dtype)


def kernel_inputs(B, L, DH, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, NH, L, DH, generator=g, dtype=dtype) for _ in range(3))
    ig = torch.randn(B, NH, L, generator=g, dtype=dtype) * 3
    fg = torch.randn(B, NH, L, generator=g, dtype=dtype) * 3 + 2
    return q, k, v, ig, fg


# ---------------------------------------------------------------------------------------------
# Parity with the independent reference
# ---------------------------------------------------------------------------------------------

def assert_close_rel(a, b, tol, scale, msg=""):
    """max |a - b| <= tol * scale, scale = the largest |value| of the compared family (float
    rounding of the shared sub-expressions sets the error, not each tensor's own size)."""
    assert a.shape == b.shape, msg
    err = (a - b).abs().max().item()
    assert err <= tol * scale, f"{msg}: max err {err:.3g}, tol {tol} x scale {scale:.3g}"


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("igate_shift,branch_range", [(0.0, (0.1, 0.9)), (-4.0, (0.95, 1.0))])
def test_block_matches_reference_forward_and_grads(dtype, tol, igate_shift, branch_range):
    """Forward, input and parameter gradients. igate_shift 0: both sides of the stabilised
    denominator's max occur; -4: exp(-m_t) wins everywhere (where the choice of m matters)."""
    D, B, L = 32, 2, 50
    block = make_block(D, seed=1, dtype=dtype, igate_shift=igate_shift)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in block.state_dict().items()}
    g = torch.Generator().manual_seed(2)
    x = torch.randn(B, L, D, generator=g, dtype=dtype)
    w_out = torch.randn(B, L, D, generator=g, dtype=dtype)

    x1 = x.clone().requires_grad_(True)
    y, none = block(x1, None)
    assert none is None
    (y * w_out).sum().backward()

    x2 = x.clone().requires_grad_(True)
    y_ref, branch = ref_block(x2, params)
    (y_ref * w_out).sum().backward()

    frac = branch.double().mean().item()
    assert branch_range[0] <= frac <= branch_range[1], frac

    assert_close_rel(y, y_ref, tol, y_ref.abs().max().item(), "output")
    grads = {"input": (x1.grad, x2.grad)}
    grads.update({name: (prm.grad, params[name].grad) for name, prm in block.named_parameters()})
    scale = max(ref.abs().max().item() for _, ref in grads.values())
    for name, (got, ref) in grads.items():
        assert_close_rel(got, ref, tol, scale, name)


def test_block_matches_reference_real_width():
    """D = 192 (AxLSTM-Tiny), 251 tokens, fp32, every backend."""
    D, L = 192, 251
    block = make_block(D, seed=3)
    params = {k: v.detach() for k, v in block.state_dict().items()}
    x = torch.randn(1, L, D, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        y_ref, _ = ref_block(x, params)
        for backend in ("parallel", "chunkwise", "recurrent"):
            block.layer.mlstm_cell.backend = backend
            torch.testing.assert_close(block(x, None)[0], y_ref, rtol=1e-4, atol=1e-4, msg=backend)


# ---------------------------------------------------------------------------------------------
# The parallel, chunkwise and recurrent forms agree
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("L", [1, 7, 64, 300])
def test_kernel_forms_agree(L):
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 2e-4)):
        q, k, v, ig, fg = kernel_inputs(2, L, 8, seed=L, dtype=dtype)
        p = cell.mlstm_parallel(q, k, v, ig, fg)
        scale = p.abs().max().item()
        assert p.shape == (2, NH, L, 8) and p.dtype == dtype
        r = cell.mlstm_recurrent(q, k, v, ig, fg)
        torch.testing.assert_close(r, p, rtol=tol, atol=tol * scale)
        for cs in (1, 16, 64, 512):
            c = cell.mlstm_chunkwise(q, k, v, ig, fg, chunk_size=cs)
            torch.testing.assert_close(c, p, rtol=tol, atol=tol * scale, msg=f"chunk {cs}")


@pytest.mark.parametrize("L", [1, 7, 64, 300])
def test_layer_backends_agree_with_grads(L):
    block = make_block(16, seed=5)
    block.layer.mlstm_cell.chunk_size = 32
    x = torch.randn(2, L, 16, generator=torch.Generator().manual_seed(L))
    outs, grads = {}, {}
    for backend in ("parallel", "chunkwise", "recurrent"):
        block.layer.mlstm_cell.backend = backend
        block.zero_grad()
        xr = x.clone().requires_grad_(True)
        y = block(xr, None)[0]
        y.square().sum().backward()
        outs[backend] = y
        # a 1-token sequence never reads the forget gate: no grad in the recurrent form, 0 elsewhere
        grads[backend] = [xr.grad] + [torch.zeros_like(p) if p.grad is None else p.grad
                                      for p in block.parameters()]
    for backend in ("chunkwise", "recurrent"):
        torch.testing.assert_close(outs[backend], outs["parallel"], rtol=1e-4, atol=1e-4)
        for a, b in zip(grads[backend], grads["parallel"]):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


def test_state_carries_across_calls():
    q, k, v, ig, fg = kernel_inputs(2, 90, 8, seed=6, dtype=torch.float64)
    full = cell.mlstm_parallel(q, k, v, ig, fg)
    a = lambda t: t[:, :, :37]  # noqa: E731
    b = lambda t: t[:, :, 37:]  # noqa: E731
    h1, st = cell.mlstm_chunkwise(*map(a, (q, k, v, ig, fg)), chunk_size=10, return_state=True)
    h2 = cell.mlstm_recurrent(*map(b, (q, k, v, ig, fg)), state=st)
    torch.testing.assert_close(torch.cat([h1, h2], 2), full, rtol=1e-9, atol=1e-9)
    h1, st = cell.mlstm_recurrent(*map(a, (q, k, v, ig, fg)), return_state=True)
    h2 = cell.mlstm_chunkwise(*map(b, (q, k, v, ig, fg)), chunk_size=16, state=st)
    torch.testing.assert_close(torch.cat([h1, h2], 2), full, rtol=1e-9, atol=1e-9)


def test_auto_backend_dispatch():
    cell = M.mLSTMLayer(16).mlstm_cell
    assert cell.backend == "auto" and cell.parallel_max_len == 1024
    assert cell.resolve_backend(1024) == "parallel"
    assert cell.resolve_backend(1025) == "chunkwise"
    with pytest.raises(ValueError):
        M.mLSTMLayer(16, backend="fast")


def test_chunkwise_memory_is_linear():
    """No tensor of the chunkwise form grows with L^2 (the parallel form's L x L is absent)."""
    dispatch = pytest.importorskip("torch.utils._python_dispatch")

    class MaxNumel(dispatch.TorchDispatchMode):
        biggest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in (out if isinstance(out, (tuple, list)) else (out,)):
                if isinstance(t, torch.Tensor):
                    MaxNumel.biggest = max(MaxNumel.biggest, t.numel())
            return out

    B, L, DH, cs = 1, 4000, 8, 64
    q, k, v, ig, fg = kernel_inputs(B, L, DH, seed=7, dtype=torch.float32)
    with torch.no_grad(), MaxNumel():
        h = cell.mlstm_chunkwise(q, k, v, ig, fg, chunk_size=cs)
    assert h.shape == (B, NH, L, DH)
    assert MaxNumel.biggest <= B * NH * L * DH  # the output itself; L^2 would be 16e6 per head
    assert torch.isfinite(h).all()


# ---------------------------------------------------------------------------------------------
# Keys, shapes, parameter counts, init
# ---------------------------------------------------------------------------------------------

def expected_shapes(D):
    E = 2 * D
    return {
        "norm.weight": (D,),
        "layer.proj_up.weight": (2 * E, D),
        "layer.q_proj.weight": (E // 4, 4, 4),
        "layer.k_proj.weight": (E // 4, 4, 4),
        "layer.v_proj.weight": (E // 4, 4, 4),
        "layer.conv1d.conv.weight": (E, 1, 4),
        "layer.conv1d.conv.bias": (E,),
        "layer.mlstm_cell.igate.weight": (4, 3 * E),
        "layer.mlstm_cell.igate.bias": (4,),
        "layer.mlstm_cell.fgate.weight": (4, 3 * E),
        "layer.mlstm_cell.fgate.bias": (4,),
        "layer.mlstm_cell.outnorm.weight": (E,),
        "layer.learnable_skip": (E,),
        "layer.proj_down.weight": (D, E),
    }


def test_keys_and_shapes_d192():
    sd = M.mLSTMBlock(192).state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected_shapes(192)
    assert len(sd) == 14  # 12 blocks x 14 + 11 top-level keys = 179 (REFERENCE 5a)


@pytest.mark.parametrize("D", [192, 384, 768])
def test_parameter_count(D):
    block = M.mLSTMBlock(D)
    assert sum(p.numel() for p in block.parameters()) == 6 * D * D + 87 * D + 8
    assert all(p.requires_grad for p in block.parameters())
    assert not list(block.buffers())


def test_encoder_totals_from_block_count():
    """REFERENCE 5a encoder totals = 12 blocks + patch embed (64D + D) + CLS (D)
    + encoder_norm (2D)."""
    for D, total in ((192, 2_867_808), (384, 11_043_936), (768, 43_321_440)):
        assert 12 * (6 * D * D + 87 * D + 8) + 65 * D + D + 2 * D == total


def test_init_facts():
    D, E = 384, 768
    torch.manual_seed(0)
    block = M.mLSTMBlock(D)
    lay, cell = block.layer, block.layer.mlstm_cell
    assert torch.equal(block.norm.weight, torch.zeros(D))
    assert torch.equal(cell.outnorm.weight, torch.zeros(E))
    assert torch.equal(lay.learnable_skip, torch.ones(E))
    assert torch.equal(cell.fgate.weight, torch.zeros(4, 3 * E))
    assert torch.allclose(cell.fgate.bias, torch.tensor([3.0, 4.0, 5.0, 6.0]))
    assert torch.equal(cell.igate.weight, torch.zeros(4, 3 * E))
    small = math.sqrt(2 / (5 * D))
    for w in (lay.proj_up.weight, lay.q_proj.weight, lay.k_proj.weight, lay.v_proj.weight):
        assert abs(w.std().item() / small - 1) < 0.05 and abs(w.mean().item()) < 0.1 * small
    assert abs(lay.proj_down.weight.std().item() / (2 / math.sqrt(D)) - 1) < 0.05
    # conv: PyTorch's default Conv1d init, U(+-1/sqrt(fan_in)) with fan_in = 1 * 4
    cw, cb = lay.conv1d.conv.weight, lay.conv1d.conv.bias
    assert cw.abs().max() <= 0.5 and cb.abs().max() <= 0.5
    assert abs(cw.std().item() / (0.5 / math.sqrt(3)) - 1) < 0.05
    assert abs(cb.std().item() / (0.5 / math.sqrt(3)) - 1) < 0.1
    # igate bias N(0, 0.1): pool 4 x 300 draws
    draws = []
    for _ in range(300):
        cell.reset_parameters()
        draws.append(cell.igate.bias.detach().clone())
    draws = torch.cat(draws)
    assert abs(draws.std().item() / 0.1 - 1) < 0.08 and abs(draws.mean().item()) < 0.01


def test_init_output_is_finite_and_near_identity():
    torch.manual_seed(0)
    block = M.mLSTMBlock(192)
    x = torch.randn(2, 251, 192)
    with torch.no_grad():
        y, _ = block(x, None)
    assert torch.isfinite(y).all()
    assert y.shape == x.shape


# ---------------------------------------------------------------------------------------------
# Block contract and causality
# ---------------------------------------------------------------------------------------------

def test_block_contract():
    block = make_block(16)
    assert M.mLSTMBlock.causal is True
    g = torch.Generator().manual_seed(8)
    h, r = torch.randn(2, 9, 16, generator=g), torch.randn(2, 9, 16, generator=g)
    y1, none = block(h, r)
    y2, _ = block(h + r, None)
    assert none is None
    torch.testing.assert_close(y1, y2)
    assert M.mLSTMBlock.init_encoder(torch.nn.Linear(2, 2), 12) is None
    with pytest.raises(TypeError, match="drop_path"):
        M.mLSTMBlock(16, drop_path=0.1)
    with pytest.raises(TypeError, match="bogus"):
        M.mLSTMBlock(16, bogus=1, zzz=2)


@pytest.mark.parametrize("backend", ["parallel", "chunkwise", "recurrent"])
def test_causality(backend):
    block = make_block(16, seed=9)
    block.layer.mlstm_cell.backend = backend
    block.layer.mlstm_cell.chunk_size = 8
    x = torch.randn(2, 40, 16, generator=torch.Generator().manual_seed(10))
    for pos in (0, 17, 39):
        x2 = x.clone()
        x2[:, pos] += torch.randn(2, 16, generator=torch.Generator().manual_seed(pos))
        with torch.no_grad():
            y, y2 = block(x, None)[0], block(x2, None)[0]
        torch.testing.assert_close(y2[:, :pos], y[:, :pos], rtol=0, atol=1e-6)
        assert (y2[:, pos:] - y[:, pos:]).abs().amax(-1).min() > 1e-4


# ---------------------------------------------------------------------------------------------
# Optional: the xlstm package (not a dependency; skipped when absent)
# ---------------------------------------------------------------------------------------------

def test_matches_xlstm_package():
    try:
        from xlstm.blocks.mlstm.block import mLSTMBlock as XBlock, mLSTMBlockConfig
        from xlstm.blocks.mlstm.layer import mLSTMLayerConfig
    except Exception as exc:  # not installed, or its import fails on this machine
        pytest.skip(f"xlstm not importable: {exc}")
    D, L = 32, 50
    xb = XBlock(mLSTMBlockConfig(
        mlstm=mLSTMLayerConfig(embedding_dim=D, num_heads=4, proj_factor=2.0, conv1d_kernel_size=4,
                               qkv_proj_blocksize=4, context_length=L),
        _num_blocks=1, _block_idx=0))
    block = make_block(D, seed=11)
    renamed = {("xlstm_norm" + k[4:]) if k.startswith("norm.") else ("xlstm" + k[5:]): v
               for k, v in block.state_dict().items()}
    xb.load_state_dict(renamed, strict=True)
    x = torch.randn(2, L, D, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        torch.testing.assert_close(block(x, None)[0], xb(x), rtol=1e-5, atol=1e-5)
