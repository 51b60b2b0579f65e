"""Drive heareval over models x tasks x seeds, resumably.

    python -m eval_suites run [SUITE] --model CKPT [--model NAME=CKPT ...] --tasks-dir DIR --out runs/

With a SUITE, its bundles (those present in DIR) with its probe grid and seeds. Without one,
every bundle in DIR (a folder with a task_metadata.json): primary metric = the bundle's
first "evaluation" entry, column = the HEAR 2021 leaderboard column for a known HEAR bundle,
else its task_name (the bundle name where two bundles share a task_name), and heareval's own
protocol (its PARAM_GRID, 8 grid points, seed 42), so an unknown bundle is probed exactly as
heareval would probe it. `--protocol NAME` (a suite's grid and seeds, or "heareval") and
`--grid-json` / `--seeds` replace the protocol of either kind of run.

Models: a checkpoint path, NAME=PATH, `default` (the bundled model) or `logmel` (the plugin's
log-mel baseline, `hear_ssam.load_model("logmel")`; recorded as a baseline in model.json).

Layout under --out (everything heareval writes stays there):
    bundle_report.json                    every bundle: ok / broken (why) / missing / failed, its audio's rate
    resampled/BUNDLE/                     a 16 kHz view of a bundle without a 16000/ folder (see below)
    NAME/model.json                       which checkpoint, baseline or not, suite, date
    NAME/embeddings/hear_ssam/TASK/       heareval embeddings runner output
    NAME/seedK/TASK/                      links to the embeddings + heareval predictions output
    NAME/seedK/logs/TASK/                 heareval's Lightning logs (seedK/ is its working directory)
    NAME/logs/embeddings.log              the model's embeddings process
    NAME/logs/TASK.predictions.log        the probes of one task, all seeds

Processes, and why: importing heareval costs 5-8 s, so each model gets ONE embeddings
process for all its unfinished tasks (all cores), given a tasks view NAME/tasks_view/ that
holds only links to the healthy bundles still to embed (any stray entry in a tasks dir is
fatal to heareval); and each (model, task) gets ONE probe process running its seeds one
after another (one thread each; several such processes run in parallel, --jobs). Probes are
deterministic (see heareval_compat): a seed gives the same scores in any process.

Sample rates: heareval reads a bundle's 16000/ folder (the plugin's rate). A bundle that
lacks it but has another rate's folder (hear-preprocess writes 16000/, 22050/, 32000/,
44100/, 48000/; a small bundle or one rate's tarball may hold only one) is embedded from a
view, OUT/resampled/BUNDLE/: links to the bundle's files and its audio resampled to 16 kHz
with torchaudio from the lowest rate above 16000 (else the highest below), padded/trimmed to
the task's sample_duration (see eval_suites.resample). The view is reused on rerun; the
bundle's own folder is never written to. The report says which rate each bundle came from.

Robustness: every bundle is checked first (`check_bundle`: metadata, vocabulary, split
files, audio folders and files, wav headers); a broken one is reported by name with the
reason and skipped. If an embeddings process dies on a task, that task is marked failed and
a new process embeds the rest. Finished work (`.done.embeddings`, a seed's
`test.predicted-scores.json`) is skipped on rerun. At the end a summary table is printed and
written to bundle_report.json; `run` returns the status of every step.
"""
from __future__ import annotations

import concurrent.futures as cf
import csv
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

from .resample import build_view, choose_source_rate, rate_folders, source_rate, view_is_current
from .suites import HEAREVAL_GRID, HEAREVAL_PROTOCOL, HEAREVAL_SCORES, Suite, bundle_task_specs

log = logging.getLogger("eval_suites")
SCORES = "test.predicted-scores.json"
MODULE = "hear_ssam"  # the plugin heareval imports; its embeddings land in embeddings/hear_ssam/
SAMPLE_RATE = 16000  # the plugin's; heareval reads audio from the bundle's 16000/ folder
# Model names hear_ssam.load_model resolves to a built-in baseline (hear_ssam.baseline.BASELINES;
# kept here as data so that parsing --model does not import torch).
BASELINE_MODELS = ("logmel",)
FAILED_STATES = ("failed", "broken")  # states that make a run (and the CLI's exit code) fail


