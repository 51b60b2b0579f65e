"""AxLSTM in the framework: presets, official checkpoints, the official runtime, the HEAR path."""
import math

import pytest
import torch

import hear_ssam
from hear_ssam.__main__ import main as cli
from conftest import noise
from official_reference import OfficialAxLSTM, official_embeddings
from test_checkpoint import write_official


@pytest.mark.parametrize("preset,count", [("axlstm-tiny", 2_867_808), ("axlstm-small", 11_043_936),
                                          ("axlstm-base", 43_321_440)])
def test_encoder_parameters_match_the_official_counts(preset, count):
    """Patch embedding + CLS + blocks + encoder_norm, as the paper counts them."""
    enc = hear_ssam.preset_encoder(preset)
    parts = ("patch_embed.", "cls_token", "blocks.", "encoder_norm.")
    assert sum(p.numel() for k, p in enc.named_parameters() if k.startswith(parts)) == count
    assert not enc.is_causal  # odd blocks run right to left


def official_axlstm_state(D=192, depth=12, seed=0):
    """A state dict built from the official AxLSTM code's key list and shapes (not from our
    module), with random weights of sensible scale (not the init: its gates are all zero)."""
    g = torch.Generator().manual_seed(seed)
    E = 2 * D
    r = lambda *shape, scale=1.0, offset=0.0: torch.randn(*shape, generator=g) * scale + offset  # noqa: E731
    state = {"cls_token": r(1, 1, D, scale=0.02), "mask_token": r(1, 1, D, scale=0.02),
             "pos_embed": hear_ssam.encoder.sincos_pos_embed_2d(D, (50, 5)),
             "patch_embed.proj.weight": r(D, 1, 4, 16, scale=1 / 8), "patch_embed.proj.bias": r(D, scale=0.1),
             "encoder_norm.weight": r(D, scale=0.1, offset=1.0), "encoder_norm.bias": r(D, scale=0.1),
             "pred.0.weight": r(D, D, scale=D ** -0.5), "pred.0.bias": r(D, scale=0.1),
             "pred.2.weight": r(64, D, scale=D ** -0.5), "pred.2.bias": r(64, scale=0.1)}
    for i in range(depth):
        b = f"blocks.{i}."
        state.update({
            b + "norm.weight": r(D, scale=0.2), b + "layer.learnable_skip": r(E, scale=0.3, offset=1.0),
            b + "layer.proj_up.weight": r(2 * E, D, scale=D ** -0.5),
            b + "layer.q_proj.weight": r(E // 4, 4, 4, scale=0.5), b + "layer.k_proj.weight": r(E // 4, 4, 4, scale=0.5),
            b + "layer.v_proj.weight": r(E // 4, 4, 4, scale=0.5),
            b + "layer.conv1d.conv.weight": r(E, 1, 4, scale=0.5), b + "layer.conv1d.conv.bias": r(E, scale=0.2),
            b + "layer.mlstm_cell.igate.weight": r(4, 3 * E, scale=0.3 / math.sqrt(3 * E)),
            b + "layer.mlstm_cell.igate.bias": r(4, scale=1.0),
            b + "layer.mlstm_cell.fgate.weight": r(4, 3 * E, scale=0.3 / math.sqrt(3 * E)),
            b + "layer.mlstm_cell.fgate.bias": r(4, scale=1.0, offset=3.0),
            b + "layer.mlstm_cell.outnorm.weight": r(E, scale=0.2),
            b + "layer.proj_down.weight": r(D, E, scale=E ** -0.5)})
    return state


class _StateHolder(torch.nn.Module):
    """write_official() saves `encoder.state_dict()`; this holds a plain dict as one."""

    def __init__(self, state):
        super().__init__()
        self._state = state

    def state_dict(self, *a, **k):
        return dict(self._state)


@pytest.fixture(scope="module")
def official_axlstm(tmp_path_factory):
    state = official_axlstm_state()
    assert len(state) == 179  # the official layout: 179 keys at depth 12
    path = tmp_path_factory.mktemp("axlstm") / "checkpoint-99.pth"
    write_official(path, _StateHolder(state))
    return path, state


def test_official_release_layout_loads_strictly_as_axlstm(official_axlstm, tmp_path, capsys):
    path, state = official_axlstm
    model = hear_ssam.load_model(str(path))
    assert model.config["family"] == "axlstm" and model.config["preset"] == "axlstm-tiny"
    assert model.encoder.cfg == hear_ssam.PRESETS["axlstm-tiny"]
    for k, v in state.items():
        assert torch.equal(model.encoder.state_dict()[k], v), k
    out = tmp_path / "axlstm.safetensors"
    assert cli(["convert", str(path), str(out), "--runtime", "official"]) == 0
    again = hear_ssam.load_model(str(out))
    assert again.runtime == "official" and again.config["family"] == "axlstm"
    for k, v in state.items():
        assert torch.equal(again.encoder.state_dict()[k], v), k


def test_official_order_reproduces_the_official_runtime(official_axlstm):
    path, state = official_axlstm
    reference = OfficialAxLSTM(state)
    ours = hear_ssam.load_model(str(path), runtime="official")
    for seconds in (1.3, 4.4):
        audio = noise(1, seconds, seed=int(seconds * 10))
        want = official_embeddings(reference, audio)
        got, _ = hear_ssam.get_timestamp_embeddings(audio, ours)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_hear_frames_are_the_full_padded_chunks(official_axlstm):
    """Not causal: the last chunk is encoded zero-padded to 2 s, never cut (a cut chunk differs)."""
    model = hear_ssam.load_model(str(official_axlstm[0]))
    audio = noise(1, 3.3, seed=4)
    frames, _ = hear_ssam.get_timestamp_embeddings(audio, model)
    spec = model.frontend(audio)
    with torch.no_grad():
        padded = torch.nn.functional.pad(spec, (0, 0, 0, 400 - spec.shape[2]))
        chunks = torch.cat([model.encoder(padded[:, :, :200]), model.encoder(padded[:, :, 200:])], dim=1)
        cut = model.encoder.forward_blocks(model.encoder.embed(padded[:, :, 200:332]))[:, 1:]
    want = chunks.reshape(1, 100, 960)[:, :frames.shape[1]]
    assert frames.shape == (1, 83, 960)
    torch.testing.assert_close(frames, want, rtol=1e-4, atol=1e-4)  # batched vs one chunk at a time
    assert not torch.allclose(cut.reshape(1, 33, 960), want[:, 50:83], atol=1e-3)
