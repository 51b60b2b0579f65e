"""The families comparison: the adaptive seeding rule on synthetic per-seed scores, the rows'
data, and `results families` on a small synthetic runs folder (every output file)."""
import json
import math

import pandas as pd
import pytest
from scipy import stats

from eval_suites import runner
from eval_suites.families import (HEAD_TO_HEAD, ROWS, SEED_CAP, SEED_STEP, TARGET_HALF_WIDTH, adaptive_seeding,
                                  comparison_pairs, complete_seeds, plan_seeds, resolve_rows)
from eval_suites.runner import ModelSpec
from eval_suites.suites import MINI
from results.__main__ import main as results_main
from results.families import families, throughput_column
from test_results import _write  # writes RUNS/MODEL/seedK/TASK/test.predicted-scores.json + model.json

DRUMS, EVENTS, PITCH = "mini_drums-v2.0-full", "mini_drum_events-v1.0-full", "mini_pitch-v2.0-full"
LABELS = {DRUMS: "Mini drum strokes", EVENTS: "Mini drum events", PITCH: "Mini pitch"}
METRICS = {DRUMS: "top1_acc", EVENTS: "event_onset_200ms_fms", PITCH: "pitch_acc"}


# ---------------------------------------------------------------- adaptive seeding

def synthetic_score(kind: str, seed: int) -> float:
    """quiet: half-width far below 0.03 at 5 seeds; medium: above at 5, below at 10; noisy: above at 20."""
    if kind == "quiet":
        return 0.6 + 0.001 * (seed % 3)
    if kind == "medium":
        return [0.50, 0.56, 0.44, 0.53, 0.47][seed] if seed < 5 else 0.5
    return 0.3 if seed % 2 else 0.7


def _raw(seeds_of: dict) -> pd.DataFrame:
    """{(model, bundle): seeds} -> the per-seed rows results.aggregate.collect gives."""
    return pd.DataFrame([{"model": m, "task": b, "label": LABELS[b], "metric": METRICS[b], "seed": s,
                          "score": synthetic_score(m, s), "suite": "mini"}
                         for (m, b), seeds in seeds_of.items() for s in seeds])


def test_seeds_are_added_only_where_the_half_width_is_above_the_target_up_to_the_cap():
    seeds_of = {("quiet", DRUMS): list(range(5)), ("medium", DRUMS): list(range(5)), ("noisy", PITCH): list(range(5))}
    rounds = []
    while True:
        steps = plan_seeds(_raw(seeds_of))
        adding = [s for s in steps if s.add]
        if not adding:
            break
        rounds.append(adding)
        for s in adding:  # every addition is justified by a half-width above the target, below the cap
            assert s.half_width > TARGET_HALF_WIDTH and s.seeds < SEED_CAP
            assert s.add == tuple(range(s.seeds, s.seeds + SEED_STEP))
            seeds_of[(s.model, s.bundles[0])] += list(s.add)
        assert len(rounds) < 10
    final = {s.model: s for s in steps}
    assert final["quiet"].seeds == 5 and final["quiet"].half_width < TARGET_HALF_WIDTH
    assert final["medium"].seeds == 10 and final["medium"].half_width <= TARGET_HALF_WIDTH
    assert final["noisy"].seeds == SEED_CAP == 20 and final["noisy"].half_width > TARGET_HALF_WIDTH
    assert "at the cap of 20 seeds: reported" in final["noisy"].why
    assert [sorted(s.model for s in r) for r in rounds] == [["medium", "noisy"], ["noisy"], ["noisy"]]
    # the half-width is the leaderboard's: t(0.975, n-1) sd / sqrt(n) over the seeds so far
    medium5 = [synthetic_score("medium", s) for s in range(5)]
    expected = stats.t.ppf(0.975, 4) * pd.Series(medium5).std(ddof=1) / math.sqrt(5)
    assert plan_seeds(_raw({("medium", DRUMS): range(5)}))[0].half_width == pytest.approx(expected)


