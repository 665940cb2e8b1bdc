"""A saved agent is one file: ``STEM.weights.h5``, the main network's weights in Keras 3's format, with an HDF5
attribute that describes the agent they belong to (environment, observation shape, actions, config).

Weights and description are written together into a temporary file that then replaces the old one in
one rename, so at every instant the file at STEM is one whole agent: never new weights with an old
description, and an earlier agent stays until a new one is complete. ``STEM.json``, the run's record
that `train.py` writes at the end, is for people and tools; loading never needs it.

No TensorFlow is imported here: a description is read and checked with h5py alone, in milliseconds.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py

from common import UserError, atomic_write, import_agent_class, stem_file
from dqn_config import DQNConfig

if TYPE_CHECKING:
    from dqn_agent import DeepQLearning

DESCRIPTION_ATTRIBUTE = "dqn_agent"


def weights_path(stem: Path) -> Path:
    """``STEM.weights.h5``."""
    return stem_file(stem, ".weights.h5")


def describe(agent: DeepQLearning, env_id: str, seed: int) -> dict[str, Any]:
    """What rebuilds `agent`: its environment, observation shape, number of actions, config and seed."""
    return {"env_id": env_id, "observation_shape": list(agent.observation_shape), "num_actions": agent.num_actions,
            "config": agent.config.to_dict(), "seed": seed}


def save_agent(agent: DeepQLearning, path: Path, description: dict[str, Any]) -> None:
    """Write the agent's weights and its description into `path` as one file, atomically.

    :param path: a ``.weights.h5`` path.
    :param description: from `describe`.
    """
    content = NamedBuffer(path.name)
    agent.save(content)
    with h5py.File(content, "a") as file:
        file.attrs[DESCRIPTION_ATTRIBUTE] = json.dumps(description)
    atomic_write(path, content.getbuffer())


class NamedBuffer(io.BytesIO):
    """An in-memory file with a file name, for writers that choose the format from the name (Keras's
    ``save_weights`` takes a ``.weights.h5`` name, and writes HDF5 into a `io.BytesIO` as into a file)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def __str__(self) -> str:
        return self.name


def read_description(path: str | os.PathLike) -> dict[str, Any]:
    """The description inside a ``STEM.weights.h5`` written by `save_agent`, checked.

    :raises UserError: if the file is missing, is not HDF5, or holds no valid description.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no weights file at {path}: check the path, or train an agent with `python train.py`")
    try:
        with h5py.File(path, "r") as file:
            text = file.attrs.get(DESCRIPTION_ATTRIBUTE)
    except OSError as error:
        raise UserError(f"{path} does not hold weights written by train.py (unreadable HDF5: "
                        f"{str(error).splitlines()[0]})") from error
    if text is None:
        raise UserError(f"{path} does not hold weights written by train.py: it has no '{DESCRIPTION_ATTRIBUTE}' "
                        "description of its network")
    try:
        description = json.loads(text)
        DQNConfig.from_dict(description["config"])
        if not isinstance(description["env_id"], str) or not isinstance(description["num_actions"], int):
            raise TypeError("env_id or num_actions has the wrong type")
        if not all(isinstance(size, int) and size > 0 for size in description["observation_shape"]):
            raise TypeError("observation_shape is not a list of sizes")
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{path} holds a damaged description of its network ({type(error).__name__}: {error})") \
            from error
    return description


def load_agent(path: str | os.PathLike) -> tuple[DeepQLearning, dict[str, Any]]:
    """Rebuild the agent saved in `path` by `save_agent`.

    :return: the agent, and its description (``env_id``, ``observation_shape``, ``config``, ...).
    :raises UserError: if the file is missing or damaged, or its weights do not fit the network it describes.
    """
    description = read_description(path)
    agent_class = import_agent_class()
    agent = agent_class(tuple(description["observation_shape"]), description["num_actions"],
                        DQNConfig.from_dict(description["config"]))
    try:
        agent.load(path)
    except Exception as error:  # Keras raises ValueError, OSError or KeyError, depending on the damage
        raise UserError(f"{path} does not hold weights for the network it describes ({type(error).__name__}: "
                        f"{str(error).splitlines()[0] if str(error) else 'unreadable'})") from error
    return agent, description
