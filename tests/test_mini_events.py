"""mini_drum_events: an event bundle built from a tiny synthetic Hydrogen-like kit tree."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from eval_suites import mini_events as me

SR = 16000
CLASSES = ["hihat", "kick", "snare"]
KITS = ["KitA", "KitB", "KitC", "KitD", "KitE"]


def _stroke(kind: str, k: int) -> np.ndarray:
    """A short synthetic stroke after 10 ms of silence (so the onset rule has to trim it)."""
    rng = np.random.default_rng(k)
    t = np.arange(int(0.3 * SR)) / SR
    if kind == "kick":
        x = np.sin(2 * np.pi * (50 + 5 * k) * t) * np.exp(-t / 0.06)
    elif kind == "snare":
        x = (0.6 * rng.standard_normal(len(t)) + 0.4 * np.sin(2 * np.pi * 190 * t)) * np.exp(-t / 0.04)
    else:
        x = np.diff(rng.standard_normal(len(t) + 1)) * np.exp(-t / 0.015)
    return np.concatenate([np.zeros(int(0.01 * SR)), 0.8 * x / np.abs(x).max()]).astype(np.float32)


def _kit_tree(base):
    kits = base / "hydrogen-drumkits" / me.KITS_DIR
    for k, name in enumerate(KITS):
        kit = kits / name
        kit.mkdir(parents=True)
        insts = []
        for kind, inst in (("kick", "Kick"), ("snare", "Snare"), ("hihat", "Closed HiHat")):
            sf.write(kit / f"{kind}.wav", _stroke(kind, k), 44100 if k % 2 else SR)  # resampled on load
            insts.append(f"<instrument><name>{inst}</name><layer><filename>{kind}.wav</filename></layer>"
                         "</instrument>")
        if name == "KitA":  # a class only one fold has: dropped
            sf.write(kit / "clap.wav", _stroke("snare", 9), SR)
            insts.append("<instrument><name>Clap</name><layer><filename>clap.wav</filename></layer></instrument>")
        (kit / "drumkit.xml").write_text('<drumkit_info xmlns="http://www.hydrogen-music.org/drumkit">'
                                         f"<instrumentList>{''.join(insts)}</instrumentList></drumkit_info>")
    return base


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = _kit_tree(tmp_path_factory.mktemp("unpacked"))
    tasks = tmp_path_factory.mktemp("tasks")
    task = me.build_drum_events(root, tasks, clips_per_fold=4, seconds=2.0)
    quiet = me.build_drum_events(root, tmp_path_factory.mktemp("quiet"), clips_per_fold=4, seconds=2.0,
                                 ebr_db=None)
    again = me.build_drum_events(root, tmp_path_factory.mktemp("again"), clips_per_fold=4, seconds=2.0)
    return task, quiet, again


def _labels(task):
    return {s: json.loads((task / f"{s}.json").read_text()) for s in [f"fold{i:02d}" for i in range(4)]}


def test_bundle_layout_and_metadata(built):
    task = built[0]
    assert task.name == "mini_drum_events-v1.0-full"
    assert not list(task.parent.glob(".building-*"))
    meta = json.loads((task / "task_metadata.json").read_text())
    assert meta["embedding_type"] == "event" and meta["prediction_type"] == "multilabel"
    assert meta["split_mode"] == "new_split_kfold" and meta["nfolds"] == 4
    assert meta["splits"] == ["fold00", "fold01", "fold02", "fold03"]
    assert meta["sample_duration"] == 2.0
    assert meta["evaluation"] == ["event_onset_200ms_fms", "segment_1s_er"]
    assert meta["evaluation_params"]["event_postprocessing_grid"] == {"median_filter_ms": [250],
                                                                      "min_duration": [125]}
    assert meta["use_scoring_for_early_stopping"] is False  # loss-based, one post-processing
    assert meta["evaluation_params"]["task_specific_param_grid"] == {"batch_size": [1024], "patience": [5]}
    prov = meta["provenance"]
    assert prov["licence"] == "GPL-2+ / CC" and prov["kits"] and prov["classes_dropped"] == ["clap"]
    assert (task / "labelvocabulary.csv").read_text() == "idx,label\n0,hihat\n1,kick\n2,snare\n"
    assert sorted(p.name for p in task.iterdir()) == sorted(
        ["16000", "labelvocabulary.csv", "task_metadata.json"] + [f"{s}.json" for s in meta["splits"]])
    for split, labels in _labels(task).items():
        assert len(labels) == 4
        assert sorted(p.name for p in (task / "16000" / split).iterdir()) == sorted(labels)
        for name in labels:
            info = sf.info(str(task / "16000" / split / name))
            assert (info.samplerate, info.channels, info.frames) == (SR, 1, 2 * SR)


def test_events_are_valid_and_every_fold_has_every_class(built):
    for split, labels in _labels(built[0]).items():
        seen = set()
        for name, events in labels.items():
            assert events
            for e in events:
                assert set(e) == {"label", "start", "end"} and e["label"] in CLASSES
                assert 0 <= e["start"] < e["end"] <= 2000.0
                seen.add(e["label"])
            for a in events:  # one class never overlaps itself
                for b in events:
                    if a is not b and a["label"] == b["label"]:
                        assert a["end"] <= b["start"] or b["end"] <= a["start"]
        assert seen == set(CLASSES), split


def test_labelled_onsets_are_where_the_audio_starts(built):
    task = built[1]  # no background
    checked = 0
    hop = SR // 1000  # 1 ms envelope
    for split, labels in _labels(task).items():
        for name, events in labels.items():
            x, _ = sf.read(str(task / "16000" / split / name), dtype="float32")
            env = np.sqrt(np.convolve(x.astype(np.float64) ** 2, np.ones(hop) / hop, "same"))
            for e in events:
                # only events that nothing labelled is sounding over in the 50 ms before them
                if any(o is not e and o["start"] < e["start"] <= o["end"] + 50 for o in events):
                    continue
                i = round(e["start"] * SR / 1000)
                before = env[max(0, i - 10 * hop):max(1, i - hop)].max()
                after = env[i:i + 10 * hop].max()
                assert before < 1e-3 and after > 30 * max(before, 1e-5), (name, e)
                checked += 1
    assert checked >= 20


def test_background_noise_is_present_and_below_the_events(built):
    task = built[0]
    meta = json.loads((task / "task_metadata.json").read_text())
    assert "pink noise" in meta["provenance"]["background"]
    x, _ = sf.read(str(task / "16000" / "fold00" / "f0_000.wav"), dtype="float32")
    events = _labels(task)["fold00"]["f0_000.wav"]
    quiet = np.ones(len(x), bool)
    for e in events:
        quiet[int(e["start"] * 16):int(e["end"] * 16)] = False
    assert quiet.sum() > 0.05 * SR
    noise = np.sqrt(np.mean(x[quiet] ** 2))
    assert 0 < noise < 0.5 * np.sqrt(np.mean(x[~quiet] ** 2))


def test_folds_are_disjoint_by_kit(built):
    prov = json.loads((built[0] / "task_metadata.json").read_text())["provenance"]
    fold_kits = prov["fold_kits"]
    assert list(fold_kits) == ["fold00", "fold01", "fold02", "fold03"] and all(fold_kits.values())
    flat = [k for kits in fold_kits.values() for k in kits]
    assert sorted(flat) == KITS and prov["kits"] == flat


def test_kit_assignment_gives_every_fold_every_class():
    kits = {"a": ["kick", "snare"], "b": ["kick"], "c": ["kick", "snare"], "d": ["kick", "snare", "tom"],
            "e": ["snare"], "f": ["kick", "kick", "snare"]}
    fold = me.assign_kits(kits, nfolds=2)
    assert fold == me.assign_kits(dict(reversed(kits.items())), nfolds=2)  # order of the input does not matter
    for f in range(2):
        mine = [c for k, cs in kits.items() if fold[k] == f for c in cs]
        assert mine.count("kick") >= 2 and mine.count("snare") >= 2
    # four folds, four kits with a clap among eight: round robin puts two clap kits together
    kits = {f"k{i}": ["kick"] + (["clap"] if i % 2 == 0 else []) for i in range(8)}
    fold = me.assign_kits(kits, nfolds=4)
    assert sorted(fold[k] for k in kits if "clap" in kits[k]) == [0, 1, 2, 3]
    assert sorted(list(fold.values()).count(f) for f in range(4)) == [2, 2, 2, 2]


def test_a_second_build_is_byte_identical(built):
    task, _, again = built
    files = sorted(p.relative_to(task) for p in task.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for f in files:
        assert (task / f).read_bytes() == (again / f).read_bytes(), f


def test_finished_task_is_skipped_and_stroke_rules(tmp_path, built):
    (built[0].parent / ".building-mini_drum_events-old").mkdir()  # an interrupted build
    assert me.build_drum_events(tmp_path, built[0].parent) == built[0]  # already built: no kits needed
    assert not list(built[0].parent.glob(".building-*"))
    x = np.concatenate([np.zeros(100), np.ones(1600), 0.5 * np.ones(1600), np.zeros(SR)]).astype(np.float32)
    y = me.prepare_stroke(x)
    assert len(y) == 3200 and y[0] == 1.0 and abs(y[-1]) < 1e-6  # lead trimmed, silent tail cut, faded
    long = np.ones(5 * SR, np.float32)
    assert len(me.prepare_stroke(long)) == int(me.MAX_EVENT_S * SR)