def test_the_rule_counts_complete_blocks_so_an_interrupted_round_decides_the_same():
    assert complete_seeds([0, 1, 2, 3, 4, 5, 6]) == 5
    assert complete_seeds([0, 1, 2, 4, 5]) == 0
    assert complete_seeds(range(12)) == 10
    (step,) = plan_seeds(_raw({("medium", DRUMS): [0, 1, 2, 3, 4, 5, 6]}))
    assert step.seeds == 5 and step.add == (5, 6, 7, 8, 9)  # seeds 5-6 alone would have passed
    (step,) = plan_seeds(_raw({("medium", DRUMS): [0, 1, 3, 4]}))
    assert step.seeds == 0 and step.add == (0, 1, 2, 3, 4)


def test_the_seeding_rounds_run_the_added_seeds_and_stop_asking_for_seeds_that_fail(tmp_path, monkeypatch, caplog):
    """adaptive_seeding with heareval's probe replaced by synthetic scores: "medium" gets one more
    block, "noisy" blocks up to the cap, and "broken", whose extra seeds fail, is asked once."""
    mlp = tmp_path / "mlp"
    models = [ModelSpec(name, "") for name in ("medium", "noisy", "broken")]
    calls = []

    def fake_predict(model, bundle, seeds, suite, out):
        calls.append((model.name, bundle, tuple(seeds)))
        result = {}
        for s in seeds:
            done = (out / model.name / f"seed{s}" / bundle).exists()
            if not done and model.name == "broken" and s >= 5:
                result[s] = ("failed", "exit 1")
                continue
            if not done:
                kind = "noisy" if model.name == "broken" else model.name
                _write(out, model.name, s, bundle, synthetic_score(kind, s))
            result[s] = ("skipped" if done else "done", "")
        return result
    for m in models:
        fake_predict(m, DRUMS, range(5), MINI, mlp)
    calls.clear()
    monkeypatch.setattr(runner, "predict", fake_predict)  # the probe process predict_all starts
    caplog.set_level("INFO")
    rounds, final, status = adaptive_seeding(models, MINI, mlp, jobs=1)
    final = {s.model: s for s in final}
    assert (final["medium"].seeds, final["noisy"].seeds, final["broken"].seeds) == (10, 20, 5)
    assert [sorted(r["model"] for r in added) for added in rounds] == [["broken", "medium", "noisy"], ["noisy"],
                                                                       ["noisy"]]
    assert sorted(c for c in calls if c[0] == "broken") == [("broken", DRUMS, tuple(range(10)))]
    assert status[("broken", DRUMS, "seed7")] == ("failed", "exit 1")
    assert "broken / Mini drum strokes: seeds 5-9 did not all finish" in caplog.text
    assert "noisy / Mini drum strokes: half-width" in caplog.text and "at the cap of 20 seeds: reported" in caplog.text


# ---------------------------------------------------------------- rows

def test_rows_are_data_with_their_random_inits_and_pairs():
    names = {r.name for r in ROWS}
    for r in ROWS:
        if r.role == "pretrained":
            assert r.random_init in names
        if r.role == "random init":
            assert r.init_preset and r.checkpoint.startswith("data/ckpt/")
    assert {a for a, _ in HEAD_TO_HEAD} | {b for _, b in HEAD_TO_HEAD} <= names
    pairs = comparison_pairs(["ssam-tiny", "ssam-tiny-random", "ssast-tiny", "logmel"])
    assert ("ssam-tiny", "ssam-tiny-random", "pretrained vs its random init") in pairs
    assert ("ssam-tiny", "ssast-tiny", "head to head") in pairs
    assert ("ssam-tiny-random", "logmel", "vs the baseline") in pairs
    assert not any("ssast-tiny-posmask" in p[:2] for p in pairs)  # not run: not compared


