import dataclasses
import math

import pytest
import torch

from hear_ssam import (FAMILIES, PRESETS, EncoderConfig, PretrainingOptions, SpectrogramEncoder, SSAMEncoder,
                       preset_encoder)
from hear_ssam.encoder import TRAVERSALS, sincos_pos_embed_2d
from hear_ssam.modules import BLOCKS


@pytest.mark.parametrize("preset,millions", [("ssam-tiny", 4.76), ("ssam-small", 17.89), ("ssam-base", 69.25)])
def test_trainable_parameters_match_the_paper(preset, millions):
    enc = preset_encoder(preset)
    assert round(enc.num_trainable_parameters() / 1e6, 2) == millions


def test_state_dict_has_the_official_layout():
    D, E, R = 192, 576, 12
    sd = preset_encoder("ssam-tiny").state_dict()
    want = {"cls_token": (1, 1, D), "pos_embed": (1, 251, D), "mask_token": (1, 1, D),
            "patch_embed.proj.weight": (D, 1, 4, 16), "patch_embed.proj.bias": (D,),
            "encoder_norm.weight": (D,), "pred.0.weight": (D, D), "pred.2.weight": (64, D)}
    for i in range(12):
        b = f"blocks.{i}."
        want.update({b + "norm.weight": (D,), b + "norm.bias": (D,),
                     b + "mixer.in_proj.weight": (2 * E, D), b + "mixer.conv1d.weight": (E, 1, 4),
                     b + "mixer.conv1d.bias": (E,), b + "mixer.x_proj.weight": (R + 48, E),
                     b + "mixer.dt_proj.weight": (E, R), b + "mixer.dt_proj.bias": (E,),
                     b + "mixer.A_log": (E, 24), b + "mixer.D": (E,), b + "mixer.out_proj.weight": (D, E)})
    for k, shape in want.items():
        assert tuple(sd[k].shape) == shape, k
    assert len(sd) == len(want) + 3  # encoder_norm.bias, pred.0.bias, pred.2.bias


def test_pos_embed_is_fixed_sincos_with_zero_cls_row():
    pe = sincos_pos_embed_2d(192, (50, 5))
    assert pe.shape == (1, 251, 192)
    assert torch.all(pe[0, 0] == 0)
    # token t*5+f: first half encodes frequency f, second half encodes time t
    t, f = 7, 3
    row = pe[0, 1 + t * 5 + f]
    assert torch.allclose(row[:48], torch.sin(f / 10000 ** (torch.arange(48) / 48.0)), atol=1e-6)
    assert torch.allclose(row[96:144], torch.sin(t / 10000 ** (torch.arange(48) / 48.0)), atol=1e-6)
    enc = preset_encoder("ssam-tiny")
    assert not enc.pos_embed.requires_grad


def test_init_rescales_out_proj_and_zeroes_biases():
    torch.manual_seed(0)
    enc = preset_encoder("ssam-tiny")
    bound = 1 / math.sqrt(576) / math.sqrt(12)  # kaiming-uniform(a=sqrt 5) bound / sqrt(depth)
    w = enc.blocks[0].mixer.out_proj.weight
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    assert torch.all(enc.pred[0].bias == 0) and torch.all(enc.pred[2].bias == 0)
    assert enc.blocks[0].mixer.dt_proj.bias.abs().sum() > 0  # dt bias kept
    assert 0.015 < enc.cls_token.std() < 0.025


