"""The Q-networks: one Keras definition of each, and a NumPy forward pass read off it for acting.

A Q-network maps an observation to one Q-value per action. Which network is built follows from the
observation: a multilayer perceptron for a vector, a convolutional network for an image.
`NumpyForward` computes the same function from that network's own layers and weights, for the MLPs and
MinAtar's small CNN, because one state through Keras costs about a hundred times more than the whole
computation (see ``python -m bench.costs``); the Nature CNN acts in one compiled call.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from dqn_config import DQNConfig

# Acting computes Q in NumPy for networks of at most this many multiply-adds per state (see `NumpyForward.supports`)
NUMPY_MAX_MULTIPLY_ADDS = 1_000_000

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


def scaled_noise(noise: keras.KerasTensor) -> keras.KerasTensor:
    """f(x) = sgn(x) * sqrt(|x|), the shaping of factorised noise (Fortunato et al., 2018, eq. 10)."""
    return keras.ops.sign(noise) * keras.ops.sqrt(keras.ops.abs(noise))


@keras.saving.register_keras_serializable(package="dqn")
class NoisyDense(keras.layers.Layer):
    """A dense layer whose weights carry learned, factorised Gaussian noise (Fortunato et al., 2018):

        y = (mu_W + sigma_W * f(eps_out) f(eps_in)^T) x + mu_b + sigma_b * f(eps_out),   eps ~ N(0, 1)

    with fresh noise eps_in (one per input) and eps_out (one per unit) at each call in training, the same for the
    whole batch. Outside training (``training`` not true) it is the dense layer of the mean weights mu: greedy
    evaluation acts on the mean network. mu starts uniform in +-1/sqrt(inputs) and sigma at sigma_0/sqrt(inputs).

    :param units: outputs.
    :param activation: a Keras activation name (default: linear).
    :param sigma_0: the noise's initial scale, 0.5 in the paper.
    :param seed: the seed of the noise (default: drawn from Keras's global seed, `keras.utils.set_random_seed`).
    """

    def __init__(self, units: int, activation: str | None = None, sigma_0: float = 0.5, seed: int | None = None,
                 **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.units, self.sigma_0 = units, sigma_0
        self.activation = keras.activations.get(activation)
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        inputs = input_shape[-1]
        mean = keras.initializers.RandomUniform(-1.0 / np.sqrt(inputs), 1.0 / np.sqrt(inputs))
        sigma = keras.initializers.Constant(self.sigma_0 / np.sqrt(inputs))
        self.kernel_mean = self.add_weight(shape=(inputs, self.units), initializer=mean, name="kernel_mean")
        self.kernel_sigma = self.add_weight(shape=(inputs, self.units), initializer=sigma, name="kernel_sigma")
        self.bias_mean = self.add_weight(shape=(self.units,), initializer=mean, name="bias_mean")
        self.bias_sigma = self.add_weight(shape=(self.units,), initializer=sigma, name="bias_sigma")

    def call(self, inputs: keras.KerasTensor, training: bool | None = None) -> keras.KerasTensor:
        if not training:
            return self.activation(keras.ops.matmul(inputs, self.kernel_mean) + self.bias_mean)
        inputs_size = self.kernel_mean.shape[0]  # eps_in and eps_out in one draw: fewer ops in each training step
        noise = scaled_noise(keras.random.normal((inputs_size + self.units,), seed=self.seed_generator))
        noise_in, noise_out = noise[:inputs_size], noise[inputs_size:]
        # the noisy weights themselves, once for the whole batch: then one matrix product, as in a Dense layer
        kernel = self.kernel_mean + self.kernel_sigma * keras.ops.outer(noise_in, noise_out)
        bias = self.bias_mean + self.bias_sigma * noise_out
        return self.activation(keras.ops.matmul(inputs, kernel) + bias)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (*input_shape[:-1], self.units)

    def get_config(self) -> dict:
        return {**super().get_config(), "units": self.units, "sigma_0": self.sigma_0,
                "activation": keras.activations.serialize(self.activation)}


def dense_layer(units: int, activation: str | None, config: DQNConfig) -> keras.layers.Layer:
    """A `NoisyDense` layer with `config.noisy_nets`, else a plain `keras.layers.Dense`."""
    if config.noisy_nets:
        return NoisyDense(units, activation, config.noisy_sigma)
    return keras.layers.Dense(units, activation=activation)


@keras.saving.register_keras_serializable(package="dqn")
class DuelingHead(keras.layers.Layer):
    """The dueling architecture's head (Wang et al., 2016): from the torso's features, a state value V(s) and the
    actions' advantages A(s, a), combined as

        Q(s, a) = V(s) + A(s, a) - mean_a' A(s, a')

    (subtracting the mean makes V and A identifiable: the advantages of a state average to zero). Both streams are
    linear layers on the network's last hidden layer, which they share, so a dueling network costs what DQN's
    does; the paper gives each stream a hidden layer of its own, which doubled the head's cost here (see the
    README's DQN-family speed table). For a distributional network the same combination is made atom by atom on
    the logits, as Rainbow does: V(s) has one logit per atom, A(s, a) one per action and atom.

    :param num_actions: outputs, one Q-value (or one row of logits) per action.
    :param num_atoms: 1 for Q-values, else the atoms of each action's distribution (output (B, A, num_atoms)).
    :param noisy: `NoisyDense` streams, with this sigma_0 (None: plain Dense streams).
    """

    def __init__(self, num_actions: int, num_atoms: int = 1, noisy: float | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.num_actions, self.num_atoms, self.noisy = num_actions, num_atoms, noisy
        def stream(units: int, name: str) -> keras.layers.Layer:
            return keras.layers.Dense(units, name=name) if noisy is None else NoisyDense(units, None, noisy, name=name)
        self.value = stream(num_atoms, "value")
        self.advantage = stream(num_actions * num_atoms, "advantage")

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.value.build(input_shape)
        self.advantage.build(input_shape)

    def call(self, features: keras.KerasTensor, training: bool | None = None) -> keras.KerasTensor:
        value, advantage = self.value(features, training=training), self.advantage(features, training=training)
        if self.num_atoms > 1:
            value = keras.ops.reshape(value, (-1, 1, self.num_atoms))
            advantage = keras.ops.reshape(advantage, (-1, self.num_actions, self.num_atoms))
        return value + advantage - keras.ops.mean(advantage, axis=-1 if self.num_atoms == 1 else 1, keepdims=True)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        atoms = () if self.num_atoms == 1 else (self.num_atoms,)
        return (*input_shape[:-1], self.num_actions, *atoms)

    def get_config(self) -> dict:
        return {**super().get_config(), "num_actions": self.num_actions, "num_atoms": self.num_atoms,
                "noisy": self.noisy}


class Conv2D(keras.layers.Conv2D):
    """Keras's `Conv2D` (valid padding) with its convolution written as one matrix product: the input's windows
    under each of the kernel's h x w positions, side by side on the channel axis, times the kernel flattened in the
    same order. The same function and weights, saved under the same name (Keras names a layer's weights in a file
    after its class); but XLA, which fuses a whole training phase into one call, compiles this form into fast code
    on a CPU, and a convolution op into slow code. MinAtar's network uses it; the Nature CNN, whose 8x8 kernel
    would make 64 windows, trains without XLA on Keras's own convolution.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        if self.padding != "valid" or self.dilation_rate != (1, 1) or self.data_format != "channels_last":
            raise ValueError("networks.Conv2D computes valid, undilated, channels-last convolutions only")

    def convolution_op(self, inputs: keras.KerasTensor, kernel: keras.KerasTensor) -> keras.KerasTensor:
        height, width, channels, filters = kernel.shape
        (stride_y, stride_x), (rows, columns) = self.strides, self.compute_output_shape(inputs.shape)[1:3]
        windows = keras.ops.concatenate([inputs[:, y:y + stride_y * (rows - 1) + 1:stride_y,
                                                x:x + stride_x * (columns - 1) + 1:stride_x]
                                         for y in range(height) for x in range(width)], axis=-1)
        return keras.ops.matmul(windows, keras.ops.reshape(kernel, (height * width * channels, filters)))


