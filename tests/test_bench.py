"""The learning benchmark's pipeline on one tiny run: real train.py under /usr/bin/time, read back."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT
from test_train_cli import QUICK


@pytest.mark.skipif(shutil.which("/usr/bin/time") is None, reason="GNU time is not installed")
def test_learning_bench_tabulates_a_real_run(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bench.learning", "--seeds", "3", "--out", str(tmp_path), "--",
                             *QUICK], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (row,) = json.loads((tmp_path / "learning.json").read_text())["rows"]
    assert row["agent"] == "dqn" and row["seed"] == 3 and row["steps"] == 600
    assert row["peak_mb"] > 100 and row["process_seconds"] > row["seconds"] > 0
    assert len(row["evaluations"]) == 2 and row["solved"] is False  # 600 steps do not solve CartPole
    assert "| dqn | 3 |" in result.stdout
    assert (tmp_path / "learning.png").read_bytes()[:4] == b"\x89PNG"
