"""The layering a newcomer relies on (docs/architecture.md): the import contracts in pyproject.toml
hold, and modules and functions stay a size one can read."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("harness", "distiller", "dashboards")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
REASON = "Long on purpose:"  # what a longer function's docstring says, with why


def test_the_import_contracts_hold():
    """distiller imports nothing from harness or dashboards; dashboards read records only; the
    harness and the distiller are layered; no package has an import cycle."""
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if lint is None:
        pytest.fail("import-linter is needed for this test: pip install -e '.[test]'")
    done = subprocess.run([lint, "--config", str(REPO / "pyproject.toml"), "--no-cache"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def _python_files(packages=PACKAGES):
    return [path for package in packages for path in sorted((REPO / package).rglob("*.py"))]


def test_no_module_is_past_400_lines():
    sizes = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in _python_files()}
    long = {name: lines for name, lines in sizes.items() if lines > MAX_MODULE_LINES}
    assert not long, f"split these modules by concern: {long}"


def test_no_function_is_past_80_lines_without_a_reason():
    long = []
    for path in _python_files(("harness", "distiller")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES and REASON not in (ast.get_docstring(node) or ""):
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, f"shorten these, or say why in the docstring ('{REASON} …'): {long}"