def build_q_network(observation_shape: tuple[int, ...], num_actions: int, config: DQNConfig, name: str) -> QNetwork:
    """The Q-network for this observation shape (see `DQNConfig.network_for`), from the observation to one
    linear Q-value per action:

    - mlp: the observation vector, then ReLU hidden layers of `config.hidden_sizes` units;
    - nature_cnn: the Nature DQN torso for Atari frames: 32 8x8 filters with stride 4, 64 4x4 stride 2,
      64 3x3 stride 1, then a 512-unit dense layer (Mnih et al., 2015);
    - minatar_cnn: one 16-filter 3x3 convolution and a 128-unit dense layer, for small boards (Young and
      Tian, 2019).

    With `config.dueling` the output layer becomes a `DuelingHead`: a value and an advantage stream on the last
    hidden layer. With `config.noisy_nets` the last hidden layer and the output layer are `NoisyDense`. With
    `config.distributional` the network outputs, instead of Q-values, the logits of a categorical distribution
    over `config.num_atoms` returns for each action, shape (B, A, num_atoms) (C51; Q is that distribution's mean).

    Images come in as uint8 pixels (stored that way in the replay buffer) and are scaled to [0, 1] by
    the network's first layer.

    :param observation_shape: the shape of one observation: ``(size,)`` or ``(height, width, channels)``.
    :param num_actions: outputs, one Q-value per action.
    :param config: the hyperparameters (`network`, `hidden_sizes`, `dueling`, `noisy_nets`, `distributional`).
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
            layers.append(Conv2D(16, 3, strides=1, activation="relu"))
            last = 128
        layers.append(keras.layers.Flatten())
    layers.append(dense_layer(last, "relu", config))
    atoms = config.num_atoms if config.distributional else 1
    if config.dueling:
        layers.append(DuelingHead(num_actions, atoms, config.noisy_sigma if config.noisy_nets else None))
    else:
        layers.append(dense_layer(num_actions * atoms, "linear", config))
        if config.distributional:
            layers.append(keras.layers.Reshape((num_actions, atoms)))
    return QNetwork(layers, name=name)


def noise_generators(network: keras.Model) -> list[keras.random.SeedGenerator]:
    """The random generators of a network's `NoisyDense` layers (a checkpoint keeps their states)."""
    layers = [stream for layer in network.layers
              for stream in ((layer.value, layer.advantage) if isinstance(layer, DuelingHead) else (layer,))]
    return [layer.seed_generator for layer in layers if isinstance(layer, NoisyDense)]