@dataclasses.dataclass
class ModelSpec:
    name: str
    path: str  # "" = the plugin's default model; a baseline name; else an absolute checkpoint path

    @classmethod
    def parse(cls, text: str) -> "ModelSpec":
        """CKPT, NAME=CKPT, 'default' (the bundled model) or 'logmel' (the log-mel baseline)."""
        name, sep, path = text.partition("=")
        if not sep:
            name, path = Path(text).stem, text
        if path == "default":
            return cls(name=name, path="")
        if path in BASELINE_MODELS:
            return cls(name=name, path=path)
        if not Path(path).exists():
            raise FileNotFoundError(f"--model {text}: checkpoint {path} does not exist "
                                    f"(or use 'default' or the baseline {', '.join(BASELINE_MODELS)})")
        return cls(name=name, path=str(Path(path).resolve()))

    @property
    def baseline(self) -> bool:
        return self.path in BASELINE_MODELS

    def describe(self) -> str:
        if self.baseline:
            return f"built-in {self.path} baseline (no weights)"
        return self.path or "bundled default"


REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- bundle checks

METADATA_KEYS = ("task_name", "embedding_type", "prediction_type", "split_mode", "splits",
                 "sample_duration", "evaluation")  # what heareval reads without a default


def _examples(names, n=3) -> str:
    names = sorted(names)
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _read_vocabulary(path: Path):
    """labelvocabulary.csv -> (labels, problem or None)."""
    if not path.is_file():
        return None, "labelvocabulary.csv is missing"
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        return None, f"labelvocabulary.csv is unreadable: {e}"
    if not rows or not {"idx", "label"} <= set(rows[0]):
        return None, "labelvocabulary.csv needs an 'idx,label' header and one row per label"
    try:
        idx = sorted(int(r["idx"]) for r in rows)
    except (TypeError, ValueError):
        return None, "labelvocabulary.csv has a non-integer idx"
    if idx != list(range(len(rows))):
        return None, f"labelvocabulary.csv idx must be 0..{len(rows) - 1}, each once"
    return {r["label"] for r in rows}, None


def _labels_of(entry, embedding_type):
    """Labels of one clip in a split json, or None if the entry has the wrong shape."""
    if not isinstance(entry, list):
        return None
    if embedding_type == "event":
        if not all(isinstance(e, dict) and {"label", "start", "end"} <= set(e) for e in entry):
            return None
        return [str(e["label"]) for e in entry]
    return [str(e) for e in entry] if all(isinstance(e, (str, int)) for e in entry) else None


def _other_rates_hint(path: Path, splits, rate: int) -> str:
    """' (the bundle has 44100/: ...)' where `python -m eval_suites run` can resample another
    rate folder into the missing `rate`/ one; '' otherwise."""
    others = [r for r in rate_folders(path, splits) if r != rate]
    if rate != SAMPLE_RATE or not others:
        return ""
    which = "it" if len(others) == 1 else f"{choose_source_rate(others, rate)}/"
    return (f" (the bundle has {', '.join(f'{r}/' for r in others)}: python -m eval_suites run resamples "
            f"{which}; heareval's own runner needs the {rate}/ folder)")


