"""The offline mini suite: four HEAR bundles built from real recordings in Debian packages.

    python -m eval_suites build mini --tasks-dir tasks/

| task | mirrors | source | classes | folds (disjoint by) |
|---|---|---|---|---|
| mini_phrases | Speech Commands | hedgewars-data: 10 English voice packs | shared phrases | 4 (voice) |
| mini_drums | Mridangam Stroke | hydrogen-drumkits: 14 real drum kits | kick/snare/hihat/tom/cymbal/clap | 4 (kit) |
| mini_pitch | NSynth Pitch | fluid-soundfont-gm rendered by fluidsynth | 24 MIDI pitches | 4 (instrument) |
| mini_count | LibriCount | hedgewars-data: all 15 voice packs, mixed | 1-4 speakers | 3 (voice) |

Everything is deterministic (fixed seeds, sorted inputs). A finished task folder is
skipped on rerun; a task is written to a hidden temporary folder and renamed when done,
so an interrupted build never leaves a half task where heareval would read it.
Clips are not committed: they are rebuilt from the packages (GPL-2 / CC-BY-SA licences).
"""
from __future__ import annotations

import json
import logging
import re
import shutil
import struct
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from hear_ssam.frontend import SAMPLE_RATE as SR
from hear_ssam.frontend import to_mono_16k
from pretrain.debian import fetch_package
from pretrain.seeds import derive_seed

log = logging.getLogger("eval_suites.mini")
# The suite's sources; each must be in pretrain.debian.EVAL_PACKAGES (reserved from pretraining).
PACKAGES = ("hedgewars-data", "hydrogen-drumkits", "fluid-soundfont-gm")
ENGLISH_VOICES = ("British", "Classic", "Default", "HillBilly", "Mobster", "Pirate", "Robot",
                  "Russian", "Singer", "Surfer")
VOICES_DIR = "usr/share/games/hedgewars/Data/Sounds/voices"
KITS_DIR = "usr/share/hydrogen/data/drumkits"
SOUNDFONT = "usr/share/sounds/sf2/FluidR3_GM.sf2"
# General MIDI programs spanning families: piano, e-piano, organ, nylon & clean guitar,
# bass, violin, cello, trumpet, alto sax, flute, square lead.
GM_PROGRAMS = {"piano": 0, "epiano": 4, "organ": 19, "nylon_guitar": 24, "clean_guitar": 27,
               "finger_bass": 33, "violin": 40, "cello": 42, "trumpet": 56, "alto_sax": 65,
               "flute": 73, "square_lead": 80}
PITCHES = range(48, 72)  # C3..B4
STROKES = [("kick", r"kick|bass ?drum|\bbd\b|kik"), ("snare", r"snare|\bsd\b|rim"),
           ("hihat", r"h(i|igh)?[- ]?hat|\bhh\b|hat"), ("tom", r"tom"),
           ("cymbal", r"crash|ride|cymbal|splash|china"), ("clap", r"clap")]


# ------------------------------------------------------------------ helpers

def load_mono(path, seconds=None) -> np.ndarray:
    """A file as 16 kHz mono float32, cut or zero-padded to `seconds` when given."""
    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    x = to_mono_16k(audio, rate).numpy()
    if seconds is not None:
        n = int(seconds * SR)
        x = np.pad(x[:n], (0, max(0, n - len(x))))
    return x


def peak_normalise(x, peak=0.9):
    m = np.abs(x).max()
    return (x * (peak / m)).astype(np.float32) if m > 0 else x.astype(np.float32)


