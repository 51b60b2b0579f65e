"""Which Debian packages feed what: pretraining, the mini suite, and the held-out reserve."""
from eval_suites import mini
from pretrain.corpus import SOURCES
from pretrain.debian import EVAL_PACKAGES

# ../shared/REFERENCE.md §6: reserved for held-out evaluation, never used for pretraining,
# the mini suite or tests. (Prefixes cover whole package families.)
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