def test_an_optional_row_without_its_checkpoint_is_skipped_and_a_required_one_named(tmp_path):
    (tmp_path / "a.safetensors").write_bytes(b"")
    rows = [r for r in ROWS if r.name in ("ssam-tiny", "ssast-tiny-posmask", "logmel")]
    rows[0] = type(rows[0])(**{**rows[0].__dict__, "checkpoint": "a.safetensors"})
    included, skipped = resolve_rows(rows, repo=tmp_path)
    assert [r.name for r in included] == ["ssam-tiny", "logmel"]
    assert [r.name for r, _ in skipped] == ["ssast-tiny-posmask"] and "does not exist" in skipped[0][1]
    with pytest.raises(FileNotFoundError, match="ssam-tiny: checkpoint results/checkpoints/ssam_tiny_cpu"):
        resolve_rows([r for r in ROWS if r.name == "ssam-tiny"], repo=tmp_path)


# ---------------------------------------------------------------- results families

MODELS = {"ssam-tiny": 0.80, "ssam-tiny-random": 0.55, "ssast-tiny": 0.78, "logmel": 0.60}


def synthetic_runs(root, efficiency=True):
    """RUNS as python -m eval_suites families writes it, with made-up scores: 5 MLP seeds per
    model on a scene and an event task, the scene task's linear-probe.json, the event task's
    linear seeds, families.json (ssast-tiny-posmask skipped) and RUNS/efficiency/."""
    for m, base in MODELS.items():
        meta = {"checkpoint": f"/somewhere/{m}.safetensors", "weights_sha256": f"sha-{m}", "baseline": m == "logmel",
                "suite": "mini"}
        for s in range(5):
            noisy = 0.05 * (s % 2) if m == "ssast-tiny" else 0.002 * s  # ssast-tiny's drums: wide interval
            _write(root / "mlp", m, s, DRUMS, base + noisy, **meta)
            _write(root / "mlp", m, s, EVENTS, base - 0.2 + 0.002 * s, **meta)
            _write(root / "linear", m, s, EVENTS, base - 0.25 + 0.003 * s, **meta)
        scene = root / "linear" / m / "scene" / DRUMS
        scene.mkdir(parents=True)
        (scene / "linear-probe.json").write_text(json.dumps({
            "model": m, "task": DRUMS, "label": LABELS[DRUMS], "metric": "top1_acc", "score": base - 0.05,
            "ci95_low": base - 0.08, "ci95_high": base - 0.03, "bootstrap_sd": 0.012, "n_test": 511}))
    (root / "families.json").write_text(json.dumps({
        "rows": [{"name": m} for m in MODELS],
        "skipped": [{"name": "ssast-tiny-posmask", "checkpoint": "x", "why": "optional row: x does not exist"}]}))
    if efficiency:
        eff = root / "efficiency"
        eff.mkdir()
        (eff / "efficiency.csv").write_text(  # bench_families.py's column names (a few of them)
            "model,checkpoint,params,macs_per_token,hear_audio_s_per_s,pretrain_crops_per_s,peak_mb_2s,peak_mb_60s\n"
            "ssam-tiny,a.safetensors,4.7M,1.2M,310.5,55.0,24.5,210.0\n"
            "ssast-tiny,b.safetensors,5.4M,1.4M,420.0,60.1,22.0,900.0\n"
            "ssam-tiny-random,c.safetensors,4.7M,1.2M,310.5,,24.5,210.0\n")
        (eff / "length.csv").write_text("model,seconds,ms\nssam-tiny,2,27.2\n")
        for name in ("efficiency.png", "length.png"):
            (eff / name).write_bytes(b"\x89PNG\r\n\x1a\n")
    return root


