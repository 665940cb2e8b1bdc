"""Atari 100k: DrQ's augmentation, the protocol's environment and presets, life loss, and the benchmark's report."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, assert_one_line_error, run_program

from bench.atari100k import PUBLISHED, aggregates, human_normalised, report
from dqn_config import DQNConfig
from environments import make_env
from presets import agent_presets_dir, find_preset


def shifted_images(images: np.ndarray, pad: int, seed: int = 0) -> np.ndarray:
    import keras
    import tensorflow as tf

    from dqn_agent import random_shift

    return random_shift(tf.constant(images), pad, keras.random.SeedGenerator(seed)).numpy()


def test_a_random_shift_is_an_edge_padded_crop_at_an_offset_drawn_for_each_image():
    images = np.random.default_rng(0).integers(0, 256, (32, 12, 10, 2), dtype=np.uint8)
    pad = 3
    shifted = shifted_images(images, pad)
    assert shifted.shape == images.shape and shifted.dtype == np.uint8
    offsets = []
    for image, out in zip(images, shifted, strict=True):
        padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
        matches = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                   if np.array_equal(padded[dy:dy + 12, dx:dx + 10], out)]
        assert matches, "not a crop of the edge-padded image"
        offsets.append(matches[0])
    assert len(set(offsets)) > 5, "the crops do not differ across the batch"
    assert not np.array_equal(shifted_images(images, pad, seed=1), shifted)


def test_augmented_training_steps_never_change_the_stored_frames():
    from dqn_agent import DeepQLearning

    agent = DeepQLearning((10, 10, 4), 3, DQNConfig(network="minatar_cnn", batch_size=8, buffer_size=64,
                                                     random_shift=2, n_step=3), seed=0)
    rng = np.random.default_rng(0)
    state = rng.integers(0, 2, (10, 10, 4), dtype=np.uint8)
    for step in range(40):
        next_state = rng.integers(0, 2, (10, 10, 4), dtype=np.uint8)
        agent.remember(state, int(rng.integers(3)), 1.0, next_state, step % 13 == 12, False)
        state = next_state
    stored = [(np.array(t.state), np.array(t.next_state)) for t in agent.replay_buffer]
    agent.training_phase(4)
    assert all(np.array_equal(np.asarray(t.state), s) and np.array_equal(np.asarray(t.next_state), n)
               for t, (s, n) in zip(agent.replay_buffer, stored, strict=True))


def test_the_atari_100k_environment_has_no_sticky_actions_the_minimal_action_set_and_108k_frames_at_most():
    env = make_env("ALE/Breakout-v5", sticky_actions=0.0)
    ale = env.unwrapped.ale
    assert ale.getFloat("repeat_action_probability") == 0.0
    assert ale.getInt("max_num_frames_per_episode") == 108_000  # 27,000 agent steps of 4 frames
    assert env.action_space.n == 4  # Breakout's minimal set (NOOP, FIRE, RIGHT, LEFT), not all 18
    assert env.observation_space.shape == (84, 84, 4)
    env.close()
    default = make_env("ALE/Breakout-v5")
    assert default.unwrapped.ale.getFloat("repeat_action_probability") == pytest.approx(0.25)
    default.close()


@pytest.mark.parametrize("agent", ["der", "drq"])
def test_each_atari_100k_preset_holds_the_protocol(agent):
    preset = find_preset("ALE/Pong-v5", agent_presets_dir(agent)).over(find_preset("ALE/Pong-v5"))
    assert preset.run["total_steps"] == 100_000 and preset.run["final_eval_episodes"] == 100
    assert preset.run["sticky_actions"] == 0.0 and preset.run["eval_epsilon"] == 0.001
    assert preset.run["keep_best"] is False  # scored as training left it, not by the best evaluation
    config = DQNConfig(**preset.config)
    assert config.terminal_on_life_loss and config.clip_rewards
    assert (config.n_step, config.train_frequency, config.gradient_steps, config.learning_starts) == (10, 1, 1, 1600)
    assert (config.learning_rate, config.adam_epsilon, config.batch_size) == (1e-4, 1.5e-4, 32)
    if agent == "drq":
        assert config.random_shift == 4 and config.target_update_interval == 1 and not config.distributional
    else:
        assert config.distributional and config.noisy_nets and config.prioritized_replay and not config.random_shift


def test_a_lost_life_ends_the_learning_episode_but_not_the_game(tmp_path):
    import keras

    from dqn_agent import DeepQLearning
    from train import RunSettings, run_training

    def run(terminal_on_life_loss: bool) -> tuple[int, int, int]:
        keras.utils.set_random_seed(0)
        config = DQNConfig(learning_starts=10_000, buffer_size=2_000, batch_size=4, epsilon_decay_steps=1,
                           epsilon_end=1.0, terminal_on_life_loss=terminal_on_life_loss)
        agent = DeepQLearning((84, 84, 4), 4, config, seed=0)
        settings = RunSettings(env_id="ALE/Breakout-v5", total_steps=1_200, eval_interval=1_200, eval_episodes=1,
                               eval_epsilon=1.0, sticky_actions=0.0, out=tmp_path / f"run{terminal_on_life_loss}")
        result = run_training(agent, settings, progress=False)
        terminals = sum(t.terminated for t in agent.replay_buffer)
        return terminals, len(result.episodes), len(agent.replay_buffer)

    terminals, games, stored = run(terminal_on_life_loss=True)
    plain_terminals, plain_games, plain_stored = run(terminal_on_life_loss=False)
    assert (games, stored) == (plain_games, plain_stored)  # the same random play, the same games
    assert plain_terminals == games  # without it, only a game's end is terminal
    assert terminals >= 3 * max(games, 1)  # with it, every life lost is: five per game of Breakout


def test_human_normalised_scores_are_worked_out_by_hand():
    assert human_normalised("Pong", 0.0) == pytest.approx(20.7 / 35.3)  # (0 - -20.7) / (14.6 - -20.7)
    assert human_normalised("Breakout", 30.5) == pytest.approx(1.0)
    assert human_normalised("Boxing", 0.1) == pytest.approx(0.0)
    assert human_normalised("Tetris", 5.0) is None  # no published human score


def test_the_aggregate_is_the_interquartile_mean_with_its_bootstrap_interval():
    scores = np.array([[0.0, 10.0], [1.0, 11.0], [2.0, 12.0], [3.0, 13.0]])  # 4 runs x 2 games
    result = aggregates(scores)
    assert result["mean"] == pytest.approx(6.5) and result["median"] == pytest.approx(6.5)
    # the middle half of the 8 scores 0 1 2 3 10 11 12 13 is 2 3 10 11
    assert result["iqm"] == pytest.approx(6.5)
    assert result["iqm_low"] <= result["iqm"] <= result["iqm_high"] and result["iqm_low"] < result["iqm_high"]


def test_the_bootstrap_interval_is_seeded_and_leaves_numpys_global_generator_alone():
    scores = np.array([[0.0, 10.0], [1.0, 17.0], [5.0, 12.0], [3.0, 19.0], [8.0, 11.0]])  # 5 runs x 2 games
    np.random.seed(1)
    first = aggregates(scores)
    np.random.seed(2)  # rliable resamples with NumPy's global generator, whatever state it is left in
    assert aggregates(scores) == first
    np.random.seed(3)
    aggregates(scores)
    after = np.random.random()
    np.random.seed(3)
    assert np.random.random() == after


def test_the_report_puts_a_game_without_published_scores_in_the_table_and_out_of_the_aggregate(capsys):
    rows = [{"game": game, "agent": "drq", "seed": seed, "final": final, "steps_per_second": 30.0,
             "process_seconds": 3600.0, "peak_mb": 2000, "evaluations": [[100_000, final]]}
            for game, finals in (("Pong", [-10.0, -5.0, 0.0]), ("Tetris", [1.0, 2.0, 3.0])) for seed, final in
            enumerate(finals)]
    results = report(rows, ["Pong", "Tetris"])
    printed = capsys.readouterr().out
    assert results["left_out"] == ["Tetris"] and results["aggregate"]["games"] == ["Pong"]
    assert results["aggregate"]["mean"] == pytest.approx(human_normalised("Pong", -5.0))
    assert results["published_aggregate"]["DrQ"]["mean"] == pytest.approx(human_normalised("Pong", PUBLISHED["Pong"]
                                                                                            ["DrQ"]))
    assert "| Tetris | 3 |" in printed and sum("left out" in line for line in printed.splitlines()) == 1


@pytest.mark.parametrize(("args", "words"), [
    (["--games", "Pongg"], ["--games", "Pongg"]),
    (["--seeds", "-1"], ["--seeds"]),
    (["--jobs", "0"], ["--jobs", "at least 1"]),
    (["--agent", "rainbow"], ["--agent", "invalid choice"]),
])
def test_bad_input_is_one_line_and_exit_2(args, words):
    result = subprocess.run([sys.executable, "-m", "bench.atari100k", *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    assert_one_line_error(result, *words)


TINY_ATARI = ["--learning-starts", "20", "--batch-size", "4", "--buffer-size", "500", "--eval-episodes", "1",
              "--final-eval-episodes", "2", "--eval-epsilon", "1.0"]


def test_a_killed_run_goes_on_from_its_checkpoint_and_its_final_record_is_complete(tmp_path):
    stem = tmp_path / "runs" / "drq-Pong-0"  # its worker died after its first checkpoint: no record
    killed = run_program("train.py", "--env", "ALE/Pong-v5", "--agent", "drq", "--seed", "0", "--out", str(stem),
                         "--total-steps", "60", "--checkpoint-buffer", "--no-progress", *TINY_ATARI)
    assert killed.returncode == 0, killed.stderr
    stem.with_name(stem.name + ".json").unlink()
    bench = subprocess.run([sys.executable, "-m", "bench.atari100k", "--games", "Pong", "--seeds", "0",
                            "--total-steps", "120", "--out", str(tmp_path), "--", *TINY_ATARI], cwd=ROOT,
                           capture_output=True, text=True, timeout=600)
    assert bench.returncode == 0, bench.stderr
    assert stem.with_name(stem.name + ".json").is_file(), bench.stdout + bench.stderr
    record = json.loads(stem.with_name(stem.name + ".json").read_text())
    assert [e["step"] for e in record["evaluations"]] == [60, 120] and record["steps"] == 120
    assert record["final_evaluation"]["episodes"] == 2 and record["config"]["random_shift"] == 4
    results = json.loads((tmp_path / "atari100k-drq.json").read_text())
    (run,) = results["runs"]
    assert run["final"] == record["final_evaluation"]["mean"] and run["peak_mb"] > 100
    assert results["aggregate"]["games"] == ["Pong"] and "| Pong | 1 |" in bench.stdout
    assert (tmp_path / "atari100k-drq.png").read_bytes()[:4] == b"\x89PNG"


def test_an_agents_report_covers_its_finished_runs_of_earlier_commands_and_leaves_the_other_agents_alone(tmp_path):
    stem = tmp_path / "runs" / "drq-Pong-0"
    bench = subprocess.run([sys.executable, "-m", "bench.atari100k", "--games", "Pong", "--seeds", "0",
                            "--total-steps", "60", "--out", str(tmp_path), "--", *TINY_ATARI], cwd=ROOT,
                           capture_output=True, text=True, timeout=600)
    assert bench.returncode == 0, bench.stderr
    final = json.loads(stem.with_name(stem.name + ".json").read_text())["final_evaluation"]["mean"]

    def report(*args: str, total_steps: int = 60) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bench.atari100k", "--report-only", "--total-steps",
                               str(total_steps), "--out", str(tmp_path), *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=300)

    other_game = report("--games", "Boxing", "--seeds", "1")  # Pong seed 0 ran in the command before
    assert other_game.returncode == 0, other_game.stderr
    drq = json.loads((tmp_path / "atari100k-drq.json").read_text())
    assert [(run["game"], run["seed"], run["final"]) for run in drq["runs"]] == [("Pong", 0, final)]
    assert report("--agent", "der").returncode == 0
    assert json.loads((tmp_path / "atari100k-der.json").read_text())["runs"] == []
    assert json.loads((tmp_path / "atari100k-drq.json").read_text()) == drq
    longer = report(total_steps=120)  # a run of another budget is another grid's
    assert longer.returncode == 0 and json.loads((tmp_path / "atari100k-drq.json").read_text())["runs"] == []
