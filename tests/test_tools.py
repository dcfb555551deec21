"""The project's own maintenance scripts in tools/: what they run, read from their output."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def readme_test_command():
    lines = (ROOT / "README.md").read_text().splitlines()
    marker = lines.index("<!-- test-command -->")
    assert lines[marker + 1].startswith("```")
    return lines[marker + 2]


def test_fresh_clone_check_runs_the_readmes_test_command_on_a_clone():
    done = subprocess.run(
        ["bash", "tools/fresh_clone_check.sh", "--dry-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == readme_test_command()
    assert ".[dev,docs,mnist1d]" in done.stdout  # the optional extras the tests exercise


def test_fresh_clone_check_refuses_an_unknown_flag():
    done = subprocess.run(
        ["bash", "tools/fresh_clone_check.sh", "--fast"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 2 and "usage" in done.stderr
