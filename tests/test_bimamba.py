"""SSAMBA's building blocks: the bimamba v2 mixer and block (Vim's names), and the Kaldi fbank frontend.

The mixer is checked against mamba_ssm's own `mamba_inner_ref` run on both directions by hand
(where mamba-ssm is installed) and, always, against a per-step restatement of mamba_ssm's
non-fused Mamba path and SSAMBA's released bimamba v2.
"""
import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchaudio

from hear_ssam.frontend import (FRONTENDS, SSAMBA_FBANK, FrontendConfig, KaldiFbankFrontend,
                                build_frontend)
from hear_ssam.modules.bimamba import BiMamba, BiMambaBlock
from hear_ssam.ops.selective_scan import SCAN_ENV

FORWARD_SET = ("conv1d", "x_proj", "dt_proj", "A_log", "D")
BACKWARD_SET = ("conv1d_b", "x_proj_b", "dt_proj_b", "A_b_log", "D_b")


def randomised(module, seed=0):
    """Every parameter redrawn (non-init values: biases, A, D all generic), in place."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith(("A_log", "A_b_log")):
                p.copy_(torch.rand(p.shape, generator=g) * 2 - 1)  # A in -[0.37, 2.7]
            elif name.endswith(("dt_proj.bias", "dt_proj_b.bias")):
                p.copy_(torch.rand(p.shape, generator=g) * 3 - 4)  # softplus -> [0.02, 0.3]
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return module


def seq(b=2, l=23, d=32, seed=1):
    return torch.randn(b, l, d, generator=torch.Generator().manual_seed(seed))


def grads(module, u):
    return {**{n: p.grad for n, p in module.named_parameters()}, "input": u.grad}


def assert_close_dicts(got, want, rtol=1e-4, scaled_atol=1e-5):
    """Each tensor within rtol, and within scaled_atol of its own largest magnitude (the scans run
    in fp32 whatever the input dtype, and random weights give gradients of 1e3..1e4)."""
    assert got.keys() == want.keys()
    for k in want:
        atol = scaled_atol * want[k].abs().max().item()
        torch.testing.assert_close(got[k], want[k], rtol=rtol, atol=atol, msg=lambda m: f"{k}: {m}")


# (a) against mamba_ssm's own reference, both directions by hand ----------------------------------

@pytest.mark.parametrize("backend", [None, "reference"])
def test_mixer_matches_mamba_inner_ref_on_both_directions(mamba_ref, backend, monkeypatch):
    if backend:
        monkeypatch.setenv(SCAN_ENV, backend)
    else:
        monkeypatch.delenv(SCAN_ENV, raising=False)
    torch.manual_seed(0)
    ours = randomised(BiMamba(32, d_state=8, d_conv=4, expand=2))
    ref = copy.deepcopy(ours)
    u = seq().requires_grad_()
    u_ref = u.detach().clone().requires_grad_()

    out = ours(u)
    E = ref.d_inner
    eye = torch.eye(E)  # mamba_inner_ref applies out_proj: make it the identity, keep y [B, L, E]
    xz = (u_ref @ ref.in_proj.weight.t()).transpose(1, 2)  # [B, 2E, L]

    def direction(xz, conv1d, x_proj, dt_proj, A_log, D):
        return mamba_ref.mamba_inner_ref(xz, conv1d.weight, conv1d.bias, x_proj.weight, dt_proj.weight,
                                         eye, None, -torch.exp(A_log.float()), D=D.float(),
                                         delta_bias=dt_proj.bias.float(), delta_softplus=True)

    y_f = direction(xz, ref.conv1d, ref.x_proj, ref.dt_proj, ref.A_log, ref.D)
    y_b = direction(xz.flip(-1), ref.conv1d_b, ref.x_proj_b, ref.dt_proj_b, ref.A_b_log, ref.D_b)
    want = F.linear((y_f + y_b.flip(1)) / 2, ref.out_proj.weight)  # Vim: if_devide_out=True

    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    (out * w).sum().backward()
    (want * w).sum().backward()
    assert_close_dicts(grads(ours, u), grads(ref, u_ref))
    # The backward direction really contributes (Vim's non-fused path would drop it).
    backward = {n: p for n, p in ours.named_parameters() if n.split(".")[0] in BACKWARD_SET}
    assert len(backward) == 7 and all(p.grad.abs().sum() > 0 for p in backward.values())


def test_forward_set_is_mamba_ssm_mamba(mamba_ref):
    """The forward half has mamba_ssm Mamba's names, shapes and init laws exactly."""
    theirs = mamba_ref.Mamba(d_model=48, d_state=16, d_conv=4, expand=2)
    ours = BiMamba(48)
    fwd = {k: v.shape for k, v in ours.state_dict().items() if not any(k.startswith(b) for b in BACKWARD_SET)}
    assert fwd == {k: v.shape for k, v in theirs.state_dict().items()}
    torch.testing.assert_close(ours.A_log, theirs.A_log)
    torch.testing.assert_close(ours.A_b_log, theirs.A_log)


