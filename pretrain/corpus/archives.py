"""Audio inside game archives: the members of .pk3 / .zip / .wz files (all zip files).

Games ship much of their audio packed; the scan only sees files on disk, so the audio
members are extracted next to the package's own files, under
`unpacked/PACKAGE/_archives/ARCHIVE_PATH/MEMBER_PATH`.
"""
from __future__ import annotations

import shutil
import zipfile
from pathlib import Path, PurePosixPath

from .audio_analysis import READABLE_SUFFIXES

ARCHIVE_SUFFIXES = frozenset({".zip", ".pk3", ".wz"})
ARCHIVE_DIR = "_archives"


def extract_archives(root: Path) -> int:
    """Extract the audio members of root's zip archives under root/_archives, once; returns how many.

    Member paths are made relative (no "..", no leading "/") so none can land outside it.
    """
    done = root / ARCHIVE_DIR / ".complete"
    if done.exists():
        return int(done.read_text() or 0)
    shutil.rmtree(root / ARCHIVE_DIR, ignore_errors=True)
    count = 0
    for archive in sorted(p for p in root.rglob("*") if p.suffix.lower() in ARCHIVE_SUFFIXES
                          and p.is_file() and not p.is_symlink()):
        if not zipfile.is_zipfile(archive):
            continue
        dest = root / ARCHIVE_DIR / archive.relative_to(root)
        with zipfile.ZipFile(archive) as z:
            for m in z.infolist():
                parts = [p for p in PurePosixPath(m.filename).parts if p not in ("", ".", "..", "/")]
                if m.is_dir() or not parts or PurePosixPath(parts[-1]).suffix.lower() not in READABLE_SUFFIXES:
                    continue
                target = dest.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(m) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                count += 1
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text(str(count))
    return count
