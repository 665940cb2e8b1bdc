"""Making environments: a Gymnasium id, with the preprocessing its family needs, checked against what the
agent takes (a vector, or an (H, W, C) uint8 image, and discrete actions).

- Atari (``ALE/...-v5``, from ale-py, ROMs included): Gymnasium's own `AtariPreprocessing` (84x84
  grayscale, 4 frames skipped with max-pooling, up to 30 no-op starts; the game itself built with
  ``frameskip=1`` so that frames are not skipped twice) and `FrameStackObservation` (the last 4 frames),
  channel last. Observations are plain NumPy arrays, as Gymnasium's contract (and `check_env`) has them: the
  replay memory, not the environment, stores each frame once (`replay_memory.StackedFrames`).
- MinAtar (``MinAtar/...``): its boolean (10, 10, C) boards as uint8 images of 0 and 255.
- Anything else as Gymnasium makes it.

Rewards are left as the game gives them: every return printed, logged or evaluated is the game's
score. Clipping for learning is the agent's business (``DQNConfig.clip_rewards``).
"""

from __future__ import annotations

import importlib
import os
import warnings
from typing import Any

import gymnasium as gym
import numpy as np

from common import UserError

ATARI_FRAMES = 4


def channels_last(stack: np.ndarray) -> np.ndarray:
    """A (frames, H, W) stack from `FrameStackObservation` as the (H, W, frames) image the networks take."""
    return np.ascontiguousarray(np.moveaxis(stack, 0, -1))


class BooleanBoardAsImage(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """MinAtar's boolean (10, 10, C) board as a uint8 image of 0 and 255; its rendering as a uint8 RGB picture
    32 times larger (320x320), for videos."""

    def __init__(self, env: gym.Env) -> None:
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.ObservationWrapper.__init__(self, env)
        self.observation_space = gym.spaces.Box(0, 255, env.observation_space.shape, np.uint8)
        self.metadata = {**env.metadata, "render_fps": 15}  # MinAtar's own display shows about 20 frames a second

    def observation(self, board: np.ndarray) -> np.ndarray:
        return board.astype(np.uint8) * 255

    def render(self) -> np.ndarray:
        with warnings.catch_warnings():  # MinAtar draws in floats (turned into uint8 pixels here) and sets no fps
            warnings.filterwarnings("ignore", message=".*(RGB-array rendering should return|No render fps was)")
            picture = np.asarray(self.env.render())
        picture = (picture * 255).astype(np.uint8) if picture.dtype != np.uint8 else picture
        return picture.repeat(32, axis=0).repeat(32, axis=1)


def _register_family(env_id: str) -> dict[str, Any]:
    """Register Atari or MinAtar ids with Gymnasium (1.x no longer loads plugins itself); the arguments
    `gym.make` needs for the family."""
    if env_id.startswith("ALE/"):
        try:
            import ale_py
        except ImportError as error:
            raise UserError(f"environment {env_id!r} needs ale-py, which is not installed: pip install -r "
                            "requirements.txt") from error
        gym.register_envs(ale_py)
        return {"frameskip": 1}  # AtariPreprocessing skips the frames
    if env_id.startswith("MinAtar/"):
        try:
            import minatar.gym
        except ImportError as error:
            raise UserError(f"environment {env_id!r} needs minatar, which is not installed: pip install -r "
                            "requirements.txt") from error
        if env_id not in gym.registry:
            minatar.gym.register_envs()
    return {}


def make_env(env_id: str, render_mode: str | None = None, sticky_actions: float | None = None) -> gym.Env:
    """``gymnasium.make(env_id)`` with its family's preprocessing, accepted only if the agent can take it.

    :param sticky_actions: an Atari game's chance of repeating the previous action instead of the new one, at
        each frame (ALE's ``repeat_action_probability``; None: the environment's own, 0.25 for v5 games).
    :raises UserError: for an unknown id, a missing package, or an environment DQN here cannot handle.
    """
    if render_mode == "rgb_array":
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # frames only, no window: SDL needs no display
    kwargs = _register_family(env_id)
    if sticky_actions is not None:
        if not env_id.startswith("ALE/"):
            raise UserError(f"sticky actions are a setting of Atari games (ALE/...), not of {env_id}")
        if not 0.0 <= sticky_actions <= 1.0:
            raise UserError(f"sticky actions must be a probability in [0, 1], got {sticky_actions}")
        kwargs["repeat_action_probability"] = sticky_actions
    try:
        env = gym.make(env_id, render_mode=render_mode, **kwargs)
    except gym.error.DependencyNotInstalled as error:
        raise UserError(f"environment {env_id!r} needs a package that is not installed: {error}") from error
    except (gym.error.Error, ImportError) as error:
        raise UserError(f"unknown environment {env_id!r} ({str(error).splitlines()[0]}); python train.py "
                        "--list-presets shows the tuned ones") from error
    except Exception as error:  # the environment's own constructor failed
        first_line = str(error).splitlines()[0] if str(error) else ""
        raise UserError(f"could not create environment {env_id!r}: {type(error).__name__}: {first_line}") from error
    if env_id.startswith("ALE/"):
        env = gym.wrappers.AtariPreprocessing(env, noop_max=30, frame_skip=4, screen_size=84, grayscale_obs=True,
                                              terminal_on_life_loss=False, scale_obs=False)
        env = gym.wrappers.FrameStackObservation(env, ATARI_FRAMES)
        frames, height, width = env.observation_space.shape
        env = gym.wrappers.TransformObservation(env, channels_last, gym.spaces.Box(0, 255, (height, width, frames),
                                                                                   np.uint8))
    elif env_id.startswith("MinAtar/"):
        env = BooleanBoardAsImage(env)
    problem = unsupported(env.observation_space, env.action_space)
    if problem:
        env.close()
        raise UserError(f"environment {env_id!r} is not supported: {problem}. Supported: discrete actions, and "
                        "observations that are a vector (CartPole-v1, LunarLander-v3) or an (H, W, C) uint8 image "
                        "(ALE/Pong-v5, MinAtar/Breakout-v1)")
    return env


def unsupported(observation_space: gym.Space, action_space: gym.Space) -> str | None:
    """What keeps the agent from these spaces, or None if it can take them."""
    problems = []
    if not isinstance(action_space, gym.spaces.Discrete):
        problems.append(f"its actions are {type(action_space).__name__}, not Discrete")
    shape = getattr(observation_space, "shape", None)
    if not isinstance(observation_space, gym.spaces.Box):
        problems.append(f"its observations are {type(observation_space).__name__}, not a Box")
    elif len(shape) == 3 and observation_space.dtype != np.uint8:
        problems.append(f"its image observations {shape} are {observation_space.dtype}, not uint8 pixels")
    elif len(shape) not in (1, 3):
        problems.append(f"its observations have shape {shape}: the networks take a vector or an (H, W, C) image")
    return " and ".join(problems) or None


def reward_threshold(env_id: str) -> float | None:
    """The return at which Gymnasium's registry calls `env_id` solved (475 for CartPole-v1), if any."""
    _register_family(env_id)
    module, _, name = env_id.rpartition(":")  # "module:Id-v0" registers Id-v0 by importing module, as gym.make does
    if module:
        importlib.import_module(module)
    return gym.spec(name).reward_threshold
