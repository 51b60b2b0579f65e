"""Overlapping patches (`load_model(patch_stride=...)`, `SpectrogramEncoder.set_patch_stride`):
SSAST's and SSAMBA's fine-tuning geometry on checkpoints pretrained without overlap."""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

import hear_ssam
from conftest import noise
from hear_ssam.checkpoint import load_checkpoint, save_checkpoint
from hear_ssam.encoder import EncoderConfig, SpectrogramEncoder, interpolate_positions
from hear_ssam.presets import FAMILIES, PRESETS
from official_reference import OfficialSSAMBA
from test_bimamba import StepBiMamba
from test_ssamba import ONE_WINDOW, released_state

DEPTH = 2  # one flipped pair: the step-by-step reference stays fast at 1212 tokens


@pytest.fixture(scope="module")
def released_file(tmp_path_factory):
    """A released-format SSAMBA .pth (DataParallel keys, random weights, width 64)."""
    state = released_state(depth=DEPTH)
    path = tmp_path_factory.mktemp("ssamba_stride") / "ssamba_tiny_400.pth"
    torch.save(state, path)
    return path, {k[len("module."):]: v for k, v in state.items()}


def tiny_file(tmp_path, family, **fields):
    """A small encoder of `family` written in our format (seeded random weights)."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(FAMILIES[family].config("tiny"), embed_dim=32, depth=2, **fields)
    if family == "ssast":
        cfg = dataclasses.replace(cfg, block_options={**cfg.block_options, "num_heads": 2})
    enc = SpectrogramEncoder(cfg, FAMILIES[family].pretraining_options()).eval()
    path = tmp_path / f"{family}.safetensors"
    save_checkpoint(path, enc, frontend=FAMILIES[family].frontend)
    return path


# ---------------------------------------------------------------- geometry and positions

def test_ssamba_stride_10_grid_and_interpolated_positions(released_file):
    """128 x 1024 at stride 10: 12 x 101 patches; the patch kernel is the pretrained one at
    the new stride and the positions are the stored ones resampled bilinearly, time then
    frequency, on the [D, F, T] image of the frequency-major table (CLS row unchanged)."""
    path, state = released_file
    before, _ = load_checkpoint(path)
    enc, _ = load_checkpoint(path)
    enc.set_patch_stride(10, 10)
    assert enc.cfg.grid == (101, 12) and enc.cfg.num_patches == 1212 and enc.cfg.overlapping
    assert (enc.cfg.patch_stride_time, enc.cfg.patch_stride_freq) == (10, 10)
    assert enc.patch_embed.proj.stride == (10, 10) and not enc.is_causal
    for k, v in before.state_dict().items():
        if k != "pos_embed":
            assert torch.equal(enc.state_dict()[k], v), k
    stored = state["v.pos_embed"]  # [1, 1 + 8 * 64, D], index f * 64 + t
    D = stored.shape[-1]
    image = stored[:, 1:].transpose(1, 2).reshape(1, D, 8, 64)
    image = F.interpolate(F.interpolate(image, size=(8, 101), mode="bilinear"), size=(12, 101), mode="bilinear")
    want = torch.cat([stored[:, :1], image.reshape(1, D, 1212).transpose(1, 2)], dim=1)
    assert enc.pos_embed.shape == (1, 1213, D) and enc.pos_embed.requires_grad
    torch.testing.assert_close(enc.pos_embed.detach(), want, rtol=0, atol=1e-7)
    assert torch.equal(enc.pos_embed[:, 0], stored[:, 0])
    # the corners of the resampled grid are the stored corners (bilinear, align_corners=False)
    grid = enc.pos_embed[0, 1:].detach().view(12, 101, D)
    torch.testing.assert_close(grid[0, 0], stored[0, 1], rtol=0, atol=1e-7)
    torch.testing.assert_close(grid[-1, -1], stored[0, -1], rtol=0, atol=1e-7)
    with torch.no_grad():
        assert enc(torch.randn(1, 1, 1024, 128)).shape == (1, 1212, D)


def test_interpolation_is_the_same_for_both_token_orders():
    """A time-major table (t * n_f + f) is resampled as the same table in frequency-major order."""
    torch.manual_seed(0)
    n_t, n_f, D = 6, 4, 8
    freq_major = torch.randn(1, 1 + n_f * n_t, D)
    order = torch.arange(n_f * n_t).view(n_f, n_t).t().reshape(-1)  # time-major row i -> its freq-major row
    time_major = torch.cat([freq_major[:, :1], freq_major[:, 1:][:, order]], dim=1)
    for new in ((11, 7), (6, 4), (3, 2)):  # finer, equal, coarser (the centre crop)
        a = interpolate_positions(freq_major, (n_t, n_f), new, "freq-major")
        b = interpolate_positions(time_major, (n_t, n_f), new, "time-major")
        back = torch.arange(new[0] * new[1]).view(new[1], new[0]).t().reshape(-1)
        assert torch.equal(b[:, 1:], a[:, 1:][:, back]) and torch.equal(a[:, :1], freq_major[:, :1])
        if new == (n_t, n_f):
            assert torch.equal(a, freq_major)
    crop = interpolate_positions(freq_major, (n_t, n_f), (3, 2), "freq-major")[0, 1:].view(2, 3, D)
    assert torch.equal(crop, freq_major[0, 1:].view(n_f, n_t, D)[1:3, 2:5])  # centre rows / columns


def test_a_time_major_sincos_model_gets_its_table_resampled():
    """SSAST-tiny in the SSAM framework: time-major tokens, the fixed sin-cos table (frozen)."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(PRESETS["ssast-tiny"], embed_dim=32, depth=1, block_options={"num_heads": 2})
    enc = SpectrogramEncoder(cfg).eval()
    table = enc.pos_embed.detach().clone()
    enc.set_patch_stride(2, 8)
    assert enc.cfg.grid == (99, 9) and enc.pos_embed.shape == (1, 1 + 99 * 9, 32)
    assert not enc.pos_embed.requires_grad
    torch.testing.assert_close(enc.pos_embed, interpolate_positions(table, (50, 5), (99, 9), "time-major"))
    with torch.no_grad():
        assert enc(torch.randn(2, 1, 200, 80)).shape == (2, 99 * 9, 32)


