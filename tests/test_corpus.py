"""The corpus builder's dedup, corpus hash and outputs, offline (no apt: fetch_package is faked)."""
import csv
import json
import zipfile

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from pretrain.corpus import (MANIFEST_COLUMNS, NEAR_CANDIDATE, NEAR_NCC, audio_analysis, build, cap_shares,
                             content_hash, corpus_hash, duplicates, fingerprint, near_duplicate, scan,
                             share_ceiling)
from pretrain.corpus.pair_cache import NEAR_CACHE_KEY, load_pair_cache, open_pair_cache, pair_line
from pretrain.data import check_files, list_audio

RATE = 44100


def notes(freqs, rate=RATE, note=0.25, seed=0):
    """A plucked-string melody with a little noise: a stand-in for a real recording."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(note * rate)) / rate
    out = []
    for f in freqs:
        tone = sum(np.sin(2 * np.pi * f * k * t + rng.uniform(0, 6)) / k for k in (1, 2, 3, 4))
        out.append(tone * np.exp(-t * 6) * np.minimum(1, t * 200))
    x = np.concatenate(out)
    return (0.3 * x / np.abs(x).max() + 0.005 * rng.standard_normal(len(x))).astype(np.float32)


MELODY = [440, 660, 550, 880, 330, 495, 740, 392, 523, 587]


def noise_bursts(rate=RATE, seconds=2.5, seed=1):
    """Band-passed noise hits and a chirp: a different kind of sound."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    x = 0.2 * np.sin(2 * np.pi * (200 + 400 * t) * t)
    for start in rng.uniform(0, seconds - 0.3, 6):
        a = int(start * rate)
        burst = rng.standard_normal(int(0.2 * rate)) * np.exp(-np.arange(int(0.2 * rate)) / rate * 20)
        x[a:a + len(burst)] += 0.5 * np.convolve(burst, np.ones(8) / 8, "same")
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


def reencode(x, path, rate=22050, gain=0.3, trim=0.02, pad=0.1):
    """The same sound resampled, at another gain, trimmed at the start, padded with silence, as Ogg Vorbis."""
    y = torchaudio.functional.resample(torch.from_numpy(x), RATE, rate).numpy()
    y = np.concatenate([np.zeros(int(pad * rate), np.float32), gain * y[int(trim * rate):]])
    sf.write(path, y, rate, format="OGG", subtype="VORBIS")
    return path


def test_a_resampled_quieter_trimmed_lossy_copy_is_a_near_duplicate(tmp_path):
    x = notes(MELODY)
    sf.write(tmp_path / "a.wav", x, RATE, subtype="PCM_16")
    copy = reencode(x, tmp_path / "copy.ogg")
    cos, ncc = near_duplicate(tmp_path / "a.wav", copy)
    assert cos >= NEAR_CANDIDATE and ncc >= NEAR_NCC, (cos, ncc)
    # a longer trim (0.1 s of a 2.5 s sound) at 32 kHz, louder
    cos, ncc = near_duplicate(tmp_path / "a.wav", reencode(x, tmp_path / "copy2.ogg", rate=32000, gain=1.5,
                                                           trim=0.1, pad=0.0))
    assert cos >= NEAR_CANDIDATE and ncc >= NEAR_NCC, (cos, ncc)
    # stereo at 48 kHz, louder, as FLAC: still the same recording
    y = torchaudio.functional.resample(torch.from_numpy(x), RATE, 48000).numpy()
    sf.write(tmp_path / "b.flac", np.stack([y, y], 1) * 2.5, 48000)
    cos, ncc = near_duplicate(tmp_path / "a.wav", tmp_path / "b.flac")
    assert cos >= 0.95 and ncc >= 0.95, (cos, ncc)


@pytest.mark.parametrize("other", ["reordered", "noise", "transposed", "replayed"])
def test_genuinely_different_sounds_are_not_near_duplicates(tmp_path, other):
    sf.write(tmp_path / "a.wav", notes(MELODY), RATE)
    sound = {"reordered": lambda: notes(MELODY[::-1]),  # same notes, another melody
             "noise": noise_bursts,
             "transposed": lambda: notes([f * 1.5 for f in MELODY]),
             # the same melody played again (other phases, other noise): alike in the
             # fingerprint, told apart by the waveform check
             "replayed": lambda: notes(MELODY, seed=5)}[other]()
    sf.write(tmp_path / "b.wav", sound, RATE)
    cos, ncc = near_duplicate(tmp_path / "a.wav", tmp_path / "b.wav")
    assert not (cos >= NEAR_CANDIDATE and ncc >= NEAR_NCC), (cos, ncc)
    assert ncc < 0.6


