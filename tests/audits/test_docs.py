"""Audits of the docs: links resolve, the project stands on its own, README's commands are CI's."""
import re
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.audit

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "results" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set:
    return {slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", path.read_text(), re.M)}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc):
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        assert file.exists(), f"{doc.relative_to(ROOT)} links to {target}: no such file"
        assert ROOT in file.parents or file == ROOT, f"{doc.relative_to(ROOT)} links outside the repository: {target}"
        if anchor:
            assert file.suffix == ".md" and anchor in anchors(file), \
                f"{doc.relative_to(ROOT)} links to {target}: no heading with that anchor"


def test_the_docs_index_lists_every_page():
    index = (ROOT / "docs" / "README.md").read_text()
    for page in (ROOT / "docs").glob("*.md"):
        if page.name != "README.md":
            assert f"]({page.name})" in index, f"docs/README.md does not list {page.name}"


def test_the_project_points_to_no_file_outside_it_and_to_no_issue_number():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    outside = re.compile(r"\.\./shared|REFERENCE\.md|REFERENCE §|\bissue \d+|\bissues? #\d+", re.I)
    bad = []
    for name in tracked:
        path = ROOT / name
        if path.suffix in (".safetensors", ".png", ".npy", ".whl") or not path.is_file() or path == Path(__file__):
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        bad += [f"{name}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}" for m in outside.finditer(text)]
    assert not bad, "\n".join(bad)


def test_readme_starts_with_the_two_commands_and_ci_runs_the_second():
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index("## Two commands"):].split("```")[1]
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip() and not line.startswith("bash\n")]
    commands = [c for c in commands if c and c != "bash"]
    assert commands == ["bash scripts/main.sh", "bash scripts/test.sh"]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith(("#", "set ", "cd "))]
    assert ci == ["bash scripts/test.sh"]
    assert len(readme.splitlines()) <= 250
