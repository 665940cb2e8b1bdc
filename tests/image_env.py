"""An environment with image observations, registered for the CLI tests as ``tests.image_env:ImageObs-v0``."""

import gymnasium as gym
import numpy as np


class ImageObservationEnv(gym.Env):
    observation_space = gym.spaces.Box(0, 255, shape=(8, 8, 3), dtype=np.uint8)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, render_mode=None):
        self.render_mode = render_mode

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros((8, 8, 3), np.uint8), {}

    def step(self, action):
        return np.zeros((8, 8, 3), np.uint8), 0.0, True, False, {}


gym.register("ImageObs-v0", entry_point=ImageObservationEnv)
