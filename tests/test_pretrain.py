"""pretrain/: config, schedule, masking, data, exact resume, atomic checkpoints, DDP, export."""
import contextlib
import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import hear_ssam
from pretrain.checkpoints import CHECKPOINT
from pretrain.config import TrainConfig, load_config
from pretrain.data import CropDataset, EpochSampler, list_audio
from pretrain.objectives import MaskedSpectrogramModel
from pretrain.objectives import unstructured_mask as random_mask
from pretrain.schedules import lr_at
from pretrain.seeds import derive_seed
from pretrain.train import param_groups, train

ROOT = Path(__file__).resolve().parents[1]
TINY = {"embed_dim": 32, "depth": 2}


def make_audio(folder: Path, n=12, seed=0):
    """Tones and noise at several rates and lengths, one stereo, one too short, one corrupt."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        rate = [16000, 22050, 44100][i % 3]
        seconds = [0.7, 2.5, 4.0][i % 3]
        t = np.arange(int(rate * seconds)) / rate
        x = 0.3 * np.sin(2 * np.pi * (200 + 150 * i) * t) + 0.05 * rng.standard_normal(t.size)
        if i == 1:
            x = np.stack([x, -x], axis=1)
        sf.write(folder / f"clip{i:02d}.{'flac' if i % 4 == 0 else 'wav'}", x.astype(np.float32), rate)
    (folder / "broken.wav").write_bytes(b"RIFF\x00\x00garbage")
    return folder


@contextlib.contextmanager
def killed_after_saves(n):
    """pretrain.train's checkpoint save, raising KeyboardInterrupt after its n-th write (a kill)."""
    import pretrain.train as T
    real, calls = T.save_training_checkpoint, {"n": 0}

    def save_then_die(*a, **k):
        real(*a, **k)
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
    T.save_training_checkpoint = save_then_die
    try:
        yield
    finally:
        T.save_training_checkpoint = real


def tiny_config(**kw):
    base = dict(preset="ssam-tiny", encoder_overrides=TINY, global_batch=4, micro_batch=2,
                epoch_clips=8, max_steps=6, warmup_epochs=1, num_workers=0, log_every=1,
                ckpt_every=1, plot_every=0, precision="fp32")
    base.update(kw)
    return TrainConfig(**base)


def tiny_encoder(**kw):
    cfg = tiny_config(**kw)
    return hear_ssam.SpectrogramEncoder(cfg.encoder_config(), cfg.pretraining_options())


def losses(run):
    with open(run / "metrics.csv") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


def test_paper_configs_reproduce_the_recipe():
    for name in (f"{family}_{size}" for family in ("ssam", "ssast", "axlstm") for size in ("tiny", "small", "base")):
        cfg = load_config(ROOT / "pretrain" / "configs" / f"{name}.yaml")
        assert cfg.preset == name.replace("_", "-")
        assert cfg.lr == pytest.approx(6e-4) and cfg.betas == (0.9, 0.95) and cfg.weight_decay == 0.05
        assert cfg.mask_ratio == 0.5 and cfg.objective == "mse_all" and cfg.masking == "unstructured"
        assert cfg.epochs == 100 and cfg.warmup_epochs == 10
        assert cfg.precision == "fp16"


def test_config_errors_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"unknown config keys \['batchsize'\]"):
        load_config(None, ["batchsize=3"])
    with pytest.raises(ValueError, match=r"objective must be one of \['mse_all', 'mse_masked'\]"):
        load_config(None, ["objective=l1"])
    with pytest.raises(ValueError, match="unknown preset 'ssam-huge'"):
        load_config(None, ["preset=ssam-huge"])
    with pytest.raises(ValueError, match="encoder_overrides"):
        load_config(None, ["encoder_overrides={width: 3}"]).encoder_config()
    with pytest.raises(ValueError, match="not key=value"):
        load_config(None, ["oops"])