def check_bundle(path: Path, audio: bool = True, rate: int = SAMPLE_RATE) -> list:
    """What keeps heareval from using this HEAR task bundle; [] when it looks healthy.

    Checks task_metadata.json (readable, the keys heareval reads, known values and score
    names), labelvocabulary.csv, one <split>.json per split (clip -> labels in the
    vocabulary), the audio folder RATE/<split>/ and, with `audio`, that every listed clip
    exists and soundfile reads its header: `rate` Hz, mono, not empty, and for a fixed
    sample_duration one length per split (heareval stacks clips into batches). `rate` is
    the plugin's 16000 for what heareval reads, another rate folder's to check the source
    of a resampled view. Stops early where later checks would only repeat the first problem.
    """
    path = Path(path)
    if not path.is_dir():
        return [f"{path} is not a folder"]
    meta_file = path / "task_metadata.json"
    if not meta_file.is_file():
        return ["no task_metadata.json (every HEAR task bundle has one)"]
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return [f"task_metadata.json is not valid JSON: {e}"]
    if not isinstance(meta, dict):
        return ["task_metadata.json is not a JSON object"]
    lacking = [k for k in METADATA_KEYS if k not in meta]
    if lacking:
        return [f"task_metadata.json lacks {', '.join(lacking)}"]
    problems = []
    if meta["embedding_type"] not in ("scene", "event"):
        problems.append(f"embedding_type {meta['embedding_type']!r} is neither 'scene' nor 'event'")
    if meta["prediction_type"] not in ("multiclass", "multilabel"):
        problems.append(f"prediction_type {meta['prediction_type']!r} is neither 'multiclass' nor 'multilabel'")
    if meta["split_mode"] not in ("trainvaltest", "new_split_kfold", "presplit_kfold"):
        problems.append(f"split_mode {meta['split_mode']!r} is not trainvaltest, new_split_kfold or presplit_kfold")
    splits = meta["splits"]
    if not (isinstance(splits, list) and splits and all(isinstance(s, str) for s in splits)):
        return problems + ["task_metadata.json splits must be a non-empty list of split names"]
    if meta["split_mode"] == "trainvaltest" and not {"train", "valid", "test"} <= set(splits):
        problems.append(f"split_mode trainvaltest needs splits train, valid and test; got {splits}")
    if meta["split_mode"] in ("new_split_kfold", "presplit_kfold") and len(splits) < 3:
        problems.append(f"k-fold needs at least 3 folds (train, valid, test); got {splits}")
    evaluation = meta["evaluation"]
    if not (isinstance(evaluation, list) and evaluation):
        problems.append("task_metadata.json evaluation must be a non-empty list of score names")
    else:
        unknown = [e for e in evaluation if e not in HEAREVAL_SCORES]
        if unknown:
            problems.append(f"unknown score names {unknown} (heareval knows {', '.join(HEAREVAL_SCORES)})")
    vocabulary, problem = _read_vocabulary(path / "labelvocabulary.csv")
    if problem:
        problems.append(problem)
    if audio:
        import soundfile as sf
    for split in splits:
        split_file = path / f"{split}.json"
        if not split_file.is_file():
            problems.append(f"{split}.json is missing (task_metadata.json lists split {split!r})")
            continue
        try:
            clips = json.loads(split_file.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            problems.append(f"{split}.json is not valid JSON: {e}")
            continue
        if not isinstance(clips, dict):
            problems.append(f"{split}.json must map clip file names to labels")
            continue
        bad_shape, unknown_labels, not_one = [], set(), []
        for name, entry in clips.items():
            labels = _labels_of(entry, meta["embedding_type"])
            if labels is None:
                bad_shape.append(name)
                continue
            if vocabulary is not None:
                unknown_labels |= set(labels) - vocabulary
            if meta["embedding_type"] == "scene" and meta["prediction_type"] == "multiclass" and len(labels) != 1:
                not_one.append(name)
        if bad_shape:
            want = "[{label, start, end}, ...]" if meta["embedding_type"] == "event" else "[label, ...]"
            problems.append(f"{split}.json: {len(bad_shape)} entries are not {want} ({_examples(bad_shape)})")
        if unknown_labels:
            problems.append(f"{split}.json uses labels missing from labelvocabulary.csv: {_examples(unknown_labels)}")
        if not_one:
            problems.append(f"{split}.json: {len(not_one)} clips of a multiclass task do not have exactly one "
                            f"label ({_examples(not_one)})")
        audio_dir = path / str(rate) / split
        if not audio_dir.is_dir():
            problems.append(f"audio folder {rate}/{split}/ is missing{_other_rates_hint(path, splits, rate)}")
            continue
        if not audio:
            continue
        missing, unreadable, wrong_rate, not_mono_or_empty, lengths = [], [], [], [], {}
        for name in clips:
            wav = audio_dir / name
            if not wav.is_file():
                missing.append(name)
                continue
            try:
                info = sf.info(str(wav))
            except Exception as e:  # soundfile raises LibsndfileError / RuntimeError / OSError
                unreadable.append(f"{name}: {str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}")
                continue
            if info.samplerate != rate:
                wrong_rate.append(f"{name}: {info.samplerate} Hz")
            if info.channels != 1 or info.frames == 0:  # HEAR clips are mono, padded to the duration
                not_mono_or_empty.append(f"{name}: {info.channels} channels, {info.frames} samples")
            lengths[info.frames] = name
        folder = f"{rate}/{split}/"
        for files, what in ((missing, f"listed in {split}.json are missing from {folder}"),
                            (unreadable, f"in {folder} cannot be read by soundfile"),
                            (wrong_rate, f"in {folder} are not {rate} Hz"),
                            (not_mono_or_empty, f"in {folder} are not mono or empty")):
            if files:
                problems.append(f"{len(files)} audio files {what} ({_examples(files)})")
        # heareval batches fixed-duration clips with torch.stack: one length per split.
        if meta["sample_duration"] is not None and len(lengths) > 1:
            problems.append(f"audio files in {folder} have {len(lengths)} different lengths "
                            f"(e.g. {_examples([f'{n}: {k} samples' for k, n in lengths.items()], 2)}); "
                            f"sample_duration {meta['sample_duration']} s means one")
    return problems


# ---------------------------------------------------------------- subprocesses

def _run(cmd, log_file: Path, env_extra: dict, cwd: Path) -> tuple[bool, str]:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=path, **env_extra)
    with open(log_file, "w") as f:
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    if r.returncode == 0:
        return True, ""
    tail = [line for line in log_file.read_text(errors="replace").strip().splitlines() if line.strip()][-3:]
    return False, f"exit {r.returncode}: " + " | ".join(tail) + f" (log: {log_file})"


