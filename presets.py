"""Tuned settings per environment, kept as data: one TOML file per preset in ``presets/``.

A preset file names the environment ids it is for (shell-style patterns, such as ``ALE/*-v5``), says
where its numbers came from and what they measured (``[source]``), and sets run settings (``[run]``:
steps, evaluation, the early-stop target) and hyperparameters (``[config]``: fields of `DQNConfig`).
`train.py --env ID` takes ID's preset; a flag given on the command line overrides that one value.
No TensorFlow is imported here.
"""

from __future__ import annotations

import fnmatch
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import UserError, atomic_write_text
from dqn_config import ConfigError, DQNConfig

PRESETS_DIR = Path(__file__).resolve().parent / "presets"
# The agents of ``train.py --agent``, besides the environment's own DQN preset: each agent's presets, in
# presets/AGENT/, go over the environment's own preset
AGENTS = {
    "dqn": "the environment's preset (presets/)",
    "rainbow": "Rainbow (Hessel et al., 2018): all six extensions on, Double DQN, dueling, n-step, prioritized "
               "replay, noisy networks and distributional C51 (presets/rainbow/)",
    "der": "Data-efficient Rainbow for the Atari 100k benchmark (van Hasselt et al., 2019): Rainbow updated every "
           "step, 10-step returns (presets/der/)",
    "drq": "DrQ(epsilon) for the Atari 100k benchmark (Kostrikov et al., 2020; Agarwal et al., 2021): DQN with "
           "random-shift augmentation, 10-step returns, updated every step (presets/drq/)",
}

# The run settings a preset may set, with the type each must have.
RUN_FIELDS: dict[str, type | tuple[type, ...]] = {
    "total_steps": int, "eval_interval": int, "eval_episodes": int, "final_eval_episodes": int,
    "confirm_episodes": int, "reward_threshold": (int, float), "keep_best": bool, "eval_epsilon": (int, float),
    "sticky_actions": (int, float),
}
PROBABILITY_RUN_FIELDS = ("eval_epsilon", "sticky_actions")


def agent_presets_dir(agent: str) -> Path:
    """The folder of an agent's presets (`AGENTS`), laid over the environment's own; the environment's own
    presets for ``dqn``."""
    return PRESETS_DIR if agent == "dqn" else PRESETS_DIR / agent
SECTIONS = {"env_ids", "source", "run", "config"}


@dataclass(frozen=True)
class Preset:
    """One preset file, checked.

    :param path: the TOML file.
    :param env_ids: the environment ids (or patterns) it is for.
    :param source: where the numbers came from and what they measured (free text, by key).
    :param run: run settings, a subset of `RUN_FIELDS`.
    :param config: `DQNConfig` fields; together they make a valid config.
    """

    path: Path
    env_ids: tuple[str, ...]
    source: dict[str, str]
    run: dict[str, Any]
    config: dict[str, Any]

    @property
    def name(self) -> str:
        return self.path.stem

    def matches(self, env_id: str) -> bool:
        return any(fnmatch.fnmatchcase(env_id, pattern) for pattern in self.env_ids)

    def over(self, base: Preset | None) -> Preset:
        """This preset laid over `base` (another environment's preset, or None): its run settings and config
        fields replace base's, the rest of base stays; the result is named and sourced as this preset.

        :raises PresetError: if the two together make a config that cannot be used.
        """
        if base is None:
            return self
        config = {**base.config, **self.config}
        try:
            DQNConfig(**config)
        except ConfigError as error:
            raise PresetError(self.path, f"config.{error.name}", f"{error.problem} (over {base.path})") from error
        return Preset(path=self.path, env_ids=self.env_ids, source={**self.source, "over": str(base.path.name)},
                      run={**base.run, **self.run}, config=config)


class PresetError(UserError):
    """A preset file that cannot be used, said in one line naming the file and the field."""

    def __init__(self, path: Path, field: str, problem: str) -> None:
        super().__init__(f"preset {path}: {field} {problem}")


