"""A grid of independent training runs (cells), handed out by an Optuna study to any number of workers.

Used by ``bench.ablation`` and ``bench.atari100k``. The study's `GridSampler` holds the cells, in a storage that
every worker reaches (an SQLite file for one machine, PostgreSQL for many, as ``tune.py``'s workers share a
study): a worker asks the study for a cell nobody has taken, trains it, and tells the study its score. A worker
that dies stops its heartbeat; its cell is then failed and put back in the grid, and whoever takes it next
continues the run from its checkpoint. A command stopped by Ctrl-C or SIGTERM stops its runs (each keeps its
checkpoint) and puts their cells back the same way; a cell whose run failed is tried again by the next command.
A cell whose run finished before is not trained again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bench.timed import run_timed
from checkpoints import unfinished_run
from common import atomic_write_text, stem_file
from tune import open_study

if TYPE_CHECKING:
    import optuna


def open_grid(storage: str, prefix: str, cells: list[str], *identity: str) -> optuna.Study:
    """The study of this grid in `storage`, created or joined: one study per grid (and per `identity`, the
    settings every cell shares), since Optuna's grid cannot change inside a study."""
    import optuna

    name = f"{prefix}-" + hashlib.sha1("\n".join([*cells, *identity]).encode()).hexdigest()[:10]
    return open_study(storage, name, "maximize", "none", optuna.samplers.GridSampler({"cell": cells}, seed=0),
                      retry_failed=True)


def work(study: optuna.Study, cells: list[str], run_cell: Callable[[str], dict], jobs: int) -> list[str]:
    """Take cells from the study and run them, `jobs` at a time, until none is left untaken.

    :param run_cell: trains one cell (or keeps its finished run) and returns its result, whose ``final`` is the
        cell's score; a RuntimeError fails the cell, with its message kept (the next call tries it again), and a
        KeyboardInterrupt (a stop) puts it back in the grid and is raised.
    :return: the messages of the cells that failed and are still unfinished.
    """
    import optuna

    taking = threading.Lock()  # this process's workers take a trial, then claim its cell, one at a time
    ask = study.ask

    def ask_alone() -> optuna.Trial:
        # on SQLite, which has no row lock, two workers asking at once can both be handed one waiting trial
        # (optuna#4002); PostgreSQL locks the row. Two processes on one SQLite file still can: then the second
        # run is refused by train.py's lock on its output
        with taking:
            return ask()

    study.ask = ask_alone

    def objective(trial: optuna.Trial) -> float:
        with taking:
            cell = trial.suggest_categorical("cell", cells)
            if cell_taken(study, trial, cell):  # the grid's last cells are handed to every worker that asks
                raise optuna.TrialPruned(f"{cell} is taken")
            trial.set_user_attr("claimed", trial.number)  # a retried trial copies its attributes, not this claim
        try:
            result = run_cell(cell)
        except KeyboardInterrupt:  # stopped, not failed: the cell goes back in the grid, to go on from its checkpoint
            put_back(study, next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number))
            raise
        except RuntimeError as error:
            trial.set_user_attr("error", str(error))
            raise
        for key, value in result.items():
            trial.set_user_attr(key, value)
        print(f"{cell.replace('|', ' ')}: final {result['final']:.2f}", file=sys.stderr, flush=True)
        return result["final"]

    for trial in stopped_or_failed(study, cells):  # tried again, as a cell whose worker died is
        put_back(study, trial)
    left = unfinished_cells(study, cells)
    while left:
        study.optimize(objective, n_jobs=jobs, catch=(RuntimeError,))
        # the grid stops the study once it has handed out every cell, but a cell whose worker died (Optuna puts
        # it back as it finds the worker's heartbeat stopped) may still be waiting
        waiting = study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.WAITING])
        left = unfinished_cells(study, cells) and waiting
    unfinished = unfinished_cells(study, cells)
    errors = {trial.params["cell"]: trial.user_attrs["error"] for trial in study.get_trials(deepcopy=False)
              if "error" in trial.user_attrs and trial.params.get("cell") in unfinished}  # each cell's latest
    return list(errors.values())


