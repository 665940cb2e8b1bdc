"""The Q-networks: one Keras definition of each, and a NumPy forward pass read off it for acting.

A Q-network maps an observation to one Q-value per action. Which network is built follows from the
observation: a multilayer perceptron for a vector. `NumpyForward` computes the same function as a
network of Dense layers from that network's own layers and weights, because one state through Keras
costs about a hundred times more than the whole computation (see ``python -m bench.costs``).
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np

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


def build_q_network(observation_shape: tuple[int, ...], num_actions: int, hidden_sizes: tuple[int, ...],
                    name: str) -> QNetwork:
    """The MLP Q-network: the observation vector, ReLU hidden layers, then one linear output per action.

    :param observation_shape: the shape of one observation, ``(size,)``.
    :param num_actions: outputs, one Q-value per action.
    :param hidden_sizes: units of each hidden layer.
    :param name: the Keras model's name ("main" or "target").
    """
    layers: list[keras.layers.Layer] = [keras.Input(shape=observation_shape)]
    layers += [keras.layers.Dense(units, activation="relu") for units in hidden_sizes]
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
