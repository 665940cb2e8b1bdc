"""Learning from pixels: Atari and MinAtar preprocessing, the convolutional networks, a replay memory whose
transitions share their frames, rewards clipped for learning only, and an image agent's files round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import assert_one_line_error, run_program
from gymnasium.utils.env_checker import check_env

import train
from agent_files import load_agent
from dqn_agent import DeepQLearning
from dqn_config import ConfigError, DQNConfig
from environments import make_env
from replay_memory import StackedFrames

FRAME_BYTES = 84 * 84  # one grayscale 84x84 frame, uint8


def test_atari_frames_are_84x84_grayscale_uint8_stacked_four_deep_channel_last():
    env = make_env("ALE/Pong-v5")
    assert env.observation_space.shape == (84, 84, 4) and env.observation_space.dtype == np.uint8
    state, _ = env.reset(seed=0)
    for _ in range(10):
        state, *_ = env.step(env.action_space.sample())
    array = np.asarray(state)
    assert array.shape == (84, 84, 4) and array.dtype == np.uint8 and array.max() > array.min()
    assert env.unwrapped.get_action_meanings()[:2] == ["NOOP", "FIRE"]
    assert env.get_wrapper_attr("_frameskip") == 1  # only AtariPreprocessing skips frames
    env.close()


def test_minatar_boards_are_uint8_images_of_0_and_255():
    env = make_env("MinAtar/Breakout-v1", render_mode="rgb_array")
    state, _ = env.reset(seed=0)
    assert state.shape == (10, 10, 4) and state.dtype == np.uint8 and set(np.unique(state)) == {0, 255}
    frame = env.render()
    assert frame.shape == (320, 320, 3) and frame.dtype == np.uint8  # 32 pixels a cell, large enough to read
    env.close()


def play_into_memory(agent: DeepQLearning, env_id: str, steps: int) -> None:
    """Random play stored as train.py stores it: each next state becomes the state of the next step."""
    env = make_env(env_id)
    state, _ = env.reset(seed=0)
    for _ in range(steps):
        action = int(env.action_space.sample())
        next_state, reward, terminated, truncated, _ = env.step(action)
        agent.remember(state, action, float(reward), next_state, terminated, truncated)
        state = env.reset()[0] if terminated or truncated else next_state
    env.close()


def test_atari_transitions_in_the_replay_memory_share_their_frames():
    agent = DeepQLearning((84, 84, 4), 6, DQNConfig(batch_size=32, buffer_size=1000))
    play_into_memory(agent, "ALE/Pong-v5", 300)
    memory = agent.replay_buffer
    # s of one is s' of the one before: one stored object
    assert all(memory[i + 1].state is memory[i].next_state for i in range(len(memory) - 1))
    assert all(isinstance(t.state, StackedFrames) for t in memory)
    frames = {id(frame): frame for t in memory for frame in (*t.state.frames, *t.next_state.frames)}
    bytes_per_transition = sum(frame.nbytes for frame in frames.values()) / len(memory)
    assert bytes_per_transition < 1.1 * FRAME_BYTES  # one new frame a step, not two stacks of four (8 frames)
    batch, _ = agent.sample(32)
    assert batch.states.shape == (32, 84, 84, 4) and batch.states.dtype == np.uint8
    # no episode of Pong ends within 300 steps, so every next state is its state moved on by one frame
    np.testing.assert_array_equal(batch.next_states[..., :3], batch.states[..., 1:])


@pytest.mark.parametrize("env_id", ["CartPole-v1", "LunarLander-v3", "ALE/Pong-v5"])
def test_every_environment_keeps_gymnasiums_contract(env_id):
    env = make_env(env_id)
    check_env(env, skip_render_check=True)  # Gymnasium's own checker: spaces, seeding, determinism, numpy arrays
    state, _ = env.reset(seed=0)
    assert type(state) is np.ndarray
    env.close()


def test_minatar_keeps_gymnasiums_contract_but_for_its_own_unseeded_generator():
    env = make_env("MinAtar/Breakout-v1")
    # MinAtar's environment seeds its own generator, not Gymnasium's np_random, which check_env looks at
    with pytest.raises(AssertionError, match="random number generator to have been generated given a seed"):
        check_env(env, skip_render_check=True)
    first = [env.reset(seed=7)[0], *(env.step(1)[0] for _ in range(20))]
    again = [env.reset(seed=7)[0], *(env.step(1)[0] for _ in range(20))]
    assert all(type(a) is np.ndarray and env.observation_space.contains(a) for a in first)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))  # same seed, same frames
    env.close()


@pytest.mark.parametrize(("shape", "network", "layers"), [
    ((84, 84, 4), "nature_cnn", ["Rescaling", "Conv2D", "Conv2D", "Conv2D", "Flatten", "Dense", "Dense"]),
    ((10, 10, 4), "minatar_cnn", ["Rescaling", "Conv2D", "Flatten", "Dense", "Dense"]),
    ((4,), "mlp", ["Dense", "Dense", "Dense"]),
])
def test_the_network_follows_the_observation_and_gives_one_q_value_per_action(shape, network, layers):
    agent = DeepQLearning(shape, 5, DQNConfig())
    assert DQNConfig().network_for(shape) == network
    assert [type(layer).__name__ for layer in agent.main_network.layers] == layers
    states = np.random.default_rng(0).integers(0, 256, (3, *shape)).astype(agent.observation_dtype)
    assert agent.main_network(states).shape == (3, 5)
    np.testing.assert_allclose(agent.q_values(states), agent.main_network(states).numpy(), rtol=1e-5, atol=1e-5)
    if network == "nature_cnn":
        assert [layer.output.shape[1:3] for layer in agent.main_network.layers[1:4]] == [(20, 20), (9, 9), (7, 7)]


def test_a_network_that_cannot_take_the_observation_is_refused():
    with pytest.raises(ConfigError, match="nature_cnn cannot take"):
        DQNConfig(network="nature_cnn").network_for((10, 10, 4))
    with pytest.raises(ConfigError, match="mlp cannot take"):
        DQNConfig(network="mlp").network_for((84, 84, 4))


def test_rewards_are_clipped_for_learning_only_and_returns_stay_the_games(tmp_path):
    settings = train.RunSettings(env_id="tests.image_env:ImageObs-v0", total_steps=100, eval_interval=100,
                                 eval_episodes=2, reward_threshold=None, out=tmp_path / "run")
    config = DQNConfig(clip_rewards=True, batch_size=8, learning_starts=50, train_frequency=10, gradient_steps=2)
    agent = train.build_agent(settings, config)
    result = train.run_training(agent, settings, progress=False)
    assert {t.reward for t in agent.replay_buffer} == {0.0, 1.0}  # the game pays 5
    assert any(episode["return"] > 5 for episode in result.episodes)
    assert all(episode["return"] % 5 == 0 for episode in result.episodes)
    assert result.evaluations[0]["mean"] % 5 == 0


def test_an_image_agent_trains_saves_loads_and_plays_on_video(tmp_path):
    stem = tmp_path / "pixels"
    result = run_program("train.py", "--env", "tests.image_env:ImageObs-v0", "--total-steps", "300",
                         "--learning-starts", "100", "--train-frequency", "20", "--gradient-steps", "5",
                         "--batch-size", "16",
                         "--eval-interval", "300", "--eval-episodes", "2", "--final-eval-episodes", "2",
                         "--no-progress", "--out", str(stem))
    assert result.returncode == 0, result.stderr
    record = json.loads(stem.with_suffix(".json").read_text())
    assert record["observation_shape"] == [8, 8, 3] and record["config"]["network"] == "auto"
    agent, _ = load_agent(tmp_path / "pixels.weights.h5")
    assert [type(layer).__name__ for layer in agent.main_network.layers][:2] == ["Rescaling", "Conv2D"]
    video = tmp_path / "pixels.mp4"
    played = run_program("visualize.py", "--weights", str(tmp_path / "pixels.weights.h5"), "--out", str(video),
                         "--overlay")
    assert played.returncode == 0, played.stderr
    assert video.stat().st_size > 0 and "episode 0 (seed 0): return" in played.stdout


def test_a_missing_ale_py_is_one_line(tmp_path):
    fake = tmp_path / "ale_py"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('No module named ale_py')\n")
    result = run_program("train.py", "--env", "ALE/Pong-v5", env={"PYTHONPATH": str(tmp_path)})
    assert_one_line_error(result, "needs ale-py", "pip install")


def test_an_atari_agent_is_recorded_as_cartpole_is(tmp_path):
    stem = tmp_path / "pong"
    result = run_program("train.py", "--env", "ALE/Pong-v5", "--total-steps", "200", "--learning-starts", "100",
                         "--buffer-size", "1000", "--eval-interval", "200", "--eval-episodes", "1",
                         "--final-eval-episodes", "1", "--no-progress", "--out", str(stem), timeout=600)
    assert result.returncode == 0, result.stderr
    record = json.loads(stem.with_suffix(".json").read_text())
    assert record["preset"]["name"] == "Atari" and record["config"]["clip_rewards"] is True
    assert record["final_evaluation"]["mean"] <= -10  # an untrained agent loses Pong; the game's score, not clipped
    video = tmp_path / "pong.mp4"
    played = run_program("visualize.py", "--weights", str(tmp_path / "pong.weights.h5"), "--out", str(video),
                         timeout=600)
    assert played.returncode == 0, played.stderr
    import imageio_ffmpeg

    frames, _ = imageio_ffmpeg.count_frames_and_secs(str(video))
    assert frames > 100 and "return -" in played.stdout
