"""Run a command as a child process and read back its wall time and peak memory.

The peak memory is the kernel's own account of the finished child (``os.wait4``, what GNU ``time -v`` reports),
so no tool needs installing. The kernel counts into it the memory the child was started from, this process's own
peak up to the start (the child begins as a copy of it, until ``exec``): so the caller must be small beside the
runs it times, as the benches are (they import no TensorFlow), and a process that is not should time its runs
through one that is (as its test does).

A bench that is asked to stop (Ctrl-C, SIGTERM) passes the stop on to the runs it is waiting for, which save what
they have and exit as a stopped ``train.py`` does, and waits for them: no run is left behind, running on with
nobody to read it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common import on_stop

ROOT = Path(__file__).resolve().parent.parent
STOPPED = {130, -signal.SIGINT, -signal.SIGTERM}  # a command's exit status when Ctrl-C or SIGTERM stopped it

_running: dict[int, subprocess.Popen] = {}  # this process's children, by pid: read by a signal handler, so no lock
_told_to_stop: set[int] = set()


@dataclass
class TimedRun:
    returncode: int
    wall_seconds: float
    peak_mb: float
    stdout: str
    stderr: str

    @property
    def stopped(self) -> bool:
        """Whether the run was stopped (Ctrl-C, SIGTERM) rather than failed: it can go on from its checkpoint."""
        return self.returncode in STOPPED


def run_timed(*args: str) -> TimedRun:
    """``python ARGS`` from the project folder; its exit status, wall time, peak resident memory and output."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        start = time.perf_counter()
        child = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=stdout, stderr=stderr, text=True, env=env)
        _running[child.pid] = child
        try:
            status, usage = _wait(child)
        finally:
            del _running[child.pid]
            _told_to_stop.discard(child.pid)
        seconds = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
        stdout.seek(0)
        stderr.seek(0)
        return TimedRun(child.returncode, seconds, usage.ru_maxrss / 1024, stdout.read(), stderr.read())


def _wait(child: subprocess.Popen) -> tuple[int, os.struct_rusage]:
    """Wait for `child` to end; if this thread is interrupted first, stop the child and wait for it all the same."""
    try:
        return os.wait4(child.pid, 0)[1:]
    except KeyboardInterrupt:
        _stop(child.pid)  # where no handler of ours has (a plain Python Ctrl-C), tell it now
        os.wait4(child.pid, 0)
        raise


def _stop(pid: int) -> None:
    """Ask the child `pid` to stop, as Ctrl-C does, once (a Ctrl-C typed in a terminal reaches it as well, which
    does no harm: a stopped run goes on from its last checkpoint either way)."""
    if pid in _told_to_stop:
        return
    _told_to_stop.add(pid)
    with contextlib.suppress(ProcessLookupError):  # it ended in the meantime
        os.kill(pid, signal.SIGINT)


def stop_children() -> None:
    """Ask every run this process is waiting for to stop, as Ctrl-C does (called on Ctrl-C and SIGTERM)."""
    for pid in list(_running):
        _stop(pid)


on_stop(stop_children)


def machine() -> str:
    """``N cores, CPU model`` of this machine."""
    model = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = re.search(r"model name\s*:\s*(.+)", cpuinfo.read_text())
        model = found.group(1).strip() if found else model
    return f"{os.cpu_count()} cores, {model}"
