"""The code stays lint-clean: `ruff check hpcffn tests benchmarks` finds nothing.

ruff's default rules (no [tool.ruff] section: its defaults are the project's) catch import
order, unused noqa comments, closures over loop variables and the like, which review misses.
The test extra pins ruff's minor version, since its default rules change between them.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _ruff() -> list[str] | None:
    if importlib.util.find_spec("ruff") is not None:
        return [sys.executable, "-m", "ruff"]
    path = shutil.which("ruff")
    return [path] if path else None


def test_ruff_finds_nothing():
    ruff = _ruff()
    if ruff is None:
        pytest.skip("ruff is not installed (it comes with the test extra: pip install -e '.[test]')")
    proc = subprocess.run([*ruff, "check", "--no-cache", "--output-format", "concise", "hpcffn", "tests", "benchmarks"],
                          cwd=REPO, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"ruff check hpcffn tests benchmarks:\n{proc.stdout}{proc.stderr}"
