"""What a training run records about where it ran and on what: hardware, code, corpus.

Stored in the training checkpoint's metadata and copied into the exported plugin file
(pretrain.export), so a shipped model says how it was made.
"""
from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path

import torch


def hardware(device: torch.device, world: int) -> str:
    """e.g. '2 x NVIDIA H100 80GB HBM3' or 'CPU: AMD EPYC 7B13, 2 threads'."""
    if device.type == "cuda":
        return f"{world} x {torch.cuda.get_device_name(device)}"
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{world} process(es) on CPU: {name}, {torch.get_num_threads()} threads each"


def git_commit(root: Path | None = None) -> str | None:
    """HEAD of the checkout the code runs from, '+dirty' when tracked files differ; None outside git."""
    root = root or Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def corpus_info(data) -> dict:
    """The corpus hash and hours of a manifest built by pretrain.corpus (its corpus.json), else {}."""
    summary = Path(data).parent / "corpus.json" if Path(data).is_file() else Path(data) / "corpus.json"
    try:
        s = json.loads(summary.read_text())
        return {"corpus_sha256": s["corpus_sha256"], "corpus_hours": s["kept"]["hours"],
                "corpus_files": s["kept"]["files"]}
    except (OSError, ValueError, KeyError):
        return {}