def read_preset(path: Path) -> Preset:
    """Read and check one preset file.

    :raises PresetError: if the file is missing or malformed, has an unknown field, or sets a value the
        config or the run refuses.
    """
    try:
        data = tomllib.loads(path.read_text())
    except OSError as error:
        raise PresetError(path, "file", f"cannot be read ({error.strerror or error})") from error
    except tomllib.TOMLDecodeError as error:
        raise PresetError(path, "file", f"is not valid TOML ({error})") from error
    unknown = sorted(set(data) - SECTIONS)
    if unknown:
        raise PresetError(path, unknown[0], f"is not a preset section (sections: {', '.join(sorted(SECTIONS))})")
    env_ids = data.get("env_ids")
    if not (isinstance(env_ids, list) and env_ids and all(isinstance(env_id, str) for env_id in env_ids)):
        raise PresetError(path, "env_ids", "must be a list of one or more environment ids")
    run, config = data.get("run", {}), data.get("config", {})
    for name, value in run.items():
        if name not in RUN_FIELDS:
            raise PresetError(path, f"run.{name}", f"is not a run setting (settings: {', '.join(RUN_FIELDS)})")
        kind = RUN_FIELDS[name]
        if kind is bool:
            if not isinstance(value, bool):
                raise PresetError(path, f"run.{name}", f"must be true or false, got {value!r}")
            continue
        if isinstance(value, bool) or not isinstance(value, kind):
            raise PresetError(path, f"run.{name}", f"must be a number, got {value!r}")
        if name in PROBABILITY_RUN_FIELDS and not 0 <= value <= 1:
            raise PresetError(path, f"run.{name}", f"must be in [0, 1], got {value}")
        if name not in ("reward_threshold", *PROBABILITY_RUN_FIELDS) and value <= 0:
            raise PresetError(path, f"run.{name}", f"must be positive, got {value}")
    defaults = DQNConfig().to_dict()
    for name, value in config.items():
        if name not in defaults:
            raise PresetError(path, f"config.{name}", "is not a DQNConfig field (see python train.py --help)")
        if not _same_kind(value, defaults[name]):
            raise PresetError(path, f"config.{name}", f"must be like {defaults[name]!r}, got {value!r}")
    try:
        DQNConfig(**config)
    except ConfigError as error:
        raise PresetError(path, f"config.{error.name}", error.problem) from error
    except TypeError as error:
        raise PresetError(path, "config", f"has a value of the wrong type ({error})") from error
    return Preset(path=path, env_ids=tuple(env_ids), source=dict(data.get("source", {})), run=dict(run),
                  config=dict(config))


def _same_kind(value: Any, default: Any) -> bool:
    """Whether a TOML value can stand for a config field with this default (an int may stand for a float)."""
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, int | float)
    if isinstance(default, list):
        return isinstance(value, list) and all(_same_kind(item, default[0]) for item in value)
    return isinstance(value, type(default))


def all_presets(directory: Path = PRESETS_DIR) -> list[Preset]:
    """Every preset in `directory`, by file name."""
    return [read_preset(path) for path in sorted(directory.glob("*.toml"))]


def find_preset(env_id: str, directory: Path = PRESETS_DIR) -> Preset | None:
    """The first preset (by file name) whose `env_ids` match `env_id`, if any."""
    return next((preset for preset in all_presets(directory) if preset.matches(env_id)), None)


def _toml_value(value: Any) -> str:
    """A value as TOML: strings quoted (JSON's escapes are TOML's), lists and tuples as arrays."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return repr(value)


def write_preset(path: Path, env_ids: list[str], comment: str, source: dict[str, str], run: dict[str, Any],
                 config: dict[str, Any]) -> Preset:
    """Write a preset file that `read_preset` reads back, and return it read back (so it is checked).

    :param comment: the file's first line, after ``# ``.
    """
    lines = [f"# {comment}", f"env_ids = {_toml_value(env_ids)}", "", "[source]"]
    lines += [f"{key} = {_toml_value(value)}" for key, value in source.items()]
    lines += ["", "[run]", *(f"{key} = {_toml_value(value)}" for key, value in run.items())]
    lines += ["", "[config]", *(f"{key} = {_toml_value(value)}" for key, value in config.items())]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(lines) + "\n")
    return read_preset(path)
