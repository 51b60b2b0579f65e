"""Checkpoints: our safetensors format, official .pth files, converter, parity, errors."""
import argparse
import pickle
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import hear_ssam
from hear_ssam.__main__ import main as cli
from conftest import noise
from official_reference import OfficialSSAM, official_embeddings


def _fake_ml_collections():
    """A stand-in ConfigDict class living at ml_collections' real import path, so that the
    pickled 'args' reference the same globals the released checkpoints do."""
    mod = types.ModuleType("ml_collections.config_dict.config_dict")

    class ConfigDict(dict):
        pass

    ConfigDict.__module__ = mod.__name__
    ConfigDict.__qualname__ = "ConfigDict"
    mod.ConfigDict = ConfigDict
    for name in ("ml_collections", "ml_collections.config_dict"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules[mod.__name__] = mod
    return ConfigDict


def write_official(path, encoder, extra=None):
    """The official torch.save layout: model/optimizer/epoch/scaler/args."""
    ConfigDict = _fake_ml_collections()
    cfg = ConfigDict(model=ConfigDict(arch="mamba_ssast_tiny"), batch_size=256)
    blob = {"model": encoder.state_dict(), "optimizer": {"state": {}, "param_groups": []},
            "epoch": 99, "scaler": {"scale": 65536.0}, "args": argparse.Namespace(config=cfg)}
    blob.update(extra or {})
    torch.save(blob, path)
    for name in list(sys.modules):
        if name.startswith("ml_collections"):
            del sys.modules[name]  # the loader must not need ml_collections


@pytest.fixture(scope="module")
def official_file(tmp_path_factory):
    torch.manual_seed(1)
    enc = hear_ssam.preset_encoder("ssam-tiny")
    path = tmp_path_factory.mktemp("official") / "checkpoint-99.pth"
    write_official(path, enc)
    return path, enc


def test_plain_weights_only_load_refuses_the_official_layout(official_file):
    with pytest.raises(pickle.UnpicklingError):
        torch.load(official_file[0], weights_only=True)


def test_official_pth_loads_with_the_restricted_unpickler(official_file):
    path, enc = official_file
    model = hear_ssam.load_model(str(path))
    assert model.encoder.cfg == hear_ssam.PRESETS["ssam-tiny"]
    for k, v in enc.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[k], v), k


def test_hostile_pickle_runs_no_code(tmp_path, official_file):
    class Evil:
        def __reduce__(self):
            return (exec, ("open(%r, 'w').write('pwned')" % str(tmp_path / "pwned"),))
    _, enc = official_file
    path = tmp_path / "evil.pth"
    write_official(path, enc, {"args": Evil()})
    hear_ssam.load_model(str(path))
    assert not (tmp_path / "pwned").exists()


def test_official_order_reproduces_the_official_runtime(official_file, mamba_cls):
    """Embeddings with runtime='official' equal the released hear_api's, computed by
    an independent model built from mamba_ssm's own Mamba module (reference scan), or the
    tests' restatement of it where mamba-ssm is not installed."""
    path, enc = official_file
    reference = OfficialSSAM(mamba_cls).eval()
    reference.load_state_dict(enc.state_dict(), strict=True)
    ours = hear_ssam.load_model(str(path), runtime="official")
    for seconds in (1.3, 1.99, 4.4):  # 1.99 s: T = 200 frames, a whole padding chunk
        audio = noise(2, seconds, seed=int(seconds * 10))
        want = official_embeddings(reference, audio)
        got, ts = hear_ssam.get_timestamp_embeddings(audio, ours)
        assert got.shape == want.shape, seconds
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(hear_ssam.get_scene_embeddings(audio, ours), want.mean(1),
                                   rtol=1e-4, atol=1e-4)


def test_time_major_order_reproduces_the_official_model_per_token(official_file, mamba_cls):
    """Default order: same tokens as the official model, laid out time-major."""
    path, enc = official_file
    reference = OfficialSSAM(mamba_cls).eval()
    reference.load_state_dict(enc.state_dict(), strict=True)
    ours = hear_ssam.load_model(str(path))
    audio = noise(1, 2.3, seed=5)
    spec = ours.frontend(audio)
    with torch.no_grad():
        got = ours.encoder(spec[:, :, :200])
        ref_frames = reference.forward_features(spec[:, :, :200])  # (f t) layout
    # undo 'b (f t) d -> b t (f d)': token k = f * 50 + t in their reading
    want = ref_frames.reshape(1, 50, 5, 192).transpose(1, 2).reshape(1, 250, 192)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def stored_config(path):
    import json
    from safetensors import safe_open
    from hear_ssam.checkpoint import METADATA_KEY
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()[METADATA_KEY])


