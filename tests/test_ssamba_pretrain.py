"""SSAMBA pretraining as SSAST: cluster masking, mask tokens with positions, the joint
InfoNCE + 10 x MSE objective, the `cpred` head of the released layout, the plateau schedule."""
import csv
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

import hear_ssam
from hear_ssam import FAMILIES, PRESETS, EncoderConfig, PretrainingOptions, SpectrogramEncoder
from hear_ssam.checkpoint import TRAIN_METADATA_KEY
from pretrain.checkpoints import CHECKPOINT
from pretrain.config import TrainConfig, load_config
from pretrain.objectives import (_STARTS_PER_DRAW, MASKINGS, OBJECTIVES, MaskedSpectrogramModel,
                                 cluster_mask, unstructured_mask)
from pretrain.schedules import Plateau, lr_plateau
from pretrain.train import train
from test_pretrain import make_audio
from test_ssamba import released_state

ROOT = Path(__file__).resolve().parents[1]
TINY = {"embed_dim": 32, "depth": 2}
SSAMBA_GRID = (64, 8, "freq-major")  # (n_t, n_f, token order) of 1024 frames x 128 bins in 16 x 16 patches
RATIO = 300 / 512  # SSAMBA masks 300 of 512 patches


def tiny_ssamba(**over):
    torch.manual_seed(0)
    cfg = TrainConfig(preset="ssamba-tiny", encoder_overrides={**TINY, **over})
    return SpectrogramEncoder(cfg.encoder_config(), cfg.pretraining_options())


# ------------------------------------------------------------------ cluster masking

def ssast_gen_maskid_patch(generator, sequence_len, mask_size, p_t_dim):
    """SSAST's gen_maskid_patch as written (ssast/src/models/ast_models.py), with its
    `randrange` calls fed from `generator` in the order cluster_mask draws them."""
    starts = []

    def randrange_start():
        if not starts:
            starts.extend(torch.randint(sequence_len, (_STARTS_PER_DRAW,), generator=generator).tolist())
        return starts.pop(0)

    mask_id = []
    cur_clus = int(torch.randint(3, (1,), generator=generator)) + 3
    while len(list(set(mask_id))) <= mask_size:
        start_id = randrange_start()
        cur_mask = []
        for i in range(0, cur_clus):
            for j in range(0, cur_clus):
                mask_cand = start_id + p_t_dim * i + j
                if mask_cand > 0 and mask_cand < sequence_len:
                    cur_mask.append(mask_cand)
        mask_id = mask_id + cur_mask
    starts.clear()  # cluster_mask drops the rest of a sample's last draw
    return list(set(mask_id))[:mask_size]


def test_cluster_mask_is_ssast_gen_maskid_patch():
    mask = cluster_mask(6, 512, RATIO, torch.Generator().manual_seed(3), "cpu", grid=SSAMBA_GRID)
    assert mask.dtype == torch.bool and mask.sum(1).tolist() == [300] * 6
    g = torch.Generator().manual_seed(3)
    for b in range(6):
        ids = ssast_gen_maskid_patch(g, 512, 300, p_t_dim=64)
        assert sorted(ids) == mask[b].nonzero()[:, 0].tolist(), b
    assert not mask[:, 0].any()  # `mask_cand > 0`: patch 0 is never masked (official quirk)


