"""Search an environment's hyperparameters with Optuna, and write the best as a preset.

    python tune.py --env CartPole-v1 --trials 40                    # a local SQLite study, one worker
    python tune.py --env CartPole-v1 --trials 40 --workers 2        # two local worker processes
    python tune.py --env CartPole-v1 --trials 200 --storage postgresql+psycopg://user:pw@host/db --study cp
                                                                    # join a shared study, from any machine

Each trial samples a `DQNConfig` from the environment's search space (``presets/search/*.toml``: the
default space, with the ranges an environment's own file replaces) over the environment's preset (the
first trial of a new study is the preset itself, so that the study starts from what it tries to beat), and
trains it on each of ``--seeds`` with `train.run_training`, in this process. Its score is the area under
its evaluation curve: the mean, over the evaluations of the whole step budget, of each evaluation's
score capped at the early-stop target, where a run that stopped solved keeps the target to the end of
the budget. That rewards reaching the target, and reaching it early. Every evaluation is reported to
Optuna, whose pruner stops a trial that falls behind the others at the same point. Workers share
nothing but the study's storage: the database and Optuna coordinate them.

At the end, once no worker is still running a trial of the study (or at Ctrl-C, with every finished trial
kept), the best trial is written as a preset file, ``tuned/ENV_ID.toml`` by default, ready for
``python train.py --env ENV_ID --preset tuned/ENV_ID.toml``, with Optuna's pictures of the study beside it
(``ENV_ID.history.png``, ``ENV_ID.importances.png``). A worker that dies leaves no trial running for ever:
each trial's heartbeat is in the storage, and a trial whose heartbeat stops is failed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common import (
    OneLineErrorParser,
    UserError,
    atomic_write,
    ensure_writable_dir,
    figure_bytes,
    output_lock,
    raise_if_stopped,
    run_cli,
    seed_argument,
)
from dqn_config import ConfigError, DQNConfig, implied_by_switches
from environments import make_env, reward_threshold
from presets import PRESETS_DIR, RUN_FIELDS, find_preset, write_preset
from train import RunSettings, TrainingResult, build_agent, run_training

if TYPE_CHECKING:
    import optuna

SEARCH_DIR = PRESETS_DIR / "search"
HEARTBEAT_SECONDS = 15  # how often a worker marks each trial it runs as alive, in the study's storage
STALE_SECONDS = 120  # a running trial with no heartbeat for this long is failed: its worker died


def search_space(env_id: str, directory: Path = SEARCH_DIR) -> dict[str, dict[str, Any]]:
    """The search space for `env_id`: ``default.toml``'s, with the entries of any file naming `env_id` over it.

    :raises UserError: for an entry that is not a field of `DQNConfig` or has no known form.
    """
    space: dict[str, dict[str, Any]] = {}
    files = [directory / "default.toml", *sorted(p for p in directory.glob("*.toml") if p.name != "default.toml")]
    for path in files:
        data = tomllib.loads(path.read_text())
        if path.name == "default.toml" or env_id in data.get("env_ids", []):
            space.update(data.get("space", {}))
    fields = {field.name for field in dataclasses.fields(DQNConfig)}
    for name, entry in space.items():
        if name not in fields or not ({"choices"} <= set(entry) or {"low", "high"} <= set(entry)):
            raise UserError(f"search space {directory}: {name} = {entry} is not a DQNConfig field with "
                            "{low, high} or {choices}")
    return space


def suggest(trial: optuna.Trial, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Sample one value per entry of `space` (lists among choices are offered to Optuna as JSON text)."""
    values = {}
    for name, entry in space.items():
        if "choices" in entry:
            choices = [json.dumps(c) if isinstance(c, list) else c for c in entry["choices"]]
            value = trial.suggest_categorical(name, choices)
            values[name] = json.loads(value) if isinstance(value, str) and value.startswith("[") else value
        elif entry.get("int"):
            values[name] = trial.suggest_int(name, entry["low"], entry["high"], log=entry.get("log", False))
        else:
            values[name] = trial.suggest_float(name, entry["low"], entry["high"], log=entry.get("log", False))
    return values


def curve_score(evaluations: list[dict], settings: RunSettings, solved: bool) -> float:
    """The area under the evaluation curve, per evaluation slot of the whole budget: each evaluation's score
    (its confirmation's where it has one) capped at the target; a solved run keeps the target to the end."""
    target = settings.reward_threshold
    scores = [min(e.get("confirmation_mean", e["mean"]), target) for e in evaluations]
    slots = math.ceil(settings.total_steps / settings.eval_interval)
    if solved:
        scores += [target] * (slots - len(scores))
    return sum(scores) / max(slots, len(scores))


