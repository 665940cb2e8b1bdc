"""Checkpoints and `--resume`: a stopped run continues as if never stopped, and a kill -9 at any moment
leaves files that load as one agent."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import ROOT, assert_one_line_error, run_program
from test_train_cli import QUICK, quick_settings

import train
from agent_files import load_agent, read_description
from checkpoints import checkpoint_path, read_checkpoint_state, restore_checkpoint, unfinished_run
from common import import_agent_class

# QUICK's run, on 1,200 steps with an evaluation every 300
LONGER = [*QUICK[2:], "--total-steps", "1200", "--no-early-stop"]

# Runs train.py with os.replace wrapped: the Nth rename onto a file whose name ends in SUFFIX kills the process
# with SIGKILL, after the new file is written in full and before it takes the old one's place.
KILL_DURING_SAVE = """
import os, runpy, signal, sys
suffix, nth = sys.argv[1], int(sys.argv[2])
renames, real_replace = [], os.replace
def replace(source, destination, *args, **kwargs):
    if str(destination).endswith(suffix):
        renames.append(destination)
        if len(renames) == nth:
            os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(source, destination, *args, **kwargs)
os.replace = replace
sys.argv = ["train.py", *sys.argv[3:]]
runpy.run_path("train.py", run_name="__main__")
"""


def arrays(path, group):
    with h5py.File(path, "r") as file:
        return [file[group][str(i)][()] for i in range(len(file[group]))]


# beta held at 1: its schedule runs over --total-steps, which the stopped run below sets shorter
@pytest.mark.parametrize("family", [[], ["--agent", "rainbow", "--priority-beta-start", "1"]], ids=["dqn", "rainbow"])
def test_a_run_stopped_and_resumed_with_its_buffer_ends_with_the_same_weights_bit_for_bit(tmp_path, family):
    # Rainbow: n-step returns, prioritized replay, dueling, noisy networks and C51 at once; the checkpoint carries
    # the n-step window, the priorities and the noise generators' states too
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert run_program("train.py", *LONGER, *family, "--checkpoint-buffer", "--out", str(whole)).returncode == 0
    first = run_program("train.py", *LONGER, *family, "--checkpoint-buffer", "--out", str(parts), "--total-steps",
                        "600")
    assert first.returncode == 0, first.stderr
    assert read_checkpoint_state(checkpoint_path(parts))["result"]["steps"] == 600
    second = run_program("train.py", "--resume", str(parts), "--total-steps", "1200", "--no-progress")
    assert second.returncode == 0, second.stderr
    for group in ("main", "target", "optimizer", "noise"):
        for a, b in zip(arrays(checkpoint_path(whole), group), arrays(checkpoint_path(parts), group), strict=True):
            np.testing.assert_array_equal(a, b)
    records = [json.loads(stem.with_name(stem.name + ".json").read_text()) for stem in (whole, parts)]
    scores = [[{key: value for key, value in e.items() if key != "training_seconds"} for e in record["evaluations"]]
              for record in records]
    assert scores[0] == scores[1] and records[1]["steps"] == 1200
    seconds = [e["training_seconds"] for e in records[1]["evaluations"]]  # the resumed run's clock goes on
    assert seconds == sorted(seconds) and seconds[0] > 0 and seconds[-1] < records[1]["seconds"]
    csvs = [stem.with_name(stem.name + ".csv").read_text() for stem in (whole, parts)]
    assert csvs[0] == csvs[1]  # every training episode alike


def test_a_resumed_run_without_its_buffer_keeps_its_step_exploration_and_best_score(tmp_path):
    settings, config = quick_settings(tmp_path, total_steps=600, eval_interval=300)
    config = dataclasses.replace(config, epsilon_decay_steps=1000)
    agent = train.build_agent(settings, config)
    before = train.run_training(agent, settings, progress=False)
    iterations = int(agent.optimizer.iterations.numpy())
    assert iterations > 0 and before.steps == 600

    settings.total_steps = 1200
    resumed_agent = train.build_agent(settings, config)
    resumed = restore_checkpoint(checkpoint_path(settings.out), resumed_agent)
    assert len(resumed_agent.replay_buffer) == 0 and int(resumed_agent.optimizer.iterations.numpy()) == iterations
    for a, b in zip(resumed_agent.main_network.get_weights(), agent.main_network.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    after = train.run_training(resumed_agent, settings, progress=False, resumed=resumed)
    assert after.steps == 1200 and after.run_id == before.run_id
    assert after.episodes[:len(before.episodes)] == before.episodes
    new_episodes = after.episodes[len(before.episodes):]
    assert new_episodes and all(e["epsilon"] == pytest.approx(config.epsilon_start + min(1, e["step"] / 1000) * (
        config.epsilon_end - config.epsilon_start)) for e in new_episodes)
    assert new_episodes[0]["epsilon"] < 0.6  # exploration went on from step 600, not from epsilon 1
    assert [e["step"] for e in after.evaluations] == [300, 600, 900, 1200]
    assert after.best_eval_mean >= before.best_eval_mean
    # no buffer came back: training waited for learning_starts new transitions before its next phase
    assert int(resumed_agent.optimizer.iterations.numpy()) == iterations + 20 * len(range(1000, 1201, 100))


def test_resume_refuses_a_missing_checkpoint_and_a_budget_already_spent(tmp_path):
    assert_one_line_error(run_program("train.py", "--resume", str(tmp_path / "none")), "no checkpoint")
    settings, config = quick_settings(tmp_path, total_steps=300, eval_interval=300)
    train.run_training(train.build_agent(settings, config), settings, progress=False)
    assert_one_line_error(run_program("train.py", "--resume", str(settings.out)), "already at step 300",
                          "--total-steps")


def test_resume_accepts_the_runs_own_flags_and_refuses_other_values_naming_both(tmp_path):
    stem = tmp_path / "run"
    original = [*QUICK, "--no-early-stop", "--seed", "3", "--learning-rate", "0.002", "--out", str(stem)]
    assert run_program("train.py", *original).returncode == 0  # 600 steps
    # the original command with --resume added (and a larger budget): the same values change nothing
    resumed = run_program("train.py", *original, "--resume", str(stem), "--total-steps", "900")
    assert resumed.returncode == 0, resumed.stderr
    record = json.loads(stem.with_name("run.json").read_text())
    assert record["steps"] == 900 and record["seed"] == 3 and record["config"]["learning_rate"] == 0.002
    for flag, value, own in (("--learning-rate", "0.1", "0.002"), ("--seed", "4", "3"), ("--hidden-sizes", "32", "16"),
                             ("--eval-interval", "100", "300")):
        refused = run_program("train.py", "--resume", str(stem), "--total-steps", "1200", flag, value)
        assert_one_line_error(refused, flag, f"has {own}, not {value}")
    assert_one_line_error(run_program("train.py", "--resume", str(stem), "--total-steps", "1200", "--env",
                                      "Acrobot-v1"), "--env", "has CartPole-v1, not Acrobot-v1")


def test_an_unfinished_run_is_reported_with_the_command_that_continues_it(tmp_path):
    settings, config = quick_settings(tmp_path, total_steps=300, eval_interval=300)
    result = train.run_training(train.build_agent(settings, config), settings, progress=False)
    assert unfinished_run(settings.out)["steps"] == 300
    record = {"run_id": result.run_id, "steps": 300}
    settings.out.with_name("run.json").write_text(json.dumps(record))
    assert unfinished_run(settings.out) is None
    for stopped in ("interrupted", "write failed"):  # stopped with a record: the checkpoint continues it
        settings.out.with_name("run.json").write_text(json.dumps({**record, "steps": 340, "stop_reason": stopped}))
        assert unfinished_run(settings.out)["steps"] == 300


def kill_during_save(stem, suffix: str, nth: int, hidden: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, suffix, str(nth), *LONGER, "--hidden-sizes",
                           hidden, "--out", str(stem)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def leftovers(folder: Path) -> list[Path]:
    """Files in `folder` other than the run's own, its TensorBoard logs and the test's own. A killed run's lock
    file stays too, held by no one (the next run takes it over)."""
    own = {"agent.weights.h5", "agent.checkpoint.h5", "agent.json", "agent.csv", "agent.png", "runs", "agent.mp4",
           ".agent.lock"}
    return sorted(path for path in folder.iterdir() if path.name not in own)


def test_kill_9_at_any_moment_leaves_files_that_load_as_one_agent(tmp_path):
    stem = tmp_path / "agent"
    weights = tmp_path / "agent.weights.h5"
    assert run_program("train.py", *LONGER, "--hidden-sizes", "8", "--out", str(stem)).returncode == 0

    def loaded_network() -> tuple[int, ...]:
        agent, description = load_agent(weights)
        assert agent.config.hidden_sizes == tuple(description["config"]["hidden_sizes"])
        return agent.config.hidden_sizes

    # killed while saving its first weights: the earlier agent is still there, whole
    killed = kill_during_save(stem, ".weights.h5", 1, "24")
    assert killed.returncode == -signal.SIGKILL
    assert loaded_network() == (8,)
    (unfinished,) = leftovers(tmp_path)  # the new weights, written in full but never renamed
    assert unfinished.name.startswith(".agent.weights.h5.")
    # killed while saving a checkpoint, after its first weights: the new agent, whole; the start deleted the leftover
    killed = kill_during_save(stem, ".checkpoint.h5", 2, "24")
    assert killed.returncode == -signal.SIGKILL
    assert "deleted 1 temporary file(s) that a killed run left" in killed.stderr
    assert loaded_network() == (24,)
    # killed while writing its record at the very end: weights load, and both commands say how to continue
    assert kill_during_save(stem, ".json", 1, "16").returncode == -signal.SIGKILL
    assert loaded_network() == (16,)
    shown = run_program("visualize.py", "--weights", str(weights), "--out", str(tmp_path / "agent.mp4"))
    assert shown.returncode == 0, shown.stderr
    assert "stopped before its end (killed or interrupted), after its checkpoint at step 1200" in shown.stderr
    assert f"python train.py --resume {stem}" in shown.stderr
    resumed = run_program("train.py", "--resume", str(stem), "--total-steps", "1500", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert "deleted 1 temporary file(s) that a killed run left" in resumed.stderr
    assert leftovers(tmp_path) == []
    assert json.loads(stem.with_name("agent.json").read_text())["steps"] == 1500

    # killed at an arbitrary moment of a longer run, once its weights have replaced the earlier agent's
    process = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *LONGER, "--total-steps", "100000",
                                "--eval-interval", "100", "--hidden-sizes", "32", "--out", str(stem)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while read_description(weights)["config"]["hidden_sizes"] != [32] and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(float(np.random.default_rng().uniform(0.0, 1.0)))
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert loaded_network() == (32,)
    video = tmp_path / "agent.mp4"
    shown = run_program("visualize.py", "--weights", str(weights), "--out", str(video), "--episodes", "1")
    assert shown.returncode == 0, shown.stderr
    assert video.stat().st_size > 0


def test_a_saved_agent_loads_and_plays_without_unpickling_anything(monkeypatch):
    # a checkpoint unpickles its environment and is trusted input; a .weights.h5 that people share never unpickles
    import pickle

    def refuse(*args, **kwargs):
        raise AssertionError("loading a saved agent unpickled something")

    import_agent_class()  # TensorFlow and Keras imported first: they subclass pickle's classes as they load
    for name in ("load", "loads"):
        monkeypatch.setattr(pickle, name, refuse)
    agent, description = load_agent(ROOT / "models" / "CartPole-v1.weights.h5")
    assert description["env_id"] == "CartPole-v1"
    assert agent.greedy_action(np.zeros(4, np.float32)) in (0, 1)


def test_an_agent_saved_before_the_dqn_family_switches_still_loads_and_plays(tmp_path):
    old = tmp_path / "old.weights.h5"
    old.write_bytes((ROOT / "models" / "CartPole-v1.weights.h5").read_bytes())
    with h5py.File(old, "a") as file:  # its description as agents were saved before these fields existed
        description = json.loads(file.attrs["dqn_agent"])
        for name in ("n_step", "prioritized_replay", "priority_alpha", "priority_beta_start", "priority_epsilon",
                     "priority_updates", "dueling"):
            del description["config"][name]
        file.attrs["dqn_agent"] = json.dumps(description)
    agent, _ = load_agent(old)
    assert agent.config.n_step == 1 and not agent.config.dueling and not agent.config.prioritized_replay
    assert agent.greedy_action(np.zeros(4, np.float32)) in (0, 1)
