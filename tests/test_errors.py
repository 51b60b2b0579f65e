"""Bad input is refused with a message that names the problem."""
import pytest
import torch

import hear_ssam
from conftest import noise


@pytest.mark.parametrize("audio,exc,pattern", [
    (torch.zeros(2, 16000, dtype=torch.int16), TypeError, "float32, got torch.int16.*integer PCM"),
    (torch.zeros(2, 16000, dtype=torch.float64), TypeError, "float32, got torch.float64"),
    (torch.zeros(16000), ValueError, "2 dimensions.*unsqueeze"),
    (torch.zeros(2, 1, 16000), ValueError, "2 dimensions.*mono"),
    (torch.zeros(0, 16000), ValueError, "batch is empty"),
    (torch.zeros(3, 0), ValueError, "zero-length clip"),
    (torch.zeros(3, 150), ValueError, "150 samples are too short"),
    (torch.zeros(16000, 2), ValueError, "transpose"),
])
def test_bad_audio(random_model, audio, exc, pattern):
    for fn in (hear_ssam.get_scene_embeddings, hear_ssam.get_timestamp_embeddings):
        with pytest.raises(exc, match=pattern):
            fn(audio, random_model)


def test_nan_and_inf_name_the_clip(random_model):
    audio = noise(4, 1.0)
    audio[2, 100] = float("nan")
    audio[3, 5] = float("inf")
    with pytest.raises(ValueError, match=r"NaN or Inf .* clip\(s\) \[2, 3\]"):
        hear_ssam.get_scene_embeddings(audio, random_model)


def test_numpy_input_is_a_type_error(random_model):
    with pytest.raises(TypeError, match="torch.Tensor.*numpy.ndarray"):
        hear_ssam.get_scene_embeddings(noise(1, 1.0).numpy(), random_model)


def test_changed_sample_rate_attribute(random_model):
    model = hear_ssam.HearSSAM(random_model.encoder)
    model.sample_rate = 44100
    with pytest.raises(ValueError, match="44100.*16000 Hz.*resample"):
        hear_ssam.get_scene_embeddings(noise(1, 1.0), model)


def test_audio_on_another_device(random_model):
    audio = noise(1, 1.0).to("meta")
    with pytest.raises(ValueError, match="audio is on meta but the model is on cpu"):
        hear_ssam.get_scene_embeddings(audio, random_model)


def test_wrong_model_object():
    with pytest.raises(TypeError, match="load_model"):
        hear_ssam.get_scene_embeddings(noise(1, 1.0), torch.nn.Linear(2, 2))


@pytest.mark.parametrize("bad", [0, -2, 1.5, "8", True])
def test_chunk_batch_size_must_be_a_whole_number_of_windows(bad):
    with pytest.raises(ValueError, match=r"chunk_batch_size is the number of windows per encoder call.*got"):
        hear_ssam.load_model("", chunk_batch_size=bad)
