"""When writing fails: a full disk, a read-only or vanished folder, and two runs on one output stem.

The full disks are real: a small tmpfs mounted by the test (as root; skipped otherwise). A tmpfs with a few
inodes fills at an exact file: with the root folder and the run's lock, each further inode is one more file
the run can create, so a single-evaluation run fails at its weights, its checkpoint, its record, its table
or its picture in turn. A tmpfs with few bytes fills in the middle of a write, as a real disk does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, assert_one_line_error, run_program
from test_train_cli import QUICK

from common import WriteError, atomic_write_text, lock_path

# one evaluation, at the last step: the run writes weights, checkpoint, then .json, .csv and .png, in that order
ONE_EVALUATION = [*QUICK, "--total-steps", "300", "--eval-interval", "300", "--no-early-stop", "--no-tensorboard"]
WRITES = ["weights.h5", "checkpoint.h5", "json", "csv", "png"]


@contextlib.contextmanager
def small_filesystem(folder: Path, size: str = "16m", inodes: int | None = None):
    """A tmpfs of `size` bytes (and at most `inodes` files and folders, its root included) mounted at `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (f",nr_inodes={inodes}" if inodes else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small file system here (needs root): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def temporaries(folder: Path) -> list[str]:
    """Hidden files left in `folder`: temporary files of atomic writes (and locks)."""
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


def assert_failed_write(result: subprocess.CompletedProcess, path: Path, problem: str) -> str:
    """One line naming the file and the cause, no traceback, exit 1 (not a signal); returns that line."""
    assert_one_line_error(result, problem, str(path))
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "Exception ignored" not in result.stderr and "Segmentation" not in result.stderr, result.stderr
    return next(line for line in result.stderr.splitlines() if "error" in line)


@pytest.mark.parametrize(("failing", "buffer"), [(0, False), (1, False), (1, True), (2, False), (3, False), (4, False)],
                         ids=[*WRITES[:2], "checkpoint.h5-with-buffer", *WRITES[2:]])
def test_a_full_disk_at_each_write_is_one_line_and_keeps_what_was_written(tmp_path, failing, buffer):
    folder = tmp_path / "disk"
    with small_filesystem(folder, inodes=2 + failing):  # the root folder, the lock, then one file per write
        result = run_program("train.py", *ONE_EVALUATION, *(["--checkpoint-buffer"] if buffer else []),
                             "--out", str(folder / "run"))
        line = assert_failed_write(result, folder / f"run.{WRITES[failing]}", "no space left on the device")
        assert sorted(path.name for path in folder.iterdir()) == [f"run.{name}" for name in sorted(WRITES[:failing])]
        assert temporaries(folder) == []
        if failing > 0:  # the weights were written before: they load as one whole agent, and the line says where
            assert str(folder / "run.weights.h5") in line
            assert_loads(folder / "run.weights.h5")
        if failing == 0:
            assert "saved nothing" in line


def assert_loads(weights: Path) -> None:
    """The weights file loads as one agent (in a fresh process, as a user's visualize.py would)."""
    check = subprocess.run([sys.executable, "-c", "import sys; from agent_files import load_agent; "
                            "agent, d = load_agent(sys.argv[1]); print(d['env_id'], agent.num_actions)", str(weights)],
                           cwd=ROOT, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert check.returncode == 0 and check.stdout.split() == ["CartPole-v1", "2"], check.stderr


def test_a_disk_that_fills_in_the_middle_of_a_checkpoint_loses_nothing_saved(tmp_path):
    # the issue's own run: the checkpoint, with its growing replay buffer, outgrows the disk (it used to crash
    # with a segmentation fault in h5py's finaliser)
    folder = tmp_path / "disk"
    with small_filesystem(folder, size="400k"):
        result = run_program("train.py", "--total-steps", "3000", "--eval-interval", "500", "--eval-episodes", "2",
                             "--no-early-stop", "--checkpoint-buffer", "--buffer-size", "5000", "--no-progress",
                             "--no-tensorboard", "--out", str(folder / "run"))
        line = assert_failed_write(result, folder / "run.checkpoint.h5", "no space left on the device")
        assert "best weights so far" in line and f"--resume {folder / 'run'}" in line
        assert temporaries(folder) == []
        assert_loads(folder / "run.weights.h5")
        # the last whole checkpoint continues the run once there is room again
        state = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from checkpoints import "
                                "read_checkpoint_state; print(read_checkpoint_state(Path(sys.argv[1]))['result']"
                                "['steps'])", str(folder / "run.checkpoint.h5")], cwd=ROOT, capture_output=True,
                               text=True)
        assert int(state.stdout) in range(500, 3000, 500), state.stderr


def test_a_full_disk_leaves_an_earlier_agent_at_the_stem_whole(tmp_path):
    folder = tmp_path / "disk"
    with small_filesystem(folder, inodes=8):
        assert run_program("train.py", *ONE_EVALUATION, "--out", str(folder / "run")).returncode == 0
        before = {path.name: path.read_bytes() for path in folder.iterdir()}
        # the root, five files and the new run's lock use every inode: the new run's first write fails
        (folder / "filler").write_text("")
        result = run_program("train.py", *ONE_EVALUATION, "--seed", "1", "--out", str(folder / "run"))
        assert_failed_write(result, folder / "run.weights.h5", "no space left on the device")
        assert {path.name: path.read_bytes() for path in folder.iterdir() if path.name != "filler"} == before
        assert_loads(folder / "run.weights.h5")


def start_training(stem: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args, "--out", str(stem)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def wait_for(path: Path, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert path.exists(), process.communicate()[1] if process.poll() is not None else f"no {path} in time"


LONG_RUN = [*QUICK[2:], "--total-steps", "1000000", "--eval-interval", "300", "--no-early-stop", "--no-tensorboard"]


@pytest.mark.parametrize("damage", ["read-only", "removed"])
def test_a_folder_made_read_only_or_removed_while_training_is_one_line(tmp_path, damage):
    folder = tmp_path / "disk"
    with small_filesystem(folder):
        out = folder / "sub"
        process = start_training(out / "run", *LONG_RUN)
        wait_for(out / "run.checkpoint.h5", process)
        if damage == "read-only":
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        else:
            subprocess.run(["rm", "-rf", str(out)], check=True)
        _, stderr = process.communicate(timeout=120)
        result = subprocess.CompletedProcess(process.args, process.returncode, "", stderr)
        problem = "the file system is read-only" if damage == "read-only" else "its folder no longer exists"
        line = assert_failed_write(result, out / "run", problem)
        if damage == "read-only":
            assert temporaries(out) == [".run.lock"]  # a read-only folder keeps even the lock file, unlocked
            assert_loads(out / "run.weights.h5")
            assert f"are in {out / 'run.weights.h5'}" in line


def test_tensorboard_logs_that_cannot_be_written_are_said_once_and_training_goes_on(tmp_path):
    folder = tmp_path / "logs"
    with small_filesystem(folder, size="4k"):  # room for the event file's first rows, not for the run's
        result = run_program("train.py", *QUICK, "--total-steps", "1500", "--eval-interval", "300",
                             "--no-early-stop", "--tensorboard", str(folder), "--out", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "TensorBoard" in line]
    assert len(warnings) == 1, result.stderr
    assert "no space left on the device" in warnings[0] and "goes on" in warnings[0]
    assert "Traceback" not in result.stderr
    assert (tmp_path / "run.json").is_file() and (tmp_path / "run.png").is_file()


def test_a_video_that_cannot_be_written_is_one_line_and_leaves_no_temporary_folder(tmp_path):
    folder = tmp_path / "disk"
    with small_filesystem(folder, size="8k"):  # room for the recording folder, not for the video in it
        result = run_program("visualize.py", "--weights", str(ROOT / "models" / "CartPole-v1.weights.h5"),
                             "--episodes", "1", "--out", str(folder / "agent.mp4"))
        assert_failed_write(result, folder / "agent.mp4", "no space left on the device")
        assert list(folder.iterdir()) == []


def test_atomic_writes_on_a_full_disk_keep_the_old_file_and_leave_no_temporary(tmp_path):
    # what the tune.py preset, its pictures and every bench result are written with
    folder = tmp_path / "disk"
    with small_filesystem(folder, size="8k"):
        target = folder / "preset.toml"
        atomic_write_text(target, "old\n")
        with pytest.raises(WriteError, match=f"no space left on the device for {target}"):
            atomic_write_text(target, "new\n" * 10_000)
        assert target.read_text() == "old\n"
        assert temporaries(folder) == []


def test_a_second_run_on_the_same_output_is_refused_and_a_killed_run_leaves_no_lock(tmp_path):
    stem = tmp_path / "run"
    first = start_training(stem, *QUICK, "--total-steps", "3000", "--eval-interval", "300", "--no-early-stop")
    wait_for(lock_path(stem), first)
    second = run_program("train.py", *QUICK, "--out", str(stem))
    assert_one_line_error(second, f"train.py (pid {first.pid}", f"writing to {stem}", "--out")
    assert second.returncode == 2
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert not lock_path(stem).exists()  # a run that ends removes its lock

    killed = start_training(stem, *LONG_RUN)
    wait_for(lock_path(stem), killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    assert lock_path(stem).exists()  # left behind, but no longer held by anyone
    third = run_program("train.py", *ONE_EVALUATION, "--out", str(stem))
    assert third.returncode == 0, third.stderr