def test_encoder_overrides_go_to_the_config_each_key_belongs_to():
    """One mapping for both configs, as the YAML files and users' configs write it; a key of
    neither is named with both configs' fields."""
    import dataclasses
    from hear_ssam import FAMILIES, PRESETS, PretrainingOptions
    cfg = load_config(None, ["preset=ssast-tiny", "encoder_overrides={embed_dim: 32, depth: 2, "
                             "mask_token_position: true, block_options: {num_heads: 2}}"])
    assert cfg.encoder_config() == dataclasses.replace(PRESETS["ssast-tiny"], embed_dim=32, depth=2,
                                                       block_options={"num_heads": 2, "mlp_ratio": 4.0})
    assert cfg.pretraining_options() == PretrainingOptions(mask_token_position=True)
    ssamba = TrainConfig(preset="ssamba-tiny", encoder_overrides={"drop_path_rate": 0.0})
    assert ssamba.encoder_config() == PRESETS["ssamba-tiny"]  # the family's other options stay
    assert ssamba.pretraining_options() == dataclasses.replace(FAMILIES["ssamba"].pretraining_options(),
                                                               drop_path_rate=0.0)
    bad = TrainConfig(encoder_overrides={"width": 3, "depth": 2})
    for build in (bad.encoder_config, bad.pretraining_options):
        with pytest.raises(ValueError, match=r"encoder_overrides: unknown keys \['width'\]; EncoderConfig fields: \[.*"
                                             r"'embed_dim'.*\], PretrainingOptions fields: \[.*'drop_path_rate'.*\]"):
            build()
    with pytest.raises(ValueError, match=r"drop_path_rate must be in \[0, 1\)"):
        TrainConfig(encoder_overrides={"drop_path_rate": 1.5}).pretraining_options()
    with pytest.raises(ValueError, match="encoder_overrides must be a mapping"):
        load_config(None, ["encoder_overrides=depth"]).encoder_config()


def test_training_checkpoints_of_either_layout_export_with_their_options(tmp_path):
    """Training checkpoints store the options beside "encoder"; those written before hold them
    flat in "encoder": both load and export to the same module. A second stage refuses a start
    file of other pretraining options by name."""
    import json
    from safetensors import safe_open
    from hear_ssam.checkpoint import TRAIN_METADATA_KEY, write_safetensors
    from pretrain.checkpoints import load_training_checkpoint, read_init_weights, save_training_checkpoint
    from pretrain.export import export
    cfg = TrainConfig(preset="ssamba-tiny", encoder_overrides={**TINY, "drop_path_rate": 0.2})
    torch.manual_seed(0)
    enc = hear_ssam.SpectrogramEncoder(cfg.encoder_config(), cfg.pretraining_options())
    optimizer = torch.optim.AdamW(enc.parameters())
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    new = tmp_path / "new" / CHECKPOINT
    save_training_checkpoint(new, enc, cfg.frontend, optimizer, scaler, 3, cfg, {"last_loss": 1.0})
    with safe_open(str(new), framework="pt") as f:
        meta = json.loads(f.metadata()[TRAIN_METADATA_KEY])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert meta["encoder"] == cfg.encoder_config().to_dict()
    assert meta["pretraining"] == cfg.pretraining_options().to_dict()
    flat = {k: v for k, v in meta.items() if k != "pretraining"}
    flat["encoder"] = {**meta["encoder"], **meta["pretraining"]}
    old = tmp_path / "old" / CHECKPOINT
    write_safetensors(old, tensors, {TRAIN_METADATA_KEY: json.dumps(flat)})
    for path in (new, old):
        read, _, _ = load_training_checkpoint(path)
        assert read["encoder"] == meta["encoder"] and read["pretraining"] == meta["pretraining"]
        out = tmp_path / f"{path.parent.name}.safetensors"
        export(path, out)
        model = hear_ssam.load_model(str(out))
        assert model.encoder.cfg == cfg.encoder_config() and model.encoder.pretraining == cfg.pretraining_options()
        for k, v in enc.state_dict().items():
            assert torch.equal(model.encoder.state_dict()[k], v), k
    read_init_weights(tmp_path / "old.safetensors", cfg.encoder_config(), cfg.pretraining_options(), cfg.frontend)
    other = TrainConfig(preset="ssamba-tiny", encoder_overrides=TINY)
    with pytest.raises(ValueError, match=r"init_from .*its pretraining options differ from this run's in "
                                         r"drop_path_rate \(0.2, the run has 0.1\)"):
        read_init_weights(tmp_path / "old.safetensors", other.encoder_config(), other.pretraining_options(),
                          other.frontend)


def test_lr_warms_up_linearly_then_half_cosine_to_zero():
    peak, total, warm = 6e-4, 100, 10
    assert lr_at(0, total, warm, peak) == pytest.approx(peak / 10)
    assert lr_at(9, total, warm, peak) == pytest.approx(peak)
    assert lr_at(55, total, warm, peak) == pytest.approx(peak * 0.5)
    assert lr_at(99, total, warm, peak) < peak * 1e-3
    assert all(lr_at(s, total, warm, peak) >= lr_at(s + 1, total, warm, peak) for s in range(9, 99))