# (b) against a plain per-step restatement (no mamba-ssm needed) ----------------------------------

class StepBiMamba(nn.Module):
    """SSAMBA's released bimamba v2 (Vim's mixer) from the maths, one time step at a time, Vim's parameter names."""

    def __init__(self, d_model, d_state, d_conv=4, expand=2):
        super().__init__()
        E, R = expand * d_model, math.ceil(d_model / 16)
        self.R, self.N = R, d_state
        self.in_proj = nn.Linear(d_model, 2 * E, bias=False)
        self.out_proj = nn.Linear(E, d_model, bias=False)
        for s in ("", "_b"):
            self.add_module(f"conv1d{s}", nn.Conv1d(E, E, d_conv, groups=E, padding=d_conv - 1))
            self.add_module(f"x_proj{s}", nn.Linear(E, R + 2 * d_state, bias=False))
            self.add_module(f"dt_proj{s}", nn.Linear(R, E))
            self.register_parameter(f"A{s}_log", nn.Parameter(torch.zeros(E, d_state)))
            self.register_parameter(f"D{s}", nn.Parameter(torch.zeros(E)))

    def ssm(self, x, z, s):
        """x, z [B, L, E] in this direction's time order -> gated y [B, L, E]."""
        conv, xp, dtp = (getattr(self, n + s) for n in ("conv1d", "x_proj", "dt_proj"))
        A, Dskip = -torch.exp(getattr(self, f"A{s}_log")), getattr(self, f"D{s}")
        L, K = x.shape[1], conv.weight.shape[-1]
        xpad = F.pad(x, (0, 0, K - 1, 0))  # causal: K - 1 zeros before the first step
        h = x.new_zeros(x.shape[0], x.shape[2], self.N)
        ys = []
        for t in range(L):
            window = xpad[:, t:t + K]  # [B, K, E], oldest first
            xc = F.silu((window * conv.weight[:, 0].t()).sum(1) + conv.bias)
            dt, Bt, Ct = xp(xc).split([self.R, self.N, self.N], dim=-1)
            delta = F.softplus(dtp(dt))  # [B, E]
            h = torch.exp(delta[..., None] * A) * h + (delta * xc)[..., None] * Bt[:, None, :]
            y = (h * Ct[:, None, :]).sum(-1) + Dskip * xc
            ys.append(y * F.silu(z[:, t]))
        return torch.stack(ys, dim=1)

    def forward(self, u):
        x, z = self.in_proj(u).chunk(2, dim=-1)
        y_f = self.ssm(x, z, "")
        y_b = self.ssm(x.flip(1), z.flip(1), "_b").flip(1)
        return self.out_proj((y_f + y_b) / 2)


def test_mixer_matches_a_per_step_restatement():
    torch.manual_seed(0)
    ours = randomised(BiMamba(32, d_state=8), seed=3)
    step = StepBiMamba(32, d_state=8)
    step.load_state_dict(ours.state_dict())  # strict: the same names and shapes
    u = seq(l=17, seed=4).requires_grad_()
    u2 = u.detach().clone().requires_grad_()
    out, want = ours(u), step(u2)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    out.square().sum().backward()
    want.square().sum().backward()
    assert_close_dicts(grads(ours, u), grads(step, u2))


def test_mixer_is_bidirectional_and_flip_equivariant():
    """Changing the last token moves the first output; swapping the two parameter sets and
    flipping the input flips the output."""
    torch.manual_seed(0)
    m = randomised(BiMamba(32, d_state=8), seed=5).eval()
    u = seq(l=12, seed=6)
    v = u.clone()
    v[:, -1] += 1.0
    with torch.no_grad():
        assert (m(v)[:, 0] - m(u)[:, 0]).abs().max() > 1e-4
        swapped = copy.deepcopy(m)
        sd = m.state_dict()
        swapped.load_state_dict({k: sd[_swap(k)] for k in sd})
        torch.testing.assert_close(swapped(u.flip(1)), m(u).flip(1), rtol=1e-5, atol=1e-5)


def _swap(key):
    for f, b in zip(FORWARD_SET, BACKWARD_SET):
        if key.split(".")[0] == f:
            return key.replace(f, b, 1)
        if key.split(".")[0] == b:
            return key.replace(b, f, 1)
    return key


# (c) names, shapes, counts, init ---------------------------------------------------------------

