"""train.py as a user runs it: bad input, a short real run, Ctrl-C, divergence, truncation and seeds."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import gymnasium as gym
import numpy as np
import pytest
from conftest import ROOT, assert_one_line_error, run_program

import common
import train
from agent_files import load_agent, weights_path
from common import stem_file
from dqn_config import DQNConfig

# a short run on a small network: enough to exercise every part of the loop in a few seconds
QUICK = ["--total-steps", "600", "--learning-starts", "200", "--train-frequency", "50", "--gradient-steps", "10",
         "--eval-interval", "300", "--eval-episodes", "2", "--final-eval-episodes", "3", "--hidden-sizes", "16",
         "--batch-size", "32", "--no-progress"]


@pytest.mark.parametrize(("args", "words"), [
    (["--env", "NoSuchEnv-v0"], ["unknown environment", "NoSuchEnv-v0"]),
    (["--env", "Pendulum-v1"], ["not supported", "Discrete"]),
    (["--env", "tests.image_env:FlatImage-v0"], ["not supported", "shape (8, 8)"]),
    (["--env", "tests.image_env:FloatImage-v0"], ["not supported", "not uint8"]),
    (["--env", "ALE/NoSuchGame-v5"], ["unknown environment", "NoSuchGame"]),
    (["--env", "MinAtar/Breakout-v1", "--network", "nature_cnn"], ["--network", "cannot take", "(10, 10, 4)"]),
    (["--env", "CartPole-v1", "--network", "minatar_cnn"], ["--network", "cannot take"]),
    (["--learning-rate", "0"], ["--learning-rate", "positive"]),
    (["--learning-rate", "-0.001"], ["--learning-rate", "positive"]),
    (["--batch-size", "0"], ["--batch-size", "positive"]),
    (["--buffer-size", "-5"], ["--buffer-size", "positive"]),
    (["--total-steps", "0"], ["--total-steps", "positive"]),
    (["--total-steps", "-100"], ["--total-steps", "positive"]),
    (["--batch-size", "512", "--buffer-size", "100"], ["--batch-size", "buffer_size"]),
    (["--gamma", "1.01"], ["--gamma", "[0, 1]"]),
    (["--gamma", "-0.1"], ["--gamma", "[0, 1]"]),
    (["--optimizer", "sgd"], ["--optimizer", "invalid choice"]),
    (["--batch-size", "many"], ["--batch-size", "invalid int"]),
    (["--seed", "-1"], ["--seed", "from 0 to"]),
    (["--seed", "1e3"], ["--seed", "whole number"]),
    (["--no-such-flag"], ["unrecognized"]),
    (["--n-step", "0"], ["--n-step", "positive"]),
    (["--n-step", "200", "--buffer-size", "150", "--batch-size", "32"], ["--n-step", "buffer_size"]),
    (["--priority-alpha", "1.5"], ["--priority-alpha", "[0, 1]"]),
    (["--priority-beta-start", "-0.1"], ["--priority-beta-start", "[0, 1]"]),
    (["--priority-epsilon", "0"], ["--priority-epsilon", "positive"]),
    (["--distributional", "--num-atoms", "1"], ["--num-atoms", "at least 2"]),
    (["--distributional", "--v-min", "5", "--v-max", "1"], ["--v-min", "below v_max"]),
    (["--distributional", "--loss", "huber"], ["--loss", "cross_entropy", "distributional"]),
    (["--loss", "cross_entropy"], ["--loss", "needs distributional"]),
    (["--noisy-nets", "--noisy-sigma", "0"], ["--noisy-sigma", "positive"]),
    (["--agent", "rainbow", "--env", "CartPole-v0"], ["--agent", "no rainbow preset", "CartPole-v0"]),
    (["--agent", "dueling"], ["--agent", "invalid choice"]),
    (["--agent", "drq", "--env", "CartPole-v1"], ["--agent", "no drq preset", "ALE/"]),
    (["--random-shift", "4"], ["--random-shift", "not images"]),
    (["--random-shift", "-1", "--env", "MinAtar/Breakout-v1"], ["--random-shift", "zero or positive"]),
    (["--adam-epsilon", "0"], ["--adam-epsilon", "positive"]),
    (["--sticky-actions", "0.5"], ["--sticky-actions", "Atari"]),
    (["--sticky-actions", "2", "--env", "ALE/Pong-v5"], ["--sticky-actions", "[0, 1]"]),
    (["--eval-epsilon", "1.5"], ["--eval-epsilon", "[0, 1]"]),
])
def test_bad_input_is_one_clear_line_and_a_nonzero_exit(args, words):
    assert_one_line_error(run_program("train.py", *args), *words)


def test_an_output_path_that_cannot_be_written_is_refused_before_training(tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    result = run_program("train.py", "--out", str(tmp_path / "a_file" / "model"))
    assert_one_line_error(result, "cannot write", "--out")
    assert (tmp_path / "a_file").read_text() == "not a folder"


def test_an_output_stem_that_is_a_folder_is_refused(tmp_path):
    assert_one_line_error(run_program("train.py", "--out", str(tmp_path)), "--out", "folder")


def test_short_run_writes_all_its_files(tmp_path):
    stem = tmp_path / "sub" / "run.weights.h5"  # a trailing .weights.h5 is dropped from the stem
    result = run_program("train.py", *QUICK, "--out", str(stem), "--no-early-stop")
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "sub" / "run.json").read_text())
    assert record["env_id"] == "CartPole-v1" and record["steps"] == 600
    assert DQNConfig.from_dict(record["config"]).hidden_sizes == (16,)
    assert record["final_evaluation"]["episodes"] == 3
    assert {"tensorflow", "keras", "gymnasium"} <= set(record["versions"])
    assert "--total-steps 600" in record["command"]
    rows = (tmp_path / "sub" / "run.csv").read_text().splitlines()
    assert rows[0].startswith("kind,step,return")
    assert sum(row.startswith("evaluation,") for row in rows) == 2  # at steps 300 and 600
    assert sum(row.startswith("episode,") for row in rows) >= 5
    assert (tmp_path / "sub" / "run.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "sub" / "run.weights.h5").stat().st_size > 0
    assert "final evaluation" in result.stdout
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == [
        "run.checkpoint.h5", "run.csv", "run.json", "run.png", "run.weights.h5", "runs"]  # no temporary files left
    assert [p.name.startswith("run-seed0-") for p in (tmp_path / "sub" / "runs").iterdir()] == [True]


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "kill"])
def test_ctrl_c_or_kill_stops_cleanly_and_keeps_the_best_weights(tmp_path, stop):
    stem = tmp_path / "run"
    weights = tmp_path / "run.weights.h5"
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), "--total-steps", "1000000", "--eval-interval", "300",
         "--eval-episodes", "1", "--hidden-sizes", "16", "--no-progress", "--out", str(stem)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    deadline = time.monotonic() + 120
    while not weights.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert weights.exists(), "no evaluation was saved in time"
    time.sleep(0.5)
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "Traceback" not in stderr
    assert f"best weights so far are in {weights}" in stderr
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["stop_reason"] == "interrupted" and record["steps"] < 1_000_000
    agent, _ = load_agent(weights)
    assert agent.main_network.count_params() > 0


def test_a_ctrl_c_that_python_lost_in_a_finalizer_still_ends_the_run_after_that_step(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "_stop_signals", [])  # this test's own record of stops, gone after it
    # a signal that lands while the garbage collector runs a finalizer raises there, and Python drops it
    with contextlib.suppress(KeyboardInterrupt):
        common._stop_as_ctrl_c(signal.SIGINT, None)
    settings, config = quick_settings(tmp_path)
    result = train.run_training(train.build_agent(settings, config), settings, progress=False)
    assert result.stop_reason == "interrupted" and result.steps == 1


def test_a_command_whose_ctrl_c_python_lost_in_a_finalizer_exits_130_without_a_traceback():
    program = """