def test_no_weight_decay_on_1d_params_and_biases():
    enc = tiny_encoder()
    decay, no_decay = param_groups(enc, 0.05)
    names = {id(p): n for n, p in enc.named_parameters()}
    assert all(p.ndim >= 2 and not names[id(p)].endswith("bias") for p in decay["params"])
    assert {names[id(p)] for p in no_decay["params"]} >= {"blocks.0.mixer.D", "blocks.0.norm.weight",
                                                           "blocks.0.mixer.dt_proj.bias", "pred.0.bias"}
    assert all(p.requires_grad for p in decay["params"] + no_decay["params"])  # pos_embed excluded


def test_unstructured_mask_hides_exactly_half_per_sample():
    g = torch.Generator().manual_seed(0)
    mask = random_mask(5, 250, 0.5, g, "cpu")
    assert mask.dtype == torch.bool and mask.sum(1).tolist() == [125] * 5
    assert not torch.equal(mask[0], mask[1])
    assert torch.equal(mask, random_mask(5, 250, 0.5, torch.Generator().manual_seed(0), "cpu"))


def test_loss_all_patches_or_masked_only():
    torch.manual_seed(0)
    enc = tiny_encoder()
    spec = torch.randn(2, 1, 200, 80)
    mask = random_mask(2, 250, 0.5, torch.Generator().manual_seed(1), "cpu")
    loss_all, pred = MaskedSpectrogramModel(enc, "mse_all")(spec, mask)
    loss_masked, _ = MaskedSpectrogramModel(enc, "mse_masked")(spec, mask)
    err = (pred - enc.patchify(spec)).pow(2).mean(-1)
    assert loss_all.item() == pytest.approx(err.mean().item(), rel=1e-5)
    assert loss_masked.item() == pytest.approx(err[mask].mean().item(), rel=1e-5)


def test_data_skips_corrupt_files_resamples_and_tiles(tmp_path):
    folder = make_audio(tmp_path / "audio")
    files = list_audio(folder)
    assert len(files) == 13
    ds = CropDataset(files, seed=3)
    assert len(ds) == 12 and len(ds.skipped) == 1 and "broken.wav" in ds.skipped[0][0]
    crop = ds[(0, 0, 0)]  # 0.7 s at 16 kHz: tiled up to 2 s
    assert crop.shape == (1, 200, 80)
    assert abs(crop.mean().item()) < 1e-4 and abs(crop.std().item() - 1) < 1e-3
    assert torch.equal(ds[(2, 5, 4)], ds[(2, 5, 4)])  # deterministic per (epoch, position)
    assert not torch.equal(ds[(2, 5, 4)], ds[(3, 5, 4)])


