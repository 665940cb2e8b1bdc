"""The Q-networks: one Keras definition of each, and a NumPy forward pass read off it for acting.

A Q-network maps an observation to one Q-value per action. Which network is built follows from the
observation: a multilayer perceptron for a vector, a convolutional network for an image.
`NumpyForward` computes the same function as a network of Dense layers from that network's own layers
and weights, because one state through Keras costs about a hundred times more than the whole
computation (see ``python -m bench.costs``).
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np

from dqn_config import DQNConfig

# The activations `NumpyForward` can compute, by the name Keras gives them.
NUMPY_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relu": lambda x: np.maximum(x, 0.0),
    "linear": lambda x: x,
}


class QNetwork(keras.Sequential):
    """A `keras.Sequential` that counts the changes made to its weights through `set_weights` and
    `load_weights`, so that a copy of them (acting's `NumpyForward`) can tell when it is stale."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.weights_version = 0

    def set_weights(self, weights: list[np.ndarray]) -> None:
        super().set_weights(weights)
        self.weights_version += 1

    def load_weights(self, *args: object, **kwargs: object) -> None:
        super().load_weights(*args, **kwargs)
        self.weights_version += 1


def build_q_network(observation_shape: tuple[int, ...], num_actions: int, config: DQNConfig, name: str) -> QNetwork:
    """The Q-network for this observation shape (see `DQNConfig.network_for`), from the observation to one
    linear Q-value per action:

    - mlp: the observation vector, then ReLU hidden layers of `config.hidden_sizes` units;
    - nature_cnn: the Nature DQN torso for Atari frames: 32 8x8 filters with stride 4, 64 4x4 stride 2,
      64 3x3 stride 1, then a 512-unit dense layer (Mnih et al., 2015);
    - minatar_cnn: one 16-filter 3x3 convolution and a 128-unit dense layer, for small boards (Young and
      Tian, 2019).

    Images come in as uint8 pixels (stored that way in the replay buffer) and are scaled to [0, 1] by
    the network's first layer.

    :param observation_shape: the shape of one observation: ``(size,)`` or ``(height, width, channels)``.
    :param num_actions: outputs, one Q-value per action.
    :param config: the hyperparameters (`network`, `hidden_sizes`).
    :param name: the Keras model's name ("main" or "target").
    """
    architecture = config.network_for(observation_shape)
    layers: list[keras.layers.Layer] = [keras.Input(shape=observation_shape)]
    if architecture == "mlp":
        layers += [keras.layers.Dense(units, activation="relu") for units in config.hidden_sizes]
    else:
        layers.append(keras.layers.Rescaling(1.0 / 255.0))
        if architecture == "nature_cnn":
            layers += [keras.layers.Conv2D(32, 8, strides=4, activation="relu"),
                       keras.layers.Conv2D(64, 4, strides=2, activation="relu"),
                       keras.layers.Conv2D(64, 3, strides=1, activation="relu"),
                       keras.layers.Flatten(), keras.layers.Dense(512, activation="relu")]
        else:
            layers += [keras.layers.Conv2D(16, 3, strides=1, activation="relu"),
                       keras.layers.Flatten(), keras.layers.Dense(128, activation="relu")]
    layers.append(keras.layers.Dense(num_actions, activation="linear"))
    return QNetwork(layers, name=name)


class NumpyForward:
    """A network of Dense layers evaluated in NumPy, from that network's layers and current weights.

    The layer structure and activations are read off the Keras network once; the weights are read
    again whenever the network's `weights_version` moves on, or when they are handed over directly.

    :param network: a `QNetwork` made only of Dense layers with activations in `NUMPY_ACTIVATIONS`.
    :raises ValueError: for any other layer (see `NumpyForward.supports`).
    """

    def __init__(self, network: QNetwork) -> None:
        if not self.supports(network):
            raise ValueError(f"{network.name} has layers NumpyForward cannot compute")
        self.network = network
        self.activations = [NUMPY_ACTIVATIONS[layer.activation.__name__] for layer in network.layers]
        self.read_weights()

    @staticmethod
    def supports(network: keras.Model) -> bool:
        """Whether every layer is Dense with an activation NumPy computes here."""
        return all(isinstance(layer, keras.layers.Dense) and layer.activation.__name__ in NUMPY_ACTIVATIONS
                   for layer in network.layers)

    def read_weights(self, weights: list[np.ndarray] | None = None) -> None:
        """Take the network's weights as (kernel, bias) pairs.

        :param weights: the network's weights in `get_weights` order, when already at hand (default: read them).
        """
        weights = self.network.get_weights() if weights is None else weights
        self.layers = list(zip(weights[::2], weights[1::2], self.activations, strict=True))
        self.version = self.network.weights_version

    def __call__(self, states: np.ndarray) -> np.ndarray:
        """Q(s, .) of a batch of states, shape (B, num_actions)."""
        if self.version != self.network.weights_version:
            self.read_weights()
        activations = np.asarray(states, dtype=np.float32)
        for kernel, bias, activation in self.layers:
            activations = activation(activations @ kernel + bias)
        return activations
