"""Any bundles: check_bundle per kind of breakage, `run` without a suite end to end (two
healthy bundles, one broken), and the reproducibility of embeddings and probes."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from eval_suites.runner import ModelSpec, check_bundle, embed
from hear_bundle import write_event_task, write_scene_task

REPO = Path(__file__).resolve().parents[1]
# A probe grid that trains in seconds on a few clips (heareval PARAM_GRID format).
TINY_GRID = {"hidden_layers": [1], "hidden_dim": [64], "dropout": [0.1], "lr": [1e-2], "patience": [5],
             "max_epochs": [15], "check_val_every_n_epoch": [1], "batch_size": [1024],
             "hidden_norm": ["BatchNorm1d"], "norm_after_activation": [False], "embedding_norm": ["Identity"],
             "initialization": ["xavier_normal_"], "optim": ["Adam"]}
TIMING_KEYS = ("time_in_min",)  # wall-clock fields of heareval's score file: the only ones allowed to differ


def fast_model() -> str:
    """The log-mel baseline where the plugin has it (no network to run), else the bundled model."""
    try:
        import hear_ssam
        hear_ssam.load_model("logmel")
        return "logmel"
    except Exception:
        return "default"


# ---------------------------------------------------------------- check_bundle

def _scene(tmp_path):
    return write_scene_task(tmp_path, n_per_split=2)


def _edit_json(path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


BREAKAGES = {
    "no metadata": (lambda t: (t / "task_metadata.json").unlink(), "no task_metadata.json"),
    "invalid metadata": (lambda t: (t / "task_metadata.json").write_text("{'task_name': "),
                         "task_metadata.json is not valid JSON"),
    "metadata lacks keys": (lambda t: _edit_json(t / "task_metadata.json", lambda d: d.pop("evaluation")),
                            "task_metadata.json lacks evaluation"),
    "unknown score": (lambda t: _edit_json(t / "task_metadata.json", lambda d: d.update(evaluation=["f1"])),
                      "unknown score names ['f1']"),
    "no vocabulary": (lambda t: (t / "labelvocabulary.csv").unlink(), "labelvocabulary.csv is missing"),
    "bad vocabulary": (lambda t: (t / "labelvocabulary.csv").write_text("label\nlow\n"),
                       "labelvocabulary.csv needs an 'idx,label' header"),
    "label not in vocabulary": (lambda t: _edit_json(t / "valid.json", lambda d: d.update({"valid_000.wav": ["mid"]})),
                                "valid.json uses labels missing from labelvocabulary.csv: mid"),
    "no split json": (lambda t: (t / "test.json").unlink(),
                      "test.json is missing (task_metadata.json lists split 'test')"),
    "no audio folder": (lambda t: shutil.rmtree(t / "16000" / "valid"), "audio folder 16000/valid/ is missing"),
    "missing audio file": (lambda t: (t / "16000" / "train" / "train_001.wav").unlink(),
                           "1 audio files listed in train.json are missing from 16000/train/ (train_001.wav)"),
    "unreadable wav": (lambda t: (t / "16000" / "test" / "test_000.wav").write_bytes(b"RIFF\0\0\0\0garbage"),
                       "1 audio files in 16000/test/ cannot be read by soundfile (test_000.wav"),
    "stereo": (lambda t: sf.write(t / "16000" / "train" / "train_000.wav", np.zeros((16000, 2), np.float32), 16000),
               "1 audio files in 16000/train/ are not mono or empty (train_000.wav: 2 channels, 16000 samples)"),
    "unequal lengths": (lambda t: sf.write(t / "16000" / "valid" / "valid_001.wav", np.zeros(9000, np.float32), 16000),
                        "audio files in 16000/valid/ have 2 different lengths"),
    "wrong sample rate": (lambda t: sf.write(t / "16000" / "test" / "test_001.wav", np.zeros(800, np.float32), 8000),
                          "1 audio files in 16000/test/ are not 16000 Hz (test_001.wav: 8000 Hz)"),
}


def test_healthy_bundles_have_no_problems(tmp_path):
    assert check_bundle(_scene(tmp_path)) == []
    assert check_bundle(write_event_task(tmp_path, n_per_split=2)) == []


@pytest.mark.parametrize("kind", sorted(BREAKAGES))
def test_check_bundle_names_each_kind_of_breakage(tmp_path, kind):
    task = _scene(tmp_path)
    breakage, expected = BREAKAGES[kind]
    breakage(task)
    problems = check_bundle(task)
    assert any(expected in p for p in problems), problems


def test_audio_checks_can_be_skipped_for_embedded_bundles(tmp_path):
    task = _scene(tmp_path)
    (task / "16000" / "train" / "train_001.wav").unlink()
    assert check_bundle(task, audio=False) == []


# ---------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def any_run(tmp_path_factory):
    """`python -m eval_suites run` (no suite) over two healthy bundles and a broken one, 2 seeds."""
    root = tmp_path_factory.mktemp("any")
    tasks = root / "tasks"
    write_scene_task(tasks, n_per_split=6)
    write_event_task(tasks, n_per_split=3)
    write_scene_task(root / "spare", n_per_split=2).rename(tasks / "tones_broken-v1.0-full")
    (tasks / "tones_broken-v1.0-full" / "16000" / "valid" / "valid_001.wav").unlink()
    model = fast_model()
    cmd = [sys.executable, "-m", "eval_suites", "run", "--model", model, "--tasks-dir", str(tasks),
           "--out", str(root / "out"), "--seeds", "0", "1", "--grid-json", json.dumps(TINY_GRID), "--jobs", "2"]
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    return {"root": root, "tasks": tasks, "out": root / "out", "model": model, "first": first, "again": again}


@pytest.mark.slow
def test_run_without_a_suite_finishes_healthy_bundles_and_reports_the_broken_one(any_run):
    out, model, r = any_run["out"], any_run["model"], any_run["first"]
    assert r.returncode == 1, r.stderr[-3000:]  # something was broken
    summary = r.stdout[r.stdout.index("== bundles"):]
    broken_line = next(line for line in summary.splitlines() if line.startswith("tones_broken-v1.0-full"))
    assert "BROKEN" in broken_line and "valid_001.wav" in broken_line and "missing" in broken_line
    assert "FAILED: tones_broken-v1.0-full" in summary
    for task in ("tones-v1.0-full", "bursts-v1.0-full"):
        for seed in (0, 1):
            scores = json.loads((out / model / f"seed{seed}" / task / "test.predicted-scores.json").read_text())
            assert 0.0 <= scores["test"]["test_score"] <= 1.0
    report = json.loads((out / "bundle_report.json").read_text())
    rows = {b["bundle"]: b for b in report["bundles"]}
    assert {b: row["status"] for b, row in rows.items()} == {
        "tones-v1.0-full": "ok", "bursts-v1.0-full": "ok", "tones_broken-v1.0-full": "broken"}
    assert rows["bursts-v1.0-full"]["metric"] == "event_onset_200ms_fms" and rows["bursts-v1.0-full"]["label"] == "bursts"
    assert report["failed"] and "missing from 16000/valid/" in rows["tones_broken-v1.0-full"]["problems"][0]
    meta = json.loads((out / model / "model.json").read_text())
    assert meta["suite"] == "bundles" and meta["baseline"] == (model == "logmel")
    assert not (out / model / "tasks_view").exists()  # the view is only there while embedding
    # a rerun skips everything finished, and still reports the broken bundle
    again = any_run["again"]
    assert again.returncode == 1 and "BROKEN" in again.stdout
    report = json.loads((out / "bundle_report.json").read_text())
    ok_row = next(b for b in report["bundles"] if b["bundle"] == "tones-v1.0-full")["models"][model]
    assert ok_row == {"embeddings": "skipped", "seeds": {"0": "skipped", "1": "skipped"}, "errors": []}

    from results.aggregate import aggregate
    files = aggregate(out, any_run["root"] / "results")
    assert files["leaderboard"].read_text().splitlines()[0] == "Model,URL,Submission Date,bursts,tones"
    md = files["markdown"].read_text()
    assert md.startswith("| Model | bursts | tones |")
    if model == "logmel":
        assert "| logmel (baseline) |" in md


def _without_timing(obj):
    if isinstance(obj, dict):
        return {k: _without_timing(v) for k, v in obj.items() if k not in TIMING_KEYS}
    return obj


@pytest.mark.slow
def test_a_probe_seed_gives_identical_scores_in_any_process(any_run):
    """Seed 0 ran first in its own process in the run; here it runs after seed 1 in one process."""
    out, model = any_run["out"], any_run["model"]
    task = "tones-v1.0-full"
    again = any_run["root"] / "again"
    r = subprocess.run([sys.executable, "-m", "eval_suites.heareval_compat", "predict",
                        str(out / model / "embeddings" / "hear_ssam" / task), "--runs-dir", str(again),
                        "--seeds", "1", "0", "--grid-json", json.dumps(TINY_GRID), "--grid-points", "1000"],
                       capture_output=True, text=True, cwd=REPO,
                       env=dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0",
                                PYTHONPATH=str(REPO)))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    def scores(root, seed):
        text = (root / f"seed{seed}" / task / "test.predicted-scores.json").read_text()
        return _without_timing(json.loads(text))
    fresh, after_seed1 = scores(out / model, 0), scores(again, 0)
    assert fresh == after_seed1  # every digit of every score, loss and hyper-parameter
    assert scores(out / model, 1) == scores(again, 1)
    other = scores(again, 1)
    assert other["test"]["test_loss"] != fresh["test"]["test_loss"]  # a seed changes the probe


@pytest.mark.slow
def test_embeddings_are_bit_identical_run_to_run_and_a_failing_task_spares_the_others(any_run, tmp_path):
    """Same model, same bundles, same thread count (the runner's): the same bytes. A bundle
    check_bundle passes but the model refuses (clips too short to embed) fails alone."""
    out, model = any_run["out"], any_run["model"]
    names = ["bursts-v1.0-full", "tones-v1.0-full"]
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for t in names:
        (tasks / t).symlink_to(any_run["tasks"] / t)
    short = write_scene_task(tmp_path / "spare", n_per_split=2).rename(tasks / "short-v1.0-full")
    for wav in (short / "16000" / "test").iterdir():
        sf.write(wav, np.zeros(150, np.float32), 16000)
    assert check_bundle(short) == []
    result = embed(ModelSpec.parse(model), sorted(names + [short.name]), tasks, tmp_path / "out",
                   threads=os.cpu_count() or 1)
    assert {t: result[t] for t in names} == {t: ("done", "") for t in names}
    assert result[short.name][0] == "failed" and "too short" in result[short.name][1]
    for task in names:
        first = out / model / "embeddings" / "hear_ssam" / task
        second = tmp_path / "out" / model / "embeddings" / "hear_ssam" / task
        arrays = sorted(p.relative_to(first) for p in first.rglob("*.npy"))
        assert len(arrays) > 3
        assert arrays == sorted(p.relative_to(second) for p in second.rglob("*.npy"))
        for rel in arrays:
            assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel


def test_a_model_whose_checkpoint_changed_starts_over(tmp_path, caplog):
    """Finished work is reused by model name: a new file under the same name must not reuse it."""
    from eval_suites.runner import _write_model_json
    from eval_suites.suites import HEAREVAL_PROTOCOL
    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(b"weights v1")
    spec, out = ModelSpec.parse(f"m={ckpt}"), tmp_path / "out"
    _write_model_json(spec, HEAREVAL_PROTOCOL, out)
    done = out / "m" / "embeddings" / "hear_ssam" / "task" / ".done.embeddings"
    done.parent.mkdir(parents=True)
    done.touch()
    _write_model_json(spec, HEAREVAL_PROTOCOL, out)  # same file: kept
    assert done.exists()
    ckpt.write_bytes(b"weights v2")
    _write_model_json(spec, HEAREVAL_PROTOCOL, out)
    assert not done.exists() and "checkpoint changed" in caplog.text
    import hashlib
    assert json.loads((out / "m" / "model.json").read_text())["weights_sha256"] == hashlib.sha256(b"weights v2").hexdigest()
    logmel = ModelSpec.parse("logmel")
    _write_model_json(logmel, HEAREVAL_PROTOCOL, out)
    assert json.loads((out / "logmel" / "model.json").read_text())["weights_sha256"] is None