def objective(trial: optuna.Trial, env_id: str, base: dict[str, Any], run: RunSettings, seeds: list[int],
              space: dict[str, dict[str, Any]], folder: Path) -> float:
    """Train the trial's config on every seed; report each evaluation; return the mean curve score."""
    import optuna

    try:
        suggested = suggest(trial, space)  # a switch brings its own defaults, as on train.py's command line
        config = DQNConfig(**{**base, **implied_by_switches(suggested), **suggested})
    except ConfigError as error:  # a combination the config refuses: nothing to learn from it
        raise optuna.TrialPruned(f"{error.name}: {error.problem}") from error
    scores: list[float] = []
    solved_steps = []
    for seed in seeds:
        settings = dataclasses.replace(run, env_id=env_id, seed=seed, out=folder / f"trial{trial.number}-{seed}")
        result = train_reporting(trial, config, settings, scores)
        scores.append(curve_score(result.evaluations, settings, solved=result.solved_step is not None))
        solved_steps.append(result.solved_step)
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    trial.set_user_attr("solved_steps", solved_steps)
    trial.set_user_attr("config", config.to_dict())
    return sum(scores) / len(scores)


def preset_params(base: dict[str, Any], space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The preset's own values of the searched fields, as Optuna's parameters, where the space holds them: the
    first trial of a new study, so that the study starts from the settings it tries to beat."""
    params = {}
    for name, entry in space.items():
        value = list(base[name]) if isinstance(base.get(name), tuple | list) else base.get(name)
        if "choices" in entry and value in entry["choices"]:
            params[name] = json.dumps(value) if isinstance(value, list) else value
        elif "low" in entry and value is not None and entry["low"] <= value <= entry["high"]:
            params[name] = value
    return params


def train_reporting(trial: optuna.Trial, config: DQNConfig, settings: RunSettings,
                    earlier_scores: list[float]) -> TrainingResult:
    """One training run of a trial, each evaluation reported to Optuna as the trial's running score (the
    seeds before this one and this one's curve so far), at the step counted over the trial's seeds.

    :raises optuna.TrialPruned: when the pruner stops the trial.
    """
    import optuna

    evaluations: list[dict] = []
    done = len(earlier_scores)

    def report(step: int, evaluation: dict) -> None:
        evaluations.append(evaluation)
        running = (sum(earlier_scores) + curve_score(evaluations, settings, solved=False)) / (done + 1)
        trial.report(running, done * settings.total_steps + step)
        if trial.should_prune():
            raise optuna.TrialPruned()

    result = run_training(build_agent(settings, config), settings, progress=False, on_evaluation=report)
    if result.stop_reason == "interrupted":
        raise KeyboardInterrupt
    return result


# ------------------------------------------------------------------------------------ the command
def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(description="Search an environment's DQN hyperparameters with Optuna and write "
                                "the best trial as a preset.")
    parser.add_argument("--env", default="CartPole-v1", help="Gymnasium environment id")
    parser.add_argument("--trials", type=int, default=40, help="trials in the study, counted over every worker")
    parser.add_argument("--seeds", type=seed_argument, nargs="+", default=[0, 1],
                        help="training seeds of each trial (the score is their mean)")
    parser.add_argument("--storage", default=None, help="an SQLAlchemy database URL shared by every worker, "
                        "such as postgresql+psycopg://user:password@host:5432/db (default: an SQLite file, "
                        "tuned/optuna.db)")
    parser.add_argument("--study", default=None, help="the study's name in the storage (default: dqn-ENV_ID)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    parser.add_argument("--pruner", choices=["median", "hyperband", "none"], default="median",
                        help="how trials that fall behind are stopped")
    parser.add_argument("--total-steps", type=int, default=None, help="each run's step budget (default: the "
                        "preset's)")
    parser.add_argument("--eval-interval", type=int, default=None, help="steps between two evaluations "
                        "(default: the preset's)")
    parser.add_argument("--eval-episodes", type=int, default=None, help="episodes per evaluation (default: the "
                        "preset's)")
    parser.add_argument("--out", type=Path, default=None, help="the preset file to write (default: "
                        "tuned/ENV_ID.toml); the study's pictures go beside it")
    parser.add_argument("--no-preset", action="store_true", help="only run trials: write no preset (a worker "
                        "that joins a study run from elsewhere)")
    return parser


def open_study(storage: str, name: str, direction: str, pruner: str, sampler: optuna.samplers.BaseSampler | None = None,
               retry_failed: bool = False) -> optuna.Study:
    """Create or join the study `name` in `storage`.

    :param sampler: Optuna's sampler (default: its own, TPE).
    :param retry_failed: put a trial whose worker died (no heartbeat) back in the queue with its parameters, as
        a grid of fixed cells wants (`bench.ablation`); a search needs no such retry.
    :raises UserError: if the storage cannot be reached or is not a database URL.
    """
    import optuna

    # Optuna would log an interrupted trial as a failure with a traceback; `report_trial` says what happened
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    pruners = {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1),
               "hyperband": optuna.pruners.HyperbandPruner, "none": optuna.pruners.NopPruner}
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(5):
        try:
            # heartbeats are marked experimental, as they have been since Optuna 2.9
            with warnings.catch_warnings(action="ignore", category=optuna.exceptions.ExperimentalWarning):
                retry = optuna.storages.RetryHeartbeatStaleTrialCallback() if retry_failed else None
                database = optuna.storages.RDBStorage(storage, heartbeat_interval=HEARTBEAT_SECONDS,
                                                      grace_period=STALE_SECONDS, heartbeat_stale_trial_callback=retry)
            return optuna.create_study(storage=database, study_name=name, sampler=sampler,
                                       direction=direction, pruner=pruners[pruner](), load_if_exists=True)
        except (IntegrityError, ProgrammingError) as error:
            # workers started together raced to create the tables, their types or the study: join what won.
            # PostgreSQL reports a lost race as a duplicate key, or as "type ... already exists" when the
            # winner committed between this worker's check and its own CREATE
            if isinstance(error, ProgrammingError) and "already exists" not in str(error):
                raise UserError(f"cannot open the study in --storage {storage}: {first_line_of(error)}") from error
            time.sleep(0.2 * (attempt + 1))
        except Exception as error:  # SQLAlchemy's ArgumentError, OperationalError, NoSuchModuleError, ...
            raise UserError(f"cannot open the study in --storage {storage}: {first_line_of(error)}") from error
    raise UserError(f"cannot open the study in --storage {storage}: other workers kept creating it")


def first_line_of(error: Exception) -> str:
    """The first line of an error's message, or its type's name when it has none."""
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def start_workers(count: int, argv: list[str], storage: str, study: str) -> list[subprocess.Popen]:
    """`count` more `tune.py` processes on the same study, running trials only."""
    command = [sys.executable, str(Path(__file__).resolve()), *argv, "--workers", "1", "--storage", storage,
               "--study", study, "--no-preset"]
    return [subprocess.Popen(command) for _ in range(count)]


def write_results(study: optuna.Study, env_id: str, run: dict[str, Any], seeds: list[int], path: Path) -> str:
    """The best trial as a preset at `path`, and the study's pictures beside it; returns what was written."""
    import optuna

    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not finished:
        return "no trial finished: no preset written"
    best = study.best_trial
    source = {"from": f"tune.py: Optuna study {study.study_name!r}, best of {len(finished)} finished trials "
                      f"({len(study.trials)} in all), trial {best.number}",
              "score": f"{best.value:.1f}: the mean over seeds {seeds} of the area under the evaluation curve, "
                       "capped at the early-stop target",
              "solved_steps": f"{best.user_attrs.get('solved_steps')} (steps to a confirmed solve, per seed)"}
    write_preset(path, [env_id], f"{env_id}: found by tune.py", source, run, best.user_attrs["config"])
    pictures = save_study_pictures(study, path.with_suffix(""))
    return f"wrote {path} (trial {best.number}, score {best.value:.1f}), {', '.join(map(str, pictures))}"


def save_study_pictures(study: optuna.Study, stem: Path) -> list[Path]:
    """Optuna's own plots of the study: ``STEM.history.png`` and, once trials differ, ``STEM.importances.png``."""
    import warnings

    import matplotlib
    import optuna

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    written = []
    for name, plot in (("history", optuna_plots.plot_optimization_history),
                       ("importances", optuna_plots.plot_param_importances)):
        try:
            axes = plot(study)
        except (ValueError, RuntimeError):  # importances need finished trials whose parameters differ
            continue
        path = stem.with_name(f"{stem.name}.{name}.png")
        figure = axes.get_figure()
        figure.set_size_inches(8, 4.5)
        figure.tight_layout()
        content = figure_bytes(figure, dpi=90)
        plt.close(figure)
        atomic_write(path, content)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("trials", "workers", "total_steps", "eval_interval", "eval_episodes"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            parser.error(f"argument --{name.replace('_', '-')}: must be positive")
    make_env(args.env).close()  # an unknown or unsupported environment ends here, in one line
    preset = find_preset(args.env)
    run = {**dataclasses.asdict(RunSettings()), **(preset.run if preset else {}),
           **{name: getattr(args, name) for name in ("total_steps", "eval_interval", "eval_episodes")
              if getattr(args, name) is not None}}
    if run["reward_threshold"] is None:
        run["reward_threshold"] = reward_threshold(args.env)
    if run["reward_threshold"] is None:
        parser.error(f"argument --env: {args.env} has no reward threshold, which the score is measured against")
    out = args.out or Path("tuned") / f"{args.env.replace('/', '-')}.toml"
    ensure_writable_dir(out.parent, "--out")
    # the worker that writes the preset holds its lock: a second tune.py writing the same --out is refused
    with contextlib.nullcontext() if args.no_preset else output_lock(out, "tune.py"):
        storage = args.storage or f"sqlite:///{out.parent / 'optuna.db'}"
        study_name = args.study or f"dqn-{args.env.replace('/', '-')}"
        study = open_study(storage, study_name, "maximize", args.pruner)
        space = search_space(args.env)
        if preset and not study.trials:
            study.enqueue_trial(preset_params(preset.config, space), skip_if_exists=True)
        settings = RunSettings(**{**run, "env_id": args.env})
        worker_argv = [a for a in argv if a not in ("--no-preset",)]
        workers = start_workers(args.workers - 1, worker_argv, storage, study_name) if args.workers > 1 else []
        status = 0
        try:
            optimize(study, args, preset.config if preset else {}, settings, space)
            if not args.no_preset:
                wait_for_running_trials(study)
        except KeyboardInterrupt:
            status = 130
            print("tune.py: interrupted: finished trials are kept in the study", file=sys.stderr)
        finally:
            for worker in workers:
                worker.wait()
        if not args.no_preset:
            print(write_results(study, args.env, {name: run[name] for name in RUN_FIELDS if run[name] is not None},
                                args.seeds, out))
        return status


def optimize(study: optuna.Study, args: argparse.Namespace, base: dict[str, Any], settings: RunSettings,
             space: dict[str, dict[str, Any]]) -> None:
    """Run trials until the study holds ``args.trials`` of them, whoever ran them."""
    import optuna

    from common import import_agent_class

    import_agent_class()  # TensorFlow's start-up lines, silenced once
    stop_at_total = optuna.study.MaxTrialsCallback(args.trials, states=None)
    with tempfile.TemporaryDirectory(prefix="tune-") as folder:
        def run_trial(trial: optuna.Trial) -> float:
            return objective(trial, args.env, base, settings, args.seeds, space, Path(folder))

        if len(study.trials) < args.trials:
            study.optimize(run_trial, n_trials=args.trials, callbacks=[stop_at_total, report_trial], catch=())


def wait_for_running_trials(study: optuna.Study, poll_seconds: float = 2.0) -> None:
    """Return once no trial of the study is running, so that the best trial is chosen from all of them: other
    workers, on this machine or others, may still be running trials that beat it. A trial whose worker died
    stops counting when its heartbeat is ``STALE_SECONDS`` old (Optuna then fails it)."""
    import optuna

    announced = False
    while running := study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if not announced:
            print(f"waiting for {len(running)} trial(s) still running in other workers", flush=True)
            announced = True
        with warnings.catch_warnings(action="ignore", category=optuna.exceptions.ExperimentalWarning):
            optuna.storages.fail_stale_trials(study)
        time.sleep(poll_seconds)
        raise_if_stopped()


def report_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """One line per trial this worker finished."""
    import optuna

    if trial.state == optuna.trial.TrialState.COMPLETE:
        outcome = f"score {trial.value:.1f}, solved at {trial.user_attrs.get('solved_steps')}"
    else:
        outcome = f"{trial.state.name.lower()} at step {trial.last_step}"
    complete = any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    best = f"; best so far: trial {study.best_trial.number}" if complete else ""
    print(f"trial {trial.number}: {outcome}{best}", flush=True)


if __name__ == "__main__":
    run_cli(main)