def _threads_env(n: int) -> dict:
    # PYTHONHASHSEED: nothing should depend on set order, but a fixed one rules it out.
    return {"OMP_NUM_THREADS": str(n), "MKL_NUM_THREADS": str(n), "PYTHONHASHSEED": "0"}


def _emb_task(model: ModelSpec, task: str, out: Path) -> Path:
    return out / model.name / "embeddings" / MODULE / task


def embed(model: ModelSpec, tasks: list, tasks_dir: Path, out: Path, threads: int,
          sources: dict | None = None) -> dict:
    """Embeddings of every task in `tasks` not done yet, in one heareval process ->
    {task: (state, why)}. If the process dies on a task, that task fails and a new process
    embeds the rest.

    sources: {task: the folder heareval reads it from} (a resampled view), default
    tasks_dir / task."""
    sources = sources or {}
    result = {t: ("skipped", "") for t in tasks if (_emb_task(model, t, out) / ".done.embeddings").exists()}
    pending = [t for t in tasks if t not in result]
    view = out / model.name / "tasks_view"
    attempt = 0
    while pending:
        # The view holds exactly the bundles to embed: heareval walks every entry of it.
        if view.exists():
            shutil.rmtree(view)
        view.mkdir(parents=True)
        for t in pending:
            (view / t).symlink_to(sources.get(t, tasks_dir / t))
            if _emb_task(model, t, out).exists():  # a partial task from a killed run
                shutil.rmtree(_emb_task(model, t, out))
        cmd = [sys.executable, "-m", "eval_suites.heareval_compat", "embeddings", MODULE,
               "--tasks-dir", str(view), "--embeddings-dir", str(out / model.name / "embeddings")]
        if model.path:
            cmd += ["--model", model.path]
        log_file = out / model.name / "logs" / ("embeddings.log" if not attempt else f"embeddings.retry{attempt}.log")
        ok, why = _run(cmd, log_file, _threads_env(threads), cwd=out / model.name)
        attempt += 1
        rest = []
        for t in pending:
            if (_emb_task(model, t, out) / ".done.embeddings").exists():
                result[t] = ("done", "")
            else:
                rest.append(t)
        # The one task with a folder but no .done.embeddings is the one the process died on.
        started = [t for t in rest if _emb_task(model, t, out).exists()]
        if ok or len(started) != 1:
            for t in rest:  # died before any task (e.g. the model did not load), or no culprit
                result[t] = ("failed", why or "heareval finished without .done.embeddings")
            break
        result[started[0]] = ("failed", why)
        pending = [t for t in rest if t != started[0]]
    if view.exists():
        shutil.rmtree(view)
    return result


