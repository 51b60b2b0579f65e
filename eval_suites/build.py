"""Build the offline mini suite: which builder makes which bundle, and the resumable loop.

    python -m eval_suites build mini --tasks-dir tasks/

The scene tasks live in `mini.py`, the event task in `mini_events.py` (which reuses mini's
helpers); this registry imports both, so neither imports the other's registry.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from pretrain.debian import fetch_package

from .mini import PACKAGES, VERSION, build_count, build_drums, build_phrases, build_pitch
from .mini_events import build_drum_events

log = logging.getLogger("eval_suites.build")

# bundle folder -> builder(unpacked package root, tasks dir), in the suite's order
BUILDERS = {f"mini_phrases-{VERSION}-full": build_phrases, f"mini_drums-{VERSION}-full": build_drums,
            f"mini_pitch-{VERSION}-full": build_pitch, f"mini_count-{VERSION}-full": build_count,
            "mini_drum_events-v1.0-full": build_drum_events}


def build(tasks_dir: Path, work: Path):
    """Build every bundle not yet in `tasks_dir` (downloading the packages into `work`)."""
    tasks_dir.mkdir(parents=True, exist_ok=True)
    for stale in tasks_dir.glob(".building-*"):  # an interrupted earlier build
        shutil.rmtree(stale)
    todo = [b for b in BUILDERS if not (tasks_dir / b / "task_metadata.json").exists()]
    if not todo:
        log.info("mini suite already built in %s", tasks_dir)
        return
    for package in PACKAGES:
        fetch_package(package, work)
    root = work / "unpacked"
    for bundle in todo:
        BUILDERS[bundle](root, tasks_dir)
