"""eval_suites: suite data, mini-suite pieces, heareval compat, runner end to end."""
import collections
import inspect
import io
import json
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import hear_ssam
from eval_suites import mini
from eval_suites.build import BUILDERS
from eval_suites import heareval_startup
from eval_suites.heareval_compat import main as compat_main
from eval_suites.heareval_compat import patch_heareval, resolve_grid
from eval_suites.runner import BASELINE_MODELS, ModelSpec, run
from eval_suites.suites import (HEAR2021, HEAR2021_COLUMNS, HEAREVAL_GRID, HEAREVAL_SCORES, MINI, PAPER_GRID,
                                PROTOCOLS, SSAM10, SUITES, Suite, TaskSpec, bundle_task_specs)
from hear_bundle import write_scene_task


def test_ssam10_is_the_papers_ten_tasks_and_protocol():
    got = {t.bundle: t.metric for t in SSAM10.tasks}
    assert got == {
        "beijing_opera-v1.0-hear2021-full": "top1_acc", "tfds_crema_d-1.0.0-full": "top1_acc",
        "esc50-v2.0.0-full": "top1_acc", "libricount-v1.0.0-hear2021-full": "top1_acc",
        "mridangam_stroke-v1.5-full": "top1_acc", "mridangam_tonic-v1.5-full": "top1_acc",
        "nsynth_pitch-v2.2.3-5h": "pitch_acc", "speech_commands-v0.0.2-5h": "top1_acc",
        "fsd50k-v1.0-full": "mAP", "vox_lingua_top10-hear2021-full": "top1_acc"}
    assert SSAM10.seeds == tuple(range(10))
    g = resolve_grid(SSAM10.grid)
    assert g["hidden_dim"] == [1024] and g["dropout"] == [0.1, 0.25] and g["lr"] == [1e-4]
    assert g["hidden_norm"] == [torch.nn.BatchNorm1d] and g["initialization"] == [torch.nn.init.xavier_normal_]
    assert g["patience"] == [20] and g["max_epochs"] == [500] and g["check_val_every_n_epoch"] == [3]


def test_mini_suite_tasks_match_its_builders():
    assert [t.bundle for t in MINI.tasks] == list(BUILDERS)


def test_midi_note_is_a_valid_standard_midi_file():
    data = mini._midi_note(program=24, pitch=60, seconds=0.8)
    assert data[:4] == b"MThd" and struct.unpack(">IHHH", data[4:14]) == (6, 0, 1, 480)
    assert data[14:18] == b"MTrk" and struct.unpack(">I", data[18:22])[0] == len(data) - 22
    assert bytes([0xC0, 24]) in data and bytes([0x90, 60, 100]) in data and data.endswith(b"\xff\x2f\x00")


def test_drumkit_xml_strokes_by_name_then_file(tmp_path):
    kit = tmp_path / "Kit"
    kit.mkdir()
    for f in ("k.wav", "s.wav", "x_tom1.wav", "bell.wav"):
        (kit / f).write_bytes(b"")
    (kit / "drumkit.xml").write_text("""<drumkit_info xmlns="http://www.hydrogen-music.org/drumkit">
      <instrumentList>
        <instrument><name>Kick</name><layer><filename>k.wav</filename></layer></instrument>
        <instrument><name>Snare Jazz</name><layer><filename>s.wav</filename></layer></instrument>
        <instrument><name>17</name><layer><filename>x_tom1.wav</filename></layer></instrument>
        <instrument><name>Cowbell</name><layer><filename>bell.wav</filename></layer></instrument>
      </instrumentList></drumkit_info>""")
    assert [(p.name, s) for p, s in mini._kit_strokes(kit)] == [("k.wav", "kick"), ("s.wav", "snare"),
                                                                 ("x_tom1.wav", "tom")]


