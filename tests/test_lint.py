"""The code passes the project's lint configuration (``[tool.ruff]`` in pyproject.toml: pycodestyle,
pyflakes, import sorting, lines of at most 120 characters), as CI checks it."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing():
    command = [sys.executable, "-m", "ruff", "check", "--no-cache", "flowkit", "tests", "experiments", "docs"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