# ---------------------------------------------------------------- against the official recipe

def test_official_runtime_with_stride_10_is_the_official_finetuning_ft_avgtok(released_file):
    """runtime="official", patch_stride=10: the scene embedding is the released model's
    `ft_avgtok` under SSAST's fine-tuning geometry (kernel at stride 10, positions resampled
    by the official recipe, restated in tests/official_reference.py), for a clip shorter than
    10.24 s (padded) and one longer (cut to its first 1024 frames)."""
    path, state = released_file
    model = hear_ssam.load_model(str(path), runtime="official", patch_stride=10)
    assert model.scene_embedding_size == 64 and model.config["encoder"]["patch_stride_time"] == 10
    reference = OfficialSSAMBA(state, StepBiMamba, depth=DEPTH)
    clips = [noise(1, 3.0, seed=5), noise(1, 12.0, seed=6)]
    with torch.no_grad():
        fbanks = torch.stack([reference.fbank(clip[0]) for clip in clips])
        tokens = reference.forward_tokens(fbanks, fstride=10, tstride=10)
    assert tokens.shape == (2, 1 + 1212, 64)
    for i, audio in enumerate(clips):
        got = hear_ssam.get_scene_embeddings(audio, model)
        torch.testing.assert_close(got, tokens[i:i + 1, 1:].mean(1), rtol=1e-4, atol=1e-5)


