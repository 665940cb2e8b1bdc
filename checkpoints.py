"""Checkpoints: what a training run needs to continue where it stopped, in one file, ``STEM.checkpoint.h5``.

`train.run_training` writes one at each evaluation, atomically (a temporary file renamed over the old
one), so a run stopped by Ctrl-C, by a kill or by reaching its step budget continues with
``python train.py --resume STEM``. A checkpoint holds:

- both networks' weights, the optimizer's variables (its step count and moment estimates), and the states of
  noisy networks' random generators;
- the step, the training history (episodes, evaluations, best score so far), the run settings and the
  config, the agent's random generator, and the episode in progress with its environment, pickled
  (an environment that cannot be pickled, such as Box2D's, starts a new episode on resume instead);
- with ``--checkpoint-buffer``, the replay memory (`ReplayMemory.state_arrays`): its transitions, each
  observation stored once (and each Atari frame once) however many transitions share it, its n-step window and
  its priorities. With it, a resumed run ends with the same weights as the
  same run never stopped, bit for bit; without it, the buffer is refilled before training resumes.

No TensorFlow is imported here; the agent's networks and optimizer are read and written through their
Keras methods.
"""

from __future__ import annotations

import io
import json
import pickle
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import h5py
import numpy as np

from common import UserError, atomic_write, stem_file

if TYPE_CHECKING:
    from dqn_agent import DeepQLearning

STATE_ATTRIBUTE = "training_state"


def checkpoint_path(stem: Path) -> Path:
    """``STEM.checkpoint.h5``."""
    return stem_file(stem, ".checkpoint.h5")


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
                             ("optimizer", [np.asarray(v) for v in agent.optimizer.variables]),
                             ("noise", [np.asarray(g.state) for g in agent.noise_generators])):
            group = file.create_group(name)
            for i, array in enumerate(arrays):
                group.create_dataset(str(i), data=array)
        if episode is not None:
            file.create_dataset("episode", data=np.void(episode))
        if include_buffer:
            group = file.create_group("replay_buffer")
            for name, array in agent.memory.state_arrays().items():  # frames compress well: Atari's go through lzf
                group.create_dataset(name, data=array, compression="lzf" if name == "frames" else None)
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


# A run's record with one of these stop reasons is that of a run stopped before its end, which its checkpoint continues
STOPPED_EARLY = ("interrupted", "write failed")


def unfinished_run(stem: Path) -> dict[str, Any] | None:
    """The training's progress at the last checkpoint of the run at `stem` (its ``steps``, its ``seconds``...) if
    that run stopped before its end: without its final record (``STEM.json``), as a killed run does, or with a
    record that says it was stopped (Ctrl-C, SIGTERM, a failed write: `STOPPED_EARLY`); None if there is no such
    checkpoint.
    """
    path = checkpoint_path(stem)
    if not path.is_file():
        return None
    try:
        progress = read_checkpoint_state(path)["result"]
        record_path = stem_file(stem, ".json")
        record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    except (UserError, ValueError, OSError):
        return None
    if (record.get("run_id") == progress["run_id"] and record.get("steps", 0) >= progress["steps"]
            and record.get("stop_reason") not in STOPPED_EARLY):
        return None
    return progress


def unfinished_run_note(stem: Path) -> str | None:
    """What a command says of a run at `stem` that stopped before its end, with the command that continues it;
    None if there is no such run."""
    progress = unfinished_run(stem)
    if progress is None:
        return None
    return (f"the run at {stem} stopped before its end (killed or interrupted), after its checkpoint at step "
            f"{progress['steps']}; "
            "continue it with: "
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
        for generator, value in zip(agent.noise_generators, arrays("noise") if "noise" in file else [], strict=True):
            generator.state.assign(value)
        if "replay_buffer" in file:
            agent.memory.restore_arrays({name: dataset[()] for name, dataset in file["replay_buffer"].items()})
        episode = pickle.loads(file["episode"][()].tobytes()) if "episode" in file else (None, None)
    agent.rng.bit_generator.state = state["rng"]
    return Resumed(state, *episode)
