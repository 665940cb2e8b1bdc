"""Presets: every file loads, lookup and override precedence, one-line errors for bad files, and the
confirmation that keeps a lucky evaluation from being called a solve."""

from __future__ import annotations

import dataclasses
import json

import gymnasium as gym
import numpy as np
import pytest
from conftest import assert_one_line_error, run_program

import train
from dqn_config import DQNConfig
from presets import PRESETS_DIR, all_presets, find_preset, read_preset

PRESET_FILES = sorted(PRESETS_DIR.glob("*.toml"))


@pytest.mark.parametrize("path", PRESET_FILES, ids=[path.stem for path in PRESET_FILES])
def test_each_preset_file_loads_into_a_valid_config_and_says_where_its_numbers_come_from(path):
    preset = read_preset(path)
    assert DQNConfig(**preset.config)
    assert preset.source.get("from") and preset.source.get("measured")
    assert find_preset(preset.env_ids[0]) == preset


def test_the_cartpole_preset_is_the_defaults_written_out_with_3_step_returns():
    preset = find_preset("CartPole-v1")
    # DQNConfig() stays the one-step DQN of the worked example; the preset adds the extension that helps here
    assert DQNConfig(**preset.config) == dataclasses.replace(DQNConfig(), n_step=3)
    assert set(preset.config) == {f.name for f in dataclasses.fields(DQNConfig)}
    assert all(getattr(train.RunSettings(), name) == value for name, value in preset.run.items())


def test_an_environments_preset_is_used_and_a_flag_overrides_only_its_own_value(tmp_path):
    out = ["--out", str(tmp_path / "run")]
    command = train.parse_args(["--env", "MountainCar-v0", *out])
    settings, config, preset = command.settings, command.config, find_preset("MountainCar-v0")
    assert command.preset["name"] == preset.name == "MountainCar-v0"
    assert command.preset["file"] == "presets/MountainCar-v0.toml"
    assert config == DQNConfig(**preset.config)
    assert settings.total_steps == preset.run["total_steps"] == 120_000
    assert "reward_threshold" not in preset.run and settings.reward_threshold == -110  # the registry's threshold

    command = train.parse_args(["--env", "MountainCar-v0", "--learning-rate", "0.001", "--total-steps", "7000", *out])
    settings, config = command.settings, command.config
    assert config == dataclasses.replace(DQNConfig(**preset.config), learning_rate=0.001)
    assert settings.total_steps == 7000 and settings.eval_interval == preset.run["eval_interval"]


def test_an_environment_without_a_preset_takes_the_cartpole_defaults_and_says_so(tmp_path, capsys):
    command = train.parse_args(["--env", "CartPole-v0", "--out", str(tmp_path / "run")])
    settings, config, preset = command.settings, command.config, command.preset
    assert preset is None and config == DQNConfig() and settings.total_steps == train.RunSettings().total_steps
    assert settings.reward_threshold == gym.spec("CartPole-v0").reward_threshold
    assert capsys.readouterr().err.strip() == ("train.py: no preset for CartPole-v0: using the CartPole-v1 defaults "
                                               "(--list-presets shows the presets)")


def test_a_preset_pattern_matches_a_family_of_ids(tmp_path):
    (tmp_path / "atari.toml").write_text('env_ids = ["ALE/*-v5"]\n[config]\nbuffer_size = 1000\n')
    assert find_preset("ALE/Pong-v5", tmp_path).config == {"buffer_size": 1000}
    assert find_preset("ALE/Pong-v4", tmp_path) is None


def test_list_presets_names_every_file():
    result = run_program("train.py", "--list-presets")
    assert result.returncode == 0, result.stderr
    assert all(f"presets/{path.name}" in result.stdout for path in PRESET_FILES)


@pytest.mark.parametrize(("text", "field"), [
    ('env_ids = ["CartPole-v1"]\n[config]\nlearning_rat = 0.1\n', "config.learning_rat"),
    ('env_ids = ["CartPole-v1"]\n[config\n', "file"),
    ('env_ids = ["CartPole-v1"]\n[config]\nlearning_rate = 0\n', "config.learning_rate"),
    ('env_ids = ["CartPole-v1"]\n[config]\nbatch_size = 6.5\n', "config.batch_size"),
    ('env_ids = ["CartPole-v1"]\n[run]\ntotal_steps = -5\n', "run.total_steps"),
    ('env_ids = ["CartPole-v1"]\n[run]\nepisodes = 5\n', "run.episodes"),
    ('env_ids = ["CartPole-v1"]\n[hyper]\nx = 1\n', "hyper"),
    ('[config]\ngamma = 0.9\n', "env_ids"),
])
def test_a_bad_preset_file_is_one_line_naming_the_file_and_the_field(tmp_path, text, field):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert_one_line_error(run_program("train.py", "--preset", str(path), "--out", str(tmp_path / "run")),
                          str(path), field)


class StartDependentEnv(gym.Env):
    """One-step episodes whose return is 1 from the starts that periodic evaluations use and 0 from every
    other start: a policy that looks perfect on the evaluation's episodes and fails elsewhere."""

    observation_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, fail_elsewhere: bool = True, render_mode: str | None = None) -> None:
        self.render_mode = render_mode
        self.fail_elsewhere = fail_elsewhere
        self.good = True

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.good = not self.fail_elsewhere or seed is None or seed < train.FINAL_EVAL_SEED_OFFSET
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), float(self.good), True, False, {}


@pytest.mark.parametrize("fail_elsewhere", [True, False])
def test_an_evaluation_that_its_confirmation_does_not_bear_out_is_not_a_solve(tmp_path, fail_elsewhere):
    env_id = f"StartDependent-{int(fail_elsewhere)}-v0"
    gym.register(env_id, entry_point=StartDependentEnv, kwargs={"fail_elsewhere": fail_elsewhere})
    settings = train.RunSettings(env_id=env_id, total_steps=200, eval_interval=100, eval_episodes=20,
                                 confirm_episodes=100, reward_threshold=1.0, out=tmp_path / "run")
    config = DQNConfig(hidden_sizes=(4,), learning_starts=50, train_frequency=50, gradient_steps=2, batch_size=8)
    result = train.run_training(train.build_agent(settings, config), settings, progress=False)
    evaluations = result.evaluations
    assert all(e["mean"] == 1.0 for e in evaluations)  # every 20-episode evaluation reads perfect
    if fail_elsewhere:
        assert [e["confirmation_mean"] for e in evaluations] == [0.0, 0.0]
        assert result.solved_step is None and result.steps == 200 and not result.stop_reason.startswith("solved")
        assert result.best_eval_confirmed and result.best_eval_mean == 0.0
    else:
        assert result.solved_step == 100 and evaluations[0]["confirmation_mean"] == 1.0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run.checkpoint.h5", "run.weights.h5"]


def test_the_record_names_the_preset_and_the_values_used(tmp_path):
    from test_train_cli import QUICK

    result = run_program("train.py", *QUICK, "--out", str(tmp_path / "run"), "--optimizer", "rmsprop")
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["preset"]["name"] == "CartPole-v1" and record["preset"]["file"] == "presets/CartPole-v1.toml"
    assert record["config"]["optimizer"] == "rmsprop" and record["config"]["hidden_sizes"] == [16]
    assert record["run"]["total_steps"] == 600 and record["run"]["confirm_episodes"] == 100


def test_every_preset_is_listed_by_all_presets():
    assert [preset.path for preset in all_presets()] == PRESET_FILES
