"""The package catalogue: which Debian packages the corpus is built from (sources.yaml)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

CATEGORIES = ("speech", "music", "effects", "ui", "instruments")
CATALOGUE = Path(__file__).with_name("sources.yaml")
_FIELDS = ("what", "licence")
# Debian policy 5.6.1: lower case letters, digits, "+", "-", "."; at least two characters.
_PACKAGE_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+")


@dataclass(frozen=True)
class Source:
    category: str  # speech | music | effects | ui | instruments: what most of its hours are
    what: str
    licence: str   # of the audio, from /usr/share/doc/PACKAGE/copyright (per-file terms there)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ValueError(f"{self.name}, line {key_node.start_mark.line + 1}: {key!r} is listed twice; "
                                 "keep one entry")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_sources(path: Path = CATALOGUE) -> dict[str, Source]:
    """package -> Source, in the catalogue's order (it decides ties between duplicate copies).

    The file maps each category of CATEGORIES to {package: {what: ..., licence: ...}}.
    """
    with open(path) as f:
        data = yaml.load(f, Loader=_UniqueKeyLoader)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of categories {CATEGORIES} to packages")
    sources: dict[str, Source] = {}
    for category, packages in data.items():
        if category not in CATEGORIES:
            raise ValueError(f"{path}: unknown category {category!r}; use one of {CATEGORIES} "
                             "(or add it to pretrain.corpus.sources.CATEGORIES)")
        if not isinstance(packages, dict) or not packages:
            raise ValueError(f"{path}: category {category!r} must map package names to {{what, licence}}")
        for package, fields in packages.items():
            if not isinstance(package, str) or not _PACKAGE_NAME.fullmatch(package):
                raise ValueError(f"{path}: {package!r} is not a Debian package name "
                                 "(lower case letters, digits, '+', '-', '.')")
            if package in sources:
                raise ValueError(f"{path}: {package!r} is listed under both {sources[package].category!r} "
                                 f"and {category!r}; keep one entry")
            if not isinstance(fields, dict) or set(fields) != set(_FIELDS) \
                    or not all(isinstance(fields[k], str) and fields[k].strip() for k in _FIELDS):
                raise ValueError(f"{path}: {package!r} needs exactly a non-empty 'what' and 'licence', "
                                 f"got {fields!r}")
            sources[package] = Source(category, fields["what"], fields["licence"])
    return sources


SOURCES: dict[str, Source] = load_sources()
