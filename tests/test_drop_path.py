"""Stochastic depth (drop path) as Vim / SSAMBA train with it: per-sample drops of each mixer's
output where it joins the residual, at rates linspace(0, drop_path_rate, depth); identity in
eval mode, so embeddings do not change; configs stored before the field load with 0."""
import dataclasses
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import hear_ssam
from hear_ssam import PRESETS, EncoderConfig, PretrainingOptions, SpectrogramEncoder, preset_encoder
from hear_ssam.checkpoint import METADATA_KEY, parse_config
from hear_ssam.presets import family_of_preset
from hear_ssam.modules import BLOCKS, BiMamba, DropPath, drop_path
from official_reference import OfficialSSAMBA
from test_ssamba import released_state

# A small bidirectional encoder of SSAMBA's kind (bimamba blocks in flipped pairs), cheap
# enough to push thousands of samples through: 3 tokens (CLS + 2) of 8 channels, 80 mel bins as
# SSAM's frontend (so that it can be saved as a plugin file).
SMALL = dict(block="bimamba", block_options={"d_state": 4, "d_conv": 4, "expand": 2}, traversal="flipped_pairs",
             embed_dim=8, crop_frames=8, n_mels=80, patch_time=4, patch_freq=80, norm_eps=1e-5)


def vim_rates(rate, depth):
    """Vim's dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth)]."""
    return [x.item() for x in torch.linspace(0, rate, depth)]


def test_drop_path_drops_whole_samples_and_rescales_the_rest():
    x = torch.randn(4000, 3, 5)
    assert drop_path(x, 0.25, training=False) is x and drop_path(x, 0.0, training=True) is x
    g = torch.Generator().manual_seed(0)
    y = drop_path(x, 0.25, training=True, generator=g)
    dropped = (y == 0).flatten(1).all(1)
    kept = ~dropped
    torch.testing.assert_close(y[kept], x[kept] / 0.75, rtol=1e-6, atol=0)  # whole samples, scaled
    assert abs(dropped.float().mean().item() - 0.25) < 0.03  # binomial sd 0.007
    again = drop_path(x, 0.25, training=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, y)  # the draws come from the generator alone
    m = DropPath(0.25)
    assert list(m.parameters()) == [] and m.state_dict() == {}
    assert m.eval()(x) is x
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        DropPath(1.0)


def test_config_field_defaults_and_checks():
    for name in PRESETS:
        rate = family_of_preset(name).pretraining_options().drop_path_rate
        assert rate == (0.1 if name.startswith("ssamba") else 0.0), name
    with pytest.raises(ValueError, match=r"drop_path_rate must be in \[0, 1\)"):
        PretrainingOptions(drop_path_rate=1.0)
    with pytest.raises(ValueError, match="not for 'vit'"):
        SpectrogramEncoder(PRESETS["ssast-tiny"], PretrainingOptions(drop_path_rate=0.1))
    with pytest.raises(ValueError, match="not for 'mlstm'"):
        SpectrogramEncoder(PRESETS["axlstm-tiny"], PretrainingOptions(drop_path_rate=0.1))
    assert {k for k, b in BLOCKS.items() if b.supports_drop_path} == {"mamba", "bimamba"}


@pytest.mark.parametrize("preset", ["ssamba-tiny", "ssam-tiny"])
def test_per_layer_rates_follow_vims_schedule(preset):
    enc = preset_encoder(preset)
    cfg, rate = enc.cfg, enc.pretraining.drop_path_rate
    dpr = vim_rates(rate, cfg.depth)
    # Block i drops the output of mixer i - 1 (Vim's inter_dpr = [0] + dpr), the encoder the last
    # mixer's: mixer j's output is dropped at dpr[j].
    assert [b.drop_path.p for b in enc.blocks] == [0.0] + dpr[:-1]
    assert enc.drop_path.p == rate
    assert [b.drop_path.p for b in enc.blocks[1:]] + [enc.drop_path.p] == pytest.approx(dpr, abs=1e-7)
    if preset == "ssamba-tiny":
        assert cfg.depth == 24 and enc.drop_path.p == 0.1 and enc.blocks[23].drop_path.p == pytest.approx(0.1 * 22 / 23)


def test_drop_path_adds_no_parameters_and_no_state():
    a = preset_encoder("ssamba-tiny")
    b = SpectrogramEncoder(PRESETS["ssamba-tiny"], dataclasses.replace(a.pretraining, drop_path_rate=0.0))
    assert a.state_dict().keys() == b.state_dict().keys()
    assert a.num_trainable_parameters() == b.num_trainable_parameters()