def test_hear_frames_with_stride_10_follow_the_steps(released_file):
    """runtime="hear" at stride 10: 100 ms steps, each repeated twice onto a 50 ms grid;
    windows start every 101 * 10 frames so the steps continue across windows; timestamps are
    increasing, 50 ms apart, inside the clip, and one per 50 ms of clip; a step's two frames
    are its frequency tokens as the encoder gives them for its window."""
    path, _ = released_file
    model = hear_ssam.load_model(str(path), patch_stride=10)
    assert (model.frame_repeat, model.frames_per_output, model.frame_hop_ms) == (2, 5, 50.0)
    assert model.window_hop_frames == 1010 and model.timestamp_embedding_size == 12 * 64
    first_centre = model.frontend.first_frame_centre_ms  # 12.5: Kaldi frames are not centre-padded
    for seconds in (0.5, 1.0, ONE_WINDOW / 16000, 23.0):
        audio = noise(1, seconds, seed=int(seconds * 10))
        frames, ts = hear_ssam.get_timestamp_embeddings(audio, model)
        duration = 1000 * audio.shape[1] / 16000
        assert frames.shape == (1, ts.shape[1], 768) and torch.isfinite(frames).all()
        assert ts.shape[1] == math.floor((duration - model.frame_offset_ms) / 50) + 1
        assert (ts[0].diff() > 0).all() and (ts[0].diff() <= 50 + 1e-4).all()
        assert 0 <= ts[0, 0] and ts[0, -1] <= duration and duration - ts[0, -1] <= 50
        # step t's two frames straddle its patch's centre, frame t * 10 + 7.5 (16-frame patch)
        t = torch.arange(ts.shape[1] // 2)
        torch.testing.assert_close(ts[0, 0:2 * len(t):2] + 25, (first_centre + 10 * (10 * t + 7.5)).float())
    # 23 s: three windows, starting at frames 0, 1010 and 2020; step 101 + 5 is window 1's step 5
    spec = model.frontend(audio)
    window = spec[:, :, 1010:1010 + 1024]
    with torch.no_grad():
        grid = model.encoder.tokens_to_grid(model.encoder(window))  # [1, 101, 12, D]
    step = 101 + 5
    for i in (2 * step, 2 * step + 1):
        torch.testing.assert_close(frames[0, i], grid[0, 5].reshape(-1), rtol=1e-5, atol=1e-6)


def test_stride_equal_to_the_patch_changes_nothing(released_file, tmp_path):
    path, _ = released_file
    audio = noise(1, 3.0, seed=2)
    for runtime in ("hear", "official"):
        plain = hear_ssam.load_model(str(path), runtime=runtime)
        same = hear_ssam.load_model(str(path), runtime=runtime, patch_stride=[16, 16])
        assert same.encoder.cfg == plain.encoder.cfg and not same.encoder.cfg.overlapping
        assert same.config == plain.config
        for embed in (hear_ssam.get_scene_embeddings, hear_ssam.get_timestamp_embeddings):
            a, b = embed(audio, same), embed(audio, plain)
            for x, y in zip(*((a, b) if isinstance(a, tuple) else ((a,), (b,)))):
                assert torch.equal(x, y)
    ssast = tiny_file(tmp_path, "ssast")
    a, b = hear_ssam.load_model(str(ssast)), hear_ssam.load_model(str(ssast), patch_stride=(4, 16))
    audio = noise(1, 2.5, seed=3)
    assert torch.equal(hear_ssam.get_scene_embeddings(audio, a), hear_ssam.get_scene_embeddings(audio, b))


def test_an_int_and_a_json_list_mean_the_same_stride(released_file):
    path, _ = released_file
    a = hear_ssam.load_model(str(path), patch_stride=10)
    b = hear_ssam.load_model(str(path), patch_stride=[10, 10])
    assert a.encoder.cfg == b.encoder.cfg and torch.equal(a.encoder.pos_embed, b.encoder.pos_embed)
    c = hear_ssam.load_model(str(path), patch_stride=(10, 16))  # time only
    assert c.encoder.cfg.grid == (101, 8) and c.timestamp_embedding_size == 8 * 64


def test_ssast_time_stride_keeps_the_40ms_grid_and_its_timestamps(tmp_path):
    """SSAST-tiny (4-frame patches, centred STFT) at time stride 2: 20 ms steps, one frame each;
    a step covers frames [2t, 2t + 4), centred at (2t + 1.5) * 10 ms."""
    model = hear_ssam.load_model(str(tiny_file(tmp_path, "ssast")), patch_stride=(2, 16))
    assert model.encoder.cfg.grid == (99, 5) and model.window_hop_frames == 198
    audio = noise(1, 4.3, seed=4)
    frames, ts = hear_ssam.get_timestamp_embeddings(audio, model)
    assert frames.shape[:2] == ts.shape and (ts[0].diff() - 20).abs().max() < 1e-3
    torch.testing.assert_close(ts[0, :3], torch.tensor([15.0, 35.0, 55.0]))
    assert 4300 - 20 < ts[0, -1] <= 4300
    spec = model.frontend(audio)
    with torch.no_grad():
        grid = model.encoder.tokens_to_grid(model.encoder(spec[:, :, 198:198 + 200]))  # the second window
    torch.testing.assert_close(frames[0, 99 + 7], grid[0, 7].reshape(-1), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- refusals

def test_families_without_overlapping_finetuning_refuse(tmp_path):
    for family in ("ssam", "axlstm"):
        path = tiny_file(tmp_path, family)
        with pytest.raises(ValueError, match=f"patch_stride applies to SSAST and SSAMBA.*; {family} uses "
                                             "non-overlapping patches"):
            hear_ssam.load_model(str(path), patch_stride=2)


def test_a_stride_above_the_patch_names_the_dimension_and_a_pair(tmp_path):
    path = tiny_file(tmp_path, "ssast")  # patches of 4 frames x 16 bins
    with pytest.raises(ValueError, match=r"the time stride 10 must be from 1 to the patch's 4 frames.*"
                                         r"such as \(4, 10\)"):
        hear_ssam.load_model(str(path), patch_stride=10)
    with pytest.raises(ValueError, match=r"the frequency stride 20 must be from 1 to the patch's 16 bins"):
        hear_ssam.load_model(str(path), patch_stride=(4, 20))
    for bad in ("10", (10,), (2.0, 10), True):
        with pytest.raises(ValueError, match="patch_stride must be an int .* or a \\(time, freq\\) pair"):
            hear_ssam.load_model(str(path), patch_stride=bad)
    with pytest.raises(ValueError, match="patch_stride_time must be a whole number from 1 to patch_time"):
        dataclasses.replace(PRESETS["ssast-tiny"], patch_stride_time=10)
    with pytest.raises(ValueError, match="patch_stride_freq must be a whole number"):
        dataclasses.replace(PRESETS["ssast-tiny"], patch_stride_freq=0)


def test_window_seconds_and_the_released_layout_refuse_a_stride(released_file, tmp_path):
    path, _ = released_file
    with pytest.raises(ValueError, match="patch_stride resamples the positions of the pretraining window"):
        hear_ssam.load_model(str(path), patch_stride=10, window_seconds=5.0)
    assert hear_ssam.load_model(str(path), patch_stride=10, window_seconds=10.24).encoder.cfg.overlapping
    ssast = tiny_file(tmp_path, "ssast")
    with pytest.raises(ValueError, match="released SSAM/AxLSTM runtime, which has non-overlapping patches"):
        hear_ssam.load_model(str(ssast), runtime="official", patch_stride=(2, 16))


def test_pretraining_calls_and_a_second_stride_are_refused(released_file):
    enc, _ = load_checkpoint(released_file[0])
    enc.set_patch_stride(10, 10)
    spec, mask = torch.randn(1, 1, 1024, 128), torch.zeros(1, 1212, dtype=torch.bool)
    calls = {"patchify": lambda: enc.patchify(spec),
             "unpatchify": lambda: enc.unpatchify(torch.randn(1, 1212, 256)),
             "encode_masked": lambda: enc.encode_masked(spec, mask), "reconstruct": lambda: enc.reconstruct(spec, mask)}
    for name, call in calls.items():
        with pytest.raises(ValueError, match=f"{name}: pretraining needs non-overlapping patches"):
            call()
    enc.set_patch_stride(10, 10)  # the stride it has: nothing to do
    with pytest.raises(ValueError, match="already has overlapping patches"):
        enc.set_patch_stride(8, 8)
    with pytest.raises(ValueError, match="already has overlapping patches"):
        enc.set_patch_stride(16, 16)
    ssam = SpectrogramEncoder(EncoderConfig(embed_dim=16, depth=1, patch_stride_time=2))
    assert not ssam.is_causal and ssam.cfg.grid == (99, 5)
    with pytest.raises(ValueError, match="overlapping patches .* use its window"):
        ssam.extend_window(400)
    short = SpectrogramEncoder(EncoderConfig(embed_dim=16, depth=1))
    short.pos_embed = torch.nn.Parameter(short.pos_embed[:, :100].detach(), requires_grad=False)
    with pytest.raises(ValueError, match="positions have 100 rows, its \\(50, 5\\) grid needs 251"):
        short.set_patch_stride(2, 16)


# ---------------------------------------------------------------- checkpoints

def test_a_strided_checkpoint_round_trips(released_file, tmp_path):
    path, _ = released_file
    enc, config = load_checkpoint(path)
    enc.set_patch_stride(10, 10)
    out = tmp_path / "stride10.safetensors"
    saved = save_checkpoint(out, enc, frontend=hear_ssam.frontend.SSAMBA_FBANK)
    assert saved["encoder"]["patch_stride_time"] == 10 and saved["preset"] is None
    again, stored = load_checkpoint(out)
    assert again.cfg == enc.cfg and again.cfg.grid == (101, 12) and again.patch_embed.proj.stride == (10, 10)
    for k, v in enc.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
    audio = noise(1, 2.0, seed=8)
    direct = hear_ssam.load_model(str(path), patch_stride=10)
    reloaded = hear_ssam.load_model(str(out))  # None keeps the file's geometry
    assert reloaded.encoder.cfg == direct.encoder.cfg
    torch.testing.assert_close(hear_ssam.get_scene_embeddings(audio, reloaded),
                               hear_ssam.get_scene_embeddings(audio, direct), rtol=0, atol=1e-6)
    assert hear_ssam.load_model(str(out), patch_stride=10).encoder.cfg == enc.cfg
    with pytest.raises(ValueError, match="already has overlapping patches"):
        hear_ssam.load_model(str(out), patch_stride=8)


def test_configs_without_the_stride_fields_load_as_the_presets():
    for name, cfg in PRESETS.items():
        older = {k: v for k, v in cfg.to_dict().items() if not k.startswith("patch_stride")}
        assert EncoderConfig(**older) == cfg and not cfg.overlapping, name
        assert (cfg.patch_stride_time, cfg.patch_stride_freq) == (cfg.patch_time, cfg.patch_freq)
