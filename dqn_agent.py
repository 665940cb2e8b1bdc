"""Deep Q-Learning (DQN) with Keras 3, as a worked example.

What
    An agent that learns to act in a Gymnasium environment with a vector observation and a few
    discrete actions (CartPole-v1 first) from reward alone, by learning the action-value function

        Q*(s, a) = E[ r_t + gamma * max_a' Q*(s_{t+1}, a') | s_t = s, a_t = a ]

    with a neural network Q(s, a; theta), and acting greedily with respect to it.

Why it works (Mnih et al., 2015)
    Plain Q-learning with a neural network is unstable: consecutive samples are correlated and the
    target moves with every update. DQN adds two fixes:

    1. Experience replay: transitions (s, a, r, s', terminated) go into a replay buffer, and each
       gradient step uses a random minibatch from it, which breaks the correlations.
    2. A target network Q(s, a; theta^-), a lagging copy of the main network, computes the TD
       targets, so they stay still between target updates.

    The loss is the squared TD error of the action actually taken:

        y = r + gamma * (1 - terminated) * max_a' Q(s', a'; theta^-)
        L(theta) = mean over the batch of (y - Q(s, a; theta))^2

    Only Q(s, a) of the taken action a enters the loss (a "masked" MSE): the network outputs a
    Q-value for every action, but the transition tells us nothing about the others.

    Double DQN (van Hasselt et al., 2016), on by default, reduces the overestimation that the max
    brings: the main network chooses a', the target network values it:

        y = r + gamma * (1 - terminated) * Q(s', argmax_a' Q(s', a'; theta); theta^-)

    A time-limit truncation is not a termination: the pole was still up when the clock ran out,
    so the target bootstraps through it. Only `terminated` stops the bootstrap.

How this file is laid out
    One method of :class:`DeepQLearning` per step of the algorithm: `act` (epsilon-greedy),
    `remember`, `sample_batch`, `td_targets`, `gradient_step`, `update_target_network`,
    `evaluate`, `save` and `load`. The loop that calls them is `train.train` in `train.py`.

Speed
    The usual tutorial calls `model.predict` for every action (about 50 ms) and `model.fit` for
    every update. Here the gradient step is a compiled `tf.function`, a whole training phase of
    gradient steps is one call into TensorFlow, and acting uses a NumPy copy of the weights, which
    is about 40 times cheaper than a Keras call for one state.

References
    - V. Mnih et al., "Human-level control through deep reinforcement learning", Nature 518, 2015.
    - H. van Hasselt, A. Guez, D. Silver, "Deep Reinforcement Learning with Double Q-learning",
      AAAI 2016.
    - A. Raffin et al., RL Baselines3 Zoo: the tuned CartPole-v1 hyperparameters used as defaults.
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from typing import NamedTuple

import gymnasium as gym
import keras
import numpy as np
import tensorflow as tf

from common import UserError, atomic_write, evaluate_policy, read_training_record, record_path_for
from dqn_config import DQNConfig


def masked_mse_loss(td_targets: tf.Tensor, q_values: tf.Tensor, action_mask: tf.Tensor) -> tf.Tensor:
    """Mean squared TD error of the taken actions only.

        L = 1/B * sum_i sum_a m_ia * (y_i - Q(s_i, a))^2,   m_i = one_hot(a_i)

    :param td_targets: the TD targets y, shape (B,).
    :param q_values: Q(s, .) for every action from the main network, shape (B, A).
    :param action_mask: one-hot of the taken actions, shape (B, A); the untaken actions' errors are
        multiplied by 0, so they add nothing to the loss and get no gradient.
    :return: the scalar loss.
    """
    squared_errors = tf.square(td_targets[:, None] - q_values) * action_mask
    return tf.reduce_sum(squared_errors) / tf.cast(tf.shape(q_values)[0], q_values.dtype)


def masked_huber_loss(
    td_targets: tf.Tensor, q_values: tf.Tensor, action_mask: tf.Tensor, delta: float = 1.0
) -> tf.Tensor:
    """Mean Huber TD error of the taken actions only: quadratic below `delta`, linear above.

    :param td_targets: the TD targets y, shape (B,).
    :param q_values: Q(s, .) for every action, shape (B, A).
    :param action_mask: one-hot of the taken actions, shape (B, A).
    :param delta: where the loss turns from quadratic to linear (default 1.0).
    :return: the scalar loss.
    """
    errors = tf.abs(td_targets[:, None] - q_values)
    quadratic = tf.minimum(errors, delta)
    huber = 0.5 * tf.square(quadratic) + delta * (errors - quadratic)
    return tf.reduce_sum(huber * action_mask) / tf.cast(tf.shape(q_values)[0], q_values.dtype)


LOSS_FUNCTIONS = {"mse": masked_mse_loss, "huber": masked_huber_loss}


class Batch(NamedTuple):
    """A minibatch of transitions, one row per transition (or a stack of them, one per step)."""

    states: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_states: np.ndarray
    terminated: np.ndarray


class DeepQLearning:
    """A DQN agent: main and target Q-networks, a replay buffer, and the update rule.

    :param observation_size: length of the environment's observation vector.
    :param num_actions: number of discrete actions.
    :param config: hyperparameters (default: ``DQNConfig()``, the tuned CartPole-v1 settings).
    :param seed: seed of the agent's own random choices: exploration and minibatch sampling
        (default 0). Seed Keras too (``keras.utils.set_random_seed``) for identical initial weights.
    """

    def __init__(self, observation_size: int, num_actions: int, config: DQNConfig | None = None,
                 seed: int = 0) -> None:
        self.config = config or DQNConfig()
        self.observation_size = observation_size
        self.num_actions = num_actions
        self.rng = np.random.default_rng(seed)
        self.main_network = self.build_network("main")
        self.target_network = self.build_network("target")
        self.target_network.set_weights(self.main_network.get_weights())
        # clip the gradient norm, as Stable-Baselines3 does, to survive rare huge TD errors
        self.optimizer = keras.optimizers.Adam(self.config.learning_rate, global_clipnorm=self.config.max_grad_norm)
        self.loss_function = LOSS_FUNCTIONS[self.config.loss]
        self.replay_buffer: deque[tuple[np.ndarray, int, float, np.ndarray, bool]] = deque(
            maxlen=self.config.buffer_size)
        # Compile a training phase once, for stacks of batches of these shapes: calling the concrete
        # function with tensors skips tf.function's per-call argument matching, a third of its cost.
        steps_and_batch = [None, self.config.batch_size]
        self._compiled_gradient_steps = tf.function(self._gradient_steps, jit_compile=True).get_concrete_function(
            Batch(states=tf.TensorSpec([*steps_and_batch, observation_size], tf.float32),
                  actions=tf.TensorSpec(steps_and_batch, tf.int32),
                  rewards=tf.TensorSpec(steps_and_batch, tf.float32),
                  next_states=tf.TensorSpec([*steps_and_batch, observation_size], tf.float32),
                  terminated=tf.TensorSpec(steps_and_batch, tf.float32)))
        self.refresh_acting_weights()

    # ----------------------------------------------------------------------------- the networks
    def build_network(self, name: str) -> keras.Model:
        """An MLP from the observation to one Q-value per action: ReLU hidden layers, linear output.

        :param name: the Keras model's name.
        """
        layers = [keras.Input(shape=(self.observation_size,))]
        layers += [keras.layers.Dense(units, activation="relu") for units in self.config.hidden_sizes]
        layers.append(keras.layers.Dense(self.num_actions, activation="linear"))
        return keras.Sequential(layers, name=name)

    def refresh_acting_weights(self, weights: list[np.ndarray] | None = None) -> None:
        """Keep the main network's weights as NumPy (kernel, bias) pairs for `q_values`; call after every
        weight change.

        :param weights: the weights as arrays, if already at hand (default None: read them from the network).
        """
        weights = self.main_network.get_weights() if weights is None else weights
        self._acting_layers = list(zip(weights[::2], weights[1::2], strict=True))

    def q_values(self, states: np.ndarray) -> np.ndarray:
        """Q(s, .; theta) for a batch of states, computed in NumPy from the main network's weights.

        The same function as ``main_network(states)`` (a test checks it), without the framework's
        per-call overhead, which dominates for a single state.

        :param states: shape (B, observation_size).
        :return: shape (B, num_actions).
        """
        activations = np.asarray(states, dtype=np.float32)
        for kernel, bias in self._acting_layers[:-1]:
            activations = np.maximum(activations @ kernel + bias, 0.0)
        kernel, bias = self._acting_layers[-1]
        return activations @ kernel + bias

    # ---------------------------------------------------------------------------------- acting
    def epsilon(self, step: int) -> float:
        """The exploration rate at environment step `step`: linear from epsilon_start to epsilon_end.

            epsilon(t) = epsilon_start + min(1, t / decay_steps) * (epsilon_end - epsilon_start)

        :param step: environment steps taken so far.
        """
        progress = min(1.0, step / self.config.epsilon_decay_steps) if self.config.epsilon_decay_steps else 1.0
        return self.config.epsilon_start + progress * (self.config.epsilon_end - self.config.epsilon_start)

    def greedy_action(self, state: np.ndarray) -> int:
        """argmax_a Q(s, a; theta).

        :param state: one observation, shape (observation_size,).
        """
        return int(np.argmax(self.q_values(state[None])[0]))

    def act(self, state: np.ndarray, epsilon: float) -> int:
        """Epsilon-greedy: a uniformly random action with probability epsilon, else the greedy one.

        :param state: one observation, shape (observation_size,).
        :param epsilon: the exploration rate, in [0, 1]; see `epsilon`.
        """
        if self.rng.random() < epsilon:
            return int(self.rng.integers(self.num_actions))
        return self.greedy_action(state)

    # ---------------------------------------------------------------------------- experience
    def remember(self, state: np.ndarray, action: int, reward: float, next_state: np.ndarray,
                 terminated: bool) -> None:
        """Store a transition in the replay buffer; the oldest is dropped once it is full.

        :param state: the observation s the action was taken in.
        :param action: the action a taken.
        :param reward: the reward r received.
        :param next_state: the observation s' that followed.
        :param terminated: Gymnasium's `terminated`, not ``terminated or truncated``: a transition cut by
            a time limit still bootstraps from its next state.
        """
        self.replay_buffer.append((state, action, reward, next_state, terminated))

    def sample_batch(self, batch_size: int, num_batches: int | None = None) -> Batch:
        """Draw transitions uniformly, with replacement, from the replay buffer.

        :param batch_size: transitions per batch.
        :param num_batches: if given, draw that many batches at once, stacked on a leading axis.
        :return: arrays of shape (batch_size, ...), or (num_batches, batch_size, ...).
        """
        shape = (batch_size,) if num_batches is None else (num_batches, batch_size)
        indices = self.rng.integers(len(self.replay_buffer), size=shape).ravel()
        states, actions, rewards, next_states, terminated = zip(
            *(self.replay_buffer[i] for i in indices), strict=True)
        return Batch(
            states=np.asarray(states, dtype=np.float32).reshape(*shape, -1),
            actions=np.asarray(actions, dtype=np.int32).reshape(shape),
            rewards=np.asarray(rewards, dtype=np.float32).reshape(shape),
            next_states=np.asarray(next_states, dtype=np.float32).reshape(*shape, -1),
            terminated=np.asarray(terminated, dtype=np.float32).reshape(shape),
        )

    # -------------------------------------------------------------------------------- learning
    def td_targets(self, rewards: tf.Tensor, next_states: tf.Tensor, terminated: tf.Tensor) -> tf.Tensor:
        """The TD targets y of a batch.

            DQN:        y = r + gamma * (1 - terminated) * max_a' Q(s', a'; theta^-)
            Double DQN: y = r + gamma * (1 - terminated) * Q(s', argmax_a' Q(s', a'; theta); theta^-)

        :param rewards: r, shape (B,).
        :param next_states: s', shape (B, observation_size).
        :param terminated: 1.0 where the episode terminated at s' (no bootstrap), else 0.0; shape (B,).
        :return: y, shape (B,).
        """
        next_q_target = self.target_network(next_states, training=False)
        if self.config.double_dqn:
            next_actions = tf.argmax(self.main_network(next_states, training=False), axis=1)
            next_values = tf.gather(next_q_target, next_actions, axis=1, batch_dims=1)
        else:
            next_values = tf.reduce_max(next_q_target, axis=1)
        # bootstrap only if not terminated (a truncated episode still bootstraps)
        return rewards + self.config.gamma * (1.0 - terminated) * next_values

    @tf.function
    def gradient_step(self, states: tf.Tensor, actions: tf.Tensor, rewards: tf.Tensor, next_states: tf.Tensor,
                      terminated: tf.Tensor) -> tf.Tensor:
        """One Adam step on the masked TD loss of one batch; returns the loss before the step.

        :param states: s, shape (B, observation_size).
        :param actions: a, int32, shape (B,).
        :param rewards: r, shape (B,).
        :param next_states: s', shape (B, observation_size).
        :param terminated: 1.0 where the episode terminated at s', else 0.0; shape (B,).
        """
        targets = tf.stop_gradient(self.td_targets(rewards, next_states, terminated))
        action_mask = tf.one_hot(actions, self.num_actions)
        with tf.GradientTape() as tape:
            loss = self.loss_function(targets, self.main_network(states, training=True), action_mask)
        gradients = tape.gradient(loss, self.main_network.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.main_network.trainable_variables, strict=True))
        return loss

    def _gradient_steps(self, batches: Batch) -> tuple[tf.Tensor, list[tf.Tensor]]:
        """`gradient_step` on each of a stack of batches; compiled by XLA into one call in `__init__`.

        :return: the mean loss, and the main network's new weights (for acting, without a second call).
        """
        losses = tf.TensorArray(tf.float32, size=tf.shape(batches.actions)[0])
        for i in tf.range(tf.shape(batches.actions)[0]):
            losses = losses.write(i, self.gradient_step(*(field[i] for field in batches)))
        return tf.reduce_mean(losses.stack()), [tf.identity(weight) for weight in self.main_network.weights]

    def train(self, num_gradient_steps: int) -> float:
        """A training phase: `num_gradient_steps` gradient steps, each on a fresh random batch.

        :param num_gradient_steps: how many gradient steps (the config's `gradient_steps` in train.py).
        :return: the mean loss of the phase (NaN or infinite if training diverged).
        """
        batches = self.sample_batch(self.config.batch_size, num_gradient_steps)
        loss, weights = self._compiled_gradient_steps(Batch(*(tf.constant(field) for field in batches)))
        self.refresh_acting_weights([weight.numpy() for weight in weights])
        return float(loss)

    @tf.function
    def update_target_network(self) -> None:
        """theta^- <- tau * theta + (1 - tau) * theta^-: a hard copy when tau = 1, else Polyak averaging."""
        tau = self.config.tau
        for target, main in zip(self.target_network.weights, self.main_network.weights, strict=True):
            target.assign(main if tau == 1.0 else tau * main + (1.0 - tau) * target)

    # ------------------------------------------------------------------------------ evaluation
    def evaluate(self, env: gym.Env, episodes: int, seed: int) -> np.ndarray:
        """Play `episodes` greedy episodes (epsilon = 0) on `env`; return their undiscounted returns.

        :param env: an environment used for evaluation only, so that training episodes are not cut.
        :param episodes: number of episodes.
        :param seed: the episodes reset with seeds seed, seed + 1, ...: every evaluation plays the same starts.
        """
        return evaluate_policy(env, self.greedy_action, episodes, seed)

    # --------------------------------------------------------------------------- save and load
    def save(self, weights_path: str | os.PathLike) -> None:
        """Write the main network's weights to `weights_path` (ending in ``.weights.h5``) atomically.

        The weights go to a temporary file first, then replace the old file in one rename, so an
        interrupted save never leaves a broken file where a good one was.

        :param weights_path: where to write; Keras 3 requires the ``.weights.h5`` suffix.
        """
        atomic_write(Path(weights_path), lambda temporary: self.main_network.save_weights(temporary, overwrite=True))

    def load(self, weights_path: str | os.PathLike) -> None:
        """Load weights written by `save` into both networks.

        :param weights_path: a ``.weights.h5`` file written by `save`.
        :raises ValueError: if the file does not hold weights of this architecture.
        """
        self.main_network.load_weights(weights_path)
        self.target_network.set_weights(self.main_network.get_weights())
        self.refresh_acting_weights()

    @classmethod
    def from_saved(cls, weights_path: str | os.PathLike) -> tuple[DeepQLearning, dict]:
        """Rebuild an agent from ``STEM.weights.h5`` and the ``STEM.json`` that `train.py` wrote beside it.

        :param weights_path: the ``STEM.weights.h5`` file.
        :return: the agent and the JSON record (``env_id``, ``config``, ``seed``, ...).
        :raises UserError: if a file is missing, or the weights do not fit the network the record describes.
        """
        weights_path = Path(weights_path)
        record = read_training_record(weights_path)
        agent = cls(record["observation_size"], record["num_actions"], DQNConfig.from_dict(record["config"]))
        try:
            agent.load(weights_path)
        except Exception as error:  # Keras raises ValueError, OSError or KeyError, depending on the damage
            raise UserError(f"{weights_path} does not hold weights for the network described in "
                            f"{record_path_for(weights_path).name} ({type(error).__name__}: "
                            f"{str(error).splitlines()[0] if str(error) else 'unreadable'})") from error
        return agent, record