def test_cached_and_uncached_crops_agree(tmp_path):
    """The audio path reads a window around the crop; the cache slices whole-file features.
    Both give the same frames (up to the cache's fp16 storage), at every sample rate."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "audio"
    folder.mkdir()
    for rate in (16000, 22050, 44100, 11025):
        t = np.arange(int(rate * 6.3)) / rate
        x = np.sin(2 * np.pi * 300 * t * (1 + t)) * 0.3 + 0.05 * rng.standard_normal(t.size)
        sf.write(folder / f"sweep_{rate}.wav", x.astype(np.float32), rate)
    sf.write(folder / "short.wav", (0.1 * rng.standard_normal(9000)).astype(np.float32), 16000)
    files = list_audio(folder)
    plain = CropDataset(files, seed=1)
    cached = CropDataset(files, seed=1, cache_dir=tmp_path / "cache")
    cached.fill_cache()
    assert len(list(cached.cache_dir.glob("*.npy"))) == len(files)
    for i in range(len(files)):
        for position in range(3):
            a, b = plain[(0, position, i)], cached[(0, position, i)]
            assert a.shape == b.shape == (1, 200, 80)
            torch.testing.assert_close(a, b, rtol=0, atol=0.02, msg=lambda m: f"{files[i]}: {m}")
    long = next(i for i, f in enumerate(files) if "44100" in f)
    assert not torch.equal(plain[(0, 0, long)], plain[(0, 1, long)])  # the crop start moves


def test_parallel_cache_fill_matches_one_process_and_resumes(tmp_path):
    """Two filler processes write the same bytes as one, leave no temporary file, and a fill
    interrupted after some files (a stray .tmp beside them) computes only what is missing."""
    rng = np.random.default_rng(2)
    folder = tmp_path / "audio"
    folder.mkdir()
    for k, rate in enumerate((16000, 22050, 44100, 16000, 8000)):
        sf.write(folder / f"n{k}.wav", (0.2 * rng.standard_normal(int(rate * (1 + k)))).astype(np.float32), rate)
    files = list_audio(folder)
    one = CropDataset(files, cache_dir=tmp_path / "one")
    one.fill_cache(workers=1)
    two = CropDataset(files, cache_dir=tmp_path / "two")
    two.fill_cache(workers=2)
    names = sorted(p.name for p in one.cache_dir.iterdir())
    assert names == sorted(p.name for p in two.cache_dir.iterdir()) and len(names) == len(files)
    assert all(n.count(".") == 1 for n in names)  # <sha1>.npy only: no .tmp left
    for n in names:
        assert np.array_equal(np.load(one.cache_dir / n), np.load(two.cache_dir / n))
    gone = two._cache_path(3)
    gone.unlink()
    (two.cache_dir / "stray.999.tmp.npy").write_bytes(b"half a file")
    before = {p: p.stat().st_mtime_ns for p in two.cache_dir.glob("*.npy") if p.exists()}
    two.fill_cache(workers=2)
    assert np.array_equal(np.load(gone), np.load(one._cache_path(3)))
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # the others were not redone


def test_kaldi_fbank_crops_are_whole_and_agree(tmp_path):
    """SSAMBA's frontend has no centre padding (fewer frames per clip): crops of 1024 frames
    are still whole at the end of a file, and the cache agrees with the audio path."""
    from hear_ssam.frontend import SSAMBA_FBANK
    rng = np.random.default_rng(1)
    folder = tmp_path / "audio"
    folder.mkdir()
    for rate, seconds in ((44100, 10.3), (16000, 12.0)):
        sf.write(folder / f"x{rate}.wav", (0.2 * rng.standard_normal(int(rate * seconds))).astype(np.float32), rate)
    files = list_audio(folder)
    plain = CropDataset(files, crop_frames=1024, frontend_cfg=SSAMBA_FBANK)
    cached = CropDataset(files, crop_frames=1024, frontend_cfg=SSAMBA_FBANK, cache_dir=tmp_path / "c")
    cached.fill_cache()
    for i in range(2):
        for position in range(4):
            a, b = plain[(0, position, i)], cached[(0, position, i)]
            assert a.shape == b.shape == (1, 1024, 128)
            torch.testing.assert_close(a, b, rtol=0, atol=0.02)


def test_short_files_are_padded_after_their_normalised_frames_or_tiled(tmp_path):
    """short_files="pad" (SSAST / SSAMBA's loaders): a file shorter than a crop gives its own
    frames, normalised as the frontend normalises a clip, then padding frames of the value the
    plugin's runtime pads windows with; the cache agrees. "tile" (the default) repeats them."""
    from hear_ssam.frontend import SSAMBA_FBANK, FrontendConfig, build_frontend, pad_value, to_mono_16k
    rng = np.random.default_rng(2)
    folder = tmp_path / "audio"
    folder.mkdir()
    sf.write(folder / "word.wav", (0.2 * rng.standard_normal(int(22050 * 3.1))).astype(np.float32), 22050)
    files = list_audio(folder)
    audio, rate = sf.read(files[0], dtype="float32", always_2d=True)
    for cfg, crop_frames in ((SSAMBA_FBANK, 1024), (FrontendConfig(), 500)):
        front = build_frontend(cfg)
        frames = front.normalise(front.features(to_mono_16k(audio, rate)[None]))[0]  # [1, T, F]
        n = frames.shape[1]
        assert 300 < n < crop_frames
        padded = CropDataset(files, crop_frames=crop_frames, frontend_cfg=cfg, short_files="pad")
        cached = CropDataset(files, crop_frames=crop_frames, frontend_cfg=cfg, short_files="pad",
                             cache_dir=tmp_path / cfg.kind)
        cached.fill_cache(workers=1)
        a, b = padded[(0, 0, 0)], cached[(0, 0, 0)]
        assert a.shape == b.shape == (1, crop_frames, cfg.n_mels)
        torch.testing.assert_close(a[:, :n], frames, rtol=0, atol=1e-4)
        assert torch.all(a[:, n:] == pad_value(cfg)) and torch.all(b[:, n:] == pad_value(cfg))
        torch.testing.assert_close(a, b, rtol=0, atol=0.02)  # the cache stores fp16
        tiled = CropDataset(files, crop_frames=crop_frames, frontend_cfg=cfg)[(0, 0, 0)]
        torch.testing.assert_close(tiled[:, n:], tiled[:, :crop_frames - n])  # repeated, then normalised as one crop
    assert pad_value(SSAMBA_FBANK) != 0.0  # zero fbank, normalised
    with pytest.raises(ValueError, match="short_files must be one of .*'tile', 'pad'.* got 'zeros'"):
        CropDataset(files, short_files="zeros")
    with pytest.raises(ValueError, match="short_files must be 'tile' or 'pad', got 'zeros'"):
        TrainConfig(short_files="zeros")


def test_every_file_failing_is_a_clear_error(tmp_path):
    folder = make_audio(tmp_path / "audio", n=3)
    ds = CropDataset(list_audio(folder))
    for f in folder.glob("clip*"):
        f.write_bytes(b"RIFF\x00\x00garbage")  # broken after the up-front check
    with pytest.raises(RuntimeError, match=r"no readable crop for item \(0, 0, 0\): 3 files failed"):
        ds[(0, 0, 0)]


def test_derive_seed_depends_on_every_key():
    assert derive_seed("mask", 0, 5, 1) == derive_seed("mask", 0, 5, 1)
    seeds = {derive_seed("mask", 0, 5, 1), derive_seed("mask", 0, 5, 0), derive_seed("mask", 1, 5, 1),
             derive_seed("crop", 0, 5, 1), derive_seed("mask", 0, 51)}
    assert len(seeds) == 5 and all(0 <= s < 2**32 for s in seeds)


def test_manifest_input_and_missing_data(tmp_path):
    folder = make_audio(tmp_path / "audio", n=3)
    (tmp_path / "list.txt").write_text("# files\naudio/clip00.flac\naudio/clip01.wav\n")
    assert [Path(f).name for f in list_audio(tmp_path / "list.txt")] == ["clip00.flac", "clip01.wav"]
    (tmp_path / "m.tsv").write_text(f"path\tpackage\n{folder / 'clip02.wav'}\tx\n")
    assert list_audio(tmp_path / "m.tsv") == [str(folder / "clip02.wav")]
    with pytest.raises(FileNotFoundError, match="no such folder or manifest"):
        list_audio(tmp_path / "nope")


def test_sampler_shards_epochs_across_processes_and_resumes_mid_epoch():
    full = list(EpochSampler(10, 12, seed=1, epoch=2))
    shards = [list(EpochSampler(10, 12, seed=1, epoch=2, rank=r, world=3)) for r in range(3)]
    assert sorted(sum(shards, [])) == sorted(full) and len(full) == 12
    assert list(EpochSampler(10, 12, seed=1, epoch=2, start=5)) == full[5:]
    assert [x[2] for x in full] != [x[2] for x in EpochSampler(10, 12, seed=1, epoch=3)]


def test_length_weighted_sampler_draws_files_in_proportion_to_their_capped_length():
    weights = torch.tensor([1.0, 5.0, 10.0, 0.0], dtype=torch.float64)  # e.g. min(1 s, 5 s, 60 s, cap 10 s)
    full = list(EpochSampler(4, 32000, seed=3, epoch=0, weights=weights))
    counts = np.bincount([x[2] for x in full], minlength=4) / len(full)
    assert np.allclose(counts, [1 / 16, 5 / 16, 10 / 16, 0], atol=0.01)
    assert list(EpochSampler(4, 32000, seed=3, epoch=0, start=777, weights=weights)) == full[777:]  # resume
    shards = [list(EpochSampler(4, 32000, seed=3, epoch=0, rank=r, world=2, weights=weights)) for r in range(2)]
    assert sorted(sum(shards, [])) == sorted(full)
    assert [x[2] for x in full[:50]] != [x[2] for x in EpochSampler(4, 50, seed=3, epoch=1, weights=weights)]
    with pytest.raises(ValueError, match="non-negative"):
        EpochSampler(4, 10, seed=0, epoch=0, weights=torch.tensor([1.0, -1.0, 1.0, 1.0]))


def test_length_weights_are_file_seconds_capped(tmp_path):
    for name, seconds in [("short.wav", 0.5), ("long.wav", 3.0)]:
        sf.write(tmp_path / name, np.zeros(int(seconds * 8000), np.float32) + 0.1, 8000)
    ds = CropDataset(list_audio(tmp_path), crop_frames=50)
    assert dict(zip([Path(f).name for f in ds.files], ds.length_weights(2.0).tolist())) == {"long.wav": 2.0, "short.wav": 0.5}


@pytest.mark.parametrize("preset", ["ssam-tiny", "axlstm-tiny"])
def test_resumed_run_reproduces_the_uninterrupted_losses(tmp_path, preset):
    data = make_audio(tmp_path / "audio")
    cfg = tiny_config(preset=preset)
    torch.set_num_threads(1)
    try:
        train(cfg, str(data), tmp_path / "straight")
        half = tiny_config(preset=preset, max_steps=6)
        # interrupted after step 3: emulate by stopping a run with the same schedule at 3
        with killed_after_saves(3), pytest.raises(KeyboardInterrupt):
            train(half, str(data), tmp_path / "resumed")
        # a crash mid-write leaves a .tmp beside an intact checkpoint
        (tmp_path / "resumed" / (CHECKPOINT + ".tmp")).write_bytes(b"partial")
        assert [s for s, _ in losses(tmp_path / "resumed")] == [1, 2, 3]
        train(half, str(data), tmp_path / "resumed", resume=True)
    finally:
        torch.set_num_threads(2)
    straight, resumed = losses(tmp_path / "straight"), losses(tmp_path / "resumed")
    assert [s for s, _ in resumed] == [1, 2, 3, 4, 5, 6]
    for (s1, l1), (s2, l2) in zip(straight, resumed):
        assert l1 == pytest.approx(l2, rel=1e-6, abs=1e-7), (s1, l1, l2)
    model = hear_ssam.load_model(str(tmp_path / "resumed" / "model.safetensors"))
    assert model.config["provenance"]["steps"] == 6
    assert model.config["provenance"]["data_files"] == 12
    # one provenance segment per start, with what ran there
    assert [(g["from_step"], g["to_step"], g["precision"]) for g in model.config["provenance"]["segments"]] \
        == [(0, 3, "fp32"), (3, 6, "fp32")]
    for g in model.config["provenance"]["segments"]:  # the hardware, wall time and throughput of each
        assert g["hardware"] and g["wall_s"] > 0 and g["clips_per_s"] > 0, g
    assert model.config["preset"] is None and model.config["family"] == preset.split("-")[0]  # a tiny variant


def test_one_loader_serves_every_epoch_and_workers_draw_what_the_main_process_draws(tmp_path, monkeypatch):
    """The data workers are forked once per run, not once per epoch: a fork from a process
    holding a training step's freed memory doubles it by copy-on-write as training reuses it
    (ssamba-tiny's 16 GB CPU run was OOM-killed at its first epoch boundary). And a worker
    draws exactly the crops the main process would: the losses do not depend on num_workers."""
    import pretrain.train as T
    data = make_audio(tmp_path / "audio")
    starts, real = tmp_path / "worker_starts", T.ignore_stop_signals

    def counting(worker_id):
        with open(starts, "a") as f:
            f.write(f"{os.getpid()}\n")
        real(worker_id)

    monkeypatch.setattr(T, "ignore_stop_signals", counting)
    torch.set_num_threads(1)
    try:
        train(tiny_config(num_workers=1), str(data), tmp_path / "worker")  # 6 steps = 3 epochs
        train(tiny_config(), str(data), tmp_path / "main")
    finally:
        torch.set_num_threads(2)
    assert len(starts.read_text().split()) == 1
    worker, main = losses(tmp_path / "worker"), losses(tmp_path / "main")
    assert [s for s, _ in worker] == [1, 2, 3, 4, 5, 6]
    assert [l for _, l in worker] == pytest.approx([l for _, l in main], rel=1e-6, abs=1e-7)


def test_a_second_stage_starts_from_the_first_stages_weights_and_counts_both(tmp_path):
    """init_from: the run's step-0 weights are the file's (lr 0 keeps them, so the export
    equals the first stage bit for bit), the provenance names the file by hash and counts both
    stages' crops, a resume keeps the record, and a file of another model is refused by name."""
    import hashlib
    data = make_audio(tmp_path / "audio", n=6)
    first = train(tiny_config(max_steps=2), str(data), tmp_path / "first")
    second = tiny_config(max_steps=3, init_from=str(first), base_lr=0.0, seed=1, weight_decay=0.0)
    with killed_after_saves(2), pytest.raises(KeyboardInterrupt):
        train(second, str(data), tmp_path / "second")
    path = train(second, str(data), tmp_path / "second", resume=True)
    a, b = hear_ssam.load_model(str(first)), hear_ssam.load_model(str(path))
    for (k, va), (_, vb) in zip(a.encoder.state_dict().items(), b.encoder.state_dict().items()):
        assert torch.equal(va, vb), k
    prov = b.config["provenance"]
    assert prov["init_from"]["sha256"] == hashlib.sha256(first.read_bytes()).hexdigest()
    assert prov["init_from"]["clips_seen"] == 2 * 4 and prov["clips_seen_this_run"] == 3 * 4
    assert prov["clips_seen"] == 5 * 4 and prov["steps"] == 3
    other = tiny_config(max_steps=1, init_from=str(first), encoder_overrides={"embed_dim": 48, "depth": 2})
    with pytest.raises(ValueError, match=r"init_from .*embed_dim \(32, the run has 48\)"):
        train(other, str(data), tmp_path / "other")
    missing = tiny_config(max_steps=1, init_from=str(tmp_path / "stage1.safetensors"))
    with pytest.raises(FileNotFoundError, match=r"init_from .*stage1.safetensors does not exist: export"):
        train(missing, str(data), tmp_path / "missing", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "missing").exists()  # refused before any work


def test_a_fresh_start_over_a_saved_run_is_refused_and_leaves_it_intact(tmp_path, capsys):
    """Forgetting --resume on a run folder must not restart the run and overwrite its state:
    the command names the folder, the saved step and the flag, and changes no file."""
    from pretrain.__main__ import main
    data = make_audio(tmp_path / "audio", n=6)
    with killed_after_saves(2), pytest.raises(KeyboardInterrupt):
        train(tiny_config(max_steps=4), str(data), tmp_path / "run")
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    assert CHECKPOINT in before and "metrics.csv" in before
    with pytest.raises(ValueError, match=r"run already holds a run's training checkpoint \(step 2\): pass --resume"):
        train(tiny_config(max_steps=4), str(data), tmp_path / "run")
    config = tmp_path / "tiny.yaml"
    config.write_text("preset: ssam-tiny\nmax_steps: 4\n")
    assert main(["train", "--config", str(config), "--data", str(data), "--out", str(tmp_path / "run")]) == 2
    assert "pass --resume to continue it, or give a new --out" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()} == before
    assert [s for s, _ in losses(tmp_path / "run")] == [1, 2]