def block_param_count(D, d_state=16, d_conv=4, expand=2):
    """norm 2D + in_proj 2E*D + out_proj D*E + 2 x [conv E*(K+1) + x_proj (R+2N)*E + dt_proj (R+1)*E
    + A N*E + D E], E = expand*D, R = ceil(D/16)."""
    E, R, N, K = expand * D, math.ceil(D / 16), d_state, d_conv
    return 2 * D + 3 * E * D + 2 * (E * (K + 1) + (R + 2 * N) * E + (R + 1) * E + N * E + E)


def test_block_keys_and_shapes_for_d192():
    blk = BiMambaBlock(192)
    shapes = {k: tuple(v.shape) for k, v in blk.state_dict().items()}
    assert shapes == {
        "norm.weight": (192,), "norm.bias": (192,),
        "mixer.in_proj.weight": (768, 192),
        "mixer.A_log": (384, 16), "mixer.D": (384,),
        "mixer.conv1d.weight": (384, 1, 4), "mixer.conv1d.bias": (384,),
        "mixer.x_proj.weight": (44, 384),
        "mixer.dt_proj.weight": (384, 12), "mixer.dt_proj.bias": (384,),
        "mixer.A_b_log": (384, 16), "mixer.D_b": (384,),
        "mixer.conv1d_b.weight": (384, 1, 4), "mixer.conv1d_b.bias": (384,),
        "mixer.x_proj_b.weight": (44, 384),
        "mixer.dt_proj_b.weight": (384, 12), "mixer.dt_proj_b.bias": (384,),
        "mixer.out_proj.weight": (192, 384),
    }
    n = sum(p.numel() for p in blk.parameters())
    assert n == block_param_count(192) == 282_240
    # D a multiple of 16: 6.5 D^2 + 222 D
    for D in (192, 384, 768):
        assert sum(p.numel() for p in BiMambaBlock(D).parameters()) == 6.5 * D * D + 222 * D
    assert isinstance(blk.norm, nn.LayerNorm) and blk.norm.eps == 1e-5 and blk.norm.bias is not None


def test_init_follows_vim():
    torch.manual_seed(0)
    m = BiMamba(64, d_state=16)
    N = 16
    for name in ("A_log", "A_b_log"):
        torch.testing.assert_close(getattr(m, name), torch.log(torch.arange(1, N + 1.0)).repeat(m.d_inner, 1))
        assert getattr(m, name)._no_weight_decay
    for name in ("D", "D_b"):
        assert torch.equal(getattr(m, name), torch.ones(m.d_inner)) and getattr(m, name)._no_weight_decay
    dt = F.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-4 - 1e-9 and dt.max() <= 0.1 + 1e-6 and m.dt_proj.bias._no_reinit
    bound = m.dt_rank ** -0.5
    for lin in (m.dt_proj, m.dt_proj_b):
        assert lin.weight.abs().max() <= bound
    # Vim leaves dt_proj_b to PyTorch's default and unprotected: the model-wide init zeroes its bias.
    assert not getattr(m.dt_proj_b.bias, "_no_reinit", False)
    enc = nn.Module()
    enc.blocks = nn.ModuleList(BiMambaBlock(64) for _ in range(4))
    enc.pred = nn.Linear(64, 8)
    pred_bias = enc.pred.bias.detach().clone()
    torch.manual_seed(1)
    BiMambaBlock.init_encoder(enc, 4)
    for b in enc.blocks:
        assert torch.equal(b.mixer.dt_proj_b.bias, torch.zeros(128))
        assert F.softplus(b.mixer.dt_proj.bias).max() <= 0.1 + 1e-6  # kept
        assert b.mixer.out_proj.weight.abs().max() <= (1 / math.sqrt(128)) / math.sqrt(4) + 1e-7
    assert torch.equal(enc.pred.bias, pred_bias)  # SSAMBA's heads are outside Vim's init
    # The symmetric option gives the backward set the forward set's Mamba init, kept by init_encoder.
    sym = BiMambaBlock(64, dt_b_init="mamba")
    BiMambaBlock.init_encoder(sym, 4)
    dtb = F.softplus(sym.mixer.dt_proj_b.bias)
    assert dtb.min() >= 1e-4 - 1e-9 and dtb.max() <= 0.1 + 1e-6
    with pytest.raises(ValueError, match="dt_b_init"):
        BiMamba(32, dt_b_init="zeros")


# (e) the block contract ------------------------------------------------------------------------

def test_block_contract():
    assert BiMambaBlock.causal is False
    with pytest.raises(TypeError, match="num_heads"):
        BiMambaBlock(32, num_heads=4)
    torch.manual_seed(0)
    blk = randomised(BiMambaBlock(32, d_state=8), seed=7)
    h, r = seq(l=9, seed=8), seq(l=9, seed=9)
    # residual None: the stream is hidden itself
    out, res = blk(h, None)
    assert res.dtype == torch.float32 and torch.equal(res, h)
    torch.testing.assert_close(out, blk.mixer(F.layer_norm(h, (32,), blk.norm.weight, blk.norm.bias, 1e-5)))
    # residual given: residual += hidden, hidden = mixer(norm(residual))
    out, res = blk(h, r)
    torch.testing.assert_close(res, h + r)
    torch.testing.assert_close(out, blk.mixer(blk.norm(h + r)))
    # bf16 hidden: the residual is carried in fp32
    out, res = blk(h.bfloat16(), r)
    assert res.dtype == torch.float32


