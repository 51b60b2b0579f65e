"""The log-mel baseline (`load_model("logmel")`): HEAR contract, features restated with torchaudio."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchaudio

import hear_ssam


def _audio(n=2, seconds=1.37, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * 16000)) / 16000
    tone = torch.sin(2 * torch.pi * 440 * t) * (t > 0.5)
    return (0.1 * torch.randn(n, t.numel(), generator=g) + tone).float()


def _restated_logmel(audio):
    """SSAM's frontend from its documented parameters: 400-point STFT, 10 ms hop, 80 mels
    50-8000 Hz, log(mel + eps), each clip standardised over all its bins."""
    mel = torchaudio.transforms.MelSpectrogram(16000, n_fft=400, win_length=400, hop_length=160,
                                               f_min=50.0, f_max=8000.0, n_mels=80, power=2.0)(audio)
    x = torch.log(mel + torch.finfo(torch.float32).eps).transpose(1, 2)  # [n, T, 80]
    mean = x.mean(dim=(1, 2), keepdim=True)
    std = x.std(dim=(1, 2), keepdim=True)
    return (x - mean) / (std + 1e-8)


def test_logmel_baseline_embeddings_are_the_documented_features():
    model = hear_ssam.load_model("logmel")
    assert isinstance(model, hear_ssam.LogMelBaseline)
    assert (model.sample_rate, model.timestamp_embedding_size, model.scene_embedding_size) == (16000, 80, 160)
    audio = _audio()
    feats = _restated_logmel(audio)
    scene = hear_ssam.get_scene_embeddings(audio, model)
    torch.testing.assert_close(scene, torch.cat([feats.mean(1), feats.std(1, unbiased=False)], 1),
                               atol=2e-4, rtol=1e-4)
    emb, ts = hear_ssam.get_timestamp_embeddings(audio, model)
    assert emb.dtype == ts.dtype == torch.float32
    # frame i is the mean of feature frames 4i..4i+3, centred at 15 + 40 i ms
    assert emb.shape[:2] == ts.shape and emb.shape[2] == 80
    torch.testing.assert_close(emb[:, 3], feats[:, 12:16].mean(1), atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(ts[0, :3], torch.tensor([15.0, 55.0, 95.0]))
    assert ts[0, -1] <= 1370 and 1370 - ts[0, -1] <= 40


def test_logmel_baseline_frames_sit_on_the_encoders_grid(random_model):
    """Same timestamps as an SSAM model for any length, so event probes compare like with like."""
    model = hear_ssam.load_model("logmel")
    for seconds in (0.2, 1.0, 1.98, 4.01):
        audio = _audio(1, seconds)
        _, ts_base = hear_ssam.get_timestamp_embeddings(audio, model)
        _, ts_ssam = hear_ssam.get_timestamp_embeddings(audio, random_model)
        torch.testing.assert_close(ts_base, ts_ssam)


def test_logmel_baseline_checks_its_input_like_the_encoders():
    model = hear_ssam.load_model("logmel")
    with pytest.raises(TypeError, match="float32"):
        hear_ssam.get_scene_embeddings(_audio().double(), model)
    with pytest.raises(ValueError, match="2 dimensions"):
        hear_ssam.get_scene_embeddings(_audio()[0], model)


@pytest.mark.slow
def test_hear_validator_accepts_the_logmel_baseline(tmp_path):
    path = tmp_path / "logmel.safetensors"  # the tools want an existing file
    subprocess.run([sys.executable, "-m", "hear_ssam", "init", "logmel", str(path)], check=True)
    out = subprocess.run([str(Path(sys.executable).parent / "hear-validator"), "hear_ssam", "--model", str(path)],
                         capture_output=True, text=True, timeout=600)
    assert "Looks good!" in out.stdout + out.stderr, out.stdout[-2000:] + out.stderr[-2000:]


def test_baseline_file_loads_as_the_baseline_and_is_refused_as_an_encoder(tmp_path):
    from hear_ssam.__main__ import main
    path = tmp_path / "logmel.safetensors"
    assert main(["init", "logmel", str(path)]) == 0
    model = hear_ssam.load_model(str(path))
    assert isinstance(model, hear_ssam.LogMelBaseline)
    audio = _audio()
    torch.testing.assert_close(hear_ssam.get_scene_embeddings(audio, model),
                               hear_ssam.get_scene_embeddings(audio, hear_ssam.load_model("logmel")))
    with pytest.raises(hear_ssam.CheckpointError, match="feature baseline"):
        hear_ssam.load_checkpoint(path)