class BundleWriter:
    """One HEAR task bundle (k-fold), written to a temp folder and renamed when complete."""

    def __init__(self, tasks_dir: Path, name: str, version: str, seconds: float, metrics, folds: int,
                 prediction_type="multiclass"):
        self.final = tasks_dir / f"{name}-{version}-full"
        self.tmp = Path(tempfile.mkdtemp(prefix=f".building-{name}-", dir=tasks_dir))
        self.meta = {"task_name": name, "version": version, "embedding_type": "scene",
                     "prediction_type": prediction_type, "split_mode": "new_split_kfold",
                     "nfolds": folds, "sample_duration": seconds, "evaluation": list(metrics),
                     "splits": [f"fold{i:02d}" for i in range(folds)]}
        self.labels = {s: {} for s in self.meta["splits"]}
        self.seconds = seconds

    def add(self, fold: int, name: str, audio: np.ndarray, label: str):
        split = f"fold{fold:02d}"
        path = self.tmp / "16000" / split / name
        path.parent.mkdir(parents=True, exist_ok=True)
        n = int(self.seconds * SR)
        audio = np.pad(audio[:n], (0, max(0, n - len(audio))))
        sf.write(path, audio, SR, subtype="PCM_16")
        self.labels[split][name] = [label]

    def finish(self, provenance: dict):
        vocab = sorted({lab for split in self.labels.values() for labs in split.values() for lab in labs},
                       key=lambda s: (len(s), s) if s.isdigit() else (0, s))
        for split, labels in self.labels.items():
            (self.tmp / f"{split}.json").write_text(json.dumps(labels, indent=1))
        (self.tmp / "labelvocabulary.csv").write_text(
            "idx,label\n" + "".join(f"{i},{lab}\n" for i, lab in enumerate(vocab)))
        (self.tmp / "task_metadata.json").write_text(json.dumps(dict(self.meta, provenance=provenance), indent=1))
        self.tmp.rename(self.final)
        n = sum(len(v) for v in self.labels.values())
        log.info("built %s: %d clips, %d classes", self.final.name, n, len(vocab))


# ------------------------------------------------------------------ tasks

def _voice_files(root: Path, voices):
    base = root / "hedgewars-data" / VOICES_DIR
    return {v: {p.stem: p for p in sorted((base / v).glob("*.ogg"))} for v in voices}


def build_phrases(root: Path, tasks_dir: Path):
    """Which phrase is said, across 10 acted English voices (folds by voice)."""
    files = _voice_files(root, ENGLISH_VOICES)
    # phrases said by at least 8 of the 10 voices; numbered takes ("Ow1") are one phrase
    count = {}
    for v in files.values():
        for stem in {re.sub(r"\d+$", "", s) for s in v}:
            count[stem] = count.get(stem, 0) + 1
    phrases = sorted(p for p, c in count.items() if c >= 8)
    w = BundleWriter(tasks_dir, "mini_phrases", "v1.0", 2.0, ["top1_acc"], folds=4)
    for i, voice in enumerate(tqdm(ENGLISH_VOICES, desc="mini_phrases", leave=False)):
        for phrase in phrases:
            takes = [p for s, p in files[voice].items() if re.sub(r"\d+$", "", s) == phrase]
            if takes:
                w.add(i % 4, f"{voice}_{phrase}.wav", peak_normalise(load_mono(takes[0], 2.0)), phrase)
    w.finish({"source": "hedgewars-data voice packs", "voices": list(ENGLISH_VOICES), "licence": "GPL-2"})


def _kit_strokes(kit_dir: Path):
    """[(sample file, stroke class)] from a Hydrogen drumkit.xml (name, else file name)."""
    tree = ET.parse(kit_dir / "drumkit.xml")
    out = []
    for inst in tree.iter():
        if not inst.tag.endswith("instrument"):
            continue
        name = (inst.findtext("{*}name") or inst.findtext("name") or "").lower()
        files = [e.text for e in inst.iter() if e.tag.endswith("filename") and e.text]
        for f in files[:1]:  # the first velocity layer of each instrument
            text = f"{name} {Path(f).stem.lower()}"
            stroke = next((cls for cls, pat in STROKES if re.search(pat, name)), None) \
                or next((cls for cls, pat in STROKES if re.search(pat, text)), None)
            if stroke and (kit_dir / f).exists():
                out.append((kit_dir / f, stroke))
    return out


def build_drums(root: Path, tasks_dir: Path):
    """Drum stroke type across 14 real kits (folds by kit)."""
    kits = sorted(p for p in (root / "hydrogen-drumkits" / KITS_DIR).iterdir() if (p / "drumkit.xml").exists())
    w = BundleWriter(tasks_dir, "mini_drums", "v1.0", 1.0, ["top1_acc"], folds=4)
    for i, kit in enumerate(tqdm(kits, desc="mini_drums", leave=False)):
        for j, (path, stroke) in enumerate(_kit_strokes(kit)):
            slug = re.sub(r"[^A-Za-z0-9]+", "_", kit.name)
            w.add(i % 4, f"{slug}_{j:03d}_{stroke}.wav", peak_normalise(load_mono(path, 1.0)), stroke)
    w.finish({"source": "hydrogen-drumkits", "kits": [k.name for k in kits], "licence": "GPL-2+ / CC"})