def _seed_failures(log_file: Path) -> dict:
    """{seed: why} from heareval_compat's 'seed K failed: ...' lines."""
    if not log_file.exists():
        return {}
    found = re.findall(r"^heareval_compat: seed (\d+) failed: (.*)$", log_file.read_text(errors="replace"), re.M)
    return {int(s): why for s, why in found}


def predict(model: ModelSpec, task: str, seeds, suite: Suite, out: Path) -> dict:
    """All of one task's unfinished seeds in one probe process -> {seed: (state, why)}."""
    emb_task = _emb_task(model, task, out)
    model_dir = out / model.name
    done = {s: ("skipped", "") for s in seeds if (model_dir / f"seed{s}" / task / SCORES).exists()}
    todo = [s for s in seeds if s not in done]
    if not todo:
        return done
    if not (emb_task / ".done.embeddings").exists():
        return {**done, **{s: ("failed", "no embeddings") for s in todo}}
    cmd = [sys.executable, "-m", "eval_suites.heareval_compat", "predict", str(emb_task),
           "--runs-dir", str(model_dir), "--seeds", *map(str, todo), "--grid-points", str(suite.points)]
    if suite.grid != HEAREVAL_GRID:
        cmd += ["--grid-json", json.dumps(suite.grid)]
    log_file = model_dir / "logs" / f"{task}.predictions.log"
    # Small MLP probes: one thread each is fastest when several share the cores, and it
    # fixes the order of float sums (same scores on any machine size).
    ok, why = _run(cmd, log_file, _threads_env(1), cwd=model_dir)
    reasons = _seed_failures(log_file)
    result = dict(done)
    for s in todo:
        if (model_dir / f"seed{s}" / task / SCORES).exists():
            result[s] = ("done", "")
        else:
            result[s] = ("failed", reasons.get(s) or why or f"no {SCORES} written")
    return result


def predict_all(work, suite: Suite, out: Path, jobs: int, on_done=None) -> dict:
    """`predict` for [(ModelSpec, task, seeds)] in `jobs` parallel probe processes ->
    {(model, task, "seedK"): (state, why)}; on_done(model, task, seeds) after each task."""
    status = {}
    with cf.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(predict, m, t, list(seeds), suite, out): (m, t, len(seeds)) for m, t, seeds in work}
        for fut in cf.as_completed(futures):
            m, t, n = futures[fut]
            for s, res in fut.result().items():
                status[(m.name, t, f"seed{s}")] = res
                if res[0] == "failed":
                    log.error("%s / %s / seed %d probe failed: %s", m.name, t, s, res[1])
            if on_done:
                on_done(m, t, n)
    return status


# ---------------------------------------------------------------- the run

def _with_protocol(suite: Suite, protocol: Suite | None, grid: dict | None) -> Suite:
    if protocol is not None:
        suite = dataclasses.replace(suite, grid=protocol.grid, seeds=protocol.seeds, grid_points=protocol.grid_points)
    if grid is not None:
        suite = dataclasses.replace(suite, grid=grid, grid_points=None)
    return suite


