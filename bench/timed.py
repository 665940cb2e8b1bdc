"""Run a command under ``/usr/bin/time -v`` and read back its wall time and peak memory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class TimedRun:
    returncode: int
    wall_seconds: float
    peak_mb: float
    stdout: str
    stderr: str


def run_timed(*args: str) -> TimedRun:
    """``python ARGS`` from the project folder, measured by GNU time (peak resident memory, wall clock)."""
    command = ["/usr/bin/time", "-v", sys.executable, *args]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)", result.stderr)
    seconds = 0.0
    if wall:
        hours, minutes, secs = wall.groups()
        seconds = int(hours or 0) * 3600 + int(minutes) * 60 + float(secs)
    return TimedRun(result.returncode, seconds, int(peak.group(1)) / 1024 if peak else float("nan"), result.stdout,
                    result.stderr)


def machine() -> str:
    """``N cores, CPU model`` of this machine."""
    model = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = re.search(r"model name\s*:\s*(.+)", cpuinfo.read_text())
        model = found.group(1).strip() if found else model
    return f"{os.cpu_count()} cores, {model}"
