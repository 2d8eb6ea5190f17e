"""The demo runs to completion on the shipped request files."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(180)


def test_demo_answers_everything_and_passes_the_checker(tmp_path):
    result = subprocess.run([sys.executable, "-m", "app.demo", "--runs_dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=170)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo PASSED: 48 of 48 requests answered" in result.stdout
    assert "consistency check: PASS" in result.stdout
    assert "every return and renewal applied" in result.stdout
