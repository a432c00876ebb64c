"""The code passes the ruff configuration in pyproject.toml (skipped where ruff is not installed)."""

import shutil
import subprocess
import sys

import pytest

from conftest import REPO


def ruff_command():
    try:
        import ruff  # noqa: F401 - the package ships the binary

        return [sys.executable, "-m", "ruff"]
    except ImportError:
        exe = shutil.which("ruff")
        return [exe] if exe else None


def test_ruff_passes():
    command = ruff_command()
    if command is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    proc = subprocess.run([*command, "check", "--no-cache", str(REPO)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