def test_bundle_writer_makes_a_kfold_hear_bundle(tmp_path):
    w = mini.BundleWriter(tmp_path, "demo", "v1.0", 1.0, ["top1_acc"], folds=2)
    for i in range(4):
        w.add(i % 2, f"c{i}.wav", np.zeros(8000, np.float32), ["a", "b"][i // 2])
    assert not (tmp_path / "demo-v1.0-full").exists()  # invisible until finished
    w.finish({"source": "test"})
    task = tmp_path / "demo-v1.0-full"
    meta = json.loads((task / "task_metadata.json").read_text())
    assert meta["split_mode"] == "new_split_kfold" and meta["splits"] == ["fold00", "fold01"]
    assert (task / "labelvocabulary.csv").read_text() == "idx,label\n0,a\n1,b\n"
    assert json.loads((task / "fold01.json").read_text()) == {"c1.wav": ["a"], "c3.wav": ["b"]}
    import soundfile as sf
    info = sf.info(str(task / "16000" / "fold00" / "c0.wav"))
    assert info.samplerate == 16000 and info.frames == 16000  # padded to the task duration
    assert not list(tmp_path.glob(".building-*"))


def test_compat_gives_fitloop_a_current_epoch_setter_and_reseeds():
    patch_heareval(seed=7, grid=PAPER_GRID)
    from pytorch_lightning.loops.fit_loop import FitLoop
    import heareval.predictions.task_predictions as tp
    loop = FitLoop()
    loop.current_epoch = 12
    assert loop.current_epoch == 12 and loop.epoch_progress.current.completed == 12
    tp.seed_everything(42)
    a = torch.rand(3)
    torch.manual_seed(7)
    assert torch.equal(a, torch.rand(3))
    assert tp.PARAM_GRID["dropout"] == [0.1, 0.25]


def test_compat_restores_hearevals_grid_and_writes_stable_hparams():
    import heareval.predictions.task_predictions as tp
    from pytorch_lightning.trainer.connectors.accelerator_connector import AcceleratorConnector
    patch_heareval(seed=1, grid=PAPER_GRID)
    patch_heareval(seed=42, grid=None)  # a later seed without a grid gets heareval's own back
    assert tp.PARAM_GRID["lr"] == [3.2e-3, 1e-3, 3.2e-4, 1e-4] and tp.PARAM_GRID["hidden_layers"] == [1, 2]
    # str(function) holds a memory address; the patched writer names it by module.qualname
    assert tp.hparams_to_json({"initialization": torch.nn.init.xavier_normal_, "lr": 0.1}) == {
        "initialization": "torch.nn.init.xavier_normal_", "lr": 0.1}
    assert AcceleratorConnector._init_deterministic._warn_only  # deterministic=True -> warn-only


def _weights_only_roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.fixture
def no_safe_globals():
    """torch's weights-only allowlist emptied for one test, then put back as it was. heareval's
    predictions module is imported first: its first import runs the installed start-up hook,
    which would refill the allowlist in the middle of the test."""
    import heareval.predictions.task_predictions  # noqa: F401
    before = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    yield
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals(before)


def _checkpoint_like(**hyper_parameters):
    return {"epoch": 3, "global_step": 12, "state_dict": {"predictor.weight": torch.arange(6.0).view(2, 3)},
            "callbacks": {"ModelCheckpoint": {"best_model_score": torch.tensor(0.75)}},
            "hyper_parameters": dict(hyper_parameters, lr=1e-3, hidden_layers=2)}


def test_startup_patch_allows_exactly_hearevals_checkpoint_globals(no_safe_globals):
    import heareval.predictions.task_predictions as tp
    drawn = [dict(hidden_norm=torch.nn.BatchNorm1d, embedding_norm=torch.nn.Identity,
                  initialization=init, optim=torch.optim.Adam)
             for init in (torch.nn.init.xavier_uniform_, torch.nn.init.xavier_normal_)]
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        _weights_only_roundtrip(_checkpoint_like(**drawn[0]))
    heareval_startup.patch_heareval_predictions()
    for hp in drawn:
        loaded = _weights_only_roundtrip(_checkpoint_like(**hp))
        assert loaded["hyper_parameters"] == dict(hp, lr=1e-3, hidden_layers=2) and loaded["epoch"] == 3
        assert torch.equal(loaded["state_dict"]["predictor.weight"], torch.arange(6.0).view(2, 3))
    # the list is heareval's grids' classes and functions, no more, no less
    in_grids = {v for grid in (tp.PARAM_GRID, tp.FAST_PARAM_GRID, tp.FASTER_PARAM_GRID)
                for values in grid.values() for v in values if callable(v)}
    assert set(torch.serialization.get_safe_globals()) == in_grids
    for other in (os.system, subprocess.Popen, collections.defaultdict, torch.nn.LayerNorm, torch.optim.SGD):
        with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
            _weights_only_roundtrip(_checkpoint_like(hidden_norm=other))


def test_compat_also_allows_what_suite_grids_can_name(no_safe_globals):
    patch_heareval(seed=0, grid=PAPER_GRID)
    hp = dict(hidden_norm=torch.nn.LayerNorm, optim=torch.optim.AdamW, initialization=torch.nn.init.xavier_normal_)
    assert _weights_only_roundtrip(_checkpoint_like(**hp))["hyper_parameters"]["optim"] is torch.optim.AdamW
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        _weights_only_roundtrip(_checkpoint_like(hidden_norm=os.system))


def test_run_after_import_runs_its_hook_once_the_module_has_loaded(tmp_path, monkeypatch):
    pkg = tmp_path / "hookdemo_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "target.py").write_text("VALUE = 7\n\n\ndef answer():\n    return VALUE\n")
    (pkg / "other.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    finder = heareval_startup.RunAfterImport("hookdemo_pkg.target",
                                             lambda: seen.append(sys.modules["hookdemo_pkg.target"].VALUE))
    sys.meta_path.insert(0, finder)
    try:
        import hookdemo_pkg.other  # noqa: F401  (not the hooked name)
        assert seen == []
        import hookdemo_pkg.target as target
        assert seen == [7] and target.answer() == 7
        # the module keeps its own loader, so its source stays readable (tracebacks, inspect)
        assert type(target.__loader__).__name__ == "SourceFileLoader" and target.__spec__.loader is target.__loader__
        assert "return VALUE" in inspect.getsource(target.answer)
    finally:
        sys.meta_path.remove(finder)
        for name in ("hookdemo_pkg", "hookdemo_pkg.other", "hookdemo_pkg.target"):
            sys.modules.pop(name, None)


def test_install_startup_into_a_folder_and_remove_it(tmp_path, capsys):
    site, name = tmp_path / "site", heareval_startup.INSTALLED_NAME
    site.mkdir()
    module, pth = site / f"{name}.py", site / f"{name}.pth"
    for _ in range(2):  # idempotent
        assert compat_main(["install-startup", "--target", str(site)]) == 0
        assert capsys.readouterr().out == f"wrote {module}\nwrote {pth}\n"
    assert module.read_bytes() == Path(heareval_startup.__file__).read_bytes()
    assert pth.read_text() == f"import {name}; {name}.install_import_hook()\n"
    # as a site folder: the .pth puts the hook first on sys.meta_path, and imports no torch
    probe = ("import site, sys; site.addsitedir(sys.argv[1]); import hear_ssam_heareval_startup as h; "
             "f = sys.meta_path[0]; print(type(f).__name__, f.module_name, 'torch' in sys.modules, h.__file__)")
    r = subprocess.run([sys.executable, "-S", "-c", probe, str(site)], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["RunAfterImport", "heareval.predictions.task_predictions", "False", str(module)]
    compiled = site / "__pycache__" / f"{name}.cpython-311.pyc"  # as an interpreter that imported it leaves
    compiled.parent.mkdir(exist_ok=True)
    compiled.write_bytes(b"")
    assert compat_main(["install-startup", "--uninstall", "--target", str(site)]) == 0
    assert capsys.readouterr().out == f"removed {pth}\nremoved {module}\nremoved {compiled}\n"
    assert not list(site.rglob(f"{name}*"))
    compat_main(["install-startup", "--uninstall", "--target", str(site)])
    assert capsys.readouterr().out == f"nothing to remove in {site}\n"
    with pytest.raises(SystemExit) as e:
        compat_main(["install-startup", "--target", str(tmp_path / "nope")])
    assert e.value.code == 2
    assert "nope is not a folder: pass an existing site-packages folder as --target" in capsys.readouterr().err


def test_model_spec_parsing(tmp_path):
    ckpt = tmp_path / "my_model.safetensors"
    ckpt.write_bytes(b"x")
    assert ModelSpec.parse(str(ckpt)).name == "my_model"
    assert ModelSpec.parse(f"alias={ckpt}").name == "alias"
    assert ModelSpec.parse("default").path == "" and not ModelSpec.parse("default").baseline
    base = ModelSpec.parse("logmel")
    assert (base.name, base.path, base.baseline) == ("logmel", "logmel", True)
    assert ModelSpec.parse("floor=logmel").baseline and ModelSpec.parse("floor=logmel").name == "floor"
    assert not ModelSpec.parse(str(ckpt)).baseline
    with pytest.raises(FileNotFoundError, match="nope.safetensors does not exist"):
        ModelSpec.parse(str(tmp_path / "nope.safetensors"))


def test_baseline_names_match_the_plugin():
    baseline = pytest.importorskip("hear_ssam.baseline")
    assert BASELINE_MODELS == tuple(baseline.BASELINES)


def test_hear2021_suite_is_the_leaderboards_19_columns():
    assert len(HEAR2021_COLUMNS) == 19 and len(set(HEAR2021_COLUMNS)) == 19
    assert list(HEAR2021_COLUMNS) == sorted(HEAR2021_COLUMNS)  # the official (alphabetical) order
    assert HEAR2021.labels == list(HEAR2021_COLUMNS)  # every column has a bundle, in that order
    assert {t.label for t in HEAR2021.tasks} == set(HEAR2021_COLUMNS)
    assert len(HEAR2021.tasks) == 20 and len({t.bundle for t in HEAR2021.tasks}) == 20
    assert [t.bundle for t in HEAR2021.tasks if t.label == "Beehive"] == [
        "beehive_states_fold0-v2-full", "beehive_states_fold1-v2-full"]
    assert all(t.metric in HEAREVAL_SCORES for t in HEAR2021.tasks)
    got = {t.bundle: t.metric for t in HEAR2021.tasks}
    assert got["dcase2016_task2-hear2021-full"] == "event_onset_200ms_fms"
    assert got["maestro-v3.0.0-5h"] == "event_onset_50ms_fms" and got["vocal_imitation-v1.1.3-full"] == "mAP"
    assert got["nsynth_pitch-v2.2.3-50h"] == "pitch_acc" and got["beehive_states_fold1-v2-full"] == "aucroc"
    # the ten SSAM tasks are HEAR 2021 bundles with the same columns and metrics
    assert {(t.bundle, t.label, t.metric) for t in SSAM10.tasks} <= {(t.bundle, t.label, t.metric) for t in HEAR2021.tasks}
    # heareval's own protocol, as plain data
    assert HEAR2021.grid == HEAREVAL_GRID and HEAR2021.points == 8 and HEAR2021.seeds == (42,)
    assert PROTOCOLS["heareval"].grid == HEAREVAL_GRID and "hear2021" in SUITES


def test_score_names_are_hearevals():
    from heareval.score import available_scores
    assert set(HEAREVAL_SCORES) == set(available_scores)


def test_any_bundle_gets_a_column_and_metric():
    specs = bundle_task_specs({
        "esc50-v2.0.0-full": {},  # a known HEAR bundle: its leaderboard column
        "birds-v1-full": {"task_name": "birds", "evaluation": ["mAP", "d_prime"], "split_mode": "trainvaltest",
                          "splits": ["train", "valid", "test"]},
        "x-v1-full": {"task_name": "x", "evaluation": ["top1_acc"], "split_mode": "new_split_kfold",
                      "splits": ["fold00", "fold01", "fold02"]},
        "x-v2-full": {"task_name": "x", "evaluation": ["top1_acc"], "split_mode": "trainvaltest", "splits": []},
    })
    assert specs["esc50-v2.0.0-full"] == TaskSpec("esc50-v2.0.0-full", "ESC-50", "top1_acc", "5-fold")
    assert specs["birds-v1-full"] == TaskSpec("birds-v1-full", "birds", "mAP", "train/valid/test")
    assert specs["x-v1-full"].label == "x-v1-full" and specs["x-v1-full"].split == "3-fold"  # shared task_name
    assert specs["x-v2-full"].label == "x-v2-full"


def test_cli_lists_hear2021():
    r = subprocess.run([sys.executable, "-m", "eval_suites", "list"], capture_output=True, text=True,
                       cwd=Path(__file__).parents[1])
    assert r.returncode == 0 and "hear2021:" in r.stdout and "beehive_states_fold1-v2-full" in r.stdout
    assert "heareval's PARAM_GRID, 8 random points, seeds [42]" in r.stdout


@pytest.mark.slow
def test_runner_end_to_end_skips_finished_work_and_isolates_failures(tmp_path):
    tasks = tmp_path / "tasks"
    write_scene_task(tasks, n_per_split=6)
    broken = tasks / "broken-v1.0-full"
    broken.mkdir()
    (broken / "task_metadata.json").write_text(json.dumps({"task_name": "broken", "splits": ["train"]}))
    suite = Suite("demo", (TaskSpec("tones-v1.0-full", "Tones", "top1_acc", "tvt"),
                           TaskSpec("broken-v1.0-full", "Broken", "top1_acc", "tvt"),
                           TaskSpec("absent-v1.0-full", "Absent", "top1_acc", "tvt")),
                  grid=dict(PAPER_GRID, max_epochs=[3], patience=[1], check_val_every_n_epoch=[1], dropout=[0.1]),
                  seeds=(0, 1))
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.safetensors"
    hear_ssam.save_checkpoint(ckpt, hear_ssam.SpectrogramEncoder(hear_ssam.EncoderConfig(embed_dim=32, depth=2)))
    models = [ModelSpec.parse(f"tiny={ckpt}")]
    status = run(suite, models, tasks, tmp_path / "runs", jobs=2)
    assert status[("tiny", "tones-v1.0-full", "embeddings")][0] == "done"
    assert status[("tiny", "tones-v1.0-full", "seed0")][0] == "done"
    assert status[("tiny", "tones-v1.0-full", "seed1")][0] == "done"
    assert status[("tiny", "broken-v1.0-full", "embeddings")] == ("broken", "task_metadata.json lacks "
                                                                   "embedding_type, prediction_type, split_mode, "
                                                                   "sample_duration, evaluation")
    assert status[("tiny", "absent-v1.0-full", "embeddings")][0] == "missing"
    scores = json.loads((tmp_path / "runs/tiny/seed1/tones-v1.0-full/test.predicted-scores.json").read_text())
    assert 0.0 <= scores["test"]["test_score"] <= 1.0
    again = run(suite, models, tasks, tmp_path / "runs", jobs=2)
    assert again[("tiny", "tones-v1.0-full", "embeddings")][0] == "skipped"
    assert again[("tiny", "tones-v1.0-full", "seed0")][0] == "skipped"
    assert not (tmp_path / "logs").exists()  # heareval's files stay under --out

    from results.aggregate import aggregate
    files = aggregate(tmp_path / "runs", tmp_path / "results")
    lb = files["leaderboard"].read_text().splitlines()
    assert lb[0] == "Model,URL,Submission Date,tones"  # a bundle no suite knows: its task_name
    report = json.loads((tmp_path / "runs" / "bundle_report.json").read_text())
    assert {b["bundle"]: b["status"] for b in report["bundles"]} == {
        "tones-v1.0-full": "ok", "broken-v1.0-full": "broken", "absent-v1.0-full": "missing"}
    assert files["chart"].read_bytes()[:4] == b"\x89PNG"


def test_cli_reports_missing_inputs(tmp_path):
    r = subprocess.run([sys.executable, "-m", "eval_suites", "run", "mini", "--model", "default",
                        "--tasks-dir", str(tmp_path / "none"), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