def _weights_sha256(model: ModelSpec) -> str | None:
    """sha256 of the checkpoint file a model runs (the bundled one for 'default'); None for a baseline."""
    if model.baseline:
        return None
    if model.path:
        path = Path(model.path)
    else:
        from hear_ssam.api import DEFAULT_CHECKPOINT  # imports torch: only when a run starts
        path = DEFAULT_CHECKPOINT
    if not path.exists():
        return None  # the plugin's seeded random-init fallback
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_model_json(model: ModelSpec, suite: Suite, out: Path):
    """NAME/model.json; the date is the first run's, so reruns leave the leaderboard as it was.

    Finished work is reused by model name, so a name whose checkpoint file changed (a new
    bundled default, a retrained model) would mix old embeddings and scores with new ones:
    its folder is cleared first, with a warning."""
    folder = out / model.name
    path = folder / "model.json"
    old = {}
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            pass
    checkpoint, weights = model.describe(), _weights_sha256(model)
    if folder.exists() and old.get("weights_sha256", weights) != weights:
        log.warning("%s: its checkpoint changed since %s was made (sha256 %s... -> %s...): "
                    "discarding its embeddings and scores", model.name, folder,
                    str(old.get("weights_sha256"))[:12], str(weights)[:12])
        shutil.rmtree(folder)
        old = {}
    date = old.get("date") if old.get("checkpoint") == checkpoint else None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(
        {"name": model.name, "checkpoint": checkpoint, "weights_sha256": weights, "baseline": model.baseline,
         "suite": suite.name, "protocol": suite.protocol_text(),
         "date": date or time.strftime("%Y-%m-%d")}, indent=1))


def run(suite: Suite | None, models, tasks_dir: Path, out: Path, seeds=None, tasks=None, jobs=None,
        protocol: Suite | None = None, grid: dict | None = None) -> dict:
    """Embeddings + probes; returns {(model, bundle, "embeddings" | "seedK"): (state, why)}.

    suite None: every bundle in tasks_dir, heareval's protocol. protocol / grid / seeds
    replace the suite's (protocol: another suite's grid, points and seeds).
    """
    tasks_dir, out = Path(tasks_dir).resolve(), Path(out).resolve()
    if not tasks_dir.is_dir():
        raise FileNotFoundError(f"--tasks-dir {tasks_dir} does not exist")
    cores = os.cpu_count() or 1
    jobs = jobs or max(1, min(cores, 4))

    if suite is None:
        entries = sorted(tasks_dir.iterdir())
        for f in entries:
            if not f.is_dir() and not f.name.startswith("."):
                log.info("%s is not a folder: not a bundle, ignored", f)
        wanted = [f.name for f in entries if f.is_dir() and not f.name.startswith(".")]
        if not wanted:
            raise FileNotFoundError(f"--tasks-dir {tasks_dir} holds no task bundles (folders)")
    else:
        wanted = [t.bundle for t in suite.tasks]
    if tasks is not None:
        unknown = sorted(set(tasks) - set(wanted))
        if unknown:
            raise ValueError(f"--task {', '.join(unknown)}: not a bundle of this run "
                             f"({'suite ' + suite.name if suite else tasks_dir})")
        wanted = [t for t in wanted if t in tasks]
    present = [t for t in wanted if (tasks_dir / t).is_dir()]
    missing = [t for t in wanted if t not in present]
    for t in missing:
        log.warning("task %s is not in %s: skipped", t, tasks_dir)

    # Health first. Bundles every model has embedded already are not re-read clip by clip.
    problems, sources, audio = {}, {}, {}
    for t in present:
        embedded = all((_emb_task(m, t, out) / ".done.embeddings").exists() for m in models)
        sources[t], problems[t], audio[t] = _audio_source(tasks_dir / t, out, embedded)
        if problems[t]:
            log.error("bundle %s is broken, skipped: %s", t, "; ".join(problems[t]))
    healthy = [t for t in present if not problems[t]]

    if suite is None:
        metadata = {t: json.loads((tasks_dir / t / "task_metadata.json").read_text()) for t in healthy}
        specs = bundle_task_specs(metadata)
        suite = Suite(name="bundles", description=f"every bundle in {tasks_dir}",
                      tasks=tuple(specs[t] for t in healthy), grid=HEAREVAL_PROTOCOL.grid,
                      seeds=HEAREVAL_PROTOCOL.seeds, grid_points=HEAREVAL_PROTOCOL.grid_points)
    suite = _with_protocol(suite, protocol, grid)
    if seeds is not None:
        suite = dataclasses.replace(suite, seeds=tuple(seeds))
    seeds = list(suite.seeds)
    log.info("%s: %d bundles (%d broken, %d missing), %d models; probes: %s", suite.name, len(wanted),
             sum(bool(p) for p in problems.values()), len(missing), len(models), suite.protocol_text())

    status = {}
    for m in models:
        _write_model_json(m, suite, out)
        for t in missing:
            status[(m.name, t, "embeddings")] = ("missing", f"not in {tasks_dir}")
        for t in present:
            if problems[t]:
                status[(m.name, t, "embeddings")] = ("broken", "; ".join(problems[t]))
    bar = tqdm(total=len(models) * len(healthy) * (1 + len(seeds)), desc=suite.name, unit="step",
               dynamic_ncols=True)
    # Every model's embeddings first, then the probes: an embeddings process uses every core
    # (OpenMP threads), and one-thread probes beside it oversubscribe the cores, which made
    # both several times slower (OpenMP threads wait at barriers for a descheduled peer).
    for m in models:
        bar.set_postfix_str(f"{m.name} embeddings")
        for t, res in embed(m, healthy, tasks_dir, out, threads=cores, sources=sources).items():
            status[(m.name, t, "embeddings")] = res
            if res[0] == "failed":
                log.error("%s / %s embeddings failed: %s", m.name, t, res[1])
        bar.update(len(healthy))
    # Longest first (event tasks: a probe trains on every frame), so no long probe starts last.
    event = {t for t in healthy if _embedding_type(tasks_dir / t) == "event"}
    pairs = sorted(((m, t) for m in models for t in healthy), key=lambda mt: mt[1] not in event)

    def done(m, t, n):
        bar.set_postfix_str(f"{m.name} {t}")
        bar.update(n)
    status.update(predict_all([(m, t, seeds) for m, t in pairs], suite, out, jobs, on_done=done))
    bar.close()

    report = bundle_report(status, wanted, problems, suite, models, seeds, tasks_dir, audio)
    (out / "bundle_report.json").write_text(json.dumps(report, indent=1) + "\n")
    print(format_summary(report), flush=True)
    return status