def _midi_note(program: int, pitch: int, seconds: float) -> bytes:
    """A one-note Standard MIDI File (format 0, 480 ticks per quarter at 120 bpm)."""
    def vlq(n):
        out = [n & 0x7F]
        while n > 127:
            n >>= 7
            out.insert(0, (n & 0x7F) | 0x80)
        return bytes(out)
    ticks = int(seconds * 960)  # 960 ticks per second at 120 bpm, 480 ppq
    track = (b"\x00" + bytes([0xC0, program]) + b"\x00" + bytes([0x90, pitch, 100]) +
             vlq(ticks) + bytes([0x80, pitch, 0]) + b"\x00\xff\x2f\x00")
    return (b"MThd" + struct.pack(">IHHH", 6, 0, 1, 480) + b"MTrk" + struct.pack(">I", len(track)) + track)


def build_pitch(root: Path, tasks_dir: Path):
    """MIDI pitch of single notes across 12 General MIDI instruments (folds by instrument)."""
    fluidsynth = shutil.which("fluidsynth")
    if not fluidsynth:
        raise RuntimeError("fluidsynth is not installed (apt-get install fluidsynth); "
                           "it renders the mini_pitch notes")
    sf2 = root / "fluid-soundfont-gm" / SOUNDFONT
    w = BundleWriter(tasks_dir, "mini_pitch", "v1.0", 1.0, ["pitch_acc", "chroma_acc"], folds=4)
    with tempfile.TemporaryDirectory() as tmp:
        for i, (inst, program) in enumerate(tqdm(list(GM_PROGRAMS.items()), desc="mini_pitch", leave=False)):
            for pitch in PITCHES:
                mid, wav = Path(tmp) / "n.mid", Path(tmp) / "n.wav"
                mid.write_bytes(_midi_note(program, pitch, 0.8))
                subprocess.run([fluidsynth, "-ni", "-g", "0.8", "-r", str(SR), "-F", str(wav), str(sf2), str(mid)],
                               check=True, capture_output=True)
                w.add(i % 4, f"{inst}_{pitch:03d}.wav", peak_normalise(load_mono(wav, 1.0)), str(pitch))
    w.finish({"source": "fluid-soundfont-gm (FluidR3_GM.sf2) rendered with fluidsynth",
              "instruments": GM_PROGRAMS, "licence": "MIT (FluidR3)"})


def build_count(root: Path, tasks_dir: Path, clips_per_count=20):
    """How many different voices speak (1-4), mixing phrases of 15 voice packs (folds by voice)."""
    base = root / "hedgewars-data" / VOICES_DIR
    voices = sorted(p.name for p in base.iterdir() if p.is_dir())
    files = _voice_files(root, voices)
    groups = [voices[f::3] for f in range(3)]  # 5 voices per fold
    seconds = 3.0
    w = BundleWriter(tasks_dir, "mini_count", "v1.0", seconds, ["top1_acc"], folds=3)
    for fold, group in enumerate(tqdm(groups, desc="mini_count", leave=False)):
        for k in range(1, 5):
            for c in range(clips_per_count):
                rng = np.random.default_rng(derive_seed("count", fold, k, c))
                mix = np.zeros(int(seconds * SR), np.float32)
                for voice in rng.choice(group, size=k, replace=False):
                    take = list(files[voice].values())[rng.integers(len(files[voice]))]
                    x = peak_normalise(load_mono(take), 0.5)[: int(2.5 * SR)]
                    start = int(rng.integers(0, len(mix) - len(x) + 1))
                    mix[start:start + len(x)] += x
                w.add(fold, f"f{fold}_k{k}_{c:02d}.wav", peak_normalise(mix), str(k))
    w.finish({"source": "hedgewars-data voice packs, mixed", "voice_folds": groups, "licence": "GPL-2"})


BUILDERS = {"mini_phrases": build_phrases, "mini_drums": build_drums, "mini_pitch": build_pitch,
            "mini_count": build_count}


def build(tasks_dir: Path, work: Path):
    tasks_dir.mkdir(parents=True, exist_ok=True)
    for stale in tasks_dir.glob(".building-*"):  # an interrupted earlier build
        shutil.rmtree(stale)
    todo = [n for n in BUILDERS if not (tasks_dir / f"{n}-v1.0-full" / "task_metadata.json").exists()]
    if not todo:
        log.info("mini suite already built in %s", tasks_dir)
        return
    for package in PACKAGES:
        fetch_package(package, work)
    root = work / "unpacked"
    for name in todo:
        BUILDERS[name](root, tasks_dir)
