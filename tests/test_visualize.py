"""visualize.py as a user runs it: the video and GIF really hold the episodes played, the overlay
really draws, and every bad input ends in one clear line without touching the weights."""

from __future__ import annotations

import hashlib
import json
import re
import shutil

import h5py
import imageio.v2 as imageio
import imageio_ffmpeg
import numpy as np
import pytest
from conftest import ROOT, assert_one_line_error, run_program
from PIL import Image, ImageSequence

from agent_files import DESCRIPTION_ATTRIBUTE


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small agent trained by the real train.py, once for this module."""
    folder = tmp_path_factory.mktemp("trained")
    result = run_program("train.py", "--total-steps", "600", "--learning-starts", "200", "--train-frequency", "50",
                         "--gradient-steps", "10", "--eval-interval", "600", "--eval-episodes", "2",
                         "--final-eval-episodes", "2", "--hidden-sizes", "16", "--batch-size", "32", "--no-progress",
                         "--out", str(folder / "agent"))
    assert result.returncode == 0, result.stderr
    return folder / "agent.weights.h5"


@pytest.fixture
def weights(trained, tmp_path):
    """A private copy of the trained agent's files; the test fails if visualize.py changes the weights."""
    for suffix in (".weights.h5", ".json"):
        shutil.copy(trained.with_name("agent" + suffix), tmp_path / ("agent" + suffix))
    path = tmp_path / "agent.weights.h5"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    yield path
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, "visualize.py modified the weights"


def played_steps(stdout: str) -> list[int]:
    """CartPole pays 1 per step, so each printed return is that episode's number of steps."""
    return [int(float(value)) for value in re.findall(r"return (\S+)", stdout)]


def test_video_and_gif_hold_every_step_played(weights, tmp_path):
    video = tmp_path / "out" / "play.mp4"
    result = run_program("visualize.py", "--weights", str(weights), "--episodes", "2", "--out", str(video), "--gif")
    assert result.returncode == 0, result.stderr
    steps = played_steps(result.stdout)
    assert len(steps) == 2 and str(video) in result.stdout
    reader = imageio.get_reader(video, "ffmpeg")
    assert reader.get_meta_data()["codec"] == "h264"
    frames, _ = imageio_ffmpeg.count_frames_and_secs(str(video))
    # one frame at each reset and one after each step, and each episode's last frame held for half a second (25
    # frames at CartPole's 50 fps); moviepy's float sum of 1/fps frame durations can lose the very last frame,
    # which is then a held copy: every step's frame is in the video
    assert sum(steps) + 2 + 2 * 25 - 1 <= frames <= sum(steps) + 2 + 2 * 25
    gif = imageio.mimread(video.with_suffix(".gif"))
    assert gif[0].shape[1] == 300  # 300 pixels wide
    # every second frame, identical ones (the held last frames) merged into one that lasts as long
    with Image.open(video.with_suffix(".gif")) as picture:
        gif_ms = sum(frame.info["duration"] for frame in ImageSequence.Iterator(picture))
    assert abs(gif_ms - 1000 * frames / 50) <= 2 * 40
    assert sorted(p.name for p in video.parent.iterdir()) == ["play.gif", "play.mp4"]  # no temporary files left


def test_the_overlay_is_a_readable_panel_under_the_frame_that_leaves_the_scene_alone(weights, tmp_path):
    plain, drawn = tmp_path / "plain.mp4", tmp_path / "drawn.mp4"
    assert run_program("visualize.py", "--weights", str(weights), "--out", str(plain), "--fps", "25").returncode == 0
    assert imageio.get_reader(plain, "ffmpeg").get_meta_data()["fps"] == 25
    assert run_program("visualize.py", "--weights", str(weights), "--out", str(drawn), "--overlay").returncode == 0
    first_plain = imageio.get_reader(plain, "ffmpeg").get_data(0).astype(float)
    first_drawn = imageio.get_reader(drawn, "ffmpeg").get_data(0).astype(float)
    height = first_plain.shape[0]
    assert first_drawn.shape[0] > height and first_drawn.shape[0] % 16 == 0  # a panel under the scene
    assert np.abs(first_drawn[:height] - first_plain).mean() < 1  # the scene is the same, nothing drawn over it
    panel = first_drawn[height:].mean(axis=2)
    # light text on a dark ground: readable whatever the game's own colours
    assert np.median(panel) < 40 and (panel > 200).mean() > 0.01


def test_minatar_is_played_large_with_its_action_names_and_no_warning(tmp_path):
    import visualize

    env = visualize.make_env("MinAtar/Breakout-v1", render_mode="rgb_array")
    assert visualize.action_names(env, "MinAtar/Breakout-v1", 3) == ["no-op", "left", "right"]
    env.reset(seed=0)
    overlay = visualize.QValueOverlay(env, lambda state: np.array([0.1, 0.5, -0.2]), ["no-op", "left", "right"])
    board = env.render()
    assert board.shape == (320, 320, 3) and board.dtype == np.uint8  # 32 pixels a cell
    framed = overlay.render()
    np.testing.assert_array_equal(framed[:320], board)  # the panel goes under the board, not on it
    env.close()
    stem = tmp_path / "minatar"
    trained = run_program("train.py", "--env", "MinAtar/Breakout-v1", "--total-steps", "200", "--learning-starts",
                          "100", "--buffer-size", "1000", "--eval-interval", "200", "--eval-episodes", "1",
                          "--final-eval-episodes", "1", "--no-progress", "--dueling", "--out", str(stem))
    assert trained.returncode == 0, trained.stderr
    played = run_program("visualize.py", "--weights", str(tmp_path / "minatar.weights.h5"), "--overlay",
                         "--out", str(tmp_path / "minatar.mp4"))
    assert played.returncode == 0, played.stderr
    assert "dtype uint8" not in played.stderr and "Warn" not in played.stderr, played.stderr
    assert imageio.get_reader(tmp_path / "minatar.mp4", "ffmpeg").get_data(0).shape[1] == 320