@pytest.mark.parametrize("precision, ran", [("bf16", "bf16"), ("fp16", "fp32")])
def test_provenance_records_the_precision_that_ran(tmp_path, precision, ran):
    """On a CPU bf16 autocast runs and a paper config's fp16 falls back to fp32: the
    provenance says which, not what the config asked for."""
    if torch.cuda.is_available():
        pytest.skip("the CPU fallback is what is tested")
    data = make_audio(tmp_path / "audio", n=6)
    path = train(tiny_config(max_steps=1, precision=precision), str(data), tmp_path / "run")
    assert [g["precision"] for g in hear_ssam.load_model(str(path)).config["provenance"]["segments"]] == [ran]


def test_plots_and_metrics_are_written(tmp_path):
    data = make_audio(tmp_path / "audio", n=6)
    train(tiny_config(max_steps=2, plot_every=2), str(data), tmp_path / "run")
    run = tmp_path / "run"
    # the start (step 1, before learning) and every plot_every steps; the loss curve at each checkpoint
    for png in [run / "plots" / "step_0000001.png", run / "plots" / "step_0000002.png", run / "training_curve.png"]:
        assert png.exists() and png.read_bytes()[:4] == b"\x89PNG", png
    assert any((run / "tb").iterdir())


def test_cli_errors_are_clear(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pretrain", "train", "--data", str(tmp_path / "none"),
                        "--out", str(tmp_path / "o"), "--set", "max_steps=1"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "no such folder or manifest" in r.stderr and "Traceback" not in r.stderr


def test_a_stop_signal_saves_the_step_and_resume_continues_from_it(tmp_path):
    """Ctrl-C and SIGTERM (what `timeout`, Slurm and `pkill -f` send), each to the whole
    process group, DataLoader worker included: the step in progress finishes, is checkpointed,
    the exit code names the signal, and --resume starts from exactly that step, not the last
    periodic checkpoint."""
    import signal
    import time
    from pretrain.checkpoints import load_training_checkpoint
    data = make_audio(tmp_path / "audio")
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3")

    def start_then_signal(sig, extra, after_rows):
        p = subprocess.Popen([sys.executable, "-m", "pretrain", "train", "--data", str(data), "--out", str(run),
                              *extra, "--set", "preset=ssam-tiny", f"encoder_overrides={TINY}",
                              "global_batch=4", "micro_batch=2", "epoch_clips=8", "max_steps=100000",
                              "num_workers=1", "log_every=1", "ckpt_every=100000", "plot_every=0",
                              "precision=fp32"],
                             stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env, start_new_session=True)
        deadline = time.time() + 300
        while p.poll() is None and time.time() < deadline:
            if (run / "metrics.csv").exists() and len(losses(run)) >= after_rows:
                break
            time.sleep(0.2)
        assert p.poll() is None, p.stderr.read()[-3000:]
        os.killpg(p.pid, sig)
        err = p.communicate(timeout=120)[1]
        return p.returncode, err

    rc, err = start_then_signal(signal.SIGINT, [], after_rows=3)
    saved = load_training_checkpoint(run / CHECKPOINT)[0]["step"]
    assert rc == 130 and f"stopped at step {saved} of 100000" in err and "Traceback" not in err, err[-3000:]
    assert saved >= 3 and saved == losses(run)[-1][0]  # the step it was in, not a periodic checkpoint
    rc, err = start_then_signal(signal.SIGTERM, ["--resume"], after_rows=saved + 2)
    assert f"resumed from {run / CHECKPOINT} at step {saved}" in err, err[-3000:]
    again = load_training_checkpoint(run / CHECKPOINT)[0]["step"]
    assert rc == 128 + signal.SIGTERM and f"stopped at step {again}" in err and again >= saved + 2


@pytest.mark.slow
def test_torchrun_ddp_two_processes_and_validator_on_the_export(tmp_path):
    data = make_audio(tmp_path / "audio")
    run = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                        "-m", "pretrain", "train", "--data", str(data), "--out", str(run),
                        "--cache", str(tmp_path / "cache"), "--set", "preset=ssam-tiny",
                        f"encoder_overrides={TINY}", "global_batch=4", "micro_batch=2", "epoch_clips=8",
                        "max_steps=2", "num_workers=0", "log_every=1", "plot_every=0"],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "(2 x 2 x 1 accum)" in r.stderr
    caches = list((tmp_path / "cache").iterdir())  # filled once by rank 0: one file per clip, no leftovers
    assert len(caches) == 1 and sorted(p.suffix for p in caches[0].iterdir()) == [".npy"] * 12
    assert [s for s, _ in losses(run)] == [1, 2] and all(math.isfinite(v) for _, v in losses(run))
    v = subprocess.run([str(Path(sys.executable).parent / "hear-validator"), "hear_ssam", "--model",
                        str(run / "model.safetensors")], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert v.returncode == 0 and "Looks good!" in v.stdout, v.stderr[-2000:]


def test_cpu_comparison_configs_share_one_budget_and_recipe():
    """The main job compares encoders: their CPU configs may differ only in the preset."""
    configs = {f: load_config(ROOT / "pretrain" / "configs" / f"{f}_tiny_cpu.yaml").to_dict()
               for f in ("ssam", "ssast", "axlstm")}
    for family, cfg in configs.items():
        assert cfg.pop("preset") == f"{family}-tiny"
    assert configs["ssast"] == configs["ssam"] == configs["axlstm"]
    ssam = configs["ssam"]
    assert ssam["max_steps"] * ssam["global_batch"] == 64_000  # one CPU stage: 10x release 0.1's crops
    assert TrainConfig.scaled_lr(ssam["base_lr"], ssam["global_batch"]) == pytest.approx(5e-4)


def test_positioned_mask_token_config_differs_from_ssast_only_in_its_mask_tokens():
    """The families comparison's SSAST-recipe row is ssast-tiny's CPU budget and recipe with
    positioned mask tokens, and nothing else changed."""
    configs = ROOT / "pretrain" / "configs"
    framework = load_config(configs / "ssast_tiny_cpu.yaml")
    own = load_config(configs / "ssast_tiny_cpu_posmask.yaml")
    assert own.pretraining_options().mask_token_position and not framework.pretraining_options().mask_token_position
    assert own.encoder_config() == framework.encoder_config()
    one, other = framework.to_dict(), own.to_dict()
    assert other.pop("encoder_overrides") == {"mask_token_position": True} and one.pop("encoder_overrides") == {}
    assert other == one


def test_later_stage_configs_differ_only_in_the_preset_and_the_start():
    """The later stages keep the comparison one budget: stage k of each family is the first
    stage's config with init_from its own stage k-1 export and seed k-1. ssam and ssast have
    stages 2 to 4 (the main job's pair); axlstm has whichever it has so far."""
    start = {2: "{family}_tiny_cpu", 3: "{family}_tiny_cpu_stage2", 4: "{family}_tiny_cpu_stage3"}
    configs = ROOT / "pretrain" / "configs"
    for stage, start_name in start.items():
        stages = {}
        for family in ("ssam", "ssast", "axlstm"):
            if family == "axlstm" and not (configs / f"{family}_tiny_cpu_stage{stage}.yaml").exists():
                continue
            one = load_config(configs / f"{family}_tiny_cpu.yaml").to_dict()
            later = load_config(configs / f"{family}_tiny_cpu_stage{stage}.yaml").to_dict()
            start_file = f"results/checkpoints/{start_name.format(family=family)}.safetensors"
            assert later.pop("init_from") == start_file  # where the stage before exports to
            assert later.pop("seed") == stage - 1 and one.pop("seed") == 0
            assert one.pop("init_from") is None
            assert later == one
            stages[family] = {k: v for k, v in later.items() if k != "preset"}
        assert all(recipe == stages["ssam"] for recipe in stages.values()), stages.keys()
    assert (configs / "axlstm_tiny_cpu_stage2.yaml").exists()
