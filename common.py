"""What `train.py`, `visualize.py` and `bench/` share: greedy evaluation, atomic file writes, giving freed memory
back to the system, and turning a user's mistake into one clear line on stderr. No TensorFlow is imported here."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import fcntl
import functools
import io
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np

if TYPE_CHECKING:
    from dqn_agent import DeepQLearning


class UserError(Exception):
    """A problem with what the user asked for, reported as one line without a traceback."""


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null for a while; Python exceptions still propagate as usual."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_agent_class() -> type[DeepQLearning]:
    """Import TensorFlow and the agent, without TensorFlow's C++ start-up lines on stderr.

    TensorFlow prints them ("oneDNN custom operations are on", "failed call to cuInit" on a
    machine without a GPU) before any log level applies; they are harmless but look like errors.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with native_stderr_silenced():
        import tensorflow as tf

        tf.config.list_physical_devices()  # device discovery is what prints the CUDA line
        from dqn_agent import DeepQLearning
    return DeepQLearning


def ensure_writable_dir(directory: Path, what: str) -> None:
    """Create `directory` if needed and check that a file can be written in it.

    :param what: the flag the directory came from, for the error message.
    :raises UserError: if it cannot be written.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        raise UserError(f"cannot write to {directory}/ ({error.strerror or error}); pass a writable {what}") from error


MAX_SEED = 2**31 - 1  # evaluation seeds add offsets to a run's seed; NumPy and Gymnasium take seeds below 2**32


def seed_argument(text: str) -> int:
    """argparse type of a seed: an integer from 0 to `MAX_SEED`, else argparse's one-line error."""
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a seed is a whole number, got {text!r}") from None
    if not 0 <= seed <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"a seed is from 0 to {MAX_SEED}, got {seed}")
    return seed


# What an OSError of a write means, in words a user acts on.
WRITE_PROBLEMS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exceeded",
                  errno.EROFS: "the file system is read-only", errno.ENOENT: "its folder no longer exists",
                  errno.ENOTDIR: "its folder no longer exists", errno.EACCES: "permission denied",
                  errno.EPERM: "permission denied", errno.EIO: "an input/output error of the device"}


class WriteError(UserError):
    """A file that could not be written, said in one line naming the file and the cause; whatever was at the
    path before is still there, whole.

    :param path: the file that was being written.
    :param error: the operating system's error.
    """

    def __init__(self, path: Path, error: OSError) -> None:
        super().__init__(f"{write_problem(error)} for {path}")
        self.path = path


def write_problem(error: BaseException) -> str:
    """What went wrong in a failed write, in words: from its errno, or from the system's message inside the text
    of a writer that wraps it in its own (moviepy's ffmpeg, TensorFlow's event writer)."""
    code = getattr(error, "errno", None)
    if code is None:
        code = next((known for known in WRITE_PROBLEMS if os.strerror(known) in str(error)), None)
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return WRITE_PROBLEMS.get(code) or text.splitlines()[0]


def atomic_write(path: Path, content: bytes | memoryview) -> None:
    """Write `content` to a temporary file beside `path`, then rename it over `path` in one step.

    The content is made in memory first (HDF5 files in an in-memory file, pictures in a buffer), so the
    only writes to the disk are these plain ones: a full disk, a read-only or vanished folder is one
    `WriteError`, the old `path` stays whole, and the temporary file is removed. A kill -9 mid-write can
    leave the temporary file (``.NAME.XXXXXXXX`` plus NAME's suffix); `remove_leftover_temporaries` deletes it.

    :raises WriteError: if any step fails.
    """
    temporary = None
    try:
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                                 suffix="".join(path.suffixes))
        with os.fdopen(descriptor, "wb") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())  # some file systems report a full disk only when the data reaches it
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes the file private; give it a normal file's mode
        os.replace(temporary, path)
    except OSError as error:
        raise WriteError(path, error) from error
    finally:
        if temporary is not None and os.path.exists(temporary):
            with contextlib.suppress(OSError):
                os.remove(temporary)