NumpyLayer = Callable[[np.ndarray, list[np.ndarray], np.random.Generator | None], np.ndarray]


def _dense(activation: str) -> NumpyLayer:
    function = NUMPY_ACTIVATIONS[activation]
    return lambda x, weights, _: function(x @ weights[0] + weights[1])


def _noisy_dense(activation: str) -> NumpyLayer:
    """`NoisyDense.call` in NumPy, its weights in `get_weights` order (kernel and bias, mean and sigma); noise is
    drawn from `rng` when one is given, as in training, else the mean weights act. The same function in its
    factorised form, x W = x mu_W + ((x * f(eps_in)) sigma_W) * f(eps_out): for the one state that acting passes,
    a second product with a vector costs less than building the noisy matrix (19 against 84 microseconds for
    MinAtar's 1024 x 128 layer here), which `NoisyDense.call` builds because a training batch then needs only one
    product."""
    function = NUMPY_ACTIVATIONS[activation]

    def noisy_dense(x: np.ndarray, weights: list[np.ndarray], rng: np.random.Generator | None) -> np.ndarray:
        kernel_mean, kernel_sigma, bias_mean, bias_sigma = weights
        outputs = x @ kernel_mean + bias_mean
        if rng is not None:
            noise = rng.standard_normal(len(kernel_mean) + len(bias_mean), np.float32)
            noise = np.sign(noise) * np.sqrt(np.abs(noise))
            noise_in, noise_out = noise[:len(kernel_mean)], noise[len(kernel_mean):]
            outputs = outputs + ((x * noise_in) @ kernel_sigma) * noise_out + bias_sigma * noise_out
        return function(outputs)
    return noisy_dense


def _dueling(head: DuelingHead) -> NumpyLayer:
    """`DuelingHead.call` in NumPy, its weights in `get_weights` order: the value stream's, then the advantage's."""
    stream = _dense("linear") if head.noisy is None else _noisy_dense("linear")
    half = len(head.weights) // 2

    def dueling(x: np.ndarray, weights: list[np.ndarray], rng: np.random.Generator | None) -> np.ndarray:
        value, advantage = stream(x, weights[:half], rng), stream(x, weights[half:], rng)
        if head.num_atoms > 1:
            value = value.reshape(len(x), 1, head.num_atoms)
            advantage = advantage.reshape(len(x), head.num_actions, head.num_atoms)
        return value + advantage - advantage.mean(axis=-1 if head.num_atoms == 1 else 1, keepdims=True)
    return dueling


def _conv2d(layer: keras.layers.Conv2D) -> NumpyLayer:
    """`Conv2D` in NumPy (valid padding, channels last): each output pixel's window of the input, flattened, times
    the kernel flattened alike, as one matrix product."""
    function, (stride_y, stride_x) = NUMPY_ACTIVATIONS[layer.activation.__name__], layer.strides

    def conv2d(x: np.ndarray, weights: list[np.ndarray], _: object) -> np.ndarray:
        kernel, bias = weights
        height, width, channels, filters = kernel.shape
        windows = sliding_window_view(x, (height, width), axis=(1, 2))[:, ::stride_y, ::stride_x]  # (B, H, W, C, h, w)
        rows = windows.reshape(-1, channels * height * width)
        flat_kernel = kernel.transpose(2, 0, 1, 3).reshape(channels * height * width, filters)
        return function((rows @ flat_kernel).reshape(*windows.shape[:3], filters) + bias)
    return conv2d