def small_pair(rate, depth=4, seed=0):
    """Two encoders with the same weights, drop_path_rate `rate` and 0."""
    torch.manual_seed(seed)
    a = SpectrogramEncoder(EncoderConfig(depth=depth, **SMALL), PretrainingOptions(drop_path_rate=rate))
    b = SpectrogramEncoder(EncoderConfig(depth=depth, **SMALL), PretrainingOptions(drop_path_rate=0.0))
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.mark.parametrize("block,traversal", [("bimamba", "flipped_pairs"), ("mamba", "forward")])
def test_eval_mode_is_bit_for_bit_the_model_without_drop_path(block, traversal):
    torch.manual_seed(0)
    cfg = dict(SMALL, block=block, traversal=traversal, block_options={"d_state": 4})
    a = SpectrogramEncoder(EncoderConfig(depth=4, **cfg), PretrainingOptions(drop_path_rate=0.1)).eval()
    b = SpectrogramEncoder(EncoderConfig(depth=4, **cfg), PretrainingOptions(drop_path_rate=0.0)).eval()
    b.load_state_dict(a.state_dict())
    spec = torch.randn(5, 1, 8, 80)
    with torch.no_grad():
        assert torch.equal(a(spec), b(spec))
        b.train()  # rate 0 in training is the model as before: nothing is drawn or scaled
        state = torch.random.get_rng_state()
        assert torch.equal(b(spec), a(spec))
        assert torch.equal(torch.random.get_rng_state(), state)


def test_hear_embeddings_do_not_depend_on_the_rate(tmp_path):
    a, b = small_pair(0.1)
    spec = torch.randn(2, 1, 8, 80)
    for enc, name in ((a, "a"), (b, "b")):
        hear_ssam.save_checkpoint(tmp_path / f"{name}.safetensors", enc)
    ma, mb = (hear_ssam.load_model(str(tmp_path / f"{n}.safetensors")) for n in "ab")
    assert ma.encoder.pretraining.drop_path_rate == 0.1 and not ma.encoder.training
    with torch.no_grad():
        assert torch.equal(ma.encoder(spec), mb.encoder(spec))


def parts_of_each_add(enc, spec):
    """Train-mode forward with hooks: for every place a mixer's output h joins the residual r,
    (h, r, stream after the add) per sample, keyed by the rate applied there ("block i", "final")."""
    seen = {}

    def on_block(i):
        def hook(module, args, out):
            hidden, residual = args
            if residual is not None:  # the first pair has no residual: nothing is added, nothing dropped
                seen[f"block {i}"] = (module.drop_path.p, hidden, residual, out[1])
        return hook

    handles = [blk.register_forward_hook(on_block(i)) for i, blk in enumerate(enc.blocks)]
    last = {}
    handles.append(enc.drop_path.register_forward_hook(lambda m, args, out: last.update(h=args[0], out=out)))
    handles.append(enc.encoder_norm.register_forward_pre_hook(
        lambda m, args: last.setdefault("stream", args[0])))  # the first norm's input: r + drop(h)
    try:
        with torch.no_grad():
            enc.forward_blocks(enc.embed(spec))
    finally:
        for h in handles:
            h.remove()
    seen["final"] = (enc.drop_path.p, last["h"], last["stream"] - last["out"], last["stream"])
    return seen


@pytest.mark.parametrize("traversal,block,rate", [("flipped_pairs", "bimamba", 0.1), ("flipped_pairs", "bimamba", 0.3),
                                                  ("forward", "mamba", 0.3)])
def test_training_drops_each_mixer_output_per_sample_at_its_rate(traversal, block, rate):
    """Over 3000 samples: where rate p applies, the fraction of samples whose mixer contribution
    was dropped (stream - residual == 0) is p within 4 binomial sd, every other sample gets the
    contribution times 1 / (1 - p), and the last mixer's is dropped at drop_path_rate."""
    torch.manual_seed(1)
    cfg = EncoderConfig(depth=6, **dict(SMALL, block=block, traversal=traversal, block_options={"d_state": 4}))
    enc = SpectrogramEncoder(cfg, PretrainingOptions(drop_path_rate=rate)).train()
    enc.set_drop_path_generator(torch.Generator().manual_seed(0))
    n = 3000
    seen = parts_of_each_add(enc, torch.randn(n, 1, 8, 80, generator=torch.Generator().manual_seed(2)))
    dpr = vim_rates(rate, 6)
    want = {"final": rate, **{f"block {i}": dpr[i - 1] for i in range(6)}}
    if traversal == "flipped_pairs":
        del want["block 0"], want["block 1"]  # the first pair starts the residual
    else:
        del want["block 0"]
    assert seen.keys() == want.keys()
    for where, (p, hidden, residual, stream) in seen.items():
        assert p == pytest.approx(want[where]), where
        added = (stream - residual).flatten(1)
        dropped = (added == 0).all(1)
        kept = ~dropped
        torch.testing.assert_close(added[kept], hidden.flatten(1)[kept].float() / (1 - p), rtol=1e-5, atol=1e-5)
        sd = (p * (1 - p) / n) ** 0.5
        assert abs(dropped.float().mean().item() - p) <= 4 * sd + 1e-9, (where, p, dropped.float().mean().item())
    assert seen["final"][0] == rate