def test_a_distributional_agents_overlay_draws_the_chosen_actions_return_distribution_under_its_q_values():
    import visualize

    env = visualize.make_env("MinAtar/Breakout-v1", render_mode="rgb_array")
    env.reset(seed=0)
    support = np.linspace(-10.0, 10.0, 5)
    chosen = np.array([0.0, 0.0, 0.0, 0.0, 1.0])  # all on the top atom: Q = 10, the greedy action
    distributions = np.array([[0.2] * 5, chosen, [1.0, 0.0, 0.0, 0.0, 0.0]])
    names = ["no-op", "left", "right"]
    plain = visualize.QValueOverlay(env, lambda state: distributions @ support, names).render()
    drawn = visualize.QValueOverlay(env, lambda state: distributions @ support, names,
                                    lambda state: distributions, support).render()
    assert drawn.shape[0] > plain.shape[0] and drawn.shape[1] == plain.shape[1]  # a chart added under the panel
    chart = drawn[plain.shape[0]:]  # below every line of text
    bar = np.all(chart == visualize.QValueOverlay.CHOSEN, axis=-1)
    columns = np.flatnonzero(bar.any(axis=0))
    # one bar, the last fifth of the width: the chosen action's distribution, not another's
    assert columns.size and columns.min() > 0.75 * drawn.shape[1]
    env.close()


def test_missing_weights_say_how_to_make_them(tmp_path):
    result = run_program("visualize.py", "--weights", str(tmp_path / "none.weights.h5"))
    assert_one_line_error(result, "no weights file", "python train.py")


def edited_copy(weights, change):
    """A copy of the weights file with the description train.py saved inside it changed by `change`."""
    edited = weights.with_name("edited.weights.h5")
    shutil.copy(weights, edited)
    with h5py.File(edited, "a") as file:
        description = json.loads(file.attrs[DESCRIPTION_ATTRIBUTE])
        change(description)
        file.attrs[DESCRIPTION_ATTRIBUTE] = json.dumps(description)
    return edited


def test_the_weights_file_alone_is_the_agent(weights, tmp_path):
    weights.with_name("agent.json").unlink()  # the run's record is for people; loading never needs it
    result = run_program("visualize.py", "--weights", str(weights), "--out", str(tmp_path / "v.mp4"))
    assert result.returncode == 0, result.stderr


def test_weights_without_a_description_are_refused(weights, tmp_path):
    bare = tmp_path / "bare.weights.h5"
    with h5py.File(weights) as source, h5py.File(bare, "w") as copy:
        for name in source:
            source.copy(name, copy)
    assert_one_line_error(run_program("visualize.py", "--weights", str(bare)), "no 'dqn_agent' description")


def test_a_description_of_another_environment_is_refused(weights):
    edited = edited_copy(weights, lambda description: description.update(env_id="Acrobot-v1"))
    assert_one_line_error(run_program("visualize.py", "--weights", str(edited)), "does not match", "Acrobot-v1")


def test_a_description_with_other_layer_sizes_is_refused(weights):
    edited = edited_copy(weights, lambda description: description["config"].update(hidden_sizes=[32, 32]))
    assert_one_line_error(run_program("visualize.py", "--weights", str(edited)), "does not hold weights")


def test_truncated_weights_are_refused(weights, tmp_path):
    broken = tmp_path / "broken.weights.h5"
    broken.write_bytes(weights.read_bytes()[:2000])
    assert_one_line_error(run_program("visualize.py", "--weights", str(broken)), "does not hold weights")


def test_unwritable_output_folder_is_refused(weights, tmp_path):
    (tmp_path / "a_file").write_text("")
    result = run_program("visualize.py", "--weights", str(weights), "--out", str(tmp_path / "a_file" / "v.mp4"))
    assert_one_line_error(result, "cannot write", "--out")


@pytest.mark.parametrize("episodes", ["0", "-3"])
def test_episodes_must_be_positive(weights, episodes):
    result = run_program("visualize.py", "--weights", str(weights), "--episodes", episodes)
    assert_one_line_error(result, "--episodes", "positive")


def test_a_seed_gymnasium_cannot_take_is_one_line(weights):
    assert_one_line_error(run_program("visualize.py", "--weights", str(weights), "--seed", "-1"), "--seed", "from 0 to")


def test_the_shipped_agent_plays_right_after_install(tmp_path):
    """The default weights in models/ exist, load, and balance CartPole for the full 500 steps."""
    video = tmp_path / "shipped.mp4"
    result = run_program("visualize.py", "--out", str(video))
    assert result.returncode == 0, result.stderr
    assert played_steps(result.stdout) == [500]
    record = json.loads((ROOT / "models" / "CartPole-v1.json").read_text())
    assert record["command"] == "python train.py" and record["final_evaluation"]["mean"] >= 475