def _audio_source(bundle: Path, out: Path, embedded: bool) -> tuple[Path, list, dict]:
    """(the folder heareval embeds `bundle` from, its problems, the report's "audio" entry).

    The bundle itself when it has a 16000/ folder for every split (or no other rate's
    folder to make one from: check_bundle names what is missing). Else a 16 kHz view under
    OUT/resampled/, reused when current and healthy, built after the source folder passes check_bundle
    at its own rate; not built when every model has embedded the bundle already (the view
    only feeds the embeddings process).
    """
    rate = source_rate(bundle, SAMPLE_RATE)
    if rate is None:
        return bundle, check_bundle(bundle, audio=not embedded), {"rate": SAMPLE_RATE}
    view = out / "resampled" / bundle.name
    audio = {"rate": SAMPLE_RATE, "resampled_from": rate, "view": str(view)}
    lacks = (f"an incomplete {SAMPLE_RATE}/ folder" if (bundle / str(SAMPLE_RATE)).is_dir()
             else f"no {SAMPLE_RATE}/ folder")
    if view_is_current(view, bundle, rate, SAMPLE_RATE):
        problems = check_bundle(view, audio=not embedded)
        if not problems:
            log.info("bundle %s has %s: reusing %s (its %d/ audio resampled to %g kHz)", bundle.name, lacks,
                     view, rate, SAMPLE_RATE / 1000)
            return view, [], audio
        # A damaged view (a deleted clip) is made again; a problem of the bundle's own files
        # is found again below, in the bundle itself.
        log.info("%s does not pass check_bundle (%s): making it again", view, problems[0])
    if embedded:
        return bundle, check_bundle(bundle, audio=False, rate=rate), dict(audio, view=None)
    problems = check_bundle(bundle, rate=rate)
    if problems:
        return bundle, problems, dict(audio, view=None)
    try:
        clips = build_view(bundle, view, rate, SAMPLE_RATE)
    except (OSError, RuntimeError, ValueError) as e:  # soundfile's LibsndfileError is a RuntimeError
        return bundle, [f"resampling its {rate}/ audio to {SAMPLE_RATE} Hz into {view} failed: {e} "
                        f"(fix or replace the file it names, then run again)"], dict(audio, view=None)
    log.info("bundle %s has %s: resampled its %d/ audio to %g kHz with torchaudio into %s (%d clips)",
             bundle.name, lacks, rate, SAMPLE_RATE / 1000, view, clips)
    return view, check_bundle(view), audio