def test_fingerprint_ignores_gain_and_leading_silence_and_is_unit_norm():
    x = notes(MELODY)
    f = fingerprint(x, RATE)
    assert f.shape == (audio_analysis.FP_FRAMES * audio_analysis.FP_BANDS,) and abs(np.linalg.norm(f) - 1) < 1e-4
    g = fingerprint(np.concatenate([np.zeros(RATE // 2, np.float32), 0.1 * x]), RATE)
    assert f @ g > 0.99
    assert not fingerprint(np.zeros(RATE, np.float32), RATE).any()  # silence: similar to nothing


def test_content_hash_is_the_decoded_audio_not_the_file(tmp_path):
    x = notes(MELODY)
    sf.write(tmp_path / "a.wav", x, RATE, subtype="PCM_16")
    sf.write(tmp_path / "a.flac", sf.read(tmp_path / "a.wav", dtype="float32")[0], RATE, subtype="PCM_16")
    hashes = [content_hash(*sf.read(tmp_path / n, dtype="float32", always_2d=True)) for n in ("a.wav", "a.flac")]
    assert hashes[0] == hashes[1]
    assert content_hash(x[:-1], RATE) != hashes[0] and content_hash(x, 22050) != content_hash(x, RATE)


def test_corpus_hash_is_order_independent_and_content_sensitive():
    rows = [("pkg-a", "usr/share/a/x.ogg", "11" * 32), ("pkg-a", "usr/share/a/y.wav", "22" * 32),
            ("pkg-b", "usr/share/b/x.ogg", "33" * 32)]
    h = corpus_hash(rows)
    assert h == corpus_hash(rows[::-1]) == corpus_hash(iter(sorted(rows, key=lambda r: r[2], reverse=True)))
    assert len(h) == 64
    assert corpus_hash(rows[:2]) != h
    assert corpus_hash([*rows[:2], ("pkg-b", "usr/share/b/x.ogg", "44" * 32)]) != h
    assert corpus_hash([*rows[:2], ("pkg-c", "usr/share/b/x.ogg", "33" * 32)]) != h


def test_share_cap_trims_the_largest_package_deterministically():
    rows = [{"package": "big", "seconds": 10.0, "sha": f"{i:02d}"} for i in range(10)]
    rows += [{"package": f"small{k}", "seconds": 10.0, "sha": f"s{k}{i}"} for k in (1, 2) for i in range(3)]
    kept = list(rows)
    dropped = cap_shares(kept, 0.4)
    hours = {p: sum(r["seconds"] for r in kept if r["package"] == p) for p in ("big", "small1", "small2")}
    assert hours == {"big": 40, "small1": 30, "small2": 30}  # 40 % of 100 h
    assert [r["sha"] for r in kept if r["package"] == "big"] == ["00", "01", "02", "03"]
    assert len(dropped) == 6 and all(r["package"] == "big" for r in dropped)
    assert cap_shares(list(rows), 0.8) == []  # under the cap: nothing to do
    assert cap_shares(rows[:10] + rows[10:13], 0.4) == []  # two packages cannot both be <= 40 %
    assert share_ceiling([100, 100, 10], 0.4) == pytest.approx(20)  # 20 + 20 + 10: 40 % each


def _fake_packages(out):
    """Two unpacked 'packages' with duplicates, a short click, silence, junk, an archive."""
    a = out / "unpacked" / "pkg-a" / "usr" / "share" / "a"
    b = out / "unpacked" / "pkg-b" / "usr" / "share" / "b"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    tune = notes(MELODY)
    sf.write(a / "tune.wav", tune, RATE, subtype="PCM_16")
    sf.write(a / "tune_copy.flac", sf.read(a / "tune.wav", dtype="float32")[0], RATE, subtype="PCM_16")
    sf.write(a / "click.wav", tune[:RATE // 5], RATE)
    sf.write(a / "silence.wav", np.zeros(RATE, np.float32), RATE)
    (a / "broken.ogg").write_bytes(b"OggS" + bytes(200))
    sf.write(a / "music", noise_bursts(seed=3), RATE, format="OGG", subtype="VORBIS")  # no suffix
    sf.write(out / "other.ogg", notes([300, 450, 600, 350, 700, 420, 510, 630], seed=2), RATE,
             format="OGG", subtype="VORBIS")
    with zipfile.ZipFile(a.parent / "data.pk3", "w") as z:
        z.write(out / "other.ogg", "sounds/other.ogg")
        z.writestr("maps/readme.txt", "not audio")
    (out / "other.ogg").unlink()
    reencode(tune, b / "tune_22k.ogg")
    sf.write(b / "bursts.wav", noise_bursts(), RATE)
    (b / "link.wav").symlink_to(b / "bursts.wav")


def _read_tsv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_build_filters_deduplicates_and_resumes(tmp_path, monkeypatch):
    out = tmp_path / "corpus"
    _fake_packages(out)
    monkeypatch.setattr(scan, "fetch_package", lambda package, work: work / "unpacked" / package)
    manifest = build(out, ["pkg-a", "pkg-b"], max_share=1.0, workers=1)
    rows = _read_tsv(manifest)
    assert list(rows[0]) == MANIFEST_COLUMNS
    kept = {(r["package"], r["path"].split(f"{r['package']}/", 1)[1]) for r in rows}
    assert kept == {("pkg-a", "usr/share/a/tune.wav"), ("pkg-a", "usr/share/a/music"),
                    ("pkg-a", "_archives/usr/share/data.pk3/sounds/other.ogg"), ("pkg-b", "usr/share/b/bursts.wav")}
    reasons = {r["path"].rsplit("/", 1)[1]: (r["reason"], r["duplicate_of"].rsplit("/", 1)[-1])
               for r in _read_tsv(out / "dedup.tsv")}
    assert reasons == {"tune_copy.flac": ("exact", "tune.wav"), "tune_22k.ogg": ("near", "tune.wav"),
                       "click.wav": ("short", ""), "silence.wav": ("silent", ""), "broken.ogg": ("unreadable", "")}
    # pretrain.data reads the manifest (relative paths) and every file in it
    files = list_audio(manifest)
    good, bad = check_files(files)
    assert len(good) == 4 and not bad
    summary = json.loads((out / "corpus.json").read_text())
    assert summary["corpus_sha256"] == corpus_hash(
        (r["package"], r["path"].split(f"{r['package']}/", 1)[1], r["content_sha256"]) for r in rows)
    assert summary["removed"]["exact"]["files"] == 1 and summary["removed"]["near"]["files"] == 1
    assert summary["kept"]["files"] == 4
    md = (out / "SOURCES.md").read_text()
    assert summary["corpus_sha256"] in md and "| pkg-b |" in md

    # a rerun reuses every package's scan and the near-duplicate checks: no decoding
    def no_decoding(path):
        raise AssertionError("rescanned a finished package")
    monkeypatch.setattr(scan, "analyse", no_decoding)
    monkeypatch.setattr(duplicates, "_compare_chunk", no_decoding)
    build(out, ["pkg-a", "pkg-b"], max_share=1.0, workers=1)
    assert json.loads((out / "corpus.json").read_text())["corpus_sha256"] == summary["corpus_sha256"]


def test_near_duplicate_cache_survives_an_interrupted_run(tmp_path):
    cache = tmp_path / "near_pairs.tsv"
    cache.write_text(NEAR_CACHE_KEY + "\naa\tbb\t0.9500\ncc\tdd\t0.1234\nee\tff\t0.")  # cut short
    assert load_pair_cache(cache) == {("aa", "bb"): 0.95, ("cc", "dd"): 0.1234}
    cache.write_text(NEAR_CACHE_KEY + "\naa\tbb\t0.9500\ncc\tdd")
    assert load_pair_cache(cache) == {("aa", "bb"): 0.95}
    cache.write_text("ncc v0 other settings\naa\tbb\t0.95\n")  # computed with other settings: ignored
    assert load_pair_cache(cache) == {}


def test_near_duplicate_cache_resumes_after_a_line_cut_short(tmp_path):
    cache = tmp_path / "scan" / "near_pairs.tsv"
    with open_pair_cache(cache, resume=False) as sink:
        sink.write(pair_line(("aa", "bb"), 0.95))
    with open(cache, "a") as f:
        f.write("cc\tdd\t0.")  # an interrupted run's last line
    with open_pair_cache(cache, resume=True) as sink:
        sink.write(pair_line(("ee", "ff"), 0.123456))
    assert load_pair_cache(cache) == {("aa", "bb"): 0.95, ("ee", "ff"): 0.1235}
    with open_pair_cache(cache, resume=False) as sink:  # nothing usable loaded: start afresh
        pass
    assert cache.read_text() == NEAR_CACHE_KEY + "\n"
