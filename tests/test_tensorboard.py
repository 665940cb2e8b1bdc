"""TensorBoard logs of a real run, read back with TensorBoard's own event reader."""

from __future__ import annotations

import csv
import math

from conftest import run_program
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util.tensor_util import make_ndarray
from test_train_cli import QUICK

SCALARS = {"episode/return", "episode/length", "episode/epsilon", "train/loss", "train/mean_max_q", "eval/mean",
           "eval/std", "time/steps_per_second"}


def read_run(folder) -> EventAccumulator:
    events = EventAccumulator(str(folder), size_guidance={"tensors": 0})  # 0: keep every point
    events.Reload()
    return events


def values(events: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(event.step, float(make_ndarray(event.tensor_proto))) for event in events.Tensors(tag)]


def test_a_run_logs_every_scalar_and_its_hyperparameters(tmp_path):
    result = run_program("train.py", *QUICK, "--no-early-stop", "--out", str(tmp_path / "run"),
                         "--tensorboard", str(tmp_path / "logs"))
    assert result.returncode == 0, result.stderr
    assert f"tensorboard --logdir {tmp_path / 'logs'}" in result.stdout
    (folder,) = (tmp_path / "logs").iterdir()
    events = read_run(folder)
    assert set(events.Tags()["tensors"]) >= SCALARS
    with open(tmp_path / "run.csv") as file:
        rows = list(csv.DictReader(file))
    episodes = [(int(row["step"]), float(row["return"])) for row in rows if row["kind"] == "episode"]
    assert values(events, "episode/return") == episodes  # every episode, at its last step
    assert [step for step, _ in values(events, "eval/mean")] == [300, 600]
    # training phases every 50 steps after step 200: at 250, 300, ..., 600
    assert [step for step, _ in values(events, "train/loss")] == list(range(250, 601, 50))
    assert all(value > 0 for _, value in values(events, "time/steps_per_second"))
    hyperparameters = events.PluginTagToContent("hparams")
    assert hyperparameters and b"learning_rate" in next(iter(hyperparameters.values()))


def test_no_tensorboard_writes_no_logs(tmp_path):
    result = run_program("train.py", *QUICK, "--out", str(tmp_path / "run"), "--no-tensorboard")
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "runs").exists()


def test_prioritized_replay_and_c51_log_their_weights_the_draws_skew_and_the_distributions_entropy(tmp_path):
    result = run_program("train.py", *QUICK, "--no-early-stop", "--prioritized-replay", "--distributional",
                         "--num-atoms", "11", "--out", str(tmp_path / "run"), "--tensorboard", str(tmp_path / "logs"))
    assert result.returncode == 0, result.stderr
    (folder,) = (tmp_path / "logs").iterdir()
    events = read_run(folder)
    weights = values(events, "replay/mean_importance_weight")
    spread = values(events, "replay/max_to_mean_priority")
    assert [step for step, _ in weights] == list(range(250, 601, 50))  # each training phase
    assert [step for step, _ in spread] == [300, 600]  # each evaluation: it reads every priority
    assert all(0.0 < value <= 1.0 for _, value in weights)  # normalised by the batch's largest weight
    assert all(value >= 1.0 for _, value in spread) and spread[-1][1] > 1.0  # priorities differ once learned
    entropy = values(events, "train/distribution_entropy")
    assert [step for step, _ in entropy] == [300, 600]
    assert all(0.0 < value < math.log(11) + 1e-6 for _, value in entropy)  # between sure and flat
