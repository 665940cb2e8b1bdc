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
    # one frame at each reset and one after each step; moviepy's float sum of 1/fps frame durations can
    # lose the very last frame, so a single frame less is accepted
    assert sum(steps) + 2 - 1 <= frames <= sum(steps) + 2
    gif = imageio.mimread(video.with_suffix(".gif"))
    assert gif[0].shape[1] == 300  # 300 pixels wide
    assert abs(len(gif) - frames / 2) <= 1  # every second frame
    assert sorted(p.name for p in video.parent.iterdir()) == ["play.gif", "play.mp4"]  # no temporary files left


def test_overlay_draws_on_the_frames(weights, tmp_path):
    plain, drawn = tmp_path / "plain.mp4", tmp_path / "drawn.mp4"
    assert run_program("visualize.py", "--weights", str(weights), "--out", str(plain), "--fps", "25").returncode == 0
    assert imageio.get_reader(plain, "ffmpeg").get_meta_data()["fps"] == 25
    assert run_program("visualize.py", "--weights", str(weights), "--out", str(drawn), "--overlay").returncode == 0
    first_plain = imageio.get_reader(plain, "ffmpeg").get_data(0).astype(float)
    first_drawn = imageio.get_reader(drawn, "ffmpeg").get_data(0).astype(float)
    text_area, cart_area = (slice(0, 80), slice(0, 250)), (slice(200, 400), slice(0, 600))
    assert np.abs(first_drawn[text_area] - first_plain[text_area]).mean() > 5  # the text is there
    assert np.abs(first_drawn[cart_area] - first_plain[cart_area]).mean() < 1  # the scene is the same


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
