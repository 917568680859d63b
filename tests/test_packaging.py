"""The clone never shadows what it depends on, and imports from wherever a user starts Python.

Python puts the directory of the script (or the current one, for ``-m`` and ``-c``) first on
``sys.path``, and pytest puts each test folder there. A module or regular package in such a folder
is then imported in place of an installed distribution of the same name: the top-level ``kernels/``
did that to the PyPI ``kernels`` package that transformers >= 5.25 imports, and every test failed
at collection. A namespace folder (no ``__init__.py``) is harmless: any regular package wins over it.
"""
from __future__ import annotations

import importlib.machinery
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Folders Python or pytest may put first on sys.path: the clone's root (python -m / -c from it),
# prunekit/ (python prunekit/cli.py), tests/ and tests/kernels/ (pytest's rootdir-relative imports).
ON_PATH = [REPO, REPO / "prunekit", REPO / "tests", REPO / "tests" / "kernels"]


def importable_names() -> set[str]:
    """Every top-level name another installed distribution provides, and the standard library's
    (less those a path entry cannot shadow: built in or frozen into the interpreter)."""
    names = {n for n, dists in importlib.metadata.packages_distributions().items() if set(dists) - {"prunekit"}}
    names |= {n for n in sys.stdlib_module_names
              if n not in sys.builtin_module_names and importlib.machinery.FrozenImporter.find_spec(n) is None}
    return {n for n in names if n.isidentifier()}


def shadows(folder: Path, names: set[str]) -> dict[str, str]:
    """{name: what in ``folder`` would be imported for it} when ``folder`` is first on sys.path."""
    found = {}
    for name in sorted(names):
        spec = importlib.machinery.PathFinder.find_spec(name, [str(folder)])
        if spec is not None and spec.loader is not None:  # a module or regular package, not a namespace
            found[name] = spec.origin
    return found


def test_the_check_finds_a_shadowing_folder(tmp_path):
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "__init__.py").write_text("")
    (tmp_path / "json.py").write_text("")
    (tmp_path / "namespace_only").mkdir()
    got = shadows(tmp_path, {"kernels", "json", "namespace_only", "torch"})
    assert set(got) == {"kernels", "json"}, got


@pytest.mark.parametrize("folder", ON_PATH, ids=lambda p: str(p.relative_to(REPO)) or ".")
def test_no_folder_of_the_clone_shadows_an_installed_distribution(folder):
    names = importable_names()
    assert {"torch", "transformers", "onnxruntime", "triton", "json"} <= names  # the check sees them
    assert not shadows(folder, names), (
        f"{shadows(folder, names)}: with {folder} first on sys.path these are imported instead of the installed "
        "distribution (or standard module) of that name; rename them or move them below a folder without __init__.py")


def test_kernels_folder_is_not_a_package():
    assert not (REPO / "kernels" / "__init__.py").exists()
    assert (REPO / "kernels" / "prunekit_kernels" / "__init__.py").exists()


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


@pytest.mark.slow  # a child Python that imports torch and transformers: ~10 s each
@pytest.mark.parametrize("where", ["root", "tests", "outside"])
def test_imports_and_cli_from_anywhere(where, tmp_path):
    cwd = {"root": REPO, "tests": REPO / "tests", "outside": tmp_path}[where]
    # transformers.modeling_utils is what imported the PyPI `kernels` package (5.25) and hit the clone's.
    # then `python -m prunekit --help`, in the same process (-c and -m both put the cwd first on sys.path)
    code = ("import sys, runpy, prunekit, prunekit_kernels, transformers.modeling_utils; "
            "print(prunekit.__file__); print(prunekit_kernels.__file__); sys.argv = ['prunekit', '--help']; "
            "runpy.run_module('prunekit', run_name='__main__', alter_sys=True)")
    proc = _run(["-c", code], cwd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    prunekit_file, kernels_file, *help_text = proc.stdout.splitlines()
    assert Path(prunekit_file).resolve() == REPO / "prunekit" / "__init__.py"
    assert Path(kernels_file).resolve() == REPO / "kernels" / "prunekit_kernels" / "__init__.py"
    assert "search" in "\n".join(help_text) and "Commands:" in "\n".join(help_text), proc.stdout[-2000:]


@pytest.mark.slow  # a child pytest that imports torch and transformers: ~10 s each
@pytest.mark.parametrize("where", ["tests", "outside"])
def test_pytest_collects_from_anywhere(where, tmp_path):
    """The suite from tests/ or from outside the clone (the root is how `make test` runs it)."""
    cwd = {"tests": REPO / "tests", "outside": tmp_path}[where]
    targets = [REPO / "tests" / "test_flops.py", REPO / "tests" / "kernels" / "test_padding.py"]  # prunekit, prunekit_kernels
    proc = _run(["-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *map(str, targets)], cwd)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "test_flops.py::" in out and "test_padding.py::" in out, out[-3000:]
