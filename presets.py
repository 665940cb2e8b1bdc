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
# Rainbow's presets (``train.py --agent rainbow``): each goes over the environment's own preset
RAINBOW_PRESETS_DIR = PRESETS_DIR / "rainbow"

# The run settings a preset may set, with the type each must have.
RUN_FIELDS: dict[str, type | tuple[type, ...]] = {
    "total_steps": int, "eval_interval": int, "eval_episodes": int, "final_eval_episodes": int,
    "confirm_episodes": int, "reward_threshold": (int, float),
}
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
        if isinstance(value, bool) or not isinstance(value, RUN_FIELDS[name]):
            raise PresetError(path, f"run.{name}", f"must be a number, got {value!r}")
        if name != "reward_threshold" and value <= 0:
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