def test_cluster_mask_is_deterministic_clustered_and_in_the_token_order():
    make = lambda seed, grid=SSAMBA_GRID, n=512: cluster_mask(  # noqa: E731
        32, n, RATIO if n == 512 else 0.5, torch.Generator().manual_seed(seed), "cpu", grid=grid)
    a = make(0)
    assert torch.equal(a, make(0)) and not torch.equal(a, make(1))
    assert len({tuple(m.nonzero()[:, 0].tolist()) for m in a}) == 32  # every sample its own mask

    def neighbours_masked(mask, n_t, n_f):
        """P(a patch's time / frequency neighbour is masked | it is masked), freq-major masks."""
        g = mask.view(-1, n_f, n_t).float()
        along_t = (g[:, :, 1:] * g[:, :, :-1]).sum() / g[:, :, :-1].sum()
        along_f = (g[:, 1:] * g[:, :-1]).sum() / g[:, :-1].sum()
        return along_t.item(), along_f.item()

    chance = 300 / 512
    for p in neighbours_masked(a, 64, 8):
        assert p > chance + 0.2  # about 0.87 and 0.90
    u = unstructured_mask(32, 512, RATIO, torch.Generator().manual_seed(0), "cpu")
    assert u.sum(1).tolist() == [300] * 32
    for p in neighbours_masked(u, 64, 8):
        assert abs(p - chance) < 0.05
    # time-major tokens (SSAM's 50 x 5 grid): the same clusters, put in t * n_f + f order
    fm = make(2, grid=(50, 5, "freq-major"), n=250)
    tm = make(2, grid=(50, 5, "time-major"), n=250)
    assert tm.sum(1).tolist() == [125] * 32
    assert torch.equal(fm.view(32, 5, 50).transpose(1, 2), tm.view(32, 50, 5))
    with pytest.raises(ValueError, match="needs the patch grid"):
        cluster_mask(2, 512, RATIO, torch.Generator(), "cpu")
    assert set(MASKINGS) == {"unstructured", "cluster"}


# ------------------------------------------------------------------ encoder: mask tokens, patches

def test_mask_tokens_carry_position_for_ssamba_not_for_ssam():
    enc = tiny_ssamba().eval()
    assert enc.pretraining.mask_token_position and enc.pretraining.contrastive_head
    mask = torch.zeros(1, 512, dtype=torch.bool)
    mask[0, [3, 100]] = True
    with torch.no_grad():
        tokens = enc.embed(torch.randn(1, 1, 1024, 128), mask)
        for i in (3, 100):  # SSAST: the mask embedding replaces the patch, then positions are added
            torch.testing.assert_close(tokens[0, 1 + i], enc.mask_token[0, 0] + enc.pos_embed[0, 1 + i],
                                       rtol=0, atol=0)
    assert not torch.equal(tokens[0, 4], tokens[0, 101])
    ssam = SpectrogramEncoder(EncoderConfig(embed_dim=48, depth=1)).eval()
    assert not ssam.pretraining.mask_token_position and not hasattr(ssam, "cpred")
    mask = torch.zeros(1, 250, dtype=torch.bool)
    mask[0, [3, 100]] = True
    tokens = ssam.embed(torch.randn(1, 1, 200, 80), mask)
    assert torch.equal(tokens[0, 4], ssam.mask_token[0, 0]) and torch.equal(tokens[0, 4], tokens[0, 101])
    # without a mask both orders are the same forward
    spec = torch.randn(1, 1, 1024, 128)
    import dataclasses
    other = SpectrogramEncoder(enc.cfg, dataclasses.replace(enc.pretraining, mask_token_position=False))
    other.load_state_dict(enc.state_dict())
    torch.testing.assert_close(other.embed(spec), enc.embed(spec), rtol=0, atol=0)


def test_patches_are_ssasts_unfold_and_unpatchify_inverts_every_layout():
    enc = tiny_ssamba()
    spec = torch.randn(2, 1, 1024, 128)
    unfold = F.unfold(spec.transpose(2, 3), kernel_size=(16, 16), stride=(16, 16)).transpose(1, 2)
    torch.testing.assert_close(enc.patchify(spec), unfold, rtol=0, atol=0)  # [B, 512, 256], (f, t) inside
    for tokens in ("time-major", "freq-major"):
        for pixels in ("time-major", "freq-major"):
            e = SpectrogramEncoder(EncoderConfig(embed_dim=16, depth=1, patch_order=tokens),
                                   PretrainingOptions(patch_pixel_order=pixels))
            x = torch.randn(2, 1, 200, 80)
            assert torch.equal(e.unpatchify(e.patchify(x)), x)
    ssam_dict = PretrainingOptions().to_dict()
    assert PretrainingOptions(**ssam_dict) == PretrainingOptions()
    older = {k: v for k, v in ssam_dict.items() if k not in ("mask_token_position", "contrastive_head",
                                                             "patch_pixel_order")}
    assert PretrainingOptions(**older) == PretrainingOptions()  # configs written before these fields
    assert EncoderConfig(**PRESETS["ssamba-base"].to_dict()) == PRESETS["ssamba-base"]
    ssamba = FAMILIES["ssamba"].pretraining_options()
    assert PretrainingOptions(**ssamba.to_dict()) == ssamba


