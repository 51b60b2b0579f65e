"""Real audio from Debian packages, offline (stdlib only; eval_suites uses it too).

`fetch_package` downloads a package with `apt-get download` and unpacks it with
`dpkg-deb -x`, once. `EVAL_PACKAGES` are the packages the offline evaluation suite is built
from: pretraining must never read them, nor any package of the same projects
(`EVAL_PROJECTS`, `is_eval_package`; pretrain.corpus refuses them, and a test checks that the
suite's own package list stays inside `EVAL_PACKAGES`).
"""
from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

log = logging.getLogger("pretrain.debian")

# Reserved for evaluation: the mini suite's sources. Never pretrain on them.
EVAL_PACKAGES = frozenset({"hedgewars-data", "hydrogen-drumkits", "fluid-soundfont-gm"})
# The projects those packages come from: their sibling packages (other voice packs, drum kits,
# soundfonts of the same project) may share recordings with the suite, so pretraining avoids
# the whole family ("hydrogen-drumkits-effects" as well as "hydrogen-drumkits").
EVAL_PROJECTS = ("hedgewars", "hydrogen", "fluid-soundfont")


def is_eval_package(package: str) -> bool:
    """True for an evaluation package or any package of an evaluation project."""
    return package in EVAL_PACKAGES or any(package == p or package.startswith(p + "-") for p in EVAL_PROJECTS)


def fetch_package(package: str, work: Path) -> Path:
    """Unpacked tree of a Debian package under work/unpacked/PACKAGE, fetched once."""
    root = Path(work) / "unpacked" / package
    if (root / ".complete").exists():
        return root
    debs = Path(work) / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    if not list(debs.glob(f"{package}_*.deb")):
        log.info("downloading %s", package)
        r = subprocess.run(["apt-get", "download", package], cwd=debs, capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"apt-get download {package} failed (run 'apt-get update' first?): "
                               f"{r.stderr.strip()[-300:]}")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    subprocess.run(["dpkg-deb", "-x", str(sorted(debs.glob(f"{package}_*.deb"))[-1]), str(root)], check=True)
    (root / ".complete").touch()
    return root
