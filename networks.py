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


@keras.saving.register_keras_serializable(package="dqn")
class DuelingHead(keras.layers.Layer):
    """The dueling architecture's head (Wang et al., 2016): from the torso's features, a state value V(s) and the
    actions' advantages A(s, a), combined as

        Q(s, a) = V(s) + A(s, a) - mean_a' A(s, a')

    (subtracting the mean makes V and A identifiable: the advantages of a state average to zero). Both streams are
    linear layers on the network's last hidden layer, which they share, so a dueling network costs what DQN's
    does; the paper gives each stream a hidden layer of its own, which doubled the head's cost here (see the
    README's DQN-family speed table).

    :param num_actions: outputs, one Q-value per action.
    """

    def __init__(self, num_actions: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.num_actions = num_actions
        self.value = keras.layers.Dense(1, name="value")
        self.advantage = keras.layers.Dense(num_actions, name="advantage")

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.value.build(input_shape)
        self.advantage.build(input_shape)

    def call(self, features: keras.KerasTensor) -> keras.KerasTensor:
        value, advantage = self.value(features), self.advantage(features)
        return value + advantage - keras.ops.mean(advantage, axis=-1, keepdims=True)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (*input_shape[:-1], self.num_actions)

    def get_config(self) -> dict:
        return {**super().get_config(), "num_actions": self.num_actions}


def build_q_network(observation_shape: tuple[int, ...], num_actions: int, config: DQNConfig, name: str) -> QNetwork:
    """The Q-network for this observation shape (see `DQNConfig.network_for`), from the observation to one
    linear Q-value per action:

    - mlp: the observation vector, then ReLU hidden layers of `config.hidden_sizes` units;
    - nature_cnn: the Nature DQN torso for Atari frames: 32 8x8 filters with stride 4, 64 4x4 stride 2,
      64 3x3 stride 1, then a 512-unit dense layer (Mnih et al., 2015);
    - minatar_cnn: one 16-filter 3x3 convolution and a 128-unit dense layer, for small boards (Young and
      Tian, 2019).

    With `config.dueling` the output layer becomes a `DuelingHead`: a value and an advantage stream on the last
    hidden layer.

    Images come in as uint8 pixels (stored that way in the replay buffer) and are scaled to [0, 1] by
    the network's first layer.

    :param observation_shape: the shape of one observation: ``(size,)`` or ``(height, width, channels)``.
    :param num_actions: outputs, one Q-value per action.
    :param config: the hyperparameters (`network`, `hidden_sizes`, `dueling`).
    :param name: the Keras model's name ("main" or "target").
    """
    architecture = config.network_for(observation_shape)
    layers: list[keras.layers.Layer] = [keras.Input(shape=observation_shape)]
    if architecture == "mlp":
        *torso, last = config.hidden_sizes
        layers += [keras.layers.Dense(units, activation="relu") for units in torso]
    else:
        layers.append(keras.layers.Rescaling(1.0 / 255.0))
        if architecture == "nature_cnn":
            layers += [keras.layers.Conv2D(32, 8, strides=4, activation="relu"),
                       keras.layers.Conv2D(64, 4, strides=2, activation="relu"),
                       keras.layers.Conv2D(64, 3, strides=1, activation="relu")]
            last = 512
        else:
            layers.append(keras.layers.Conv2D(16, 3, strides=1, activation="relu"))
            last = 128
        layers.append(keras.layers.Flatten())
    layers.append(keras.layers.Dense(last, activation="relu"))
    layers.append(DuelingHead(num_actions) if config.dueling else keras.layers.Dense(num_actions, activation="linear"))
    return QNetwork(layers, name=name)


def _dense(activation: str) -> Callable[[np.ndarray, list[np.ndarray]], np.ndarray]:
    function = NUMPY_ACTIVATIONS[activation]
    return lambda x, weights: function(x @ weights[0] + weights[1])


def _dueling(x: np.ndarray, weights: list[np.ndarray]) -> np.ndarray:
    """`DuelingHead.call` in NumPy, its weights in `get_weights` order: the value stream's, then the advantage's."""
    value_kernel, value_bias, advantage_kernel, advantage_bias = weights
    advantage = x @ advantage_kernel + advantage_bias
    return x @ value_kernel + value_bias + advantage - advantage.mean(axis=-1, keepdims=True)


class NumpyForward:
    """A network of Dense layers (and a `DuelingHead`) evaluated in NumPy, from that network's layers and current
    weights.

    The layer structure and activations are read off the Keras network once; the weights are read
    again whenever the network's `weights_version` moves on, or when they are handed over directly.

    :param network: a `QNetwork` made only of Dense layers with activations in `NUMPY_ACTIVATIONS`, and a
        `DuelingHead` last.
    :raises ValueError: for any other layer (see `NumpyForward.supports`).
    """

    def __init__(self, network: QNetwork) -> None:
        if not self.supports(network):
            raise ValueError(f"{network.name} has layers NumpyForward cannot compute")
        self.network = network
        self.functions = [_dueling if isinstance(layer, DuelingHead) else _dense(layer.activation.__name__)
                          for layer in network.layers]
        self.counts = [len(layer.weights) for layer in network.layers]
        self.read_weights()

    @staticmethod
    def supports(network: keras.Model) -> bool:
        """Whether every layer is Dense with an activation NumPy computes here, or a `DuelingHead`."""
        return all(isinstance(layer, DuelingHead) or (isinstance(layer, keras.layers.Dense)
                                                      and layer.activation.__name__ in NUMPY_ACTIVATIONS)
                   for layer in network.layers)

    def read_weights(self, weights: list[np.ndarray] | None = None) -> None:
        """Take the network's weights, layer by layer.

        :param weights: the network's weights in `get_weights` order, when already at hand (default: read them).
        """
        weights = self.network.get_weights() if weights is None else weights
        bounds = np.cumsum([0, *self.counts])
        self.layers = [(function, weights[start:end])
                       for function, start, end in zip(self.functions, bounds[:-1], bounds[1:], strict=True)]
        self.version = self.network.weights_version

    def __call__(self, states: np.ndarray) -> np.ndarray:
        """Q(s, .) of a batch of states, shape (B, num_actions)."""
        if self.version != self.network.weights_version:
            self.read_weights()
        activations = np.asarray(states, dtype=np.float32)
        for function, weights in self.layers:
            activations = function(activations, weights)
        return activations