def test_released_cpredlayer_maps_to_cpred_and_loads_strictly(tmp_path):
    state = released_state()
    path = tmp_path / "ssamba_tiny_400.pth"
    torch.save(state, path)
    model = hear_ssam.load_model(str(path))
    sd = model.encoder.state_dict()
    plain = {k[len("module."):]: v for k, v in state.items()}
    for k in ("0.weight", "0.bias", "2.weight", "2.bias"):
        assert torch.equal(sd["cpred." + k], plain["cpredlayer." + k])
        assert torch.equal(sd["pred." + k], plain["gpredlayer." + k])
    assert model.config["provenance"]["set_aside_keys"] == ["p_input_fdim", "p_input_tdim", "v.head.bias",
                                                            "v.head.weight"]
    assert isinstance(model.encoder.cpred[1], torch.nn.ReLU)
    assert model.encoder.pretraining == FAMILIES["ssamba"].pretraining_options()
    assert model.config["pretraining"] == FAMILIES["ssamba"].pretraining


# ------------------------------------------------------------------ the joint objective

def ssast_forward(enc, spec, mask_index):
    """SSAST's mpc / mpg trunk, restated: patch embed, masked patches := mask_embed, CLS, + all
    positions, the blocks and both final norms. -> tokens [B, 513, D]."""
    x = enc.patch_embed(spec)
    mask_dense = torch.ones_like(x)
    for i in range(x.shape[0]):
        mask_dense[i, mask_index[i], :] = 0
    x = x * mask_dense + (1 - mask_dense) * enc.mask_token.expand(x.shape[0], x.shape[1], -1)
    x = torch.cat([enc.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + enc.pos_embed
    return enc.forward_blocks(x)


def ssast_joint_reference(enc, spec, mask_c, mask_g):
    """SSAST's pretrain_joint: mpc (own mask) + 10 x mpg (own mask), as its loops write them."""
    B = spec.shape[0]
    inp = F.unfold(spec.transpose(2, 3), kernel_size=(16, 16), stride=(16, 16)).transpose(1, 2)
    idx_c = [m.nonzero()[:, 0] for m in mask_c]  # SSAMBA's tokens are freq-major, as SSAST's
    M = len(idx_c[0])
    x = ssast_forward(enc, spec, idx_c)
    nce, correct = torch.tensor(0.0), torch.tensor(0.0)
    for i in range(B):
        encode_samples = inp[i, idx_c[i], :]
        pred = enc.cpred(x[i, idx_c[i] + 1, :])
        total = torch.mm(encode_samples, pred.T)
        correct += torch.sum(torch.eq(torch.argmax(torch.softmax(total, dim=-1), dim=0), torch.arange(M)))
        nce += torch.sum(torch.diag(torch.log_softmax(total, dim=-1)))
    acc, nce = correct / (B * M), nce / (-1.0 * B * M)
    idx_g = [m.nonzero()[:, 0] for m in mask_g]
    x = ssast_forward(enc, spec, idx_g)
    pred = torch.stack([enc.pred(x[i, idx_g[i] + 1, :]) for i in range(B)])
    target = torch.stack([inp[i, idx_g[i], :] for i in range(B)])
    mse = torch.mean((pred - target) ** 2)
    return nce + 10 * mse, nce, mse, acc


def test_joint_loss_is_ssasts_mpc_plus_ten_mpg():
    enc = tiny_ssamba(drop_path_rate=0.0)  # the loss formula, without stochastic depth's draws
    spec = torch.randn(3, 1, 1024, 128)
    g = torch.Generator().manual_seed(5)
    m1, m2 = (cluster_mask(3, 512, RATIO, g, "cpu", grid=SSAMBA_GRID) for _ in range(2))
    model = MaskedSpectrogramModel(enc, "ssast_joint")
    loss, pred = model(spec, torch.stack([m1, m2]))
    want, nce, mse, acc = ssast_joint_reference(enc, spec, m1, m2)
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert model.metrics["nce"].item() == pytest.approx(nce.item(), rel=1e-5)
    assert model.metrics["mse"].item() == pytest.approx(mse.item(), rel=1e-5)
    assert model.metrics["acc"].item() == pytest.approx(acc.item(), abs=1e-6)
    assert pred.shape == (3, 512, 256)
    # gradients reach both heads, the mask token and the positions
    loss.backward()
    for name in ("cpred.0.weight", "pred.2.weight", "mask_token", "pos_embed", "blocks.1.mixer.A_b_log"):
        assert dict(enc.named_parameters())[name].grad.abs().sum() > 0, name
    # the one-pass variant: both heads on one forward with one mask
    shared = MaskedSpectrogramModel(enc, "ssast_joint_shared")
    loss1, _ = shared(spec, m1)
    want1, *_ = ssast_joint_reference(enc, spec, m1, m1)
    assert loss1.item() == pytest.approx(want1.item(), rel=1e-5)
    # uneven mask counts (not produced by the maskings, but allowed) take the per-sample path
    m3 = m1.clone()
    m3[0, m3[0].nonzero()[0, 0]] = False
    l3, _ = shared(spec, m3)
    assert math.isfinite(l3.item())


def test_joint_objective_needs_the_contrastive_head_and_the_config_checks():
    ssam = SpectrogramEncoder(EncoderConfig(embed_dim=16, depth=1))
    with pytest.raises(ValueError, match=r"PretrainingOptions\(contrastive_head=True\) adds `cpred`"):
        MaskedSpectrogramModel(ssam, "ssast_joint")
    with pytest.raises(ValueError, match=r"\['ssast_joint', 'ssast_joint_shared'\]"):
        load_config(None, ["objective=infonce"])
    with pytest.raises(ValueError, match="plateau_metric 'accuracy' needs"):
        load_config(None, ["plateau_metric=accuracy"])
    with pytest.raises(ValueError, match="schedule must be"):
        load_config(None, ["schedule=step"])
    assert set(OBJECTIVES) == {"mse_all", "mse_masked", "ssast_joint", "ssast_joint_shared"}


# ------------------------------------------------------------------ schedule

def test_plateau_is_torchs_reduce_lr_on_plateau():
    metrics = [1.0, 0.9, 0.95, 0.91, 0.9, 0.89999, 0.7, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.6, 0.6, 0.6, 0.6]
    # peak 3e-8: torch's eps stops the halving below a 1e-8 change
    for mode, sign, peak, patience, final in (("min", 1, 1e-4, 2, 1 / 16), ("max", -1, 1e-4, 2, 1 / 4),
                                              ("min", 1, 3e-8, 0, 1 / 2)):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
        ref = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=mode, factor=0.5, patience=patience)
        ours = Plateau(peak, mode=mode, factor=0.5, patience=patience)
        for m in metrics:
            ref.step(sign * m)
            ours.observe(sign * m)
            ours.observe(sign * m)  # the mean of an interval
            ours.observe(float("nan"))  # left out
            ours.step()
            assert peak * ours.scale == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12), (mode, m)
        assert ours.scale == final  # (3e-8: the eps rule stops at 1.5e-8)
    # intervals without a finite value (an fp16 overflow run) count as no improvement, first or later
    for mode in ("min", "max"):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
        ref = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=mode, factor=0.5, patience=1)
        ours = Plateau(1e-4, mode=mode, factor=0.5, patience=1)
        for m in [float("nan"), float("nan"), 0.5, float("nan"), 0.5, 0.4, 0.3, float("nan"), float("nan")]:
            ref.step(m)
            ours.observe(m)
            ours.step()
            assert 1e-4 * ours.scale == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12), (mode, m)
    assert lr_plateau(0, 1000, 1e-4, 1.0) == pytest.approx(1e-7)
    assert lr_plateau(999, 1000, 1e-4, 1.0) == pytest.approx(1e-4)
    assert lr_plateau(5000, 1000, 1e-4, 0.25) == pytest.approx(2.5e-5)