def test_convert_round_trip_keeps_weights_and_runtime(tmp_path, official_file, capsys):
    path, enc = official_file
    out = tmp_path / "ssam_tiny.safetensors"
    assert cli(["convert", str(path), str(out), "--runtime", "official"]) == 0
    assert stored_config(out)["runtime"] == "official" and "token_order" not in stored_config(out)
    model = hear_ssam.load_model(str(out))
    assert model.runtime == "official" and model.frame_layout == "released"
    assert model.config["provenance"]["converted_from"] == str(path)
    for k, v in enc.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[k], v), k
    assert cli(["info", str(out)]) == 0
    assert '"trainable_parameters": 4760512' in capsys.readouterr().out
    again = tmp_path / "copy.safetensors"  # a file converted without --runtime keeps its source's
    assert cli(["convert", str(out), str(again)]) == 0 and stored_config(again)["runtime"] == "official"
    assert cli(["convert", str(path), str(again)]) == 0 and stored_config(again)["runtime"] == "hear"  # a release


def test_init_writes_each_preset(tmp_path):
    for preset in ("ssam-tiny", "ssast-tiny"):
        out = tmp_path / f"{preset}.safetensors"
        assert cli(["init", preset, str(out), "--seed", "3"]) == 0
        model = hear_ssam.load_model(str(out))
        assert model.encoder.cfg == hear_ssam.PRESETS[preset]
        assert model.config["provenance"]["weights"] == "random init, seed 3"


def test_init_and_baseline_make_missing_folders(tmp_path):
    """`init` into a folder that does not exist yet writes the file (it used to fail inside
    safetensors with a bare 'No such file or directory' on a .tmp name)."""
    for preset in ("ssam-tiny", "logmel"):
        out = tmp_path / "new" / preset / "model.safetensors"
        assert cli(["init", preset, str(out)]) == 0
        assert hear_ssam.load_model(str(out)).config["preset"] == preset
        assert [p.name for p in out.parent.iterdir()] == ["model.safetensors"]  # no .tmp left


def test_missing_file(tmp_path):
    with pytest.raises(hear_ssam.CheckpointError, match="nope.safetensors: checkpoint file does not exist"):
        hear_ssam.load_model(str(tmp_path / "nope.safetensors"))


def test_unknown_file_type(tmp_path):
    p = tmp_path / "model.onnx"
    p.write_bytes(b"\x08\x01garbage")
    with pytest.raises(hear_ssam.CheckpointError, match="model.onnx: unknown checkpoint type '.onnx'"):
        hear_ssam.load_model(str(p))


def test_corrupt_files(tmp_path):
    p = tmp_path / "broken.safetensors"
    p.write_bytes(b"\xff" * 100)
    with pytest.raises(hear_ssam.CheckpointError, match="broken.safetensors: not a readable safetensors"):
        hear_ssam.load_model(str(p))
    q = tmp_path / "broken.pth"
    q.write_bytes(b"PK\x03\x04" + b"\x00" * 50)
    with pytest.raises(hear_ssam.CheckpointError, match="broken.pth"):
        hear_ssam.load_model(str(q))


def test_foreign_safetensors_without_config(tmp_path):
    p = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(p))
    with pytest.raises(hear_ssam.CheckpointError, match="no 'hear_ssam' config.*convert"):
        hear_ssam.load_model(str(p))


