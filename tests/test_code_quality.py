from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, check=False
    )


def test_package_type_checks_strictly() -> None:
    """mypy --strict over pipeline/ and flows/ (settings in pyproject.toml)."""
    result = run_tool("mypy", "--no-error-summary", "pipeline", "flows")
    assert result.returncode == 0, result.stdout + result.stderr


def test_lint_is_clean() -> None:
    result = run_tool("ruff", "check", "pipeline", "flows", "tests", "benchmarks")
    assert result.returncode == 0, result.stdout + result.stderr