def test_ssamba_configs_follow_the_paper():
    for size in ("tiny", "small", "base"):
        cfg = load_config(ROOT / "pretrain" / "configs" / f"ssamba_{size}.yaml")
        assert cfg.preset == f"ssamba-{size}" and cfg.global_batch == 64 and cfg.epochs == 10
        assert cfg.lr == pytest.approx(1e-4) and cfg.weight_decay == 5e-8 and cfg.betas == (0.95, 0.999)
        assert cfg.warmup_steps == 1000 and cfg.schedule == "plateau" and cfg.plateau_every == 4000
        assert cfg.plateau_patience == 2 and cfg.plateau_factor == 0.5 and cfg.plateau_metric == "accuracy"
        assert cfg.masking == "cluster" and cfg.objective == "ssast_joint" and cfg.precision == "fp32"
        assert cfg.short_files == "pad"  # SSAST / SSAMBA's loaders zero-pad short clips
        assert 512 - int(512 * (1 - cfg.mask_ratio)) == 300
        assert cfg.encoder_config() == PRESETS[cfg.preset]
        assert cfg.pretraining_options() == FAMILIES["ssamba"].pretraining_options()
    cpu = load_config(ROOT / "pretrain" / "configs" / "ssamba_tiny_cpu.yaml")
    # the others' first-stage budget in hours of audio: 400 x 32 crops of 10.24 s = 36.4 h (theirs: 35.6 h)
    assert (cpu.global_batch, cpu.max_steps, cpu.length_weight_cap_s) == (32, 400, 10)
    assert cpu.max_steps * cpu.global_batch * cpu.encoder_config().crop_frames / 100 / 3600 == pytest.approx(36.4, abs=0.05)
    assert cpu.lr == pytest.approx(3e-4) and cpu.objective == "ssast_joint" and cpu.masking == "cluster"
    assert cpu.short_files == "pad"