def test_missing_and_unexpected_keys_are_named(tmp_path, official_file):
    _, enc = official_file
    sd = enc.state_dict()
    sd.pop("blocks.3.mixer.D")
    sd["blocks.3.mixer.extra"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(hear_ssam.CheckpointError,
                       match=r"bad.pth.*missing keys \['blocks.3.mixer.D'\].*unexpected keys \['blocks.3.mixer.extra'\]"):
        hear_ssam.load_model(str(path))


def test_shape_mismatch_is_named(tmp_path, official_file):
    _, enc = official_file
    hear_ssam.save_checkpoint(tmp_path / "ok.safetensors", enc)
    from safetensors import safe_open
    with safe_open(str(tmp_path / "ok.safetensors"), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors["encoder_norm.weight"] = torch.ones(7)
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(hear_ssam.CheckpointError,
                       match=r"bad.safetensors: key 'encoder_norm.weight' has shape \(7,\), the model expects \(192,\)"):
        hear_ssam.load_model(str(tmp_path / "bad.safetensors"))


def test_not_a_model_state_dict(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, path)
    with pytest.raises(hear_ssam.CheckpointError, match="other.pth: not a state dict of a known family"):
        hear_ssam.load_model(str(path))


def test_cli_reports_errors_without_a_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "hear_ssam", "info", str(tmp_path / "x.pth")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "x.pth: checkpoint file does not exist" in r.stderr and "Traceback" not in r.stderr


# The header of a format-1 file as release 0.1.0 wrote it (the bundled default of that
# release, provenance shortened): flat encoder fields with `arch`, a descriptive frontend
# record, fp16 weights. Format-1 files must keep loading to the same model.
FORMAT_1_CONFIG = {
    "format": "hear_ssam/1", "preset": "ssam-tiny",
    "encoder": {"arch": "ssam", "embed_dim": 192, "depth": 12, "n_mels": 80, "crop_frames": 200, "patch_time": 4,
                "patch_freq": 16, "norm_eps": 1e-06, "d_state": 24, "d_conv": 4, "expand": 3, "num_heads": 3,
                "mlp_ratio": 4.0},
    "frontend": {"sample_rate": 16000, "n_fft": 400, "win_length": 400, "hop_length": 160, "f_min": 50.0,
                 "f_max": 8000.0, "n_mels": 80, "log_eps": "float32 eps",
                 "normalization": "per clip: (x - mean) / (std + 1e-8)"},
    "token_order": "time-major",
    "provenance": {"preset": "ssam-tiny", "steps": 200, "global_batch": 32, "clips_seen": 6400,
                   "loss": "all", "hear_ssam_version": "0.1.0"},
}


def test_a_format1_file_loads_to_the_model_its_weights_make(tmp_path):
    import json
    from hear_ssam.checkpoint import METADATA_KEY
    torch.manual_seed(3)
    encoder = hear_ssam.preset_encoder("ssam-tiny").half()  # stored as fp16, as then
    path = tmp_path / "release0.1.safetensors"
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(path),
              metadata={METADATA_KEY: json.dumps(FORMAT_1_CONFIG)})
    model = hear_ssam.load_model(str(path))
    assert model.config["format"] == "hear_ssam/2" and model.config["family"] == "ssam"
    assert model.config["preset"] == "ssam-tiny" and model.encoder.cfg == hear_ssam.PRESETS["ssam-tiny"]
    assert model.encoder.pretraining == hear_ssam.PretrainingOptions()  # format 1 had SSAM's heads only
    assert model.config["pretraining"] == hear_ssam.PretrainingOptions().to_dict()
    assert model.frontend.cfg == hear_ssam.FrontendConfig()  # format 1 always meant SSAM's log-mel
    assert model.config["provenance"]["clips_seen"] == 6400
    direct = hear_ssam.HearSSAM(encoder.float().eval())
    audio = noise(2, 3.3, seed=123)
    for a, b in zip(hear_ssam.get_timestamp_embeddings(audio, model), hear_ssam.get_timestamp_embeddings(audio, direct)):
        assert torch.equal(a, b)


def test_loading_leaves_the_callers_random_state_alone(tmp_path, official_file, monkeypatch):
    path, _ = official_file
    hear_ssam.save_checkpoint(tmp_path / "m.safetensors", official_file[1])
    torch.manual_seed(7)
    want = torch.rand(3)
    torch.manual_seed(7)
    hear_ssam.load_model(str(path))
    hear_ssam.load_model(str(tmp_path / "m.safetensors"))
    import hear_ssam.api as api
    monkeypatch.setattr(api, "DEFAULT_CHECKPOINT", tmp_path / "absent.safetensors")
    with pytest.warns(UserWarning, match="randomly initialised"):
        hear_ssam.load_model()  # the seeded random-init fallback
    assert torch.equal(torch.rand(3), want)


def test_loaded_models_keep_positions_frozen(official_file):
    model = hear_ssam.load_model(str(official_file[0]))
    assert not model.encoder.pos_embed.requires_grad
    assert model.encoder.cls_token.requires_grad and model.encoder.cls_token.device.type == "cpu"


def test_config_reports_the_runtime_that_runs(official_file):
    model = hear_ssam.load_model(str(official_file[0]), runtime="official")
    assert model.runtime == "official" and model.config["runtime"] == "official"
    assert "token_order" not in model.config


def test_the_older_token_order_spelling_still_works(tmp_path, official_file):
    """`token_order` (load_model, heareval's --model-options, `convert --token-order`, and the
    config of every file written before `runtime`) means the same runtimes as before."""
    import json
    from hear_ssam.checkpoint import METADATA_KEY
    path, enc = official_file
    audio = noise(1, 2.6, seed=11)
    new = hear_ssam.load_model(str(path), runtime="official")
    old = hear_ssam.load_model(str(path), token_order="official")
    assert old.runtime == "official" and old.config["runtime"] == "official"
    for a, b in zip(hear_ssam.get_timestamp_embeddings(audio, new), hear_ssam.get_timestamp_embeddings(audio, old)):
        assert torch.equal(a, b)
    assert hear_ssam.load_model(str(path), token_order="time-major").runtime == "hear"
    out = tmp_path / "alias.safetensors"
    assert cli(["convert", str(path), str(out), "--token-order", "official"]) == 0
    assert stored_config(out)["runtime"] == "official"
    stored = {k: v for k, v in stored_config(out).items() if k != "runtime"}
    for token_order, runtime in (("official", "official"), ("time-major", "hear")):  # as older files store it
        older = tmp_path / f"older_{token_order}.safetensors"
        save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, str(older),
                  metadata={METADATA_KEY: json.dumps(dict(stored, token_order=token_order))})
        model = hear_ssam.load_model(str(older))
        assert model.runtime == runtime and model.config["runtime"] == runtime and "token_order" not in model.config
    bundled = stored_config(hear_ssam.api.DEFAULT_CHECKPOINT)
    assert bundled["token_order"] == "time-major" and "runtime" not in bundled  # an older file, unchanged
    assert hear_ssam.load_model().config["runtime"] == "hear"


