"""Tiny environments with image observations, registered for the tests (``tests.image_env:ImageObs-v0``, ...)."""

from typing import ClassVar

import gymnasium as gym
import numpy as np


class ImageObservationEnv(gym.Env):
    """An 8x8 RGB image that alternates between black and white; the action matching the colour pays 5.
    Ten steps per episode. Renders as a 64x64 picture."""

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"], "render_fps": 10}
    observation_space = gym.spaces.Box(0, 255, shape=(8, 8, 3), dtype=np.uint8)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, render_mode=None):
        self.render_mode = render_mode
        self.t = 0

    def _observation(self):
        return np.full((8, 8, 3), 255 * (self.t % 2), np.uint8)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._observation(), {}

    def step(self, action):
        reward = 5.0 if action == self.t % 2 else 0.0
        self.t += 1
        return self._observation(), reward, self.t >= 10, False, {}

    def render(self):
        return np.kron(self._observation(), np.ones((8, 8, 1), np.uint8))


class FlatImageEnv(ImageObservationEnv):
    """A 2-D (8, 8) observation: neither a vector nor an (H, W, C) image."""

    observation_space = gym.spaces.Box(0, 255, shape=(8, 8), dtype=np.uint8)


class FloatImageEnv(ImageObservationEnv):
    """An (8, 8, 3) image of floats, not uint8 pixels."""

    observation_space = gym.spaces.Box(0.0, 1.0, shape=(8, 8, 3), dtype=np.float32)


gym.register("ImageObs-v0", entry_point=ImageObservationEnv)
gym.register("FlatImage-v0", entry_point=FlatImageEnv)
gym.register("FloatImage-v0", entry_point=FloatImageEnv)