def test_results_families_writes_every_file(tmp_path):
    runs = synthetic_runs(tmp_path / "runs")
    files = families(runs, tmp_path / "out")
    out = tmp_path / "out"
    for name in ("scores.csv", "scores_linear.csv", "separation.csv", "leaderboard.md", "models.csv",
                 "quality_per_task.png", "quality_vs_throughput.png", "efficiency.csv", "length.csv",
                 "efficiency.png", "length.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert set(files.values()) <= set(out.iterdir())
    schema = ["model", "task", "label", "metric", "mean", "ci95", "n", "sd"]  # results/mini/scores.csv's
    mlp, linear = pd.read_csv(out / "scores.csv"), pd.read_csv(out / "scores_linear.csv")
    assert list(mlp.columns) == schema == list(linear.columns)
    assert list(dict.fromkeys(mlp.model)) == ["ssam-tiny", "ssast-tiny", "ssam-tiny-random", "logmel"]  # ROWS order
    scene = linear.set_index(["model", "label"]).loc[("ssam-tiny", "Mini drum strokes")]
    assert scene["mean"] == pytest.approx(0.75) and scene["ci95"] == pytest.approx(0.03) and scene["n"] == 511
    events = linear.set_index(["model", "label"]).loc[("ssam-tiny", "Mini drum events")]
    assert events["n"] == 5 and events["mean"] == pytest.approx(0.556)
    assert set(pd.read_csv(out / "models.csv").weights_sha256) == {f"sha-{m}" for m in MODELS}

    md = (out / "leaderboard.md").read_text()
    assert "## MLP probe" in md and "## Linear probe" in md and "## Efficiency" in md
    assert "| ssam-tiny | 4.7M | 1.2M | 310.5 | 55.0 | 24.5 | 210.0 |" in md  # efficiency.csv's cells as written
    assert "a.safetensors" not in md and "a.safetensors" in (out / "efficiency.csv").read_text()
    assert "- ssam-tiny vs ssam-tiny-random, MLP probe: separated on 2 of 2 tasks (ssam-tiny better on " \
           "Mini drum strokes, Mini drum events)" in md
    assert "- ssam-tiny vs ssast-tiny, MLP probe: separated on 1 of 2 tasks " \
           "(ssam-tiny better on Mini drum events)" in md
    assert "- ssast-tiny-posmask: optional row: x does not exist" in md
    assert "†" in md  # ssast-tiny's drums half-width is above 0.03 and is marked, not hidden
    sep = pd.read_csv(out / "separation.csv")
    assert set(sep.probe) == {"mlp", "linear"} and len(sep[(sep.a == "ssam-tiny") & (sep.b == "logmel")]) == 4

    # byte-identical on rerun
    before = {p.name: p.read_bytes() for p in out.glob("*.csv")} | {"md": md.encode()}
    families(runs, out)
    assert before == {p.name: p.read_bytes() for p in out.glob("*.csv")} | {"md": (out / "leaderboard.md").read_bytes()}


def test_without_efficiency_the_throughput_figure_is_skipped_with_a_log_line(tmp_path, caplog):
    runs = synthetic_runs(tmp_path / "runs", efficiency=False)
    caplog.set_level("INFO")
    assert results_main(["families", str(runs), "--out", str(tmp_path / "out")]) == 0
    assert not (tmp_path / "out" / "quality_vs_throughput.png").exists()
    assert (tmp_path / "out" / "quality_per_task.png").exists()
    assert "no quality_vs_throughput.png" in caplog.text
    assert "## Efficiency" not in (tmp_path / "out" / "leaderboard.md").read_text()


def test_the_throughput_column_is_bench_families_else_a_hear_rate_column():
    assert throughput_column(pd.DataFrame(columns=["model", "hear_best_call_s", "hear_audio_s_per_s"])) == \
        "hear_audio_s_per_s"
    assert throughput_column(pd.DataFrame(columns=["name", "hear_throughput_x"])) == "hear_throughput_x"
    with pytest.raises(ValueError, match="no CPU HEAR throughput column"):
        throughput_column(pd.DataFrame(columns=["model", "params"]))


def test_an_unknown_throughput_column_is_a_clear_error(tmp_path, capsys):
    runs = synthetic_runs(tmp_path / "runs")
    assert results_main(["families", str(runs), "--out", str(tmp_path / "out"), "--throughput-column", "x"]) == 2
    assert "--throughput-column x: not a column of efficiency.csv" in capsys.readouterr().err
