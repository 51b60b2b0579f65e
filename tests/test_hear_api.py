"""The HEAR contract: shapes, dtypes, timestamps, batching, lengths, devices."""
import pytest
import torch

import hear_ssam
from conftest import noise


def test_attributes_are_plain_ints_and_model_is_in_eval_mode(monkeypatch, tmp_path):
    import hear_ssam.api as api
    monkeypatch.setattr(api, "DEFAULT_CHECKPOINT", tmp_path / "absent.safetensors")
    with pytest.warns(UserWarning, match="randomly initialised ssam-tiny"):
        model = hear_ssam.load_model()
    for name in ("sample_rate", "scene_embedding_size", "timestamp_embedding_size"):
        assert type(getattr(model, name)) is int
    assert model.sample_rate == 16000 and model.scene_embedding_size == 960
    assert not model.training and not model.encoder.training
    assert model.config["provenance"]["weights"] == "random init, seed 0"


def test_bundled_default_checkpoint():
    import warnings
    import hear_ssam.api as api
    if not api.DEFAULT_CHECKPOINT.exists():
        pytest.skip("this install ships no bundled checkpoint")
    assert api.DEFAULT_CHECKPOINT.stat().st_size <= 20 * 2**20
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no random-init warning
        model = hear_ssam.load_model()
    prov = model.config["provenance"]
    assert model.encoder.cfg == hear_ssam.PRESETS["ssam-tiny"]
    for key in ("steps", "global_batch", "final_loss", "data_hours", "command"):
        assert prov.get(key) not in (None, ""), key
    torch.manual_seed(0)
    random = hear_ssam.preset_encoder("ssam-tiny")
    w = model.encoder.blocks[0].mixer.in_proj.weight
    assert not torch.allclose(w, random.blocks[0].mixer.in_proj.weight)


@pytest.mark.parametrize("seconds", [0.0126, 0.3, 1.0, 1.07, 1.98, 2.0, 4.0, 4.01, 5.3])
def test_timestamps_are_centred_regular_and_reach_the_end(random_model, seconds):
    audio = noise(2, seconds)
    emb, ts = hear_ssam.get_timestamp_embeddings(audio, random_model)
    duration = 1000 * audio.shape[1] / 16000
    assert emb.dtype == torch.float32 and ts.dtype == torch.float32
    assert emb.shape[:2] == ts.shape and emb.shape[0] == 2 and emb.shape[2] == 960
    assert torch.equal(ts[0], ts[1])
    assert ts[0, -1] <= duration  # the validator fails past the end...
    if ts.shape[1] > 1:
        assert ts[0, -1] > duration - 40  # ...and only warns if the end has no frame
        steps = ts[0].diff()
        assert torch.allclose(steps, torch.full_like(steps, 40.0))
        assert ts[0, 0] == 15.0  # patch of mel frames 0..3, centred at 1.5 frames


def test_frame_count_follows_from_the_clip_length(random_model):
    assert random_model.n_frames(16000) == 25  # 1 s: 25 frames at 40 ms
    assert random_model.n_frames(32000) == 50
    assert random_model.n_frames(120 * 16000) == 3000


def test_scene_embedding_is_the_mean_of_frames(random_model):
    audio = noise(3, 2.74)
    frames, _ = hear_ssam.get_timestamp_embeddings(audio, random_model)
    scene = hear_ssam.get_scene_embeddings(audio, random_model)
    assert scene.shape == (3, 960) and scene.dtype == torch.float32
    torch.testing.assert_close(scene, frames.mean(1))


def test_a_clip_does_not_depend_on_its_batch_mates(random_model):
    audio = noise(4, 1.3)
    together = hear_ssam.get_scene_embeddings(audio, random_model)
    alone = hear_ssam.get_scene_embeddings(audio[2:3], random_model)
    torch.testing.assert_close(together[2:3], alone, rtol=1e-4, atol=1e-5)


def test_chunk_batch_size_does_not_change_results(random_model):
    audio = noise(1, 9.0)
    a, _ = hear_ssam.get_timestamp_embeddings(audio, random_model)
    small = hear_ssam.HearSSAM(random_model.encoder, chunk_batch_size=1)
    b, _ = hear_ssam.get_timestamp_embeddings(audio, small)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_chunks_are_independent_2s_windows(random_model):
    """Frames of the 2nd chunk of a 4 s clip equal those of that chunk encoded alone
    (after the whole-clip normalisation), so no state crosses chunk boundaries."""
    audio = noise(1, 4.0)
    spec = random_model.frontend(audio)
    with torch.no_grad():
        frames = random_model.clip_frames(spec)
        second = random_model.encode(spec[:, :, 200:400])
    torch.testing.assert_close(frames[:, 50:100], second, rtol=1e-5, atol=1e-5)


def test_heareval_batch_of_84_one_second_clips(random_model):
    emb = hear_ssam.get_scene_embeddings(noise(84, 1.0), random_model)
    assert emb.shape == (84, 960) and torch.isfinite(emb).all()


@pytest.mark.slow
def test_one_two_minute_clip(random_model):
    emb, ts = hear_ssam.get_timestamp_embeddings(noise(1, 120.0), random_model)
    assert emb.shape == (1, 3000, 960)
    assert ts[0, -1] == 15 + 40 * 2999