def cell_taken(study: optuna.Study, trial: optuna.Trial, cell: str) -> bool:
    """Whether another trial has `cell`: one that finished it, or one running it that claimed it (passed this check)
    or was created before `trial`. Of two workers handed the same cell at once, the one that claims it first keeps
    it, and of two that check before either claims, the older: so exactly one of them runs it. A claim names the
    trial that made it: Optuna's retry of a dead worker's trial copies its attributes, and the copy has not
    claimed the cell (else the copy and the next worker handed the cell would each yield to the other)."""
    import optuna

    running, complete = optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.COMPLETE
    def holds(other: optuna.trial.FrozenTrial) -> bool:
        claimed = other.user_attrs.get("claimed") == other.number
        return other.state == complete or (other.state == running and (other.number < trial.number or claimed))

    return any(other.params.get("cell") == cell and other.number != trial.number and holds(other)
               for other in study.get_trials(deepcopy=False))


def train_cell(stem: Path, train_args: list[str], total_steps: int, train: bool = True) -> tuple[dict, dict]:
    """Run ``train.py`` for one cell at `stem`, timed, continue it from its checkpoint if its last
    worker died, or keep its finished run; return its record (``STEM.json``) and timing (``STEM.timed.json``).

    :param train_args: train.py's flags for a new run (its environment, seed and agent); `stem`, the budget, no
        progress bar and the replay buffer in each checkpoint (an exact continuation) are added here.
    :param train: False to keep a finished run only (see `timed_cell`).
    :raises RuntimeError: if train.py fails, with its last line, or if the cell's finished run had another budget.
    :raises FileNotFoundError: if `train` is False and the cell has no finished run of `total_steps` to keep.
    """
    common = ["--total-steps", str(total_steps), "--no-progress"]
    if (progress := unfinished_run(stem)) is not None:  # its worker died or was stopped: it goes on from its checkpoint
        return timed_cell(stem, ["train.py", "--resume", str(stem), *common], total_steps, finished=False,
                          train=train, earlier_seconds=progress["seconds"])
    return timed_cell(stem, ["train.py", "--out", str(stem), "--checkpoint-buffer", *common, *train_args], total_steps,
                      train=train)


def check_budget(stem: Path, total_steps: int, train: bool = True) -> None:
    """Refuse a cell at `stem` whose finished run (``STEM.json``) had another budget than the grid's `total_steps`:
    it is a run of another grid, so neither this grid's result nor a run to overwrite.

    :raises RuntimeError: if `train`, saying how to go on.
    :raises FileNotFoundError: if not `train` (a report leaves the cell out).
    """
    record_path = stem_file(stem, ".json")
    if record_path.is_file() and (budget := json.loads(record_path.read_text())["run"]["total_steps"]) != total_steps:
        if not train:
            raise FileNotFoundError(f"{stem}: its finished run had {budget} steps, not {total_steps}")
        raise RuntimeError(f"{record_path}: a finished run of {budget} steps, not {total_steps}: move it away to "
                           f"run this cell, or pass --total-steps {budget}")


def timed_cell(stem: Path, command: list[str], total_steps: int, finished: bool = True, train: bool = True,
               earlier_seconds: float = 0.0) -> tuple[dict, dict]:
    """Run `command` (``python`` arguments), timed, unless the cell at `stem` has its record
    (``STEM.json``) and timing (``STEM.timed.json``) and `finished` allows keeping them; return both.

    :param total_steps: the grid's budget: a finished run of another is refused (`check_budget`).
    :param train: False to keep a finished run only, and run nothing.
    :param earlier_seconds: a resumed run's seconds up to its checkpoint, added to this command's: the timing is
        the whole run's (its peak memory, this command's).
    :raises FileNotFoundError: if `train` is False and the cell has no finished run of `total_steps` to keep.
    :raises RuntimeError: if the command fails, with its last line, or if the cell's finished run had another budget.
    :raises KeyboardInterrupt: if the command was stopped (Ctrl-C, SIGTERM).
    """
    check_budget(stem, total_steps, train)
    record_path = stem_file(stem, ".json")
    timing_path = stem_file(stem, ".timed.json")
    if not (finished and record_path.is_file() and timing_path.is_file()):
        if not train:
            raise FileNotFoundError(f"{stem}: no finished run")
        timed = run_timed(*command)
        if timed.stopped:  # Ctrl-C or SIGTERM, passed on by this bench or sent to the run: it has its checkpoint
            raise KeyboardInterrupt
        if timed.returncode != 0:
            said = timed.stderr.strip().splitlines() or ["no message"]
            program = command[1] if command[0] == "-m" else command[0]
            raise RuntimeError(f"{stem.name}: {program} failed: {said[-1]}")
        atomic_write_text(timing_path, json.dumps({"process_seconds": round(earlier_seconds + timed.wall_seconds, 1),
                                                   "peak_mb": round(timed.peak_mb)}) + "\n")
    return json.loads(record_path.read_text()), json.loads(timing_path.read_text())


