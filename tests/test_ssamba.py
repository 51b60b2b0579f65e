"""SSAMBA in the framework: presets, released checkpoints, its forward, the HEAR path."""
import math

import pytest
import torch

import hear_ssam
from hear_ssam.__main__ import main as cli
from conftest import noise
from official_reference import OfficialSSAMBA
from test_bimamba import StepBiMamba

ONE_WINDOW = 400 + 1023 * 160  # samples whose Kaldi fbank has exactly 1024 frames (10.255 s)


def encoder_params(D, depth=24, N=16, K=4, expand=2):
    """From SSAMBA's released shapes: patch embed, CLS, positions, layers, norm_f."""
    E, R = expand * D, math.ceil(D / 16)
    direction = E * (K + 1) + (R + 2 * N) * E + (R + 1) * E + N * E + E  # conv, x_proj, dt_proj, A, D
    layer = 2 * D + 2 * E * D + E * D + 2 * direction  # norm, in_proj, out_proj, both directions
    return D * 256 + D + D + 513 * D + depth * layer + 2 * D


@pytest.mark.parametrize("preset,D", [("ssamba-tiny", 192), ("ssamba-small", 384), ("ssamba-base", 768)])
def test_encoder_parameters_follow_the_documented_shapes(preset, D):
    enc = hear_ssam.preset_encoder(preset)
    parts = ("patch_embed.", "cls_token", "pos_embed", "blocks.", "encoder_norm.")
    assert sum(p.numel() for k, p in enc.named_parameters() if k.startswith(parts)) == encoder_params(D)
    assert enc.cfg.depth == 24 and enc.cfg.grid == (64, 8) and not enc.is_causal


def released_state(D=64, depth=4, N=16, seed=0):
    """A DataParallel state dict with SSAMBA's released key list, random weights."""
    g = torch.Generator().manual_seed(seed)
    E, R = 2 * D, math.ceil(D / 16)
    r = lambda *shape, scale=0.1, offset=0.0: torch.randn(*shape, generator=g) * scale + offset  # noqa: E731
    s = {"v.patch_embed.proj.weight": r(D, 1, 16, 16, scale=1 / 16), "v.patch_embed.proj.bias": r(D),
         "v.cls_token": r(1, 1, D, scale=0.02), "v.pos_embed": r(1, 513, D, scale=0.02),
         "v.norm_f.weight": r(D, offset=1.0), "v.norm_f.bias": r(D), "v.head.weight": r(527, D), "v.head.bias": r(527),
         "mask_embed": r(1, 1, D), "cpredlayer.0.weight": r(D, D), "cpredlayer.0.bias": r(D),
         "cpredlayer.2.weight": r(256, D), "cpredlayer.2.bias": r(256), "gpredlayer.0.weight": r(D, D),
         "gpredlayer.0.bias": r(D), "gpredlayer.2.weight": r(256, D), "gpredlayer.2.bias": r(256),
         "p_input_fdim": torch.tensor(16), "p_input_tdim": torch.tensor(16)}
    for i in range(depth):
        b = f"v.layers.{i}."
        s.update({b + "norm.weight": r(D, offset=1.0), b + "norm.bias": r(D)})
        m = b + "mixer."
        s.update({m + "in_proj.weight": r(2 * E, D, scale=D ** -0.5), m + "out_proj.weight": r(D, E, scale=E ** -0.5)})
        for sfx in ("", "_b"):
            s.update({m + f"conv1d{sfx}.weight": r(E, 1, 4, scale=0.4), m + f"conv1d{sfx}.bias": r(E),
                      m + f"x_proj{sfx}.weight": r(R + 2 * N, E, scale=E ** -0.5),
                      m + f"dt_proj{sfx}.weight": r(E, R, scale=R ** -0.5), m + f"dt_proj{sfx}.bias": r(E, offset=-3.0),
                      m + f"A{sfx}_log": torch.log(torch.arange(1.0, N + 1)).repeat(E, 1) + r(E, N),
                      m + f"D{sfx}": r(E, offset=1.0)})
    return {"module." + k: v for k, v in s.items()}


