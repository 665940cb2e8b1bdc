"""Checkpoints: what a training run needs to continue where it stopped, in one file, ``STEM.checkpoint.h5``.

`train.run_training` writes one at each evaluation, atomically (a temporary file renamed over the old
one), so a run stopped by Ctrl-C, by a kill or by reaching its step budget continues with
``python train.py --resume STEM``. A checkpoint holds:

- both networks' weights and the optimizer's variables (its step count and moment estimates);
- the step, the training history (episodes, evaluations, best score so far), the run settings and the
  config, the agent's random generator, and the episode in progress with its environment, pickled
  (an environment that cannot be pickled, such as Box2D's, starts a new episode on resume instead);
- with ``--checkpoint-buffer``, the replay buffer, each observation stored once (and each Atari frame
  once) however many transitions share it. With it, a resumed run ends with the same weights as the
  same run never stopped, bit for bit; without it, the buffer is refilled before training resumes.

No TensorFlow is imported here; the agent's networks and optimizer are read and written through their
Keras methods.
"""

from __future__ import annotations

import io
import json
import pickle
import shlex
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import h5py
import numpy as np

from common import UserError, atomic_write
from environments import StackedFrames

if TYPE_CHECKING:
    from dqn_agent import DeepQLearning

STATE_ATTRIBUTE = "training_state"


def checkpoint_path(stem: Path) -> Path:
    """``STEM.checkpoint.h5``."""
    return stem.with_name(stem.name + ".checkpoint.h5")


@dataclass
class Resumed:
    """What `restore_checkpoint` hands back to the training loop.

    :param state: the JSON part: ``settings``, ``config``, ``result``, ``loop``, ``preset`` and ``rng``.
    :param env: the training environment as it was, or None if it could not be pickled.
    :param observation: the observation the agent was in, or None with `env`.
    """

    state: dict[str, Any]
    env: gym.Env | None
    observation: Any


def save_checkpoint(path: Path, agent: DeepQLearning, state: dict[str, Any], env: gym.Env, observation: Any,
                    include_buffer: bool) -> None:
    """Write everything the run needs to continue into `path`, atomically.

    :param state: JSON-serialisable: the step, settings, config, result and loop variables.
    :param env: the training environment, pickled if it can be, with `observation`.
    :param include_buffer: also write the replay buffer.
    """
    try:
        episode = pickle.dumps((env, observation), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # Box2D worlds and other native objects cannot be pickled: resume starts a new episode
        episode = None
    state = {**state, "rng": agent.rng.bit_generator.state}

    content = io.BytesIO()  # made in memory: a full disk fails the plain write below, never HDF5 mid-file
    with h5py.File(content, "w") as file:
        file.attrs[STATE_ATTRIBUTE] = json.dumps(state)
        for name, arrays in (("main", agent.main_network.get_weights()),
                             ("target", agent.target_network.get_weights()),
                             ("optimizer", [np.asarray(v) for v in agent.optimizer.variables])):
            group = file.create_group(name)
            for i, array in enumerate(arrays):
                group.create_dataset(str(i), data=array)
        if episode is not None:
            file.create_dataset("episode", data=np.void(episode))
        if include_buffer:
            _write_buffer(file.create_group("replay_buffer"), agent.replay_buffer)
    atomic_write(path, content.getbuffer())


def read_checkpoint_state(path: Path) -> dict[str, Any]:
    """The JSON part of a checkpoint, read with h5py alone (no TensorFlow).

    :raises UserError: if there is no readable checkpoint at `path`.
    """
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}: give the --out STEM of a run that reached its first evaluation "
                        "(a run writes its checkpoint there)")
    try:
        with h5py.File(path, "r") as file:
            return json.loads(file.attrs[STATE_ATTRIBUTE])
    except (OSError, KeyError, ValueError) as error:
        raise UserError(f"{path} is not a checkpoint written by train.py ({type(error).__name__}: {error})") from error