def test_ssast_baseline_runs_through_the_same_api():
    torch.manual_seed(0)
    enc = hear_ssam.preset_encoder("ssast-tiny").eval()
    model = hear_ssam.HearSSAM(enc)
    emb, ts = hear_ssam.get_timestamp_embeddings(noise(2, 3.1), model)
    assert emb.shape == (2, model.n_frames(int(3.1 * 16000)), 960)


def test_official_order_differs_from_time_major(random_model):
    official = hear_ssam.HearSSAM(random_model.encoder, runtime="official")
    audio = noise(1, 2.0)
    a, ts_a = hear_ssam.get_timestamp_embeddings(audio, random_model)
    b, ts_b = hear_ssam.get_timestamp_embeddings(audio, official)
    # T = 201 mel frames: official pads 199 frames (2 chunks, 100 frames), trims int(49.75)
    assert a.shape == (1, 50, 960) and b.shape == (1, 51, 960)
    assert not torch.allclose(a, b[:, :50])
    assert ts_b[0, -1] < 2000 and torch.allclose(ts_b[0].diff(), torch.full((50,), 2000 / 51))


def test_the_released_layout_refuses_frequency_major_tokens():
    """The released SSAM/AxLSTM reshape assumes time-major tokens; a frequency-major encoder of
    the SSAM framework (no released runtime of its own) is refused by name."""
    cfg = hear_ssam.EncoderConfig(embed_dim=32, depth=2, patch_order="freq-major")
    with pytest.raises(ValueError, match="runtime='official' reproduces the released SSAM/AxLSTM runtime.*"
                                         "frequency-major.*use runtime='hear'"):
        hear_ssam.HearSSAM(hear_ssam.SpectrogramEncoder(cfg), runtime="official")


def test_long_windows_keep_the_first_2s_exact_for_a_causal_encoder(random_model):
    """A 10 s window extends the sin-cos table by its formula; SSAM is causal, so the frames of
    the first 2 s are those of the 2 s window, and later frames now see more context."""
    import hear_ssam.api as api
    from hear_ssam.encoder import sincos_pos_embed_2d
    audio = noise(1, 7.3, seed=9)
    short = hear_ssam.load_model(str(api.DEFAULT_CHECKPOINT)) if api.DEFAULT_CHECKPOINT.exists() else None
    if short is None:
        pytest.skip("needs the bundled checkpoint")
    long = hear_ssam.load_model(str(api.DEFAULT_CHECKPOINT), window_seconds=10)
    assert long.encoder.cfg.crop_frames == 1000 and long.config["window_seconds"] == 10
    assert long.chunk_batch_size == 3  # about 32 s of audio per encoder call
    assert torch.equal(long.encoder.pos_embed[:, :251], short.encoder.pos_embed)  # the stored rows
    torch.testing.assert_close(long.encoder.pos_embed, sincos_pos_embed_2d(192, (250, 5)), rtol=0, atol=2e-3)
    a, ts_a = hear_ssam.get_timestamp_embeddings(audio, short)
    b, ts_b = hear_ssam.get_timestamp_embeddings(audio, long)
    assert a.shape == b.shape and torch.equal(ts_a, ts_b)
    torch.testing.assert_close(b[:, :50], a[:, :50], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(b[:, 60:], a[:, 60:], atol=1e-2)  # no chunk boundary at 2 s any more


def test_window_errors_are_named():
    with pytest.raises(ValueError, match="runtime='official'.*only uses 2 s windows.*window_seconds=5"):
        hear_ssam.load_model(runtime="official", window_seconds=5)
    with pytest.raises(ValueError, match=r"window_seconds must be in \(0, 1200\]"):
        hear_ssam.load_model(window_seconds=0)
    with pytest.raises(ValueError, match="window_seconds must be a number"):
        hear_ssam.load_model(window_seconds="long")
    enc = hear_ssam.preset_encoder("ssam-tiny")
    with torch.no_grad():
        enc.pos_embed.add_(0.1)  # as if learned
    with pytest.raises(ValueError, match="not the fixed sin-cos table"):
        enc.extend_window(400)


def test_every_family_runs_on_a_long_window():
    audio = noise(1, 12.5, seed=2)
    for preset in ("ssast-tiny", "axlstm-tiny"):
        torch.manual_seed(0)
        enc = hear_ssam.preset_encoder(preset).eval()
        enc.extend_window(3000)  # 30 s: one window holds the whole clip
        emb, ts = hear_ssam.get_timestamp_embeddings(audio, hear_ssam.HearSSAM(enc))
        assert emb.shape == (1, ts.shape[1], 960) and torch.isfinite(emb).all()


def test_half_precision_autocast_stays_close_to_fp32(random_model):
    """bf16 autocast (CPU; fp16 is the same switch on CUDA): float32 outputs, close to fp32."""
    audio = noise(2, 2.5, seed=3)
    half = hear_ssam.HearSSAM(random_model.encoder, precision="bf16")
    a, _ = hear_ssam.get_timestamp_embeddings(audio, random_model)
    b, _ = hear_ssam.get_timestamp_embeddings(audio, half)
    assert b.dtype == torch.float32 and half.config["precision"] == "bf16"
    assert ((b - a).norm() / a.norm()).item() < 2e-2
    with pytest.raises(ValueError, match="precision must be one of"):
        hear_ssam.HearSSAM(random_model.encoder, precision="int8")
