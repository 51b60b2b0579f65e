"""The real HEAR tools, exactly as a user types them (subprocesses, any directory)."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import hear_ssam
from hear_ssam.__main__ import main as cli
from eval_suites import heareval_startup, mini, mini_events
from hear_bundle import write_event_task, write_scene_task
from test_mini_events import _kit_tree

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def _run(args, cwd):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def official_ckpt(tmp_path_factory):
    from test_checkpoint import write_official
    torch.manual_seed(2)
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint-99.pth"
    write_official(path, hear_ssam.preset_encoder("ssam-tiny"))
    return path


def _validator_ok(result):
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Looks good!" in result.stdout


def test_validator_default_model(tmp_path):
    _validator_ok(_run([str(BIN / "hear-validator"), "hear_ssam"], cwd=tmp_path))


def test_validator_on_every_checkpoint_format(tmp_path, official_ckpt):
    converted = tmp_path / "converted.safetensors"
    cli(["convert", str(official_ckpt), str(converted), "--token-order", "official"])
    ssast = tmp_path / "ssast.safetensors"
    cli(["init", "ssast-tiny", str(ssast)])
    axlstm = tmp_path / "axlstm.safetensors"
    cli(["init", "axlstm-tiny", str(axlstm)])
    ssamba = tmp_path / "ssamba.safetensors"
    cli(["init", "ssamba-tiny", str(ssamba)])
    for ckpt in (official_ckpt, converted, ssast, axlstm, ssamba):
        _validator_ok(_run([str(BIN / "hear-validator"), "hear_ssam", "--model", str(ckpt)], cwd=tmp_path))


def test_heareval_embeddings_runner_scene_and_event(tmp_path, official_ckpt):
    tasks = tmp_path / "tasks"
    write_scene_task(tasks)
    write_event_task(tasks)
    r = _run([sys.executable, "-m", "heareval.embeddings.runner", "hear_ssam", "--model",
              str(official_ckpt), "--tasks-dir", str(tasks), "--embeddings-dir", str(tmp_path / "emb")],
             cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    scene = tmp_path / "emb" / "hear_ssam" / "tones-v1.0-full"
    event = tmp_path / "emb" / "hear_ssam" / "bursts-v1.0-full"
    for task in (scene, event):
        assert (task / ".done.embeddings").exists() or any(task.glob("*.embeddings.npy")), list(task.iterdir())
    dims = json.loads((scene / "train.embedding-dimensions.json").read_text())
    assert dims == [4, 960]
    emb = np.memmap(scene / "train.embeddings.npy", dtype=np.float32, mode="r", shape=tuple(dims))
    assert np.isfinite(emb).all() and emb.std() > 0
    # events: one row per 40 ms frame of each 3 s clip (75 frames: centres 15..2975 ms)
    edims = json.loads((event / "test.embedding-dimensions.json").read_text())
    assert edims == [3 * 75, 960]
    stamps = json.loads((event / "test.filename-timestamps.json").read_text())
    assert stamps[0][1] == 15.0 and stamps[74][1] == 2975.0 and stamps[75][1] == 15.0


def _users_shell():
    """A user's environment: no weights-only override, no project folder on the path."""
    env = {k: v for k, v in os.environ.items() if k not in ("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "PYTHONPATH")}
    return dict(env, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3")


def test_hearevals_own_two_commands_as_typed(tmp_path):
    installed = heareval_startup.site_packages() / f"{heareval_startup.INSTALLED_NAME}.py"
    if not installed.exists() or installed.read_bytes() != Path(heareval_startup.__file__).read_bytes():
        pytest.fail(f"{installed} is missing or out of date: run `bash scripts/setup.sh` "
                    "(or `python -m eval_suites.heareval_compat install-startup`)")
    root, tasks = _kit_tree(tmp_path / "unpacked"), tmp_path / "tasks"
    tasks.mkdir()
    mini.build_drums(root, tasks)  # scene, 4 folds
    mini_events.build_drum_events(root, tasks, clips_per_fold=2, seconds=2.0)  # events, 4 folds
    write_event_task(tasks)  # events scored at every validation: needs FitLoop's current_epoch setter
    bundles = sorted(p.name for p in tasks.iterdir())
    assert bundles == ["bursts-v1.0-full", "mini_drum_events-v1.0-full", "mini_drums-v2.0-full"]
    logmel = tmp_path / "logmel.safetensors"
    cli(["init", "logmel", str(logmel)])

    def typed(*args):
        r = subprocess.run([sys.executable, "-m", *args], cwd=tmp_path, env=_users_shell(), capture_output=True,
                           text=True, timeout=900)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
        assert "Weights only load failed" not in r.stderr
    typed("heareval.embeddings.runner", "hear_ssam", "--model", str(logmel), "--tasks-dir", "tasks",
          "--embeddings-dir", "emb")
    # heareval's "faster" grid and one grid point: its 8-point default takes minutes per task
    typed("heareval.predictions.runner", *[f"emb/hear_ssam/{b}" for b in bundles], "--grid", "faster",
          "--grid-points", "1")
    for b in bundles:
        scores = json.loads((tmp_path / "emb" / "hear_ssam" / b / "test.predicted-scores.json").read_text())
        score = scores["aggregated_scores"]["test_score_mean"] if "aggregated_scores" in scores else \
            scores["test"]["test_score"]
        assert math.isfinite(score) and 0.0 <= score <= 1.0, (b, scores)
    # every checkpoint heareval wrote (and read back) holds only allowlisted globals
    from torch.serialization import clear_safe_globals, get_safe_globals, get_unsafe_globals_in_checkpoint
    allowed = {f"{module}.{name}" for module, name in heareval_startup.HEAREVAL_CHECKPOINT_GLOBALS}
    checkpoints = sorted((tmp_path / "logs").rglob("*.ckpt"))
    assert len(checkpoints) == 4 + 4 + 1  # a probe per fold, one for train/valid/test
    # What a checkpoint holds beyond torch's own allowlist: other tests of this process may
    # have added heareval's globals to it, which get_unsafe_globals_in_checkpoint leaves out.
    earlier = get_safe_globals()
    clear_safe_globals()
    try:
        for ckpt in checkpoints:
            held = set(get_unsafe_globals_in_checkpoint(ckpt))
            assert {"torch.nn.modules.linear.Identity", "torch.optim.adam.Adam"} <= held <= allowed, (ckpt, held)
    finally:
        torch.serialization.add_safe_globals(earlier)
