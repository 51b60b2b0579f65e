"""Which Debian packages feed what: pretraining, the mini suite, and the held-out reserve."""
import re

import pytest

from eval_suites import mini
from pretrain.corpus import SOURCES
from pretrain.debian import EVAL_PACKAGES

# Reserved for held-out evaluation by people outside this project: never used for pretraining,
# the mini suite or tests, so their evaluation measures audio no model here has heard.
# (Prefixes cover whole package families.)
HELD_OUT = ("asterisk-core-sounds-", "asterisk-prompt-", "klettres-data", "tuxpaint-stamps-default",
            "widelands-data", "gcompris-qt-data", "minetest-data", "scorched3d-data")


def _held_out(package):
    return package.startswith(HELD_OUT)


def test_the_mini_suite_only_reads_packages_reserved_from_pretraining():
    assert set(mini.PACKAGES) <= EVAL_PACKAGES, "add the suite's new package to pretrain.debian.EVAL_PACKAGES"


def test_pretraining_sources_avoid_the_evaluation_packages():
    assert not set(SOURCES) & EVAL_PACKAGES


def test_nothing_uses_the_held_out_packages():
    used = set(SOURCES) | set(mini.PACKAGES) | EVAL_PACKAGES
    assert not [p for p in used if _held_out(p)]


def test_the_corpus_builder_refuses_evaluation_packages(tmp_path):
    import pytest
    from pretrain.corpus import build
    with pytest.raises(ValueError, match="feed the evaluation suite"):
        build(tmp_path, ["supertux-data", "hydrogen-drumkits"])


# The projects behind the mini suite's packages, spelled out here independently of
# pretrain.debian, so a sibling package of the same game/kit/soundfont cannot slip in.
SUITE_PROJECTS = ("hedgewars", "hydrogen", "fluid-soundfont")


def _family(package, stems):
    return any(package == s or package.startswith(s + "-") for s in stems)


def test_pretraining_sources_avoid_the_evaluation_projects():
    from pretrain.debian import is_eval_package
    assert not [p for p in SOURCES if _family(p, SUITE_PROJECTS) or is_eval_package(p)]
    assert all(is_eval_package(p) for p in EVAL_PACKAGES | set(mini.PACKAGES))
    assert is_eval_package("hydrogen-drumkits-effects") and is_eval_package("hedgewars")
    assert not is_eval_package("supertux-data") and not is_eval_package("hydrogenic-data")


def test_pretraining_sources_avoid_the_held_out_projects():
    # whole projects, not only the reserved packages: "widelands-data" -> any "widelands-*"
    stems = {p.split("-")[0] for p in HELD_OUT}
    assert len(stems) == len(HELD_OUT) - 1  # the two asterisk families share a stem
    assert not [p for p in SOURCES if _family(p, stems)]


def test_pretraining_sources_describe_each_package():
    from pretrain.corpus import CATEGORIES
    for package, source in SOURCES.items():
        assert source.category in CATEGORIES and source.what and source.licence, package
    # a mix, with speech: every category has packages
    assert {s.category for s in SOURCES.values()} == set(CATEGORIES)


def test_the_corpus_builder_refuses_the_evaluation_projects(tmp_path):
    import pytest
    from pretrain.corpus import build
    with pytest.raises(ValueError, match="feed the evaluation suite"):
        build(tmp_path, ["supertux-data", "hydrogen-drumkits-effects"])
    assert not list(tmp_path.iterdir())  # refused before downloading anything


@pytest.mark.parametrize("text, problem", [
    ("speech:\n  a-data: {what: x, licence: GPL-2}\n  a-data: {what: y, licence: GPL-2}\n", "listed twice"),
    ("speech:\n  a-data: {what: x, licence: GPL-2}\nmusic:\n  a-data: {what: y, licence: GPL-2}\n",
     "listed under both 'speech' and 'music'"),
    ("noise:\n  a-data: {what: x, licence: GPL-2}\n", "unknown category 'noise'"),
    ("speech:\n  A_Data: {what: x, licence: GPL-2}\n", "not a Debian package name"),
    ("speech:\n  a-data: {what: x}\n", "needs exactly a non-empty 'what' and 'licence'"),
    ("speech:\n  a-data: {what: '', licence: GPL-2}\n", "needs exactly a non-empty 'what' and 'licence'"),
    ("speech:\n  a-data: {what: x, licence: GPL-2, hours: 3}\n", "needs exactly a non-empty 'what' and 'licence'"),
    ("- a-data\n", "expected a mapping of categories"),
])
def test_the_catalogue_refuses_malformed_entries(tmp_path, text, problem):
    from pretrain.corpus.sources import load_sources
    (tmp_path / "sources.yaml").write_text(text)
    with pytest.raises(ValueError, match=re.escape(problem)):
        load_sources(tmp_path / "sources.yaml")


def test_the_catalogue_keeps_the_order_of_its_file(tmp_path):
    # the order breaks ties between duplicate copies, so it must survive loading
    from pretrain.corpus.sources import Source, load_sources
    (tmp_path / "sources.yaml").write_text("music:\n  z-music: {what: z, licence: GPL-2}\n"
                                           "  a-music: {what: a, licence: GPL-3}\n"
                                           "speech:\n  b-data: {what: b, licence: CC0-1.0}\n")
    sources = load_sources(tmp_path / "sources.yaml")
    assert list(sources) == ["z-music", "a-music", "b-data"]
    assert sources["a-music"] == Source("music", "a", "GPL-3")


def test_no_other_file_of_the_project_names_the_held_out_packages():
    """Their names stay in this guard alone: no code, config, doc or result points at them."""
    import subprocess
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    tracked = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    names = re.compile("|".join(re.escape(p.rstrip("-")) for p in HELD_OUT))
    found = []
    for name in tracked:
        path = root / name
        if path == Path(__file__) or path.suffix in (".safetensors", ".png") or not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        found += [f"{name}: {m.group(0)}" for m in names.finditer(text)]
    assert not found, found