@pytest.fixture(scope="module")
def released_file(tmp_path_factory):
    state = released_state()
    path = tmp_path_factory.mktemp("ssamba") / "ssamba_tiny_400.pth"
    torch.save(state, path)  # torch.save(nn.DataParallel(model).state_dict()), as released
    return path, {k[len("module."):]: v for k, v in state.items()}


def test_released_layout_loads_strictly_and_sets_aside_pretraining_extras(released_file, tmp_path, capsys):
    path, state = released_file
    model = hear_ssam.load_model(str(path))
    cfg = model.encoder.cfg
    assert model.config["family"] == "ssamba" and cfg.block == "bimamba" and cfg.traversal == "flipped_pairs"
    assert (cfg.embed_dim, cfg.depth, cfg.crop_frames, cfg.patch_order, cfg.positions) == (64, 4, 1024, "freq-major", "learned")
    assert model.config["provenance"]["set_aside_keys"] == [
        "p_input_fdim", "p_input_tdim", "v.head.bias", "v.head.weight"]  # cpredlayer -> cpred
    sd = model.encoder.state_dict()
    assert torch.equal(sd["blocks.3.mixer.A_b_log"], state["v.layers.3.mixer.A_b_log"])
    assert torch.equal(sd["pred.2.weight"], state["gpredlayer.2.weight"]) and torch.equal(sd["mask_token"], state["mask_embed"])
    assert torch.equal(sd["patch_embed.proj.weight"], state["v.patch_embed.proj.weight"].transpose(-1, -2))
    out = tmp_path / "ssamba.safetensors"
    assert cli(["convert", str(path), str(out)]) == 0
    assert cli(["info", str(out)]) == 0
    assert "v.head.weight" in capsys.readouterr().out  # info lists what was set aside
    again = hear_ssam.load_model(str(out))
    assert again.frontend.cfg == hear_ssam.frontend.SSAMBA_FBANK
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(again.encoder.state_dict()[k], v), k


def test_hear_embeddings_equal_the_released_forward(released_file):
    """One 10.24 s window: frames = the 8 frequency tokens of each 160 ms step (after both final
    norms), each repeated 4 times (40 ms); scene = the mean of the clip's frames, i.e. each
    frequency row's mean token, concatenated (ft_avgtok's mean taken per frequency row)."""
    path, state = released_file
    model = hear_ssam.load_model(str(path))
    reference = OfficialSSAMBA(state, StepBiMamba, depth=4)
    for n_samples in (ONE_WINDOW, 3 * 16000):
        audio = noise(1, n_samples / 16000, seed=n_samples % 97)
        with torch.no_grad():
            tokens = reference.forward_tokens(reference.fbank(audio[0]).unsqueeze(0))[:, 1:]
        grid = tokens.view(1, 8, 64, 64).transpose(1, 2).reshape(1, 64, 8 * 64)  # [t, (f d)]
        frames, ts = hear_ssam.get_timestamp_embeddings(audio, model)
        n = frames.shape[1]
        assert frames.shape[2] == 512 and model.scene_embedding_size == 512
        torch.testing.assert_close(frames, grid.repeat_interleave(4, dim=1)[:, :n], rtol=1e-4, atol=1e-4)
        scene = hear_ssam.get_scene_embeddings(audio, model)
        if n_samples == ONE_WINDOW:  # the whole window is the clip: every step's tokens, per row
            assert n == 256
            torch.testing.assert_close(scene, grid.mean(1), rtol=1e-4, atol=1e-5)
            # averaging those rows as well gives the released ft_avgtok
            torch.testing.assert_close(scene.view(1, 8, 64).mean(1), tokens.mean(1), rtol=1e-4, atol=1e-5)
        else:  # frames of the padding are not part of the clip, nor of its mean
            assert n == 75
            torch.testing.assert_close(scene, frames.mean(1), rtol=1e-5, atol=1e-6)


