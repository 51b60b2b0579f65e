"""Fine-tuning (eval_suites.finetune): a run on synthesised bundles learns the task, writes
heareval's score layout that `results aggregate` shows as a fine-tuned row, resumes exactly
after a kill, draws every random choice from its seed, and names bad input."""
import dataclasses
import json
import shutil

import numpy as np
import pytest
from safetensors import safe_open
import torch

import hear_ssam
from eval_suites import finetune as ft
from eval_suites.__main__ import main as eval_main
from eval_suites.runner import ModelSpec
from hear_bundle import write_event_task, write_scene_task
from hear_ssam.encoder import SpectrogramEncoder
from hear_ssam.presets import PRESETS, family_of_preset

FAST = dict(epochs=4, batch_size=4, lr=1e-3, lr_decay_start=2)


def tiny_checkpoint(path, preset, seed=0, **fields):
    """A 2-block, 32-wide encoder of `preset`'s family, saved as a plugin checkpoint."""
    cfg = PRESETS[preset]
    options = dict(cfg.block_options, **({"num_heads": 2} if "num_heads" in cfg.block_options else {}))
    cfg = dataclasses.replace(cfg, embed_dim=32, depth=2, block_options=options, **fields)
    torch.manual_seed(seed)
    family = family_of_preset(preset)
    hear_ssam.save_checkpoint(path, SpectrogramEncoder(cfg, family.pretraining_options()), frontend=family.frontend)
    return path


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    write_scene_task(root, n_per_split=8, seconds=1.0)
    write_event_task(root, n_per_split=2)
    return root


@pytest.fixture(scope="module")
def ssam_file(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "ssam.safetensors", "ssam-tiny")


def run(ckpt, tasks, out, seeds=(0,), task="tones-v1.0-full", name="tiny-finetuned", **recipe):
    spec = ModelSpec(name=name, path=str(ckpt))
    return ft.finetune(spec, tasks, out, ft.Recipe(**dict(FAST, **recipe)), seeds=seeds,
                       tasks=None if task is None else [task])


def scores_of(out, name="tiny-finetuned", seed=0, task="tones-v1.0-full"):
    return json.loads((out / name / f"seed{seed}" / task / "test.predicted-scores.json").read_text())


def test_a_fine_tuned_model_learns_the_task_and_writes_heareval_scores(bundles, ssam_file, tmp_path):
    run(ssam_file, bundles, tmp_path, epochs=6)
    scores = scores_of(tmp_path)
    test = scores["test"]  # a train/valid/test bundle: heareval's single-split layout
    assert test["test_score"] == test["test_top1_acc"] >= 0.75  # two tones 3 octaves apart; chance 0.5
    assert 0 <= test["epoch"] <= 5 and 0 <= test["validation_score"] <= 1  # heareval's 0-based epoch
    assert test["geometry"]["pooling"] == "frames" and test["geometry"]["stride"] == [4, 16]
    epochs = (tmp_path / "tiny-finetuned/seed0/tones-v1.0-full/test.epochs.csv").read_text().splitlines()
    assert len(epochs) == 7 and epochs[0].startswith("epoch,train_loss,valid_score")
    assert not list(tmp_path.rglob("*.state.safetensors"))  # the resume state is gone once scored
    assert not list(tmp_path.rglob("*.best-epoch*.safetensors"))
    model = json.loads((tmp_path / "tiny-finetuned/model.json").read_text())
    assert model["finetuned"] is True and model["recipe"]["epochs"] == 6


def test_results_aggregate_marks_fine_tuned_rows(bundles, ssam_file, tmp_path):
    from results.aggregate import aggregate
    run(ssam_file, bundles, tmp_path, epochs=1)
    files = aggregate(tmp_path, tmp_path / "board")
    table = (tmp_path / "board" / "scores.csv").read_text()
    assert "tiny-finetuned,tones-v1.0-full" in table.replace('"', "")
    board = files["markdown"].read_text()
    assert "| tiny-finetuned |" in board and "Fine-tuned: tiny-finetuned (trained end to end" in board