def _numpy_layer(layer: keras.layers.Layer) -> NumpyLayer:
    if isinstance(layer, DuelingHead):
        return _dueling(layer)
    if isinstance(layer, keras.layers.Reshape):
        return lambda x, _, __: x.reshape(len(x), *layer.target_shape)
    if isinstance(layer, keras.layers.Flatten):
        return lambda x, _, __: x.reshape(len(x), -1)
    if isinstance(layer, keras.layers.Rescaling):
        return lambda x, _, __: x * np.float32(layer.scale) + np.float32(layer.offset)
    if isinstance(layer, keras.layers.Conv2D):
        return _conv2d(layer)
    return (_noisy_dense if isinstance(layer, NoisyDense) else _dense)(layer.activation.__name__)


def multiply_adds(network: keras.Model) -> int:
    """Multiply-adds of one state through the network's dense and convolutional layers (a noisy layer's sigma
    kernel counted too: it is a second matrix product)."""
    total = 0
    for layer in network.layers:
        kernels = [int(np.prod(w.shape)) for w in layer.weights if len(w.shape) >= 2]
        pixels = int(np.prod(layer.output.shape[1:3])) if isinstance(layer, keras.layers.Conv2D) else 1
        total += pixels * sum(kernels)
    return total


class NumpyForward:
    """A network of Dense layers (noisy or not, then a `DuelingHead` or a reshape into atoms) evaluated in NumPy,
    from that network's layers and current weights.

    The layer structure and activations are read off the Keras network once; the weights are read
    again whenever the network's `weights_version` moves on, or when they are handed over directly.

    :param network: a `QNetwork` made only of layers `NumpyForward.supports`.
    :raises ValueError: for any other layer (see `NumpyForward.supports`).
    """

    def __init__(self, network: QNetwork) -> None:
        if not self.supports(network):
            raise ValueError(f"{network.name} has layers NumpyForward cannot compute")
        self.network = network
        self.functions = [_numpy_layer(layer) for layer in network.layers]
        self.counts = [len(layer.weights) for layer in network.layers]
        self.read_weights()

    @staticmethod
    def supports(network: keras.Model) -> bool:
        """Whether NumPy computes every layer here (Dense, NoisyDense and valid-padded Conv2D with an activation of
        `NUMPY_ACTIVATIONS`, a `DuelingHead`, Reshape, Flatten, Rescaling) and is the faster for this network: a
        call into TensorFlow costs about 3 ms here whatever the network, NumPy's matrix products a few microseconds
        per 10,000 multiply-adds, so NumPy acts for networks of up to a million (the MLPs, 170,000 for MinAtar's
        CNN) and one compiled call for larger ones (the Nature CNN's 9 million)."""
        computable = all(isinstance(layer, DuelingHead | keras.layers.Reshape | keras.layers.Flatten
                                    | keras.layers.Rescaling)
                         or (isinstance(layer, keras.layers.Dense | NoisyDense | keras.layers.Conv2D)
                             and layer.activation.__name__ in NUMPY_ACTIVATIONS
                             and getattr(layer, "padding", "valid") == "valid")
                         for layer in network.layers)
        return computable and multiply_adds(network) <= NUMPY_MAX_MULTIPLY_ADDS

    def read_weights(self, weights: list[np.ndarray] | None = None) -> None:
        """Take the network's weights, layer by layer.

        :param weights: the network's weights in `get_weights` order, when already at hand (default: read them).
        """
        weights = self.network.get_weights() if weights is None else weights
        bounds = np.cumsum([0, *self.counts])
        self.layers = [(function, weights[start:end])
                       for function, start, end in zip(self.functions, bounds[:-1], bounds[1:], strict=True)]
        self.version = self.network.weights_version

    def __call__(self, states: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """The network's output for a batch of states: Q(s, .), shape (B, num_actions), or a distributional
        network's logits, (B, num_actions, num_atoms).

        :param rng: noisy layers draw their noise from it, as in training (default: no noise, the mean weights).
        """
        if self.version != self.network.weights_version:
            self.read_weights()
        activations = np.asarray(states, dtype=np.float32)
        for function, weights in self.layers:
            activations = function(activations, weights, rng)
        return activations
