"""Drive heareval over models x tasks x seeds, resumably.

    python -m eval_suites run SUITE --model CKPT [--model NAME=CKPT ...] --tasks-dir DIR --out runs/

Layout under --out (everything heareval writes stays there):
    NAME/model.json                       which checkpoint, suite, date
    NAME/embeddings/hear_ssam/TASK/       heareval.embeddings.runner output
    NAME/seedK/TASK/                      links to the embeddings + heareval predictions output
    NAME/seedK/logs/                      heareval's Lightning logs (its working directory)
    NAME/logs/TASK.STAGE.log              stdout/stderr of each step
Finished steps (`.done.embeddings`, `test.predicted-scores.json`) are skipped on rerun; a
failing task is reported and the others go on.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

from .suites import Suite

log = logging.getLogger("eval_suites")
SCORES = "test.predicted-scores.json"


@dataclasses.dataclass
class ModelSpec:
    name: str
    path: str  # "" = the plugin's default model

    @classmethod
    def parse(cls, text: str) -> "ModelSpec":
        """CKPT, NAME=CKPT, or 'default' (the bundled model)."""
        name, sep, path = text.partition("=")
        if not sep:
            name, path = Path(text).stem, text
        if path == "default":
            path = ""
        elif not Path(path).exists():
            raise FileNotFoundError(f"--model {text}: checkpoint {path} does not exist")
        return cls(name=name, path=str(Path(path).resolve()) if path else "")


REPO = Path(__file__).resolve().parents[1]


def _run(cmd, log_file: Path, env_extra: dict, cwd: Path) -> tuple[bool, str]:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=path, **env_extra)
    with open(log_file, "w") as f:
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    if r.returncode == 0:
        return True, ""
    tail = log_file.read_text(errors="replace").strip().splitlines()[-3:]
    return False, f"exit {r.returncode}: " + " | ".join(tail)


def embed(model: ModelSpec, task: str, tasks_dir: Path, out: Path, threads: int):
    emb_root = out / model.name / "embeddings"
    task_dir = emb_root / "hear_ssam" / task
    if (task_dir / ".done.embeddings").exists():
        return "skipped", ""
    cmd = [sys.executable, "-m", "heareval.embeddings.runner", "hear_ssam", "--tasks-dir", str(tasks_dir),
           "--task", task, "--embeddings-dir", str(emb_root)]
    if model.path:
        cmd += ["--model", model.path]
    ok, why = _run(cmd, out / model.name / "logs" / f"{task}.embeddings.log",
                   {"OMP_NUM_THREADS": str(threads)}, cwd=out / model.name)
    return ("done", "") if ok else ("failed", why)


def predict(model: ModelSpec, task: str, seed: int, suite: Suite, out: Path):
    emb_task = out / model.name / "embeddings" / "hear_ssam" / task
    seed_root = out / model.name / f"seed{seed}"
    seed_task = seed_root / task
    if (seed_task / SCORES).exists():
        return "skipped", ""
    if not (emb_task / ".done.embeddings").exists():
        return "failed", "no embeddings"
    seed_task.mkdir(parents=True, exist_ok=True)
    for f in emb_task.iterdir():  # predictions read these and write beside them
        link = seed_task / f.name
        if f.is_file() and not link.exists():
            link.symlink_to(f.resolve())
    cmd = [sys.executable, "-m", "eval_suites.heareval_compat", str(seed_task.resolve()),
           "--seed", str(seed), "--grid-json", json.dumps(suite.grid)]
    # Small MLP probes: one thread each is fastest when several share the cores.
    ok, why = _run(cmd, out / model.name / "logs" / f"{task}.seed{seed}.predictions.log",
                   {"OMP_NUM_THREADS": "1"}, cwd=seed_root)
    return ("done", "") if ok else ("failed", why)


def run(suite: Suite, models, tasks_dir: Path, out: Path, seeds=None, tasks=None, jobs=None) -> dict:
    tasks_dir, out = Path(tasks_dir).resolve(), Path(out).resolve()
    if not tasks_dir.is_dir():
        raise FileNotFoundError(f"--tasks-dir {tasks_dir} does not exist")
    cores = os.cpu_count() or 1
    jobs = jobs or max(1, min(cores, 4))
    seeds = list(seeds if seeds is not None else suite.seeds)
    wanted = [t.bundle for t in suite.tasks if tasks is None or t.bundle in tasks]
    present = [t for t in wanted if (tasks_dir / t / "task_metadata.json").exists()]
    status = {}
    for t in sorted(set(wanted) - set(present)):
        log.warning("task %s is not in %s: skipped", t, tasks_dir)
        for m in models:
            status[(m.name, t, "embeddings")] = ("missing", f"not in {tasks_dir}")
    for m in models:
        (out / m.name).mkdir(parents=True, exist_ok=True)
        (out / m.name / "model.json").write_text(json.dumps(
            {"name": m.name, "checkpoint": m.path or "bundled default",
             "suite": suite.name, "date": time.strftime("%Y-%m-%d")}, indent=1))
    total = len(models) * len(present) * (1 + len(seeds))
    bar = tqdm(total=total, desc=f"{suite.name}", unit="step", dynamic_ncols=True)
    with cf.ThreadPoolExecutor(max_workers=jobs) as pool:
        for m in models:
            for t in present:
                bar.set_postfix_str(f"{m.name} {t} embeddings")
                status[(m.name, t, "embeddings")] = embed(m, t, tasks_dir, out, threads=cores)
                bar.update(1)
                if status[(m.name, t, "embeddings")][0] == "failed":
                    log.error("%s / %s embeddings failed: %s", m.name, t, status[(m.name, t, "embeddings")][1])
                futures = {pool.submit(predict, m, t, s, suite, out): s for s in seeds}
                for fut in cf.as_completed(futures):
                    s = futures[fut]
                    status[(m.name, t, f"seed{s}")] = res = fut.result()
                    if res[0] == "failed":
                        log.error("%s / %s / seed %d probe failed: %s", m.name, t, s, res[1])
                    bar.set_postfix_str(f"{m.name} {t} seed {s}")
                    bar.update(1)
    bar.close()
    counts = {}
    for state, _ in status.values():
        counts[state] = counts.get(state, 0) + 1
    log.info("finished %s: %s", suite.name, ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    return status
