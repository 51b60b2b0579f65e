"""The offline mini suite: four HEAR bundles built from real recordings in Debian packages.

    python -m eval_suites build mini --tasks-dir tasks/

| task | mirrors | source | clips | classes | folds (disjoint by) |
|---|---|---|---|---|---|
| mini_phrases | Speech Commands | hedgewars-data: 10 English voice packs, every take | 410 x 2 s | 33 phrases said by all 10 voices | 4 (voice) |
| mini_drums | Mridangam Stroke | hydrogen-drumkits: 13 real kits, every velocity layer | 511 x 1 s | kick/snare/hihat/tom/cymbal/clap | 4 (kit, balanced) |
| mini_pitch | NSynth Pitch | fluid-soundfont-gm rendered by fluidsynth | 768 x 1 s | 48 MIDI pitches (C2..B5) | 4 (instrument) |
| mini_count | LibriCount | hedgewars-data: all 15 voice packs, mixed | 480 x 3 s | 1-4 speakers | 3 (voice) |
| mini_drum_events | DCASE 2016 task 2 | hydrogen-drumkits strokes in sequences | see mini_events | onsets + offsets | 4 (kit) |

Version 2 of the suite (bundles `*-v2.0-full`) is sized for resolving power: version 1
(200-500 clips a task, phrases at chance) could not tell its encoders apart. Every task now
has hundreds of clips per fold, Mini phrases keeps only phrases every voice says (33 classes
instead of 53 with holes) and uses every take, and the pitch range doubles (the old 24
pitches were near the ceiling for every model).

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
GM_PROGRAMS = {"piano": 0, "epiano": 4, "marimba": 12, "organ": 19, "nylon_guitar": 24,
               "clean_guitar": 27, "finger_bass": 33, "violin": 40, "cello": 42, "strings": 48,
               "trumpet": 56, "french_horn": 60, "alto_sax": 65, "clarinet": 71, "flute": 73,
               "square_lead": 80}
PITCHES = range(36, 84)  # C2..B5
VERSION = "v2.0"
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


def _takes_by_phrase(files: dict) -> dict:
    """{phrase: {voice: [take paths]}}; numbered takes ("Ow1", "Ow2") are one phrase."""
    out = {}
    for voice, stems in files.items():
        for stem, path in stems.items():
            out.setdefault(re.sub(r"\d+$", "", stem), {}).setdefault(voice, []).append(path)
    return out


def build_phrases(root: Path, tasks_dir: Path):
    """Which phrase is said, across 10 acted English voices (folds by voice).

    Only phrases every voice says (so each fold has every class), every take of each.
    """
    files = _voice_files(root, ENGLISH_VOICES)
    takes = _takes_by_phrase(files)
    phrases = sorted(p for p, by_voice in takes.items() if len(by_voice) == len(ENGLISH_VOICES))
    w = BundleWriter(tasks_dir, "mini_phrases", VERSION, 2.0, ["top1_acc"], folds=4)
    for i, voice in enumerate(tqdm(ENGLISH_VOICES, desc="mini_phrases", leave=False)):
        for phrase in phrases:
            for path in takes[phrase][voice]:
                w.add(i % 4, f"{voice}_{path.stem}.wav", peak_normalise(load_mono(path, 2.0)), phrase)
    w.finish({"source": "hedgewars-data voice packs", "voices": list(ENGLISH_VOICES), "phrases": phrases,
              "licence": "GPL-2"})


def _kit_strokes(kit_dir: Path, layers: str = "first"):
    """[(sample file, stroke class)] from a Hydrogen drumkit.xml (name, else file name);
    `layers`: "first" velocity layer of each instrument, or "all" of them."""
    tree = ET.parse(kit_dir / "drumkit.xml")
    out = []
    for inst in tree.iter():
        if not inst.tag.endswith("instrument"):
            continue
        name = (inst.findtext("{*}name") or inst.findtext("name") or "").lower()
        files = [e.text for e in inst.iter() if e.tag.endswith("filename") and e.text]
        for f in files if layers == "all" else files[:1]:
            text = f"{name} {Path(f).stem.lower()}"
            stroke = next((cls for cls, pat in STROKES if re.search(pat, name)), None) \
                or next((cls for cls, pat in STROKES if re.search(pat, text)), None)
            if stroke and (kit_dir / f).exists():
                out.append((kit_dir / f, stroke))
    return out


def balanced_folds(sizes: dict, folds: int) -> dict:
    """{group: fold}: largest group first onto the fold with fewest items (ties: lowest
    fold, then name), so folds stay disjoint by group with similar sizes. Deterministic."""
    load, out = [0] * folds, {}
    for group in sorted(sizes, key=lambda g: (-sizes[g], g)):
        fold = min(range(folds), key=lambda f: (load[f], f))
        out[group] = fold
        load[fold] += sizes[group]
    return out


def build_drums(root: Path, tasks_dir: Path):
    """Drum stroke type across the real kits, every velocity layer (folds by kit, balanced)."""
    kits = sorted(p for p in (root / "hydrogen-drumkits" / KITS_DIR).iterdir() if (p / "drumkit.xml").exists())
    strokes = {kit.name: _kit_strokes(kit, layers="all") for kit in kits}
    strokes = {k: v for k, v in strokes.items() if v}
    fold_of = balanced_folds({k: len(v) for k, v in strokes.items()}, 4)
    w = BundleWriter(tasks_dir, "mini_drums", VERSION, 1.0, ["top1_acc"], folds=4)
    for kit, items in tqdm(strokes.items(), desc="mini_drums", leave=False):
        slug = re.sub(r"[^A-Za-z0-9]+", "_", kit)
        for j, (path, stroke) in enumerate(items):
            w.add(fold_of[kit], f"{slug}_{j:03d}_{stroke}.wav", peak_normalise(load_mono(path, 1.0)), stroke)
    w.finish({"source": "hydrogen-drumkits, every velocity layer", "kit_folds": fold_of,
              "licence": "GPL-2+ / CC"})


def _midi_notes(program: int, pitches, note_seconds: float, spacing_seconds: float) -> bytes:
    """A Standard MIDI File (format 0, 480 ticks per quarter at 120 bpm) playing `pitches`
    one after another: note k starts at k * spacing_seconds and lasts note_seconds."""
    def vlq(n):
        out = [n & 0x7F]
        while n > 127:
            n >>= 7
            out.insert(0, (n & 0x7F) | 0x80)
        return bytes(out)
    on, gap = int(note_seconds * 960), int((spacing_seconds - note_seconds) * 960)  # 960 ticks/s
    track = b"\x00" + bytes([0xC0, program])
    for k, pitch in enumerate(pitches):
        track += vlq(gap if k else 0) + bytes([0x90, pitch, 100]) + vlq(on) + bytes([0x80, pitch, 0])
    track += b"\x00\xff\x2f\x00"
    return (b"MThd" + struct.pack(">IHHH", 6, 0, 1, 480) + b"MTrk" + struct.pack(">I", len(track)) + track)


def _midi_note(program: int, pitch: int, seconds: float) -> bytes:
    """A one-note Standard MIDI File."""
    return _midi_notes(program, [pitch], seconds, seconds)


NOTE_SECONDS, NOTE_SPACING = 0.8, 2.0  # 1.2 s after each note: its release and reverb die out


def build_pitch(root: Path, tasks_dir: Path):
    """MIDI pitch of single notes across 16 General MIDI instruments (folds by instrument).

    One fluidsynth run per instrument renders all its notes, NOTE_SPACING apart (loading the
    141 MB soundfont once per note was most of the build time); each clip is the second
    starting at its note's onset.
    """
    fluidsynth = shutil.which("fluidsynth")
    if not fluidsynth:
        raise RuntimeError("fluidsynth is not installed (apt-get install fluidsynth); "
                           "it renders the mini_pitch notes")
    sf2 = root / "fluid-soundfont-gm" / SOUNDFONT
    w = BundleWriter(tasks_dir, "mini_pitch", VERSION, 1.0, ["pitch_acc", "chroma_acc"], folds=4)
    with tempfile.TemporaryDirectory() as tmp:
        for i, (inst, program) in enumerate(tqdm(list(GM_PROGRAMS.items()), desc="mini_pitch", leave=False)):
            mid, wav = Path(tmp) / "n.mid", Path(tmp) / "n.wav"
            mid.write_bytes(_midi_notes(program, PITCHES, NOTE_SECONDS, NOTE_SPACING))
            subprocess.run([fluidsynth, "-ni", "-g", "0.8", "-r", str(SR), "-F", str(wav), str(sf2), str(mid)],
                           check=True, capture_output=True)
            audio = load_mono(wav)
            for k, pitch in enumerate(PITCHES):
                start = int(round(k * NOTE_SPACING * SR))
                w.add(i % 4, f"{inst}_{pitch:03d}.wav", peak_normalise(audio[start:start + SR]), str(pitch))
    w.finish({"source": "fluid-soundfont-gm (FluidR3_GM.sf2) rendered with fluidsynth",
              "instruments": GM_PROGRAMS, "licence": "MIT (FluidR3)"})


def build_count(root: Path, tasks_dir: Path, clips_per_count=40):
    """How many different voices speak (1-4), mixing phrases of 15 voice packs (folds by voice)."""
    base = root / "hedgewars-data" / VOICES_DIR
    voices = sorted(p.name for p in base.iterdir() if p.is_dir())
    files = _voice_files(root, voices)
    groups = [voices[f::3] for f in range(3)]  # 5 voices per fold
    seconds = 3.0
    w = BundleWriter(tasks_dir, "mini_count", VERSION, seconds, ["top1_acc"], folds=3)
    decoded = {}
    for fold, group in enumerate(tqdm(groups, desc="mini_count", leave=False)):
        for k in range(1, 5):
            for c in range(clips_per_count):
                rng = np.random.default_rng(derive_seed("count", fold, k, c))
                mix = np.zeros(int(seconds * SR), np.float32)
                for voice in rng.choice(group, size=k, replace=False):
                    take = list(files[voice].values())[rng.integers(len(files[voice]))]
                    if take not in decoded:  # takes recur across clips: decode each once
                        decoded[take] = peak_normalise(load_mono(take), 0.5)[: int(2.5 * SR)]
                    x = decoded[take]
                    start = int(rng.integers(0, len(mix) - len(x) + 1))
                    mix[start:start + len(x)] += x
                w.add(fold, f"f{fold}_k{k}_{c:02d}.wav", peak_normalise(mix), str(k))
    w.finish({"source": "hedgewars-data voice packs, mixed", "voice_folds": groups, "licence": "GPL-2"})