def unfinished_run_step(stem: Path) -> int | None:
    """The step of the last checkpoint of the run at `stem` if that run stopped without its final record
    (``STEM.json``), as a killed run does; None if there is no such checkpoint.
    """
    path = checkpoint_path(stem)
    if not path.is_file():
        return None
    try:
        state = read_checkpoint_state(path)
        record_path = stem.with_name(stem.name + ".json")
        record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    except (UserError, ValueError, OSError):
        return None
    checkpoint_run, checkpoint_step = state["result"]["run_id"], state["result"]["steps"]
    if record.get("run_id") == checkpoint_run and record.get("steps", 0) >= checkpoint_step:
        return None
    return checkpoint_step


def unfinished_run_note(stem: Path) -> str | None:
    """What a command says of a run at `stem` that stopped without its final record, with the command that
    continues it; None if there is no such run."""
    step = unfinished_run_step(stem)
    if step is None:
        return None
    return (f"the run at {stem} stopped at step {step} without its final record (killed?); continue it with: "
            f"python train.py --resume {shlex.quote(str(stem))}")


def restore_checkpoint(path: Path, agent: DeepQLearning) -> Resumed:
    """Put the networks, optimizer, random generator and (if saved) replay buffer of `path` into `agent`.

    :param agent: a fresh agent built with the checkpoint's config.
    """
    state = read_checkpoint_state(path)
    with h5py.File(path, "r") as file:
        def arrays(name: str) -> list[np.ndarray]:
            return [file[name][str(i)][()] for i in range(len(file[name]))]

        agent.main_network.set_weights(arrays("main"))
        agent.target_network.set_weights(arrays("target"))
        optimizer_values = arrays("optimizer")
        if len(optimizer_values) != len(agent.optimizer.variables):
            raise UserError(f"{path} holds an optimizer of another kind than its config's")
        for variable, value in zip(agent.optimizer.variables, optimizer_values, strict=True):
            variable.assign(value)
        if "replay_buffer" in file:
            agent.replay_buffer.extend(_read_buffer(file["replay_buffer"]))
        episode = pickle.loads(file["episode"][()].tobytes()) if "episode" in file else (None, None)
    agent.rng.bit_generator.state = state["rng"]
    return Resumed(state, *episode)


def _write_buffer(group: h5py.Group, buffer: deque) -> None:
    """Transitions as columns; each observation object once, and for frame stacks each frame once."""
    unique, indices = _by_identity(observation for t in buffer for observation in (t[0], t[3]))
    group.create_dataset("indices", data=np.array(indices, np.int64).reshape(-1, 2))
    group.create_dataset("actions", data=np.array([t[1] for t in buffer], np.int64))
    group.create_dataset("rewards", data=np.array([t[2] for t in buffer], np.float64))
    group.create_dataset("terminated", data=np.array([t[4] for t in buffer], bool))
    if unique and isinstance(unique[0], StackedFrames):
        frames, frame_indices = _by_identity(frame for stack in unique for frame in stack.frames)
        group.create_dataset("frames", data=np.stack(frames), compression="lzf")
        group.create_dataset("stacks", data=np.array(frame_indices, np.int64).reshape(len(unique), -1))
    else:
        group.create_dataset("observations", data=np.stack(unique) if unique else np.zeros((0,)))


def _by_identity(objects: Iterable[Any]) -> tuple[list[Any], list[int]]:
    """Each distinct object once (the same object, not an equal one), and the position of each in that list."""
    position: dict[int, int] = {}
    distinct: list[Any] = []
    indices = []
    for item in objects:
        if id(item) not in position:
            position[id(item)] = len(distinct)
            distinct.append(item)
        indices.append(position[id(item)])
    return distinct, indices


def _read_buffer(group: h5py.Group) -> list[tuple]:
    if "frames" in group:
        frames = list(group["frames"][()])
        unique: list[Any] = [StackedFrames(tuple(frames[i] for i in stack)) for stack in group["stacks"][()]]
    else:
        unique = list(group["observations"][()])
    return [(unique[s], int(a), float(r), unique[n], bool(t)) for (s, n), a, r, t in
            zip(group["indices"][()], group["actions"][()], group["rewards"][()], group["terminated"][()],
                strict=True)]