def figure_bytes(figure: Any, dpi: int) -> bytes:
    """A matplotlib figure as PNG bytes, made in memory (for `atomic_write`)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def stem_file(stem: Path, suffix: str) -> Path:
    """``NAME`` + `suffix` beside the output stem NAME (``.json``, ``.weights.h5``...): appended, never by
    `Path.with_suffix`, which takes a dot inside NAME (a variant such as ``lr1.25e-4``) for a suffix to replace."""
    return stem.with_name(stem.name + suffix)


def lock_path(stem: Path) -> Path:
    """``.NAME.lock`` beside the output stem NAME: the lock a run holds while it writes there."""
    return stem.with_name(f".{stem.name}.lock")


@contextlib.contextmanager
def output_lock(stem: Path, program: str) -> Iterator[None]:
    """Hold the lock of an output stem while a run writes its files, so that a second run on the same stem
    is refused instead of interleaving its files with the first's.

    The lock is an ``flock`` on `lock_path`, which the operating system drops however the holder ends
    (kill -9 included), so a killed run leaves no lock that blocks the next. The file says who holds it.

    :param program: the command, for the message a second run gets.
    :raises UserError: if another process holds the lock.
    :raises WriteError: if the lock file cannot be made.
    """
    path = lock_path(stem)
    while True:
        try:
            # held read-only, so that the folder can still be made read-only under a running run
            descriptor = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)
        except OSError as error:
            raise WriteError(path, error) from error
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 500, 0).decode(errors="replace").strip() or "a process"
            os.close(descriptor)
            raise UserError(f"{holder} is writing to {stem} now; wait for it to end, or give another --out") from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(descriptor).st_ino:
                break
        os.close(descriptor)  # its holder removed the file as it ended: lock the one that is there now
    try:
        with contextlib.suppress(OSError), open(path, "w") as holder:  # who holds it, for the message; closing this
            holder.write(f"{program} (pid {os.getpid()}, since {time.strftime('%H:%M:%S')})")  # keeps the flock
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(descriptor)


def remove_leftover_temporaries(paths: list[Path]) -> int:
    """Delete the temporary files that `atomic_write` left beside `paths` when a kill -9 stopped it mid-write.

    Only names `atomic_write` makes for these very paths are touched (``.NAME.XXXXXXXX`` plus NAME's suffix),
    so the files of other runs in the same folder are left alone.

    :return: how many files were deleted.
    """
    removed = 0
    for path in paths:
        pattern = re.compile(rf"\.{re.escape(path.name)}\.\w{{8}}{re.escape(''.join(path.suffixes))}")
        for leftover in path.parent.iterdir() if path.parent.is_dir() else ():
            if pattern.fullmatch(leftover.name):
                leftover.unlink(missing_ok=True)
                removed += 1
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` atomically."""
    atomic_write(path, text.encode())


def evaluate_policy(envs: Sequence[gym.Env], policy: Callable[[np.ndarray], np.ndarray], episodes: int,
                    seed: int) -> np.ndarray:
    """Play `episodes` episodes with `policy` (no exploration) and return their undiscounted returns.

    The episodes are played side by side, one on each of `envs`, and the policy gets the states of all those under
    way as one batch: one forward pass of a network a step of them all, where playing them one after another makes
    one a step of each, which is most of an evaluation's time on Atari's CNN. A policy without random draws of its
    own scores each episode as it would alone: an episode's course depends on its seed and its actions only.
    (Gymnasium's vector environments do not fit: their autoreset starts the next episode without its seed, and
    with autoreset off they step every environment until the last episode ends.)

    :param envs: environments used for evaluation only, so that training episodes are not cut; a free one takes the
        next episode not yet begun.
    :param policy: the actions in a batch of states, shape (B,).
    :param episodes: number of episodes.
    :param seed: the first episode resets with this seed, the next with seed + 1, and so on, so that
        every evaluation of a run, and every agent evaluated with the same seed, plays the same starts.
    """
    returns = np.zeros(episodes)
    unplayed = iter(range(episodes))
    playing: dict[int, tuple[gym.Env, np.ndarray]] = {}  # episode: its environment and state

    def begin(env: gym.Env) -> None:
        episode = next(unplayed, None)
        if episode is not None:
            playing[episode] = (env, env.reset(seed=seed + episode)[0])

    for env in envs:
        begin(env)
    while playing:
        actions = policy(np.stack([state for _, state in playing.values()]))
        for (episode, (env, _)), action in zip(list(playing.items()), actions, strict=True):
            state, reward, terminated, truncated, _ = env.step(int(action))
            returns[episode] += float(reward)
            if terminated or truncated:
                del playing[episode]
                begin(env)
            else:
                playing[episode] = (env, state)
    return returns


def release_free_memory() -> None:
    """Give the C heap's free pages back to the system: glibc's ``malloc_trim(0)``; nothing where the C library has
    no such call (macOS, musl).

    A training run frees TensorFlow's buffers of a few hundred kilobytes at every phase while the replay memory
    keeps allocating small observations that stay for the buffer's whole length; glibc reuses the freed space
    only in part and gives none of it back, so a run's resident memory can grow by tens of kilobytes a step until
    the buffer is full (DQN on MinAtar/Seaquest-v1 peaked at 3.4 GB, of which the heap's live allocations were
    under 0.7 GB). ``train.py`` calls this every `train.RELEASE_MEMORY_INTERVAL` steps; it takes about 20 ms.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, looked up once in the C library this process runs on (None if it has none)."""
    return getattr(ctypes.CDLL(None), "malloc_trim", None)


def summarize(returns: np.ndarray) -> str:
    """``mean ± std over N episodes`` of a set of returns."""
    return f"{np.mean(returns):.1f} ± {np.std(returns):.1f} over {len(returns)} episodes"


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, except the None and False of optional values and switches."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage block), exit status 2, and whose help shows
    the defaults."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(formatter_class=_DefaultsHelpFormatter, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


_stop_signals: list[int] = []  # Ctrl-C and SIGTERM received by this command, kept even when Python lost them
_stop_callbacks: list[Callable[[], None]] = []


def on_stop(callback: Callable[[], None]) -> None:
    """Call `callback` (in the signal handler: quick, no locks) when Ctrl-C or SIGTERM asks a `run_cli` command to
    stop, before its KeyboardInterrupt is raised: a bench passes the stop on to the runs it waits for in threads."""
    _stop_callbacks.append(callback)


def _stop_as_ctrl_c(signum: int, frame: object) -> None:
    _stop_signals.append(signum)
    for callback in _stop_callbacks:
        callback()
    raise KeyboardInterrupt


def _hide_lost_stops(unraisable: Any) -> None:
    """Python's hook for exceptions it cannot raise, quiet about a KeyboardInterrupt that `raise_if_stopped`
    raises again in its place: a user who pressed Ctrl-C sees no "Exception ignored" traceback."""
    if not (isinstance(unraisable.exc_value, KeyboardInterrupt) and _stop_signals):
        sys.__unraisablehook__(unraisable)


def raise_if_stopped() -> None:
    """Raise KeyboardInterrupt if Ctrl-C or SIGTERM has asked this command to stop.

    Python raises a signal's KeyboardInterrupt wherever the main thread happens to be, and when that is a
    finalizer (a ``__del__``, a weak reference's callback run by the garbage collector) it prints "Exception
    ignored in" and carries on: seen in CI, where tune.py went on running trials after Ctrl-C. Loops that run
    for long call this once per iteration, so that no stop is lost.
    """
    if _stop_signals:
        raise KeyboardInterrupt


def run_cli(main: Callable[[list[str] | None], int]) -> None:
    """Run a command's `main` and exit with its status; a UserError becomes one line on stderr, exit 2.

    SIGTERM (``kill``, ``docker stop``, a batch scheduler's time limit) stops it as Ctrl-C does: what was
    written so far is kept, and train.py says how to resume. Both are remembered for `raise_if_stopped`.
    """
    program = Path(sys.argv[0]).name
    _stop_signals.clear()
    for name in (signal.SIGINT, signal.SIGTERM):
        signal.signal(name, _stop_as_ctrl_c)
    sys.unraisablehook = _hide_lost_stops
    try:
        status = main(None)
    except WriteError as error:  # not the user's input: the machine's; exit 1 as any failed run
        print(f"{program}: error: {error}", file=sys.stderr)
        status = 1
    except UserError as error:
        print(f"{program}: error: {error}", file=sys.stderr)
        status = 2
    except KeyboardInterrupt:
        print(f"{program}: interrupted", file=sys.stderr)
        status = 130
    except OSError as error:  # any other failure of the operating system; files written so far are whole
        print(f"{program}: error: {error.strerror or error}" + (f" for {error.filename}" if error.filename else ""),
              file=sys.stderr)
        status = 1
    sys.exit(status)
