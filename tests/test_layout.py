"""The package's shape: one installed `tierwise` package, no import circles, short functions."""

import ast
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("jobs", "ray_cluster", "pipelines")
MAX_FUNCTION_LINES = 60


def modules() -> dict[str, Path]:
    """Every module of the package by its dotted name (``tierwise.pipelines.plan.budget``)."""
    out = {}
    for top in FOLDERS:
        for path in (ROOT / top).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(("tierwise", *(parts[:-1] if parts[-1] == "__init__" else parts)))] = path
    return out


def imported(path: Path) -> set[str]:
    """Absolute module names ``path`` imports anywhere (function-level imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_pyproject_installs_every_folder_as_one_tierwise_package():
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {"tierwise"} | {".".join(("tierwise", *p.parent.relative_to(ROOT).parts))
                              for top in FOLDERS for p in (ROOT / top).rglob("__init__.py")}
    assert set(setup["packages"]) == folders
    assert setup["package-dir"] == {"tierwise": "tierwise", **{f"tierwise.{t}": t for t in FOLDERS}}
    for top in FOLDERS:  # a folder of modules without __init__.py would be left out of the wheel
        for d in {p.parent for p in (ROOT / top).rglob("*.py")}:
            assert (d / "__init__.py").exists(), d


def test_the_wheel_holds_only_the_tierwise_package(tmp_path):
    src = tmp_path / "src"  # a copy, so the build leaves nothing in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("tierwise", *FOLDERS):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(src)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("tierwise-*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"tierwise"}
    assert "tierwise/pipelines/plan/budget.py" in zipfile.ZipFile(wheel).namelist()


def test_imports_name_the_tierwise_package():
    bare = []
    for top in (*FOLDERS, "tests", "bench", "models"):
        for path in (ROOT / top).rglob("*.py"):
            bare += [f"{path.relative_to(ROOT)}: {m}" for m in imported(path) if m.split(".")[0] in FOLDERS]
    assert not bare, bare


def test_no_import_circles():
    mods = modules()
    graph = {m: {n for n in imported(p) if n in mods and n != m} for m, p in mods.items()}
    on_circle = sorted(m for m in graph if m in _reach(graph, m))  # modules that reach themselves
    assert not on_circle, on_circle


def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    stack, reached = list(graph[start]), set()
    while stack:
        m = stack.pop()
        if m not in reached:
            reached.add(m)
            stack += graph[m]
    return reached


def test_no_function_is_longer_than_60_lines():
    long = []
    for path in modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, long


def test_what_crosses_a_module_has_a_public_name():
    private = []
    for path in modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tierwise"):
                private += [f"{path.relative_to(ROOT)}: {node.module}.{a.name}" for a in node.names
                            if a.name.startswith("_")]
    assert not private, private
