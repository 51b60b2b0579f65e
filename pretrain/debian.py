"""Real audio from Debian packages, offline (stdlib only; eval_suites uses it too).

`fetch_package` downloads a package with `apt-get download` and unpacks it with
`dpkg-deb -x`, once. `EVAL_PACKAGES` are the packages the offline evaluation suite is built
from: pretraining must never read them (pretrain.corpus refuses them, and a test checks
that the suite's own package list stays inside this one).
"""
from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

log = logging.getLogger("pretrain.debian")

# Reserved for evaluation: the mini suite's sources. Never pretrain on them.
EVAL_PACKAGES = frozenset({"hedgewars-data", "hydrogen-drumkits", "fluid-soundfont-gm"})


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