# (d) the Kaldi fbank frontend and the config ---------------------------------------------------

def chirp_and_noise(seconds=1.3, seed=0):
    sr = 16000
    t = torch.arange(int(seconds * sr)) / sr
    f0, f1 = 100.0, 6000.0
    phase = 2 * math.pi * (f0 * t + (f1 - f0) / (2 * seconds) * t ** 2)
    g = torch.Generator().manual_seed(seed)
    return (0.5 * torch.sin(phase) + 0.05 * torch.randn(t.shape, generator=g) + 0.01).float()


def test_kaldi_fbank_equals_ssambas_call():
    wave = chirp_and_noise()
    fe = build_frontend(SSAMBA_FBANK)
    assert isinstance(fe, KaldiFbankFrontend) and FRONTENDS["kaldi_fbank"] is KaldiFbankFrontend
    got = fe(wave.unsqueeze(0))
    # SSAMBA / SSAST dataloader: waveform - mean, kaldi.fbank with these arguments (others default),
    # then (fbank - dataset_mean) / (dataset_std * 2) with mean -4.2677393, std 4.5689974.
    w = wave.unsqueeze(0)
    fbank = torchaudio.compliance.kaldi.fbank(w - w.mean(), htk_compat=True, sample_frequency=16000,
                                              use_energy=False, window_type="hanning", num_mel_bins=128,
                                              dither=0.0, frame_shift=10)
    want = (fbank - (-4.2677393)) / (4.5689974 * 2)
    T = 1 + (wave.numel() - 400) // 160
    assert got.shape == (1, 1, T, 128) and fbank.shape == (T, 128)
    torch.testing.assert_close(got[0, 0], want, rtol=0, atol=0)
    # features are the un-normalised fbank, per clip of a batch
    batch = torch.stack([wave, chirp_and_noise(seed=1)])
    feats = fe.features(batch)
    assert feats.shape == (2, T, 128)
    torch.testing.assert_close(feats[0], fbank, rtol=0, atol=0)
    assert fe.min_samples == 400 and fe.features(batch[:, :400]).shape == (2, 1, 128)
    with pytest.raises(ValueError, match="at least 400 samples"):
        fe.features(batch[:, :399])


def test_frontend_config_old_dicts_and_round_trips():
    default = FrontendConfig()
    old_keys = ["kind", "sample_rate", "n_fft", "win_length", "hop_length", "f_min", "f_max", "n_mels",
                "log_offset", "normalization"]
    assert list(default.to_dict()) == old_keys  # today's configs write exactly what they wrote
    assert FrontendConfig.from_dict(default.to_dict()) == default
    old = {"kind": "logmel", "sample_rate": 16000, "n_fft": 400, "win_length": 400, "hop_length": 160,
           "f_min": 50.0, "f_max": 8000.0, "n_mels": 80, "log_offset": 1.1920928955078125e-07,
           "normalization": "per_clip"}
    assert FrontendConfig.from_dict(old) == default
    assert FrontendConfig.from_dict(SSAMBA_FBANK.to_dict()) == SSAMBA_FBANK
    d = SSAMBA_FBANK.to_dict()
    assert (d["norm_mean"], d["norm_std"], d["n_mels"], d["f_min"]) == (-4.2677393, 4.5689974, 128, 20.0)
    # dataset normalisation works for the log-mel kind too
    lm = FrontendConfig(normalization="dataset", norm_mean=-5.0, norm_std=2.0)
    x = torch.randn(1, 10, 80)
    torch.testing.assert_close(build_frontend(lm).normalise(x), ((x + 5.0) / 4.0).unsqueeze(1))


@pytest.mark.parametrize("kwargs, match", [
    (dict(normalization="dataset"), "needs norm_mean"),
    (dict(normalization="dataset", norm_mean=0.0, norm_std=0.0), "positive norm_std"),
    (dict(norm_mean=1.0), "takes none"),
    (dict(kind="kaldi_fbank"), "n_fft must be the window rounded up"),
    (dict(kind="kaldi_fbank", n_fft=512, f_max=9000.0), "f_max"),
    (dict(kind="kaldi_fbank", n_fft=512, log_offset=1e-6), "log floor"),
])
def test_frontend_config_refuses_what_would_not_run(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FrontendConfig(**kwargs)
