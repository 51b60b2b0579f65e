"""Bundles without a 16000/ folder: the source rate chosen, the resampled 16 kHz view (lengths,
values, marker, reuse, atomic build), check_bundle's advice, and `python -m eval_suites run`
end to end on a bundle that only has 44100/ audio."""
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from eval_suites import resample
from eval_suites.runner import ModelSpec, _audio_source, bundle_report, check_bundle, format_summary
from eval_suites.suites import HEAREVAL_PROTOCOL
from hear_bundle import write_scene_task
from test_any_bundles import TINY_GRID, fast_model

REPO = Path(__file__).resolve().parents[1]
PCM16_STEP = 1 / 32768  # one 16-bit PCM step as soundfile reads it back as float


def _bundle_44k(tmp_path, n_per_split=2, seconds=1.0):
    return write_scene_task(tmp_path / "tasks", n_per_split=n_per_split, seconds=seconds, rate=44100)


# ---------------------------------------------------------------- which rate

@pytest.mark.parametrize("rates, chosen", [
    ([44100], 44100),
    ([48000, 22050, 44100, 32000], 22050),  # the lowest above 16 kHz: downsampling only
    ([8000, 11025], 11025),  # none above: the highest below
    ([8000, 48000], 48000),
    ([16000, 44100], None),  # the bundle has the model's rate
    ([], None),
])
def test_the_source_is_the_lowest_rate_above_the_target_else_the_highest_below(rates, chosen):
    assert resample.choose_source_rate(rates, 16000) == chosen


def test_rate_folders_are_all_digit_folders_holding_every_split(tmp_path):
    task = _bundle_44k(tmp_path)
    for split in ("train", "valid"):
        (task / "48000" / split).mkdir(parents=True)  # no test/: incomplete
    (task / "audio" / "train").mkdir(parents=True)  # not a rate
    (task / "22050").write_text("")  # a file, not a folder
    splits = ["train", "valid", "test"]
    assert resample.rate_folders(task, splits) == [44100]
    assert resample.source_rate(task, 16000) == 44100
    shutil.copytree(task / "44100", task / "16000")
    assert resample.source_rate(task, 16000) is None


# ---------------------------------------------------------------- one clip

def test_fixed_duration_clips_are_padded_or_trimmed_to_the_duration_at_the_target_rate():
    rng = np.random.default_rng(0)
    short, long = rng.standard_normal(22050, dtype=np.float32), rng.standard_normal(60000, dtype=np.float32)
    padded = resample.resample_clip(short, 44100, 16000, sample_duration=1.0)
    assert padded.shape == (16000,) and padded.dtype == np.float32
    assert np.all(padded[8000:] == 0) and np.any(padded[:8000] != 0)  # 0.5 s of audio, then zeros
    assert resample.resample_clip(long, 44100, 16000, sample_duration=1.0).shape == (16000,)
    assert resample.resample_clip(short, 22050, 16000, sample_duration=1.23).shape == (19680,)  # round(1.23 * 16000)


def test_variable_duration_clips_keep_their_length_at_the_target_rate():
    x = np.random.default_rng(1).standard_normal(1001).astype(np.float32)
    y = resample.resample_clip(x, 44100, 16000)
    assert y.shape == (math.ceil(1001 * 16000 / 44100),) == (364,)
    assert resample.resample_clip(x[:441], 44100, 16000).shape == (160,)


def test_a_clip_is_torchaudios_resample_of_the_source():
    x = np.random.default_rng(2).standard_normal(44100).astype(np.float32)
    ref = torchaudio.functional.resample(torch.from_numpy(x), 44100, 16000).numpy()
    np.testing.assert_array_equal(resample.resample_clip(x, 44100, 16000), ref)
    # the runner's cached kernel gives the same samples
    kernel_once = torchaudio.transforms.Resample(44100, 16000, dtype=torch.float32)
    cached = resample.resample_clip(x, 44100, 16000, 1.0, kernel_once)
    np.testing.assert_array_equal(cached, ref[:16000])


def test_stereo_audio_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"needs mono audio \[n\], got shape \(100, 2\); mix the channels down"):
        resample.resample_clip(np.zeros((100, 2), np.float32), 44100, 16000)


# ---------------------------------------------------------------- the view