import gc, signal, sys
sys.path.insert(0, sys.argv[1])
from common import raise_if_stopped, run_cli

class Finalized:
    def __del__(self):
        signal.raise_signal(signal.SIGINT)  # the signal lands while a finalizer runs

def main(argv):
    Finalized()
    gc.collect()
    print("went on")  # as Python does: the KeyboardInterrupt raised in the finalizer is dropped
    raise_if_stopped()
    return 0

run_cli(main)
"""
    result = subprocess.run([sys.executable, "-c", program, str(ROOT)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 130 and result.stdout == "went on\n"
    assert result.stderr == "-c: interrupted\n"


def test_a_diverging_loss_stops_training_and_keeps_the_last_good_weights(tmp_path):
    stem = tmp_path / "run"
    result = run_program("train.py", "--learning-rate", "1e30", "--learning-starts", "100", "--train-frequency",
                         "20", "--gradient-steps", "5", "--eval-interval", "100", "--eval-episodes", "1",
                         "--total-steps", "5000", "--hidden-sizes", "16", "--no-progress", "--out", str(stem))
    assert_one_line_error(result, "loss became", "learning-rate")
    agent, _ = load_agent(tmp_path / "run.weights.h5")
    assert json.loads((tmp_path / "run.json").read_text())["stop_reason"] == "loss diverged"
    assert np.isfinite(agent.q_values(np.zeros((1, 4), np.float32))).all()


def quick_settings(tmp_path, env_id="CartPole-v1", **overrides) -> tuple[train.RunSettings, DQNConfig]:
    run = {"total_steps": 1200, "eval_interval": 600, "eval_episodes": 2, **overrides}
    settings = train.RunSettings(env_id=env_id, out=tmp_path / "run", **run)
    config = DQNConfig(hidden_sizes=(16,), learning_starts=300, train_frequency=100, gradient_steps=20,
                       batch_size=32)
    return settings, config


def test_a_time_limit_truncation_is_stored_as_not_terminated(tmp_path):
    gym.register("ShortCartPole-v0", entry_point="gymnasium.envs.classic_control:CartPoleEnv", max_episode_steps=5)
    settings, config = quick_settings(tmp_path, env_id="ShortCartPole-v0", total_steps=200, eval_interval=200)
    agent = train.build_agent(settings, config)
    result = train.run_training(agent, settings, progress=False)
    # random CartPole play lasts longer than 5 steps, so every episode here ends by truncation
    assert len(result.episodes) == 40 and all(e["length"] == 5 for e in result.episodes)
    assert not any(t.terminated for t in agent.replay_buffer)


def test_termination_is_stored_as_terminated(tmp_path):
    settings, config = quick_settings(tmp_path, total_steps=300, eval_interval=300)
    agent = train.build_agent(settings, config)
    result = train.run_training(agent, settings, progress=False)
    assert sum(t.terminated for t in agent.replay_buffer) == len(result.episodes) > 0


def test_same_seed_same_run(tmp_path):
    runs = []
    for name in ("a", "b", "c"):
        settings, config = quick_settings(tmp_path / name, seed=1 if name == "c" else 7)
        (tmp_path / name).mkdir()
        agent = train.build_agent(settings, config)
        result = train.run_training(agent, settings, progress=False)
        runs.append(([e["return"] for e in result.episodes], agent.main_network.get_weights()))
    (returns_a, weights_a), (returns_b, weights_b), (returns_c, _) = runs
    assert returns_a == returns_b
    for a, b in zip(weights_a, weights_b, strict=True):
        np.testing.assert_array_equal(a, b)
    assert returns_a != returns_c  # and the seed does matter


@pytest.mark.parametrize(("env_id", "observation_size", "num_actions"), [("Acrobot-v1", 6, 3),
                                                                         ("MountainCar-v0", 2, 3)])
def test_other_vector_observation_discrete_action_environments_train(tmp_path, env_id, observation_size,
                                                                     num_actions):
    settings, config = quick_settings(tmp_path, env_id=env_id, total_steps=600, eval_interval=600, eval_episodes=1)
    agent = train.build_agent(settings, config)
    assert (agent.observation_shape, agent.num_actions) == ((observation_size,), num_actions)
    result = train.run_training(agent, settings, progress=False)
    assert result.steps == 600 and len(result.evaluations) == 1
    assert (tmp_path / "run.weights.h5").exists()


def test_the_early_stop_needs_the_confirmations_lower_bound_at_the_target():
    grazing = np.array([500.0] * 95 + [170.0] * 5)  # a mean of 483.5 over 100 starts, five of which fail early
    bound = train.lower_confidence_bound(grazing)
    assert bound == pytest.approx(483.5 - 3 * grazing.std(ddof=1) / 10) and bound < 475
    assert not train.reached_target({"confirmation_mean": 483.5, "confirmation_lower_bound": bound}, 475)
    assert train.reached_target({"confirmation_lower_bound": train.lower_confidence_bound(np.full(100, 500.0))}, 475)
    assert not train.reached_target({"mean": 500.0}, 475)  # an evaluation without a confirmation never stops a run


def test_episodes_played_side_by_side_score_as_each_would_alone_with_the_states_in_one_batch():
    batches = []

    def lean_policy(states: np.ndarray) -> np.ndarray:  # push the cart the way the pole leans: short episodes
        batches.append(len(states))
        return (states[:, 2] > 0).astype(int)

    alone = [common.evaluate_policy([gym.make("CartPole-v1")], lean_policy, 1, seed)[0] for seed in range(10, 17)]
    steps_alone, batches[:] = sum(batches), []
    envs = [gym.make("CartPole-v1") for _ in range(3)]
    side_by_side = common.evaluate_policy(envs, lean_policy, 7, 10)
    np.testing.assert_array_equal(side_by_side, alone)  # episode i from seed 10 + i, whichever environment played it
    assert len(set(alone)) > 1 and max(batches) == 3 and sum(batches) == steps_alone < 3 * len(batches)


def test_an_output_stem_with_a_dot_keeps_its_whole_name_in_every_file(tmp_path):
    stem = tmp_path / "dqn-lr1.25e-4-MinAtar-Breakout-v1-0"  # Path.with_suffix would cut it at "lr1"
    assert stem_file(stem, ".json") == tmp_path / "dqn-lr1.25e-4-MinAtar-Breakout-v1-0.json"
    assert weights_path(stem) == tmp_path / "dqn-lr1.25e-4-MinAtar-Breakout-v1-0.weights.h5"


@pytest.mark.skipif(common._malloc_trim() is None or not os.path.exists("/proc/self/status"),
                    reason="glibc's malloc_trim and Linux's /proc")
def test_release_free_memory_gives_the_heaps_freed_space_back():
    # in a fresh process, whose heap holds nothing else: 100 KB blocks (under glibc's mmap threshold, so on the
    # heap) between small ones that stay; freed, the large ones leave about 200 MB that glibc keeps resident
    program = """
import common
def resident_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS"))
large, small = [], []
for _ in range(2000):
    large.append(bytearray(100_000))
    small.append(bytearray(2_000))
large.clear()
held = resident_mb()
common.release_free_memory()
print(held, resident_mb())
"""
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=ROOT, check=True)
    held, released = map(float, done.stdout.split())
    assert held > 200 and released < held - 150


def test_the_training_loop_releases_free_memory_every_interval(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(train, "release_free_memory", lambda: calls.append(1))
    settings, config = quick_settings(tmp_path, total_steps=2 * train.RELEASE_MEMORY_INTERVAL + 1,
                                      eval_interval=2 * train.RELEASE_MEMORY_INTERVAL)
    train.run_training(train.build_agent(settings, config), settings, progress=False)
    assert len(calls) == 2
