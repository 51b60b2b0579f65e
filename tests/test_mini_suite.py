"""The mini suite's version-2 pieces: balanced kit folds, phrase selection, every layer."""
import json
from pathlib import Path

import numpy as np
import soundfile as sf

from eval_suites import mini


def test_balanced_folds_keep_groups_whole_and_sizes_close():
    sizes = {"BJA": 86, "Forzee": 100, "Pearl": 91, "Millo2": 66, "a": 10, "b": 9, "c": 17, "d": 25, "e": 12}
    folds = mini.balanced_folds(sizes, 4)
    assert set(folds) == set(sizes) and set(folds.values()) == {0, 1, 2, 3}
    load = [sum(n for g, n in sizes.items() if folds[g] == f) for f in range(4)]
    assert max(load) - min(load) <= max(sizes.values()) - min(sizes.values())
    assert max(load) <= 110  # the 4 big kits land on 4 different folds
    assert len({folds[g] for g in ("BJA", "Forzee", "Pearl", "Millo2")}) == 4
    assert mini.balanced_folds(dict(reversed(list(sizes.items()))), 4) == folds  # order-free


def test_takes_by_phrase_groups_numbered_takes():
    files = {"A": {"Ow1": Path("A/Ow1.ogg"), "Ow2": Path("A/Ow2.ogg"), "Hello": Path("A/Hello.ogg")},
             "B": {"Ow1": Path("B/Ow1.ogg"), "Bye": Path("B/Bye.ogg")}}
    takes = mini._takes_by_phrase(files)
    assert takes == {"Ow": {"A": [Path("A/Ow1.ogg"), Path("A/Ow2.ogg")], "B": [Path("B/Ow1.ogg")]},
                     "Hello": {"A": [Path("A/Hello.ogg")]}, "Bye": {"B": [Path("B/Bye.ogg")]}}


def test_phrases_keep_only_phrases_every_voice_says(tmp_path, monkeypatch):
    voices = ("V1", "V2", "V3")
    monkeypatch.setattr(mini, "ENGLISH_VOICES", voices)
    base = tmp_path / "hedgewars-data" / mini.VOICES_DIR
    rng = np.random.default_rng(0)
    for v in voices:
        (base / v).mkdir(parents=True)
        for stem in ("Ow1", "Ow2", "Hello") + (("Rare",) if v == "V1" else ()):
            sf.write(base / v / f"{stem}.ogg", 0.1 * rng.standard_normal(8000).astype(np.float32), 16000)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    mini.build_phrases(tmp_path, tasks)
    bundle = tasks / f"mini_phrases-{mini.VERSION}-full"
    labels = {}
    for f in range(4):
        labels.update({k: v[0] for k, v in json.loads((bundle / f"fold{f:02d}.json").read_text()).items()})
    assert sorted(set(labels.values())) == ["Hello", "Ow"]  # "Rare" is said by one voice only
    assert sum(lab == "Ow" for lab in labels.values()) == 6  # every take of every voice
    assert (bundle / "labelvocabulary.csv").read_text() == "idx,label\n0,Hello\n1,Ow\n"


def test_drum_strokes_can_take_every_velocity_layer(tmp_path):
    kit = tmp_path / "Kit"
    kit.mkdir()
    for f in ("k1.wav", "k2.wav", "s1.wav"):
        (kit / f).write_bytes(b"")
    (kit / "drumkit.xml").write_text("""<drumkit_info xmlns="http://www.hydrogen-music.org/drumkit">
      <instrumentList>
        <instrument><name>Kick</name><layer><filename>k1.wav</filename></layer>
          <layer><filename>k2.wav</filename></layer></instrument>
        <instrument><name>Snare</name><layer><filename>s1.wav</filename></layer></instrument>
      </instrumentList></drumkit_info>""")
    assert [p.name for p, _ in mini._kit_strokes(kit)] == ["k1.wav", "s1.wav"]
    assert [(p.name, s) for p, s in mini._kit_strokes(kit, layers="all")] == \
        [("k1.wav", "kick"), ("k2.wav", "kick"), ("s1.wav", "snare")]