def test_the_view_links_the_bundle_and_holds_16_bit_16_khz_wavs_of_the_resampled_audio(tmp_path):
    task = _bundle_44k(tmp_path)
    (task / "README.txt").write_text("notes")
    view = tmp_path / "out" / "resampled" / task.name
    assert resample.build_view(task, view, 44100, 16000) == 6
    for name in ("task_metadata.json", "labelvocabulary.csv", "train.json", "valid.json", "test.json", "README.txt"):
        assert (view / name).is_symlink() and (view / name).resolve() == (task / name).resolve()
    assert sorted(p.name for p in view.iterdir() if p.is_dir()) == ["16000"]  # no link to 44100/
    for split in ("train", "valid", "test"):
        for i in range(2):
            name = f"{split}_{i:03d}.wav"
            info = sf.info(str(view / "16000" / split / name))
            assert (info.samplerate, info.channels, info.frames, info.subtype) == (16000, 1, 16000, "PCM_16")
            source, _ = sf.read(str(task / "44100" / split / name), dtype="float32")
            ref = torchaudio.functional.resample(torch.from_numpy(source), 44100, 16000).numpy()[:16000]
            got, _ = sf.read(str(view / "16000" / split / name), dtype="float32")
            assert np.abs(ref).max() > 0.3  # a tone, not silence
            np.testing.assert_allclose(got, ref, rtol=0, atol=PCM16_STEP)  # within 16-bit rounding
    marker = json.loads((view / resample.MARKER).read_text())
    assert {k: marker[k] for k in ("source", "source_rate", "rate", "clips", "sample_duration")} == {
        "source": str(task.resolve()), "source_rate": 44100, "rate": 16000, "clips": 6, "sample_duration": 1.0}
    assert check_bundle(view) == []
    assert not (tmp_path / "tasks" / task.name / "16000").exists()  # the bundle is never written to


def test_a_view_is_reused_while_current_and_healthy_and_made_again_otherwise(tmp_path, caplog):
    task, out = _bundle_44k(tmp_path), tmp_path / "out"
    caplog.set_level("INFO", logger="eval_suites")
    folder, problems, audio = _audio_source(task, out, embedded=False)
    view = out / "resampled" / task.name
    assert (folder, problems) == (view, [])
    assert audio == {"rate": 16000, "resampled_from": 44100, "view": str(view)}
    assert (f"bundle {task.name} has no 16000/ folder: resampled its 44100/ audio to 16 kHz with torchaudio "
            f"into {view} (6 clips)") in caplog.text
    wav = view / "16000" / "test" / "test_000.wav"
    first = wav.stat().st_mtime_ns

    caplog.clear()
    assert _audio_source(task, out, embedded=False) == (view, [], audio)
    assert "reusing" in caplog.text and "resampled its" not in caplog.text
    assert wav.stat().st_mtime_ns == first  # not written again

    wav.unlink()  # a damaged view is made again
    assert _audio_source(task, out, embedded=False) == (view, [], audio)
    assert "does not pass check_bundle" in caplog.text and wav.exists()
    first = wav.stat().st_mtime_ns

    (view / resample.MARKER).unlink()
    assert not resample.view_is_current(view, task, 44100, 16000)
    assert _audio_source(task, out, embedded=False) == (view, [], audio)
    assert (view / resample.MARKER).exists() and wav.stat().st_mtime_ns != first

    # a bundle that changed (one more clip) is not the one the view was made from
    labels = json.loads((task / "test.json").read_text())
    sf.write(task / "44100" / "test" / "test_002.wav", np.zeros(44100, np.float32), 44100)
    (task / "test.json").write_text(json.dumps(dict(labels, **{"test_002.wav": ["low"]})))
    assert not resample.view_is_current(view, task, 44100, 16000)
    assert _audio_source(task, out, embedded=False)[1] == []
    assert (view / "16000" / "test" / "test_002.wav").exists()
    # so is one whose clips were renamed, with as many as before
    names = json.loads((task / "test.json").read_text())
    (task / "44100" / "test" / "test_002.wav").rename(task / "44100" / "test" / "renamed.wav")
    names["renamed.wav"] = names.pop("test_002.wav")
    (task / "test.json").write_text(json.dumps(names))
    assert not resample.view_is_current(view, task, 44100, 16000)
    assert _audio_source(task, out, embedded=False)[1] == []
    assert (view / "16000" / "test" / "renamed.wav").exists()


def test_a_clip_name_that_is_not_a_plain_file_name_is_refused(tmp_path):
    task, out = _bundle_44k(tmp_path), tmp_path / "out"
    names = json.loads((task / "test.json").read_text())
    sf.write(task / "44100" / "sneaky.wav", np.zeros(44100, np.float32), 44100)
    (task / "test.json").write_text(json.dumps(dict(names, **{"../sneaky.wav": ["low"]})))
    with pytest.raises(ValueError, match=r"lists the clip '\.\./sneaky\.wav', which is not a plain file name"):
        resample.build_view(task, out / "view", 44100, 16000)
    assert not (out / "sneaky.wav").exists() and not (out / "view").exists()


def test_a_build_that_dies_leaves_no_view_and_the_next_one_completes(tmp_path, monkeypatch):
    task = _bundle_44k(tmp_path)
    view = tmp_path / "out" / "resampled" / task.name
    real_write, written = sf.write, []

    def dies_on_the_third_clip(path, *args, **kwargs):
        if len(written) == 2:
            raise OSError("No space left on device")
        written.append(path)
        return real_write(path, *args, **kwargs)
    monkeypatch.setattr(sf, "write", dies_on_the_third_clip)
    with pytest.raises(OSError, match="No space left"):
        resample.build_view(task, view, 44100, 16000)
    assert not view.exists() and (view.parent / f".{view.name}.partial").is_dir()
    assert not resample.view_is_current(view, task, 44100, 16000)
    monkeypatch.setattr(sf, "write", real_write)
    assert resample.build_view(task, view, 44100, 16000) == 6
    assert not (view.parent / f".{view.name}.partial").exists()
    assert resample.view_is_current(view, task, 44100, 16000)
    assert len(list((view / "16000").rglob("*.wav"))) == 6