def test_runtime_errors_are_named(tmp_path, official_file):
    path, enc = official_file
    with pytest.raises(ValueError, match=r"runtime='hear' and token_order='official' ask for different runtimes; "
                                         r"give only runtime"):
        hear_ssam.load_model(str(path), runtime="hear", token_order="official")
    assert hear_ssam.load_model(str(path), runtime="hear", token_order="time-major").runtime == "hear"
    with pytest.raises(ValueError, match=r"runtime must be one of \('hear', 'official'\), got 'time-major' "
                                         r"\(the older token_order 'time-major' is runtime 'hear'\)"):
        hear_ssam.load_model(str(path), runtime="time-major")
    with pytest.raises(ValueError, match=r"token_order must be one of \('time-major', 'official'\), got 'hear'"):
        hear_ssam.load_model(str(path), token_order="hear")
    with pytest.raises(ValueError, match="runtime must be one of"):
        hear_ssam.save_checkpoint(tmp_path / "x.safetensors", enc, runtime="released")
    r = subprocess.run([sys.executable, "-m", "hear_ssam", "convert", str(path), str(tmp_path / "y.safetensors"),
                        "--runtime", "hear", "--token-order", "official"], capture_output=True, text=True)
    assert r.returncode == 2 and "--runtime hear and --token-order official ask for different runtimes" in r.stderr
    import json
    from hear_ssam.checkpoint import METADATA_KEY
    bad = tmp_path / "bad.safetensors"
    config = {k: v for k, v in stored_config(hear_ssam.api.DEFAULT_CHECKPOINT).items() if k != "token_order"}
    config["runtime"] = "fast"
    save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, str(bad),
              metadata={METADATA_KEY: json.dumps(config)})
    with pytest.raises(hear_ssam.CheckpointError, match=r"bad.safetensors: bad config.*runtime must be one of"):
        hear_ssam.load_model(str(bad))


def test_frontend_config_is_written_and_read_back(tmp_path, official_file):
    from hear_ssam.frontend import FrontendConfig
    out = tmp_path / "f.safetensors"
    custom = FrontendConfig(f_min=0.0, f_max=7600.0)
    hear_ssam.save_checkpoint(out, official_file[1], frontend=custom)
    model = hear_ssam.load_model(str(out))
    assert model.frontend.cfg == custom
    assert model.frontend.melspec.mel_scale.f_max == 7600.0
    with pytest.raises(ValueError, match="frontend gives 64 bins but the encoder expects 80"):
        hear_ssam.save_checkpoint(out, official_file[1], frontend=FrontendConfig(n_mels=64))


