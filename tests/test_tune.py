"""tune.py: an Optuna study in SQLite by default or in a real PostgreSQL server, pruning, Ctrl-C, bad input."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from conftest import ROOT, assert_one_line_error, run_program

import train
import tune
from dqn_config import DQNConfig
from presets import read_preset

# a trial on this budget takes a few seconds
TINY = ["--env", "CartPole-v1", "--seeds", "0", "--total-steps", "600", "--eval-interval", "300",
        "--eval-episodes", "2"]
POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")


def finished(storage: str, study: str) -> list[optuna.trial.FrozenTrial]:
    return [t for t in optuna.load_study(study_name=study, storage=storage).trials if t.state.is_finished()]


def test_a_study_lives_in_sqlite_by_default_and_its_best_trial_becomes_a_preset(tmp_path):
    result = run_program("tune.py", *TINY, "--trials", "2", "--out", str(tmp_path / "CartPole-v1.toml"))
    assert result.returncode == 0, result.stderr
    trials = finished(f"sqlite:///{tmp_path / 'optuna.db'}", "dqn-CartPole-v1")
    assert len(trials) == 2
    preset = read_preset(tmp_path / "CartPole-v1.toml")
    best = max((t for t in trials if t.value is not None), key=lambda t: t.value)
    assert preset.matches("CartPole-v1") and preset.config == best.user_attrs["config"]
    assert preset.run["total_steps"] == 600 and "dqn-CartPole-v1" in preset.source["from"]
    assert (tmp_path / "CartPole-v1.history.png").read_bytes()[:4] == b"\x89PNG"
    assert f"wrote {tmp_path / 'CartPole-v1.toml'}" in result.stdout


def test_a_trial_that_falls_behind_is_pruned_at_its_evaluation(tmp_path):
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0))
    for _ in range(2):  # two earlier trials that held the target from their first evaluation
        study.add_trial(optuna.trial.create_trial(value=475.0, intermediate_values={300: 475.0, 600: 475.0},
                                                  distributions={}, params={}))
    trial = study.ask()
    settings = train.RunSettings(total_steps=600, eval_interval=300, eval_episodes=2, reward_threshold=475,
                                 out=tmp_path / "run")
    config = DQNConfig(hidden_sizes=(8,), learning_starts=600)  # never trains: far behind at step 300
    with pytest.raises(optuna.TrialPruned):
        tune.train_reporting(trial, config, settings, [])
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    (pruned,) = study.get_trials(states=[optuna.trial.TrialState.PRUNED])
    assert list(pruned.intermediate_values) == [300] and pruned.intermediate_values[300] < 475.0 / 2


def test_the_score_rewards_reaching_the_target_and_reaching_it_early():
    settings = train.RunSettings(total_steps=1000, eval_interval=250, reward_threshold=100)
    early = [{"mean": 50.0}, {"mean": 120.0, "confirmation_mean": 110.0}]
    late = [{"mean": 50.0}, {"mean": 60.0}, {"mean": 90.0}, {"mean": 120.0, "confirmation_mean": 100.0}]
    never = [{"mean": 50.0}, {"mean": 60.0}, {"mean": 90.0}, {"mean": 95.0}]
    assert tune.curve_score(early, settings, solved=True) == (50 + 100 * 3) / 4
    assert tune.curve_score(late, settings, solved=True) == (50 + 60 + 90 + 100) / 4
    assert tune.curve_score(never, settings, solved=False) == (50 + 60 + 90 + 95) / 4
    assert (tune.curve_score(early, settings, True) > tune.curve_score(late, settings, True)
            > tune.curve_score(never, settings, False))


def test_ctrl_c_ends_the_study_and_keeps_its_finished_trials(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    process = subprocess.Popen([sys.executable, str(ROOT / "tune.py"), *TINY, "--trials", "50", "--out",
                                str(tmp_path / "CartPole-v1.toml")], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.5)
        try:
            if finished(storage, "dqn-CartPole-v1"):
                break
        except (KeyError, sqlalchemy.exc.IntegrityError):  # the study is not created yet, or being created
            continue
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted: finished trials are kept" in stderr
    kept = finished(storage, "dqn-CartPole-v1")
    assert 1 <= len(kept) < 50
    assert read_preset(tmp_path / "CartPole-v1.toml").config in [t.user_attrs.get("config") for t in kept]


@pytest.mark.parametrize(("args", "words"), [
    (["--storage", "nosuchdb://x/y"], ["--storage", "nosuchdb"]),
    (["--storage", "postgresql+psycopg://nobody@127.0.0.1:1/none"], ["--storage", "cannot open"]),
    (["--storage", "not a url"], ["--storage"]),
    (["--env", "NoSuchEnv-v0"], ["unknown environment", "NoSuchEnv-v0"]),
    (["--env", "MinAtar/Breakout-v1"], ["--env", "no reward threshold"]),
    (["--trials", "0"], ["--trials", "positive"]),
    (["--seeds", "0", "-2"], ["--seeds", "from 0 to"]),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, words):
    result = run_program("tune.py", "--out", str(tmp_path / "p.toml"), *args)
    assert result.returncode == 2
    assert_one_line_error(result, *words)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL server in a temporary folder, on a local port; its URL, and the server stopped
    and its folder removed after. As root, the server runs as the `postgres` user (it refuses root)."""
    if not (POSTGRES_BIN / "initdb").exists():
        pytest.skip(f"no PostgreSQL server binaries in {POSTGRES_BIN}")
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="dqn-postgres-"))
    if as_user:
        shutil.chown(folder, "postgres", "postgres")
    data, port = folder / "data", free_port()
    subprocess.run([*as_user, POSTGRES_BIN / "initdb", "-D", data, "-U", "tuner", "--auth", "trust"], check=True,
                   capture_output=True)
    subprocess.run([*as_user, POSTGRES_BIN / "pg_ctl", "-D", data, "-l", folder / "log", "-w", "start", "-o",
                    f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"], check=True, capture_output=True)
    try:
        subprocess.run([*as_user, POSTGRES_BIN / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "tuner",
                        "optuna"], check=True, capture_output=True)
        yield f"postgresql+psycopg://tuner@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run([*as_user, POSTGRES_BIN / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def test_two_workers_share_one_study_in_postgresql(tmp_path, postgres):
    command = [sys.executable, str(ROOT / "tune.py"), *TINY, "--trials", "4", "--storage", postgres, "--study",
               "shared", "--pruner", "none"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    writer = subprocess.Popen([*command, "--out", str(tmp_path / "CartPole-v1.toml")], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    helper = subprocess.Popen([*command, "--no-preset"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    for process in (helper, writer):
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr
    study = optuna.load_study(study_name="shared", storage=postgres)
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) >= 4
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == 2, "both processes ran trials of the one study"
    assert read_preset(tmp_path / "CartPole-v1.toml").config == study.best_trial.user_attrs["config"]
    assert not (tmp_path / "optuna.db").exists()  # no SQLite fallback


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # the trials are asked for by hand, not optimized
def test_the_preset_waits_for_trials_other_workers_still_run(tmp_path, capsys):
    study = tune.open_study(f"sqlite:///{tmp_path / 'optuna.db'}", "s", "maximize", "none")
    elsewhere = study.ask()  # a trial another worker is running
    finisher = threading.Timer(1.0, study.tell, (elsewhere, 42.0))
    finisher.start()
    tune.wait_for_running_trials(study, poll_seconds=0.1)
    finisher.join()
    assert study.best_trial.number == elsewhere.number and study.best_value == 42.0
    assert "waiting for 1 trial(s) still running" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_trial_whose_worker_died_does_not_hold_the_preset_back(tmp_path, monkeypatch):
    monkeypatch.setattr(tune, "STALE_SECONDS", 1)
    study = tune.open_study(f"sqlite:///{tmp_path / 'optuna.db'}", "s", "maximize", "none")
    orphan = study.ask()
    study._storage.record_heartbeat(orphan._trial_id)  # its worker's last sign of life, then nothing
    started = time.monotonic()
    tune.wait_for_running_trials(study, poll_seconds=0.2)
    assert study.trials[orphan.number].state == optuna.trial.TrialState.FAIL
    assert time.monotonic() - started < 30


def test_a_new_study_starts_from_the_environments_preset():
    from presets import find_preset

    space = tune.search_space("CartPole-v1")
    preset = find_preset("CartPole-v1").config
    params = tune.preset_params(preset, space)
    assert set(params) == set(space)  # the preset lies inside its own search space
    assert params["hidden_sizes"] == "[64, 64]" and params["learning_rate"] == preset["learning_rate"]
    assert tune.preset_params({**preset, "learning_rate": 1.0}, space).keys() == set(space) - {"learning_rate"}


def test_workers_that_open_a_new_study_at_the_same_moment_all_join_it(postgres):
    """Workers started together race to create Optuna's tables and types in an empty database; PostgreSQL
    refuses all but one ("type studydirection already exists"), and the others join what that one created."""
    count = 6
    barrier, opened, errors = threading.Barrier(count), [], []

    def open_at_once() -> None:
        barrier.wait()
        try:
            opened.append(tune.open_study(postgres, "raced", "maximize", "none").study_name)
        except tune.UserError as error:
            errors.append(str(error))

    threads = [threading.Thread(target=open_at_once) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors and opened == ["raced"] * count
    assert [s.study_name for s in optuna.get_all_study_summaries(postgres)] == ["raced"]