def test_a_bundle_embedded_by_every_model_needs_no_view(tmp_path):
    task, out = _bundle_44k(tmp_path), tmp_path / "out"
    (task / "44100" / "test" / "test_000.wav").unlink()  # clips are not re-read once embedded
    folder, problems, audio = _audio_source(task, out, embedded=True)
    assert (folder, problems, audio) == (task, [], {"rate": 16000, "resampled_from": 44100, "view": None})
    assert not (out / "resampled").exists()


# ---------------------------------------------------------------- problems

def test_check_bundle_says_how_to_go_on_when_only_another_rate_is_there(tmp_path):
    task = _bundle_44k(tmp_path)
    problems = check_bundle(task)
    assert problems[0] == ("audio folder 16000/train/ is missing (the bundle has 44100/: python -m eval_suites "
                           "run resamples it; heareval's own runner needs the 16000/ folder)")
    assert len(problems) == 3  # one per split
    assert check_bundle(task, rate=44100) == []
    shutil.copytree(task / "44100", task / "48000")
    assert ("(the bundle has 44100/, 48000/: python -m eval_suites run resamples 44100/; "
            "heareval's own runner needs the 16000/ folder)") in check_bundle(task)[0]


@pytest.mark.parametrize("breakage, expected", [
    (lambda t: sf.write(t / "44100" / "test" / "test_001.wav", np.zeros(44100, np.float32), 22050),
     "1 audio files in 44100/test/ are not 44100 Hz (test_001.wav: 22050 Hz)"),
    (lambda t: sf.write(t / "44100" / "train" / "train_000.wav", np.zeros((44100, 2), np.float32), 44100),
     "1 audio files in 44100/train/ are not mono or empty (train_000.wav: 2 channels, 44100 samples)"),
])
def test_a_source_clip_that_is_not_mono_at_its_folders_rate_is_named(tmp_path, breakage, expected):
    task, out = _bundle_44k(tmp_path), tmp_path / "out"
    breakage(task)
    folder, problems, audio = _audio_source(task, out, embedded=False)
    assert folder == task and problems == [expected]
    assert audio == {"rate": 16000, "resampled_from": 44100, "view": None}
    assert not (out / "resampled" / task.name).exists()


def test_the_report_and_summary_say_where_the_audio_came_from():
    suite = HEAREVAL_PROTOCOL
    status = {("m", b, step): ("done", "") for b in ("a", "b") for step in ("embeddings", "seed0")}
    audio = {"a": {"rate": 16000, "resampled_from": 44100, "view": "/o/resampled/a"}, "b": {"rate": 16000}}
    report = bundle_report(status, ["a", "b", "c"], {}, suite, [ModelSpec("m", "logmel")], [0], Path("/t"), audio)
    assert [r["audio"] for r in report["bundles"]] == [audio["a"], audio["b"], None]
    lines = format_summary(report).splitlines()
    assert next(line for line in lines if line.startswith("a ")).endswith("resampled from 44100 Hz")
    assert "resampled" not in next(line for line in lines if line.startswith("b "))


# ---------------------------------------------------------------- end to end

@pytest.mark.slow
def test_run_on_a_bundle_with_only_44100_hz_audio(tmp_path):
    task = write_scene_task(tmp_path / "tasks", n_per_split=4, rate=44100)
    out, model = tmp_path / "out", fast_model()
    cmd = [sys.executable, "-m", "eval_suites", "run", "--tasks-dir", str(tmp_path / "tasks"), "--model", model,
           "--out", str(out), "--seeds", "0", "--grid-json", json.dumps(TINY_GRID)]
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    view = out / "resampled" / task.name
    assert (f"bundle {task.name} has no 16000/ folder: resampled its 44100/ audio to 16 kHz with torchaudio "
            f"into {view} (12 clips)") in first.stderr
    scores = json.loads((out / model / "seed0" / task.name / "test.predicted-scores.json").read_text())
    assert 0.0 <= scores["test"]["test_score"] <= 1.0
    row = json.loads((out / "bundle_report.json").read_text())["bundles"][0]
    assert row["status"] == "ok"
    assert row["audio"] == {"rate": 16000, "resampled_from": 44100, "view": str(view)}
    assert "resampled from 44100 Hz" in next(line for line in first.stdout.splitlines() if line.startswith(task.name))
    assert not (task / "16000").exists()

    marker = (view / resample.MARKER).stat().st_mtime_ns
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"reusing {view}" in again.stderr and "resampled its" not in again.stderr
    assert (view / resample.MARKER).stat().st_mtime_ns == marker
    assert json.loads((out / "bundle_report.json").read_text())["bundles"][0]["audio"]["resampled_from"] == 44100
