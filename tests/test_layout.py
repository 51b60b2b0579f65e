"""The house's import rules: no cycles; hear_ssam imports no other folder; pretrain never
imports eval_suites or results; eval_suites imports only pretrain.debian and pretrain.seeds.
Imports are read from the source (module level and inside functions)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hear_ssam", "pretrain", "eval_suites", "results")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, name: str) -> set:
    """Project modules that `path` imports (resolving relative imports and `from pkg import mod`)."""
    is_pkg = path.name == "__init__.py"
    here = name if is_pkg else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found |= {t for t in targets if t.split(".")[0] in PACKAGES}
    return found


def graph() -> dict:
    modules = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    edges = {}
    for name, path in modules.items():
        edges[name] = {t for t in imports_of(path, name) if t in modules and t != name}
    return edges


def test_no_import_cycles():
    edges = graph()
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in sorted(edges[m]):
            if state.get(t) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"
    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_the_plugin_imports_no_other_folder_and_pretrain_not_eval_suites():
    """hear_ssam imports no other folder; pretrain neither eval_suites nor results; eval_suites
    only pretrain's stdlib-only modules and never results (results reads eval_suites' runs)."""
    for name, targets in graph().items():
        top = name.split(".")[0]
        others = {t.split(".")[0] for t in targets} - {top}
        if top == "hear_ssam":
            assert not others, f"{name} imports {others}"
        if top == "pretrain":
            assert "eval_suites" not in others and "results" not in others, f"{name} imports {others}"
        if top == "eval_suites":  # only pretrain's stdlib-only modules: the Debian fetcher and the seeds
            from_pretrain = {t for t in targets if t.split(".")[0] == "pretrain"}
            assert from_pretrain <= {"pretrain", "pretrain.debian", "pretrain.seeds"}, f"{name} imports {from_pretrain}"
            assert "results" not in others, f"{name} imports {others}: results reads eval_suites, not the other way"


def test_the_graph_sees_real_imports():
    edges = graph()
    assert "hear_ssam.ops.selective_scan" in edges["hear_ssam.modules.mamba"] | {
        t + ".selective_scan" for t in edges["hear_ssam.modules.mamba"]}
    assert "pretrain.debian" in edges["eval_suites.build"]
    assert "eval_suites.mini" in edges["eval_suites.mini_events"]


def test_the_wheel_ships_every_file_the_plugin_reads(tmp_path):
    """A non-editable `pip install` gets the bundled checkpoint and the C++ sources of the compiled
    kernels (built on first use: without them every user silently falls back to PyTorch's ops)."""
    import shutil
    import subprocess
    import sys
    import zipfile
    src = tmp_path / "src"  # a copy: setuptools leaves a build/ folder that a later build would reuse
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "hear_ssam", src / "hear_ssam", ignore=shutil.ignore_patterns("__pycache__"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          str(src), "-w", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    (wheel,) = tmp_path.glob("hear_ssam-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    needed = {p.relative_to(ROOT).as_posix() for pattern in ("hear_ssam/ops/csrc/*.cpp", "hear_ssam/assets/*")
              for p in ROOT.glob(pattern)}
    assert {"hear_ssam/ops/csrc/selective_scan_cpu.cpp", "hear_ssam/ops/csrc/causal_conv1d_cpu.cpp"} <= needed
    assert needed <= shipped, f"not in the wheel: {sorted(needed - shipped)}"