def unfinished_cells(study: optuna.Study, cells: list[str]) -> set[str]:
    """The cells with no finished trial."""
    return set(cells) - {trial.params.get("cell") for trial in study.get_trials(deepcopy=False)
                         if trial.state.name == "COMPLETE"}


def stopped_or_failed(study: optuna.Study, cells: list[str]) -> list[optuna.trial.FrozenTrial]:
    """The last trial of each cell whose every trial failed: its run failed, or it was stopped (Ctrl-C, SIGTERM)
    without being put back. Optuna's grid does not hand these cells out again, since it counts a failed trial's
    cell as visited. A trial that is running, waiting in the queue or finished holds its cell (one pruned, because
    another trial had its cell, does not)."""
    import optuna

    state = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    holding = (state.WAITING, state.RUNNING, state.COMPLETE)
    held = {trial.params.get("cell") for trial in trials if trial.state in holding}
    failed = {trial.params.get("cell"): trial for trial in trials if trial.state == state.FAIL}
    return [trial for cell, trial in failed.items() if cell in set(cells) - held]


def put_back(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Queue `trial`'s cell again, as Optuna's `RetryFailedTrialCallback` does for a trial whose worker died: a
    waiting trial with its parameters and its place in the grid."""
    import optuna

    study.add_trial(optuna.create_trial(state=optuna.trial.TrialState.WAITING, params=trial.params,
                                        distributions=trial.distributions, system_attrs=trial.system_attrs))


def finished_results(study: optuna.Study, cells: list[str], kept: Callable[[str], dict]) -> list[dict]:
    """The results of this grid's finished cells: as `run_cell` returned them to the study, from any worker, and
    for each cell the study has not finished, its finished run on this machine (run for another grid, a subset
    of this one, or before this study's storage was made), read by `kept`.

    :param kept: a cell's result from its finished run on disk, which raises FileNotFoundError if there is none.
    """
    import optuna

    finished = study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])
    results = {trial.params["cell"]: {key: value for key, value in trial.user_attrs.items() if key != "claimed"}
               for trial in finished if trial.params.get("cell") in set(cells)}
    for cell in (cell for cell in cells if cell not in results):
        with contextlib.suppress(FileNotFoundError):
            results[cell] = kept(cell)
    return list(results.values())


def interval(aggregate: Callable[[np.ndarray], float], scores: np.ndarray) -> tuple[float, tuple[float, float]]:
    """The aggregate of `scores` (runs x games) and its 95% stratified bootstrap interval, by rliable (Agarwal et
    al., 2021). The resampling is seeded, so the same scores give the same interval in every report: rliable draws
    its resamples from NumPy's global generator (its `random_state` argument does not reach them), which is seeded
    for the call and then given back its state."""
    from rliable import library

    outside = np.random.get_state()
    np.random.seed(0)
    try:
        points, intervals = library.get_interval_estimates({"x": scores}, lambda x: np.array([aggregate(x)]),
                                                           reps=2000)
    finally:
        np.random.set_state(outside)
    return float(points["x"][0]), (float(intervals["x"][0, 0]), float(intervals["x"][1, 0]))