def test_training_forward_equals_ssambas_with_vims_drop_path_placement(tmp_path):
    """The released layout (4 layers) loaded as ssamba, in training mode with rate 0.5: the same
    tokens as SSAMBA's forward with Vim's DropPath placement, the same draws in the same order."""
    state = {k[len("module."):]: v for k, v in released_state().items()}
    path = tmp_path / "ssamba.pth"
    torch.save({"module." + k: v for k, v in state.items()}, path)
    loaded = hear_ssam.load_model(str(path)).encoder
    assert loaded.pretraining.drop_path_rate == 0.1  # an official release gets the family's training rate
    enc = SpectrogramEncoder(loaded.cfg, dataclasses.replace(loaded.pretraining, drop_path_rate=0.5))
    enc.load_state_dict(loaded.state_dict())
    reference = OfficialSSAMBA(state, BiMamba, depth=4)
    fbank = torch.randn(6, 1024, 128, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        enc.train().set_drop_path_generator(torch.Generator().manual_seed(4))
        ours = enc.forward_blocks(enc.embed(fbank.unsqueeze(1)))
        want = reference.forward_tokens(fbank, drop_path_rate=0.5, generator=torch.Generator().manual_seed(4))
        plain = enc.eval().forward_blocks(enc.embed(fbank.unsqueeze(1)))
        torch.testing.assert_close(plain, reference.forward_tokens(fbank), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours, want, rtol=1e-5, atol=1e-5)
    differs = (ours - plain).flatten(1).abs().amax(1) > 1e-3
    assert differs.any()  # some samples had contributions dropped (or rescaled)


def test_a_config_stored_without_the_field_loads_with_0(tmp_path):
    """Checkpoints written before drop_path_rate existed were trained without drop path: their
    config loads with 0 (plugin files and the encoder dicts of training checkpoints alike)."""
    torch.manual_seed(0)
    cfg = EncoderConfig(depth=2, **SMALL)
    options = PretrainingOptions(drop_path_rate=0.1)
    enc = SpectrogramEncoder(cfg, options)
    new = tmp_path / "new.safetensors"
    hear_ssam.save_checkpoint(new, enc)
    with safe_open(str(new), framework="pt") as f:
        meta = json.loads(f.metadata()[METADATA_KEY])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert meta["pretraining"]["drop_path_rate"] == 0.1
    del meta["pretraining"]["drop_path_rate"]
    old = tmp_path / "old.safetensors"
    save_file(tensors, str(old), metadata={METADATA_KEY: json.dumps(meta)})
    model = hear_ssam.load_model(str(old))
    assert model.encoder.cfg == cfg and model.encoder.pretraining == PretrainingOptions(drop_path_rate=0.0)
    spec = torch.randn(2, 1, 8, 80)
    with torch.no_grad():
        assert torch.equal(model.encoder(spec), hear_ssam.load_model(str(new)).encoder(spec))
    ssamba = family_of_preset("ssamba-tiny").pretraining_options()
    older = {k: v for k, v in ssamba.to_dict().items() if k != "drop_path_rate"}
    assert PretrainingOptions(**older) == dataclasses.replace(ssamba, drop_path_rate=0.0)
    assert PretrainingOptions(**ssamba.to_dict()) == ssamba
    _, parsed, _, _ = parse_config(dict(meta), old)
    assert parsed.drop_path_rate == 0.0
    # the layout of files written before the options had their own section: flat in "encoder"
    flat = {k: v for k, v in meta.items() if k != "pretraining"}
    flat["encoder"] = {**meta["encoder"], **meta["pretraining"]}
    _, parsed, _, _ = parse_config(flat, old)
    assert parsed == PretrainingOptions(drop_path_rate=0.0)


def test_seeded_draws_repeat_and_leave_the_global_rng_alone():
    """pretrain.train seeds the drop-path draws of every micro-step from derive_seed("drop_path",
    seed, step, rank, micro): the same generator seed gives the same training loss, and the
    global RNG is untouched (a resumed run is exact: test_ssamba_pretrain)."""
    from pretrain.objectives import MaskedSpectrogramModel, cluster_mask
    torch.manual_seed(0)
    cfg = dataclasses.replace(PRESETS["ssamba-tiny"], embed_dim=16, depth=2)
    options = dataclasses.replace(family_of_preset("ssamba-tiny").pretraining_options(), drop_path_rate=0.5)
    model = MaskedSpectrogramModel(SpectrogramEncoder(cfg, options), "ssast_joint")
    spec = torch.randn(2, 1, 1024, 128, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    masks = torch.stack([cluster_mask(2, 512, 300 / 512, g, "cpu", grid=(64, 8, "freq-major")) for _ in range(2)])
    state = torch.random.get_rng_state()

    def loss(seed):
        model.encoder.set_drop_path_generator(torch.Generator().manual_seed(seed))
        return model(spec, masks)[0].item()

    with torch.no_grad():
        first, again, other = loss(3), loss(3), loss(4)
        model.eval()
        plain = model(spec, masks)[0].item()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert first == again and first != plain and first != other  # same draws again; some were drawn