def _embedding_type(bundle: Path) -> str:
    try:
        return json.loads((bundle / "task_metadata.json").read_text()).get("embedding_type", "scene")
    except (OSError, ValueError):
        return "scene"


def bundle_report(status: dict, bundles, problems: dict, suite: Suite, models, seeds, tasks_dir: Path,
                  audio: dict | None = None) -> dict:
    """Per bundle: status (ok / broken / missing / failed), problems, the audio it was
    embedded from ({"rate": 16000}, plus "resampled_from" and "view" for a resampled view;
    null for a missing bundle), and per model its steps."""
    specs = {t.bundle: t for t in suite.tasks}
    audio = audio or {}
    rows = []
    for b in bundles:
        row = {"bundle": b, "label": specs[b].label if b in specs else "",
               "metric": specs[b].metric if b in specs else "", "problems": problems.get(b, []),
               "audio": audio.get(b), "models": {}}
        states = set()
        for m in models:
            emb = status.get((m.name, b, "embeddings"), ("", ""))
            seed_states = {str(s): status[(m.name, b, f"seed{s}")] for s in seeds if (m.name, b, f"seed{s}") in status}
            errors = [f"embeddings: {emb[1]}"] if emb[0] == "failed" else []
            errors += [f"seed {s}: {why}" for s, (st, why) in seed_states.items() if st == "failed"]
            row["models"][m.name] = {"embeddings": emb[0], "seeds": {s: st for s, (st, _) in seed_states.items()},
                                     "errors": errors}
            states.add(emb[0])
            states |= {st for st, _ in seed_states.values()}
        row["status"] = ("broken" if row["problems"] else "missing" if "missing" in states
                         else "failed" if "failed" in states else "ok")
        rows.append(row)
    return {"tasks_dir": str(tasks_dir), "suite": suite.name, "protocol": suite.protocol_text(),
            "seeds": list(seeds), "models": [m.name for m in models],
            "failed": any(r["status"] in FAILED_STATES for r in rows), "bundles": rows}


def format_summary(report: dict, detail_chars: int = 160) -> str:
    """The end-of-run table: one row per bundle and model (one per broken/missing bundle)."""
    header = ("bundle", "model", "status", "embeddings", "probes", "detail")
    lines = []
    for r in report["bundles"]:
        if r["status"] in ("broken", "missing"):
            detail = "; ".join(r["problems"]) if r["problems"] else f"not in {report['tasks_dir']}"
            lines.append((r["bundle"], "(all)", r["status"].upper(), "-", "-", detail))
            continue
        origin = (r.get("audio") or {}).get("resampled_from")
        for name, m in r["models"].items():
            seeds = m["seeds"]
            ok = sum(st in ("done", "skipped") for st in seeds.values())
            state = "FAILED" if m["errors"] else "ok"
            notes = ([f"resampled from {origin} Hz"] if origin else []) + m["errors"]
            lines.append((r["bundle"], name, state, m["embeddings"], f"{ok}/{len(report['seeds'])} seeds",
                          "; ".join(notes)))
    widths = [max(len(str(row[i])) for row in [header] + lines) for i in range(5)]
    out = [f"== {report['suite']}: {len(report['bundles'])} bundles x {len(report['models'])} models; "
           f"probes: {report['protocol']}"]
    for row in [header] + lines:
        detail = row[5] if len(row[5]) <= detail_chars else row[5][: detail_chars - 3] + "..."
        out.append(("  ".join(str(v).ljust(w) for v, w in zip(row, widths)) + "  " + detail).rstrip())
    bad = [r["bundle"] for r in report["bundles"] if r["status"] in FAILED_STATES]
    out.append(f"== {'FAILED: ' + ', '.join(bad) if bad else 'all bundles finished'}"
               f" (details: bundle_report.json, NAME/logs/)")
    return "\n".join(out)