def test_a_killed_run_resumes_exactly(bundles, ssam_file, tmp_path, monkeypatch):
    run(ssam_file, bundles, tmp_path / "whole", mixup=0.5)
    log = "tiny-finetuned/seed0/tones-v1.0-full/test.epochs.csv"
    whole = [line.split(",")[:3] for line in (tmp_path / "whole" / log).read_text().splitlines()]
    assert len(whole) == 5  # the header and 4 epochs
    real_save = ft.save_state
    # Killed after epoch 2's state; before it (a best file newer than the state may exist);
    # after the last epoch (the resume trains nothing and scores the best file's weights).
    for when, call in (("after", 2), ("before", 2), ("after", 4)):
        out, calls = tmp_path / f"killed_{when}_{call}", []

        def save_then_die(path, *args):
            calls.append(path)
            if when == "before" and len(calls) == call:
                raise KeyboardInterrupt
            real_save(path, *args)
            if when == "after" and len(calls) == call:
                raise KeyboardInterrupt
        monkeypatch.setattr(ft, "save_state", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            run(ssam_file, bundles, out, mixup=0.5)
        split = out / "tiny-finetuned/seed0/tones-v1.0-full"
        with safe_open(str(split / "test.state.safetensors"), framework="pt") as f:
            best = json.loads(f.metadata()["finetune"])["best_epoch"]
        assert (split / f"test.best-epoch{best}.safetensors").is_file()  # what the resume reads back
        monkeypatch.setattr(ft, "save_state", real_save)
        run(ssam_file, bundles, out, mixup=0.5)
        killed = [line.split(",")[:3] for line in (out / log).read_text().splitlines()]
        assert killed == whole, (when, call)  # every epoch's loss and validation score
        a, b = scores_of(tmp_path / "whole")["test"], scores_of(out)["test"]
        assert (a["test_score"], a["epoch"]) == (b["test_score"], b["epoch"]), (when, call)
        assert not list(split.glob("*.safetensors*"))  # states, best weights and .tmp files are gone


def test_ssasts_schedule_warm_up_decay_and_early_stop():
    r = ft.Recipe(lr=1e-4, lr_decay_start=5, lr_decay=0.85, warmup_steps=100)
    assert r.lr_at(0, 0) == 0 and r.lr_at(0, 50) == pytest.approx(5e-5) and r.lr_at(3, 500) == 1e-4
    # MultiStepLR(milestones=range(5, ...)) stepped after each epoch: epochs 1-5 at lr, the 6th at 0.85 lr
    assert r.lr_at(4, 500) == 1e-4 and r.lr_at(5, 500) == pytest.approx(0.85e-4)
    assert r.lr_at(9, 500) == pytest.approx(1e-4 * 0.85 ** 5)
    # SSAST's ESC-50 run (--n-epochs 50) ends after its 30th epoch, when lr < lr / 64
    assert [e for e in range(50) if r.stops_after(e)][0] == 29
    assert not ft.Recipe(lr_decay=1.0).stops_after(40)


def test_learned_positions_get_the_bundles_window_as_ssasts_target_length(bundles, tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ssamba.safetensors", "ssamba-tiny")
    run(ckpt, bundles, tmp_path, epochs=1)
    geometry = scores_of(tmp_path)["test"]["geometry"]
    # 1 s clips: 96 frames (whole 16-frame patches), 16 x 16 patches at stride 10 on 128 bins
    assert geometry["window_frames"] == 96 and geometry["stride"] == [10, 10] and geometry["grid"] == [9, 12]
    assert geometry["family"] == "ssamba" and geometry["pooling"] == "tokens"


def test_seeds_decide_every_random_choice(bundles, ssam_file, tmp_path):
    run(ssam_file, bundles, tmp_path / "a", seeds=(0, 1), epochs=2)
    run(ssam_file, bundles, tmp_path / "b", seeds=(0,), epochs=2)
    log = "tiny-finetuned/seed{}/tones-v1.0-full/test.epochs.csv"
    read = lambda d, s: [line.split(",")[1] for line in (tmp_path / d / log.format(s)).read_text().splitlines()[1:]]  # noqa: E731
    assert read("a", 0) == read("b", 0)
    assert read("a", 0) != read("a", 1)


def test_augmentation_is_ssasts_and_drawn_from_its_seed():
    spec = torch.zeros(6, 100, 80)
    targets = torch.eye(3)[[0, 1, 2, 0, 1, 2]]
    recipe = ft.Recipe(mixup=1.0, noise=False, freq_mask=0.2, time_mask=0.2)
    x1, y1 = ft.augment(spec + torch.arange(6.)[:, None, None], targets, recipe, seed=3, pad_value=-9.0)
    x2, y2 = ft.augment(spec + torch.arange(6.)[:, None, None], targets, recipe, seed=3, pad_value=-9.0)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert torch.allclose(y1.sum(dim=1), torch.ones(6))  # mixed targets stay a distribution
    assert (y1.max(dim=1).values < 1).all()  # every clip mixed (p = 1), each with another clip
    masked = x1 == -9.0
    assert masked.any() and masked.all(dim=1).sum() <= 6 * 16 and masked.all(dim=2).sum() <= 6 * 20
    lam = ft._beta(torch.Generator().manual_seed(0), 20000)
    assert abs(lam.mean().item() - 0.5) < 0.01 and abs(lam.var().item() - 1 / 84) < 0.002  # Beta(10, 10)


def test_k_fold_bundles_get_heareval_splits_and_aggregated_scores(bundles, ssam_file, tmp_path):
    tasks = tmp_path / "tasks"
    shutil.copytree(bundles / "tones-v1.0-full", tasks / "tones-v1.0-full")
    meta_path = tasks / "tones-v1.0-full/task_metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["split_mode"] = "new_split_kfold"  # its three splits become three folds
    meta_path.write_text(json.dumps(meta))
    run(ssam_file, tasks, tmp_path / "runs", epochs=1)
    scores = scores_of(tmp_path / "runs")
    assert {"test", "train", "valid"} <= set(scores)  # one entry per test fold, as heareval names them
    agg = scores["aggregated_scores"]
    assert agg["test_top1_acc_mean"] == pytest.approx(np.mean([scores[f]["test_top1_acc"] for f in ("test", "train", "valid")]))


def test_ssast_gets_ssasts_overlapping_patches_and_token_pooling(bundles, tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ssast.safetensors", "ssast-tiny")
    run(ckpt, bundles, tmp_path, epochs=1)
    geometry = scores_of(tmp_path)["test"]["geometry"]
    assert geometry["family"] == "ssast" and geometry["pooling"] == "tokens"
    assert geometry["stride"] == [4, 10] and geometry["grid"] == [25, 7]  # 1 s window, 80 bins at stride 10
    run(ckpt, bundles, tmp_path / "plain", epochs=1, patch_stride="none", name="plain")
    assert scores_of(tmp_path / "plain", name="plain")["test"]["geometry"]["stride"] == [4, 16]


def test_bad_input_is_named(bundles, ssam_file, tmp_path):
    with pytest.raises(ft.FinetuneError, match="event .timestamp. task.*python -m eval_suites run"):
        run(ssam_file, bundles, tmp_path, task="bursts-v1.0-full")
    status = run(ssam_file, bundles, tmp_path, task=None, epochs=1)  # every bundle: the event one is skipped
    assert status[("bursts-v1.0-full", None)].startswith("skipped: bundle bursts-v1.0-full is an event")
    assert status[("tones-v1.0-full", 0)] == "done"
    with pytest.raises(ft.FinetuneError, match="log-mel baseline has no weights"):
        ft.finetune(ModelSpec("logmel", "logmel"), bundles, tmp_path, ft.Recipe())
    with pytest.raises(ft.FinetuneError, match="patch_stride must be auto, none, S or T,F"):
        ft.Recipe(patch_stride="wide")
    broken = tmp_path / "broken"
    shutil.copytree(bundles / "tones-v1.0-full", broken / "tones-v1.0-full")
    (broken / "tones-v1.0-full/16000/test/test_000.wav").write_bytes(b"RIFF not audio")
    with pytest.raises(ft.FinetuneError, match="tones-v1.0-full is broken: .*test_000.wav"):
        run(ssam_file, broken, tmp_path / "b")
    labels = broken / "tones-v1.0-full/train.json"
    (broken / "tones-v1.0-full/16000/test/test_000.wav").unlink()
    shutil.copy(bundles / "tones-v1.0-full/16000/test/test_000.wav", broken / "tones-v1.0-full/16000/test/")
    entries = json.loads(labels.read_text())
    entries["train_000.wav"] = []
    labels.write_text(json.dumps(entries))
    with pytest.raises(ft.FinetuneError, match="is broken: train.json.*not have exactly one label .train_000.wav"):
        run(ssam_file, broken, tmp_path / "c")


def test_the_command_line_runs_and_refuses_another_recipe_in_the_same_folder(bundles, ssam_file, tmp_path, capsys):
    args = ["finetune", "--tasks-dir", str(bundles), "--task", "tones-v1.0-full", "--model", str(ssam_file),
            "--out", str(tmp_path), "--seeds", "0", "--epochs", "1", "--batch-size", "4"]
    assert eval_main(args) == 0
    assert (tmp_path / "ssam-finetuned/seed0/tones-v1.0-full/test.predicted-scores.json").exists()
    assert eval_main(args[:-1] + ["8"]) == 2
    assert "another recipe (--batch-size: 4 -> 8)" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_ddp_two_processes(bundles, ssam_file, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                        "-m", "eval_suites", "finetune", "--tasks-dir", str(bundles), "--task", "tones-v1.0-full",
                        "--model", f"tiny={ssam_file}", "--out", str(tmp_path), "--seeds", "0", "--epochs", "2",
                        "--batch-size", "4", "--lr", "1e-3", "--lr-decay-start", "2"], capture_output=True, text=True, env=env, timeout=600,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr[-3000:]
    scores = scores_of(tmp_path)["test"]
    assert 0 <= scores["test_score"] <= 1 and scores["epoch"] in (0, 1)
    # The global batch's mean loss, whichever process holds which clips: the single-process run's.
    run(ssam_file, bundles, tmp_path / "one", epochs=2, batch_size=4)
    log = "tiny-finetuned/seed0/tones-v1.0-full/test.epochs.csv"
    ddp, one = [[line.split(",")[1] for line in (d / log).read_text().splitlines()[1:]] for d in (tmp_path, tmp_path / "one")]
    assert len(ddp) == 2 and np.allclose([float(v) for v in ddp], [float(v) for v in one], atol=1e-4)