def test_timestamps_and_long_clips(released_file):
    model = hear_ssam.load_model(str(released_file[0]))
    assert model.frame_repeat == 4 and model.frame_hop_ms == 40.0 and model.frame_offset_ms == 27.5
    audio = noise(2, 23.0, seed=1)  # three 10.24 s windows, the last padded
    emb, ts = hear_ssam.get_timestamp_embeddings(audio, model)
    assert emb.shape == (2, ts.shape[1], 512) and torch.isfinite(emb).all()
    assert ts[0, 0] == 27.5 and torch.allclose(ts[0].diff(), torch.full((ts.shape[1] - 1,), 40.0))
    assert 23000 - 40 < ts[0, -1] <= 23000


# clip lengths of the official-runtime test: shorter than the window (padded), exactly one
# window, and 12 s (cut to its first 10.24 s)
OFFICIAL_LENGTHS = (16000, 40000, 80000, ONE_WINDOW, 12 * 16000)


def relative_l2(a, b):
    """Per clip: ||a - b|| / ||b|| over [n, D] rows."""
    return (a - b).norm(dim=1) / b.norm(dim=1)


def test_official_runtime_scene_is_the_released_ft_avgtok(released_file):
    """runtime="official": the scene embedding is SSAMBA's released `ft_avgtok` vector (fbank
    padded with zero fbank or cut to 1024 frames, one forward, the mean of all 512 tokens,
    padding included), restated independently; timestamp embeddings stay as under "hear".
    Under "hear" the scene is the mean of the clip's frames (each frequency row's tokens kept
    apart, the padding left out): averaged over its rows, a full window's equals the released
    vector, and a 1-5 s clip's is far from it."""
    path, state = released_file
    official = hear_ssam.load_model(str(path), runtime="official")
    hear = hear_ssam.load_model(str(path))
    assert official.config["runtime"] == "official" and official.config["scene_pooling"] == "window_tokens"
    assert official.scene_embedding_size == 64 and official.config["frame_layout"] == "time-steps"
    reference = OfficialSSAMBA(state, StepBiMamba, depth=4)
    clips = [noise(2, n / 16000, seed=i) for i, n in enumerate(OFFICIAL_LENGTHS)]
    with torch.no_grad():  # every clip is 1024 frames once padded or cut: one batched reference pass
        fbanks = torch.stack([reference.fbank(clip) for batch in clips for clip in batch])
        want = reference.forward_tokens(fbanks)[:, 1:].mean(1).split(2)
    for n_samples, audio, ft_avgtok in zip(OFFICIAL_LENGTHS, clips, want):
        got = hear_ssam.get_scene_embeddings(audio, official)
        torch.testing.assert_close(got, ft_avgtok, rtol=1e-4, atol=1e-5, msg=f"{n_samples} samples")
        ours = hear_ssam.get_scene_embeddings(audio, hear).view(2, 8, 64).mean(1)
        if n_samples < ONE_WINDOW:  # the released vector averages the padding in
            assert relative_l2(ours, ft_avgtok).min() > 0.1, n_samples
        elif n_samples == ONE_WINDOW:  # no padding, no cut: the two runtimes agree
            torch.testing.assert_close(ours, ft_avgtok, rtol=1e-4, atol=1e-5)
    for a, b in zip(hear_ssam.get_timestamp_embeddings(clips[1], official),
                    hear_ssam.get_timestamp_embeddings(clips[1], hear)):
        assert torch.equal(a, b)


def test_the_official_runtime_cuts_a_long_clip_to_its_first_window(released_file):
    """12 s: only the first 1024 fbank frames count (of the whole clip's fbank: its mean is
    removed over all 12 s), so the last 1.7 s change nothing once their mean is kept."""
    official = hear_ssam.load_model(str(released_file[0]), runtime="official")
    audio = noise(1, 12.0, seed=3)
    tail = audio[:, ONE_WINDOW:]
    changed = torch.cat([audio[:, :ONE_WINDOW], tail.flip(1)], dim=1)  # same samples, same mean
    a, b = (hear_ssam.get_scene_embeddings(x, official) for x in (audio, changed))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    hear = hear_ssam.load_model(str(released_file[0]))
    assert not torch.allclose(hear_ssam.get_scene_embeddings(audio, hear),
                              hear_ssam.get_scene_embeddings(changed, hear), atol=1e-6)