@pytest.mark.parametrize("order", ["time-major", "freq-major"])
def test_patchify_matches_the_patch_embedding_order(order):
    """A patch-embed conv that copies pixel (i, j) of each patch must reproduce patchify, and
    tokens_to_grid must put token (t, f) at [t, f] in either order."""
    enc = SpectrogramEncoder(EncoderConfig(embed_dim=64, depth=1, patch_order=order))
    with torch.no_grad():
        enc.patch_embed.proj.weight.zero_()
        enc.patch_embed.proj.bias.zero_()
        for c in range(64):  # channel c reads pixel (c // 16, c % 16) of its patch
            enc.patch_embed.proj.weight[c, 0, c // 16, c % 16] = 1
    spec = torch.randn(2, 1, 200, 80)
    tokens = enc.patch_embed(spec)
    torch.testing.assert_close(tokens, enc.patchify(spec))
    grid = enc.tokens_to_grid(tokens)
    assert grid.shape == (2, 50, 5, 64)
    torch.testing.assert_close(grid[:, 7, 3], spec[:, 0, 28:32, 48:64].reshape(2, 64))  # patch t=7, f=3


def test_learned_positions_double_final_norm_and_relu_head():
    torch.manual_seed(0)
    cfg = EncoderConfig(embed_dim=32, depth=2, positions="learned", final_norms=2, patch_order="freq-major")
    enc = SpectrogramEncoder(cfg, PretrainingOptions(head_activation="relu")).eval()
    assert enc.pos_embed.requires_grad and 0.01 < enc.pos_embed.std() < 0.03
    assert isinstance(enc.pred[1], torch.nn.ReLU) and not enc.is_causal  # freq-major: not time order
    x = enc.embed(torch.randn(1, 1, 200, 80))
    with torch.no_grad():
        h, r = TRAVERSALS["forward"](enc.blocks, x, None)
        once = enc.encoder_norm(r + h)
        torch.testing.assert_close(enc.forward_blocks(x), enc.encoder_norm(once))
    with pytest.raises(ValueError, match="cannot be extended"):
        enc.extend_window(400)
    with pytest.raises(ValueError, match="patch_order must be one of"):
        EncoderConfig(patch_order="diagonal")


VIT = dict(block="vit", block_options={"num_heads": 3, "mlp_ratio": 4.0})


@pytest.mark.parametrize("block", [{}, VIT])
def test_forward_and_reconstruct_shapes(block):
    enc = SpectrogramEncoder(EncoderConfig(embed_dim=48, depth=2, **block)).eval()
    spec = torch.randn(3, 1, 200, 80)
    assert enc(spec).shape == (3, 250, 48)
    mask = torch.rand(3, 250) < 0.5
    assert enc.reconstruct(spec, mask).shape == (3, 250, 64)


def test_masked_tokens_carry_no_position():
    enc = SpectrogramEncoder(EncoderConfig(embed_dim=48, depth=1)).eval()
    mask = torch.zeros(1, 250, dtype=torch.bool)
    mask[0, [3, 100]] = True
    tokens = enc.embed(torch.randn(1, 1, 200, 80), mask)
    assert torch.equal(tokens[0, 4], tokens[0, 101])
    assert torch.equal(tokens[0, 4], enc.mask_token[0, 0])


def test_a_vit_predicts_one_patch_for_every_position_free_mask_token():
    """The SSAM framework's recipe (mask tokens without position, as its official SSAST baseline
    has them) leaves a Transformer no way to tell masked patches apart: attention and the MLP
    treat equal tokens alike, so every masked patch of a crop gets the same prediction, and
    ssast-tiny's loss stays near the variance of the masked patches (0.48) however long it
    trains. A recurrence (SSAM) sees where each mask token stands; so does a Transformer whose
    mask tokens carry their position (SSAST's own recipe, `mask_token_position`)."""
    torch.manual_seed(0)
    spec = torch.randn(2, 1, 200, 80)
    mask = torch.rand(2, 250) < 0.5

    def spread(encoder):
        with torch.no_grad():
            pred = encoder.eval().reconstruct(spec, mask)
        masked = [pred[b][mask[b]] for b in range(2)]
        return max((m - m[0]).abs().max().item() for m in masked), pred

    vit_spread, vit_pred = spread(preset_encoder("ssast-tiny"))
    assert vit_spread < 1e-5
    assert not torch.allclose(vit_pred[0][mask[0]][0], vit_pred[1][mask[1]][0])  # one per crop
    assert spread(preset_encoder("ssam-tiny"))[0] > 1e-3
    assert spread(SpectrogramEncoder(PRESETS["ssast-tiny"], PretrainingOptions(mask_token_position=True)))[0] > 1e-3


def test_causal_prefix_equals_padded_crop():
    torch.manual_seed(0)
    enc = preset_encoder("ssam-tiny").eval()
    spec = torch.randn(2, 1, 200, 80)
    spec[:, :, 84:] = 0
    with torch.no_grad():
        full = enc(spec)
        prefix = enc(spec[:, :, :84])
    torch.testing.assert_close(prefix, full[:, :prefix.shape[1]], rtol=1e-5, atol=1e-5)
    assert prefix.shape == (2, 21 * 5, 192)


def test_bidirectional_encoder_refuses_a_cut_crop():
    enc = SpectrogramEncoder(EncoderConfig(embed_dim=48, depth=1, **VIT))
    with pytest.raises(ValueError, match=r"\[batch, 1, 200, 80\]"):
        enc(torch.randn(1, 1, 84, 80))


def test_bad_config_is_named():
    with pytest.raises(ValueError, match=r"block must be one of \[.*'mamba'.*\], got 'transformer'"):
        EncoderConfig(block="transformer")
    with pytest.raises(ValueError, match="traversal must be one of"):
        EncoderConfig(traversal="backward")
    with pytest.raises(ValueError, match="even depth"):
        EncoderConfig(traversal="flipped_pairs", depth=3)
    with pytest.raises(TypeError, match="num_heads"):
        SpectrogramEncoder(EncoderConfig(depth=1, block_options={"num_heads": 3}))  # not a Mamba option


def test_presets_are_derived_from_the_families():
    assert SSAMEncoder is SpectrogramEncoder
    assert set(PRESETS) == {f"{f}-{s}" for f in ("ssam", "ssast", "axlstm", "ssamba") for s in ("tiny", "small", "base")}
    for name, cfg in PRESETS.items():
        family = FAMILIES[name.split("-")[0]]
        assert cfg.block == family.block and cfg.traversal == family.traversal
        assert cfg.n_mels == family.frontend.n_mels
    assert PRESETS["ssam-base"].block_options == {"d_state": 24, "d_conv": 4, "expand": 3}
    assert PRESETS["ssast-small"].block_options == {"num_heads": 6, "mlp_ratio": 4.0}
    for block in BLOCKS.values():
        assert isinstance(block.causal, bool) and callable(block.init_encoder)


SSAMBA_OPTIONS = PretrainingOptions(head_activation="relu", mask_token_position=True, contrastive_head=True,
                                    patch_pixel_order="freq-major", drop_path_rate=0.1)


def test_the_config_is_the_architecture_and_the_options_are_how_it_pretrains():
    """EncoderConfig holds what an embedding depends on, PretrainingOptions what only
    pretraining reads; a preset's encoder gets its family's options (SSAMBA: SSAST's heads)."""
    arch = {f.name for f in dataclasses.fields(EncoderConfig)}
    options = {f.name for f in dataclasses.fields(PretrainingOptions)}
    assert options == {"head_activation", "mask_token_position", "contrastive_head", "patch_pixel_order",
                       "drop_path_rate"}
    assert not arch & options
    with pytest.raises(TypeError, match="contrastive_head"):
        EncoderConfig(contrastive_head=True)
    for name, family in FAMILIES.items():
        assert family.pretraining_options() == (SSAMBA_OPTIONS if name == "ssamba" else PretrainingOptions())
    ssamba = preset_encoder("ssamba-tiny")
    assert ssamba.cfg == PRESETS["ssamba-tiny"] and ssamba.pretraining == SSAMBA_OPTIONS
    assert isinstance(ssamba.pred[1], torch.nn.ReLU) and isinstance(ssamba.cpred[1], torch.nn.ReLU)
    plain = SpectrogramEncoder(PRESETS["ssamba-tiny"])  # without options: SSAM's heads
    assert plain.pretraining == PretrainingOptions() and not hasattr(plain, "cpred")
    assert isinstance(plain.pred[1], torch.nn.GELU)


def test_embeddings_do_not_depend_on_the_pretraining_options():
    torch.manual_seed(0)
    cfg = EncoderConfig(embed_dim=32, depth=2)
    a = SpectrogramEncoder(cfg, SSAMBA_OPTIONS).eval()
    b = SpectrogramEncoder(cfg).eval()
    b.load_state_dict({k: v for k, v in a.state_dict().items() if not k.startswith("cpred.")})
    spec = torch.randn(2, 1, 200, 80)
    with torch.no_grad():
        assert torch.equal(a(spec), b(spec))


def test_bad_pretraining_options_are_named():
    with pytest.raises(ValueError, match=r"head_activation must be one of \('gelu', 'relu'\), got 'tanh'"):
        PretrainingOptions(head_activation="tanh")
    with pytest.raises(ValueError, match="patch_pixel_order must be one of"):
        PretrainingOptions(patch_pixel_order="diagonal")
    with pytest.raises(ValueError, match="unknown preset 'ssam-huge'; choose from"):
        preset_encoder("ssam-huge")
    with pytest.raises(TypeError, match="pretraining must be PretrainingOptions or None"):
        SpectrogramEncoder(PRESETS["ssam-tiny"], {"contrastive_head": True})
    with pytest.raises(TypeError, match="cfg must be an EncoderConfig, got dict"):
        SpectrogramEncoder(PRESETS["ssam-tiny"].to_dict())


class Shift(torch.nn.Module):
    """A toy causal block: stream + (stream shifted right by one token), tagged by its index."""
    causal = True

    def __init__(self, index):
        super().__init__()
        self.index = index

    def forward(self, hidden, residual):
        x = hidden if residual is None else hidden + residual
        shifted = torch.nn.functional.pad(x, (0, 0, 1, 0))[:, :-1]
        return x + shifted * (self.index + 1), None


def test_traversals_flip_the_right_blocks():
    x = torch.randn(2, 7, 3)
    blocks = [Shift(i) for i in range(4)]
    fwd, _ = TRAVERSALS["forward"](blocks, x, None)
    want = x
    for b in blocks:
        want = b(want, None)[0]
    torch.testing.assert_close(fwd, want)
    alt, _ = TRAVERSALS["alternate"](blocks, x, None)
    want = x
    for i, b in enumerate(blocks):
        want = b(want.flip(1), None)[0].flip(1) if i % 2 else b(want, None)[0]
    torch.testing.assert_close(alt, want)
    pairs, _ = TRAVERSALS["flipped_pairs"](blocks, x, None)
    want = x
    for a, b in zip(blocks[0::2], blocks[1::2]):
        want = a(want, None)[0] + b(want.flip(1), None)[0].flip(1)  # the stream doubles, as SSAMBA's
    torch.testing.assert_close(pairs, want)


@pytest.mark.parametrize("traversal", ["alternate", "flipped_pairs"])
def test_a_flipping_traversal_is_not_causal(traversal):
    enc = SpectrogramEncoder(EncoderConfig(embed_dim=32, depth=2, traversal=traversal)).eval()
    assert not enc.is_causal
    spec = torch.randn(1, 1, 200, 80)
    later = spec.clone()
    later[:, :, 150:] += 1.0
    with torch.no_grad():
        a, b = enc(spec), enc(later)
    assert not torch.allclose(a[:, :5], b[:, :5])  # early tokens see the future
    with pytest.raises(ValueError, match="log-mel crops"):
        enc(spec[:, :, :84])  # no causal-prefix shortcut
