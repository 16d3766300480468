"""Zero warnings: scripts/lint (ruff and mypy --strict, with the flags it documents) passes."""

from __future__ import annotations

import subprocess

from conftest import REPO


def test_lint_is_clean() -> None:
    proc = subprocess.run([str(REPO / "scripts" / "lint")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"scripts/lint found problems:\n{proc.stdout}{proc.stderr}"