def test_a_training_checkpoint_points_to_the_export_command(tmp_path):
    from safetensors.torch import save_file
    p = tmp_path / "checkpoint.safetensors"
    save_file({"model.w": torch.zeros(2)}, str(p), metadata={"train": "{}"})
    with pytest.raises(hear_ssam.CheckpointError, match=r"pretraining checkpoint.*python -m pretrain export"):
        hear_ssam.load_model(str(p))
    r = subprocess.run([sys.executable, "-m", "hear_ssam", "convert", str(p), str(tmp_path / "o.safetensors")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "python -m pretrain export" in r.stderr


def test_pretraining_options_have_their_own_section_and_flat_files_load_as_before(tmp_path, capsys):
    """New files store the options in "pretraining" beside "encoder"; files written before (the
    bundled asset, results/checkpoints) hold them as flat keys of "encoder": both load into the
    same module with the same options, weights and heads."""
    import dataclasses
    import json
    from safetensors import safe_open
    from hear_ssam.checkpoint import METADATA_KEY
    torch.manual_seed(0)
    cfg = dataclasses.replace(hear_ssam.PRESETS["ssamba-tiny"], embed_dim=32, depth=2)
    options = hear_ssam.FAMILIES["ssamba"].pretraining_options()
    enc = hear_ssam.SpectrogramEncoder(cfg, options).eval()
    new = tmp_path / "new.safetensors"
    hear_ssam.save_checkpoint(new, enc, frontend=hear_ssam.FAMILIES["ssamba"].frontend)
    stored = stored_config(new)
    assert list(stored)[:5] == ["format", "preset", "family", "encoder", "pretraining"]
    assert stored["encoder"] == cfg.to_dict() and stored["pretraining"] == options.to_dict()
    flat = {k: v for k, v in stored.items() if k != "pretraining"}
    flat["encoder"] = {**stored["encoder"], **stored["pretraining"]}  # the layout written so far
    with safe_open(str(new), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    old = tmp_path / "old.safetensors"
    save_file(tensors, str(old), metadata={METADATA_KEY: json.dumps(flat)})
    spec = torch.randn(2, 1, 1024, 128)
    mask = torch.rand(2, 512) < 0.5
    with torch.no_grad():
        want = enc.cpred(enc.encode_masked(spec, mask))
    for path in (new, old):
        model = hear_ssam.load_model(str(path))
        assert model.encoder.cfg == cfg and model.encoder.pretraining == options, path.name
        assert model.config["encoder"] == cfg.to_dict() and model.config["pretraining"] == options.to_dict()
        assert model.config["family"] == "ssamba" and model.config["preset"] is None  # a tiny variant
        state = model.encoder.state_dict()
        assert state.keys() == enc.state_dict().keys() and "cpred.0.weight" in state
        with torch.no_grad():  # mask tokens with positions, then the ReLU contrastive head
            assert torch.equal(model.encoder.cpred(model.encoder.encode_masked(spec, mask)), want)
    assert cli(["info", str(old)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["encoder"] == cfg.to_dict() and shown["pretraining"] == options.to_dict()
    assert list(shown)[3:5] == ["encoder", "pretraining"]
    both = tmp_path / "both.safetensors"
    save_file(tensors, str(both), metadata={METADATA_KEY: json.dumps(dict(stored, encoder=flat["encoder"]))})
    with pytest.raises(hear_ssam.CheckpointError, match=r"both in 'encoder' and in 'pretraining'; keep them in "
                                                        r"'pretraining' only"):
        hear_ssam.load_model(str(both))


def test_the_bundled_flat_layout_file_loads_with_ssams_options():
    from hear_ssam.api import DEFAULT_CHECKPOINT
    raw = stored_config(DEFAULT_CHECKPOINT)
    assert "pretraining" not in raw and "head_activation" in raw["encoder"]  # written before the section
    model = hear_ssam.load_model()
    assert model.encoder.cfg == hear_ssam.PRESETS["ssam-tiny"] and model.config["preset"] == "ssam-tiny"
    assert model.encoder.pretraining == hear_ssam.PretrainingOptions()
    assert "head_activation" not in model.config["encoder"]