# ------------------------------------------------------------------ training, exact resume

def rows(run):
    with open(run / "metrics.csv") as f:
        return [(int(r["step"]), float(r["loss"]), float(r["lr"]), float(r["acc"])) for r in csv.DictReader(f)]


def plateau_state(run):
    with safe_open(str(run / CHECKPOINT), framework="pt") as f:
        return json.loads(f.metadata()[TRAIN_METADATA_KEY])["plateau"]


def test_ssamba_trains_and_resumes_exactly_with_the_plateau_schedule(tmp_path):
    data = make_audio(tmp_path / "audio", n=6)
    cfg = TrainConfig(preset="ssamba-tiny", encoder_overrides=TINY, global_batch=4, micro_batch=2,
                      epoch_clips=8, max_steps=4, warmup_steps=1, base_lr=0.1, weight_decay=5e-8,
                      betas=(0.95, 0.999), schedule="plateau", plateau_every=1, plateau_patience=0,
                      masking="cluster", mask_ratio=RATIO, objective="ssast_joint", num_workers=0,
                      log_every=1, ckpt_every=1, plot_every=0, precision="fp32")
    torch.set_num_threads(1)
    try:
        train(cfg, str(data), tmp_path / "straight")
        import pretrain.train as T
        calls = {"n": 0}
        real = T.save_training_checkpoint

        def save_then_die(*a, **k):
            real(*a, **k)
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt
        T.save_training_checkpoint = save_then_die
        try:
            with pytest.raises(KeyboardInterrupt):
                train(cfg, str(data), tmp_path / "resumed")
        finally:
            T.save_training_checkpoint = real
        assert plateau_state(tmp_path / "resumed")["checks"] == 2
        train(cfg, str(data), tmp_path / "resumed", resume=True)
    finally:
        torch.set_num_threads(2)
    straight, resumed = rows(tmp_path / "straight"), rows(tmp_path / "resumed")
    assert [r[0] for r in straight] == [r[0] for r in resumed] == [1, 2, 3, 4]
    losses = [r[1] for r in straight]
    assert all(math.isfinite(v) for v in losses) and min(losses[1:]) < losses[0]
    assert straight[-1][2] < straight[0][2]  # the plateau halved the lr: its state had to survive the resume
    for a, b in zip(straight, resumed):
        assert a[1] == pytest.approx(b[1], rel=1e-6, abs=1e-7) and a[2] == b[2] and a[3] == pytest.approx(b[3])
    assert plateau_state(tmp_path / "straight") == plateau_state(tmp_path / "resumed")
    assert plateau_state(tmp_path / "straight")["checks"] == 4
    model = hear_ssam.load_model(str(tmp_path / "resumed" / "model.safetensors"))
    assert model.config["family"] == "ssamba" and model.config["provenance"]["objective"] == "ssast_joint"
    assert "cpred.0.weight" in model.encoder.state_dict()
