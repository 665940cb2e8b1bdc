"""Deep Q-Learning (DQN) with Keras 3, as a worked example.

What
    An agent that learns to act in a Gymnasium environment with discrete actions from reward alone,
    by learning the action-value function

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

The DQN family: three extensions, each a switch of `DQNConfig` and one marked line of `train_step`
    n-step returns (Sutton, 1988; used by Hessel et al., 2018 in Rainbow), ``n_step``: a stored transition
    carries the discounted reward of k steps and the state k steps later, with k = n or fewer where the
    episode ended inside the window (the replay memory builds them, see `replay_memory.py`):

        y = sum_{j<k} gamma^j r_{t+j} + gamma^k * (1 - terminated) * Q(s_{t+k}, a'; theta^-)

    which propagates a reward n steps back in one update, at the price of targets from older policies.

    Prioritized experience replay (Schaul et al., 2016), ``prioritized_replay``: transition i is drawn with
    probability P(i) = p_i^alpha / sum_j p_j^alpha, p_i = |delta_i| + epsilon its last absolute TD error, and
    its squared error is weighted in the loss by the importance weight that undoes the skew,

        w_i = (N * P(i))^-beta / max_j w_j,      L = 1/B * sum_i w_i * (y_i - Q(s_i, a_i))^2,

    with beta annealed from ``priority_beta_start`` to 1; the sampled transitions get their new |delta_i| as
    priority after the training phase (``priority_updates="phase"``) or after each step (``"step"``).

    Dueling networks (Wang et al., 2016), ``dueling``: the network's head splits into a state value and the
    actions' advantages, Q(s, a) = V(s) + A(s, a) - mean_a' A(s, a') (`networks.DuelingHead`); the update
    does not change.

The DQN family, part 2: noisy networks, C51, and Rainbow
    Noisy networks (Fortunato et al., 2018), ``noisy_nets``: the last two layers' weights are w = mu + sigma * eps
    with learned mu and sigma and factorised Gaussian noise eps drawn afresh for every forward pass in training
    and for every action (`networks.NoisyDense`). The agent explores by acting greedily on a noisy draw, so
    epsilon goes to 0; greedy evaluation acts on the mean weights mu. The update does not change: each forward
    pass of `train_step` has its own noise.

    Distributional C51 (Bellemare et al., 2017), ``distributional``: the network outputs, for each action, a
    categorical distribution p(s, a) over N fixed returns z_0 < ... < z_{N-1} (the support, v_min to v_max), and
    Q(s, a) = sum_j z_j p_j(s, a). The target is a distribution too: the target network's p(s', a') moved to
    R + gamma^k (1 - terminated) z_j and projected back onto the atoms (`project_distribution`), and the loss is
    the taken action's cross-entropy, the masked loss's distributional form:

        L = 1/B * sum_i w_i * ( - sum_j m_ij log p_j(s_i, a_i) ),   m_i = Phi(R_i + gamma^k z, p(s'_i, a'_i))

    which is also the new priority of a transition under prioritized replay (as Rainbow does).

    Rainbow (Hessel et al., 2018) is all six at once: Double DQN, dueling, n-step, prioritized replay, noisy
    networks and C51 (``python train.py --agent rainbow``, `presets/rainbow/`).

Learning from few frames: data augmentation
    DrQ (Kostrikov et al., 2020), ``random_shift``: each training step shifts every image of its minibatch, s and
    s' alike, by a few pixels at random (`random_shift`: pad with the edge, crop back), so that the network
    cannot fit the exact pixels of the few frames it has seen. The stored frames never change; the update is
    DQN's on the shifted images. With n-step returns and an update every step, this is the DrQ agent of the
    Atari 100k benchmark (``python train.py --env ALE/Pong-v5 --agent drq``); DER (van Hasselt et al., 2019) is
    Rainbow on that schedule (``--agent der``).

How this file reads
    `DeepQLearning` has one method per step of the algorithm, in the order they happen:
    `act` (epsilon-greedy), `remember`, `sample`, `train_step` (the update, on one screen, with its target
    in one named method per kind: `td_target` for a number, `target_distribution` for C51),
    `update_target_network`. The replay memory is a room of its own, `replay_memory.ReplayMemory`, whose
    `collections.deque` of transitions is `replay_buffer` here. The networks are defined once, in
    `networks.py`. The loop that calls these methods, with evaluation and saving, is `run_training` in
    `train.py`.

Speed
    Two helpers make it fast, and can be skipped on a first reading: acting computes Q(s, .) in
    NumPy from the network's own layers (`networks.NumpyForward`), and a whole training phase of
    `train_step`s is one compiled call, XLA-compiled for the MLP and MinAtar's CNN (`_compile_training_phase`).
    `python -m bench.costs` measures both against the plain Keras calls.

References
    - V. Mnih et al., "Human-level control through deep reinforcement learning", Nature 518, 2015.
    - H. van Hasselt, A. Guez, D. Silver, "Deep Reinforcement Learning with Double Q-learning",
      AAAI 2016.
    - R. S. Sutton, "Learning to predict by the methods of temporal differences", Machine Learning 3, 1988.
    - T. Schaul, J. Quan, I. Antonoglou, D. Silver, "Prioritized Experience Replay", ICLR 2016.
    - Z. Wang et al., "Dueling Network Architectures for Deep Reinforcement Learning", ICML 2016.
    - M. Fortunato et al., "Noisy Networks for Exploration", ICLR 2018.
    - M. G. Bellemare, W. Dabney, R. Munos, "A Distributional Perspective on Reinforcement Learning", ICML 2017.
    - M. Hessel et al., "Rainbow: Combining Improvements in Deep Reinforcement Learning", AAAI 2018.
    - I. Kostrikov, D. Yarats, R. Fergus, "Image Augmentation Is All You Need: Regularizing Deep Reinforcement
      Learning from Pixels", ICLR 2021.
    - H. van Hasselt, M. Hessel, J. Aslanides, "When to use parametric models in reinforcement learning?",
      NeurIPS 2019.
    - A. Raffin et al., RL Baselines3 Zoo: the tuned hyperparameters the presets start from.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import NamedTuple

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from dqn_config import DQNConfig
from networks import NumpyForward, build_q_network, noise_generators
from replay_memory import ReplayMemory, Transition


def masked_mse_loss(td_targets: tf.Tensor, q_values: tf.Tensor, action_mask: tf.Tensor,
                    weights: tf.Tensor | None = None) -> tf.Tensor:
    """Mean squared TD error of the taken actions only, each transition's term weighted.

        L = 1/B * sum_i w_i * sum_a m_ia * (y_i - Q(s_i, a))^2,   m_i = one_hot(a_i)

    :param td_targets: the TD targets y, shape (B,).
    :param q_values: Q(s, .) for every action from the main network, shape (B, A).
    :param action_mask: one-hot of the taken actions, shape (B, A); the untaken actions' errors are
        multiplied by 0, so they add nothing to the loss and get no gradient.
    :param weights: each transition's weight w_i, shape (B,): prioritized replay's importance weights
        (default: 1 for every transition, the plain mean).
    :return: the scalar loss.
    """
    squared_errors = ops.square(td_targets[:, None] - q_values) * action_mask
    if weights is not None:
        squared_errors = squared_errors * weights[:, None]
    return ops.sum(squared_errors) / ops.cast(ops.shape(q_values)[0], q_values.dtype)


def masked_huber_loss(td_targets: tf.Tensor, q_values: tf.Tensor, action_mask: tf.Tensor,
                      weights: tf.Tensor | None = None, delta: float = 1.0) -> tf.Tensor:
    """Mean Huber TD error of the taken actions only, each transition's term weighted: quadratic below `delta`,
    linear above.

    :param td_targets: the TD targets y, shape (B,).
    :param q_values: Q(s, .) for every action, shape (B, A).
    :param action_mask: one-hot of the taken actions, shape (B, A).
    :param weights: each transition's weight, shape (B,) (default: 1 for every transition).
    :param delta: where the loss turns from quadratic to linear (default 1.0).
    :return: the scalar loss.
    """
    errors = ops.abs(td_targets[:, None] - q_values)
    quadratic = ops.minimum(errors, delta)
    huber = (0.5 * ops.square(quadratic) + delta * (errors - quadratic)) * action_mask
    if weights is not None:
        huber = huber * weights[:, None]
    return ops.sum(huber) / ops.cast(ops.shape(q_values)[0], q_values.dtype)


def taken_action_cross_entropy(target_probabilities: tf.Tensor, logits: tf.Tensor, action_mask: tf.Tensor) -> tf.Tensor:
    """Each transition's cross-entropy between the target distribution and the taken action's predicted one,

        H_i = - sum_j m_ij log p_j(s_i, a_i),   p(s, a) = softmax over the atoms of the logits of a

    (C51's loss term, and its new priority under prioritized replay, as in Rainbow).

    :param target_probabilities: the projected target distributions m, shape (B, N).
    :param logits: the main network's logits for every action, shape (B, A, N).
    :param action_mask: one-hot of the taken actions, shape (B, A): the other actions' distributions add nothing.
    :return: shape (B,).
    """
    log_probabilities = ops.sum(ops.log_softmax(logits, axis=-1) * action_mask[:, :, None], axis=1)
    return -ops.sum(target_probabilities * log_probabilities, axis=-1)


def masked_cross_entropy_loss(target_probabilities: tf.Tensor, logits: tf.Tensor, action_mask: tf.Tensor,
                              weights: tf.Tensor | None = None) -> tf.Tensor:
    """The mean over the batch of the taken actions' cross-entropies (`taken_action_cross_entropy`), each
    transition's term weighted: the masked loss of a distributional agent.

    :param target_probabilities: the projected target distributions, shape (B, N).
    :param logits: the main network's logits, shape (B, A, N).
    :param action_mask: one-hot of the taken actions, shape (B, A).
    :param weights: each transition's weight, shape (B,) (default: 1 for every transition).
    :return: the scalar loss.
    """
    cross_entropies = taken_action_cross_entropy(target_probabilities, logits, action_mask)
    if weights is not None:
        cross_entropies = cross_entropies * weights
    return ops.mean(cross_entropies)


def project_distribution(rewards: tf.Tensor, discounts: tf.Tensor, probabilities: tf.Tensor,
                         support: tf.Tensor) -> tf.Tensor:
    """C51's projection (Bellemare et al., 2017, Algorithm 1): the distribution of R + discount * Z, where Z puts
    probability p_j on atom z_j, put back onto the atoms z_0 < ... < z_{N-1} (spaced dz apart).

    Each shifted atom T z_j = R + discount * z_j is clipped into [z_0, z_{N-1}]; it falls at fractional position
    b_j = (T z_j - z_0) / dz, between the atoms l = floor(b_j) and u = ceil(b_j), and its probability p_j is split
    between those two in proportion to nearness: l gets p_j * (u - b_j), u gets p_j * (b_j - l). Written for all
    atoms at once, atom i receives

        m_i = sum_j p_j * max(0, 1 - |b_j - i|)

    (the same split, and when b_j lands exactly on an atom that atom gets all of p_j). A terminal transition has
    discount 0: all its probability lands on the atoms beside R.

    :param rewards: the (n-step) returns R, shape (B,).
    :param discounts: gamma^k * (1 - terminated), shape (B,).
    :param probabilities: the next state's distribution p over the atoms, shape (B, N).
    :param support: the atoms z, shape (N,), evenly spaced.
    :return: the projected distribution m, shape (B, N); each row sums to 1.
    """
    num_atoms = support.shape[0]
    spacing = (support[-1] - support[0]) / (num_atoms - 1)
    shifted = ops.clip(rewards[:, None] + discounts[:, None] * support[None, :], support[0], support[-1])
    positions = (shifted - support[0]) / spacing  # b_j, shape (B, N)
    nearness = ops.relu(1.0 - ops.abs(positions[:, :, None] - ops.arange(num_atoms, dtype=positions.dtype)))
    return ops.sum(probabilities[:, :, None] * nearness, axis=1)  # sum over j: (B, N) onto atoms i


def random_shift(images: tf.Tensor, pad: int, seed: keras.random.SeedGenerator) -> tf.Tensor:
    """DrQ's augmentation (Kostrikov et al., 2020): each image of a batch padded by `pad` pixels that repeat its
    edge, then cropped back to its size at a random offset, the offset drawn afresh for every image.

    Cropping at offset (dy, dx) in [0, 2 pad] reads pixel (y + dy - pad, x + dx - pad) of the image, clipped to its
    edge, which is what the edge padding holds there: so each image is two gathers, of its shifted rows and of its
    shifted columns, and no padded copy is made. Integer pixels stay integers (uint8 in, uint8 out).

    :param images: a batch of images, shape (B, H, W, C).
    :param pad: the largest shift, in pixels (DrQ: 4 on 84x84 Atari frames).
    :param seed: the generator of the shifts.
    :return: the shifted images, same shape and dtype.
    """
    height, width = images.shape[1], images.shape[2]
    shifts = keras.random.randint((ops.shape(images)[0], 2), -pad, pad + 1, seed=seed)
    rows = ops.clip(ops.arange(height)[None, :] + shifts[:, :1], 0, height - 1)  # (B, H): the rows each image reads
    columns = ops.clip(ops.arange(width)[None, :] + shifts[:, 1:], 0, width - 1)
    shifted_rows = tf.gather(images, rows, axis=1, batch_dims=1)
    return tf.gather(shifted_rows, columns, axis=2, batch_dims=1)


def softmax(logits: np.ndarray) -> np.ndarray:
    """A distributional network's probabilities from its logits, over the last axis (the atoms), in NumPy."""
    exponentials = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exponentials / exponentials.sum(axis=-1, keepdims=True)


LOSS_FUNCTIONS = {"mse": masked_mse_loss, "huber": masked_huber_loss, "cross_entropy": masked_cross_entropy_loss}


class Batch(NamedTuple):
    """A minibatch of transitions, one row per transition (or a stack of minibatches, one per step).

    `rewards` are the transitions' (n-step) discounted returns, `steps` the k of gamma^k their targets bootstrap
    with (1 for one-step DQN), `weights` their importance weights (1 without prioritized replay)."""

    states: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_states: np.ndarray
    terminated: np.ndarray
    steps: np.ndarray
    weights: np.ndarray


class StepStats(NamedTuple):
    """What a gradient step (or the mean over a training phase) reports: the loss before the step, and the
    mean over the batch of max_a Q(s, a; theta), which shows whether the values grow or explode."""

    loss: float
    mean_max_q: float
    mean_importance_weight: float = 1.0


class DeepQLearning:
    """A DQN agent: main and target Q-networks, a replay buffer, and the update rule.

    :param observation_shape: the shape of one observation, e.g. ``(4,)`` for CartPole-v1.
    :param num_actions: number of discrete actions.
    :param config: hyperparameters (default: ``DQNConfig()``, the tuned CartPole-v1 settings).
    :param seed: seed of the agent's own random choices: exploration and minibatch sampling
        (default 0). Seed Keras too (``keras.utils.set_random_seed``) for identical initial weights.
    """

    def __init__(self, observation_shape: tuple[int, ...], num_actions: int, config: DQNConfig | None = None,
                 seed: int = 0) -> None:
        self.config = config or DQNConfig()
        self.observation_shape = tuple(observation_shape)
        self.num_actions = num_actions
        self.rng = np.random.default_rng(seed)
        # images are stored and fed as uint8 pixels (the network scales them), vectors as float32
        self.observation_dtype = np.uint8 if len(self.observation_shape) == 3 else np.float32
        self.main_network = build_q_network(self.observation_shape, num_actions, self.config, "main")
        self.target_network = build_q_network(self.observation_shape, num_actions, self.config, "target")
        self.target_network.set_weights(self.main_network.get_weights())
        self.optimizer = self._build_optimizer()
        self.augmentation_seed = keras.random.SeedGenerator(seed) if self.config.random_shift else None
        self.loss_function = LOSS_FUNCTIONS[self.config.loss]
        # C51's atoms z_0 .. z_{N-1}: the returns a distributional network puts its probabilities on
        self.support = np.linspace(self.config.v_min, self.config.v_max, self.config.num_atoms, dtype=np.float32) \
            if self.config.distributional else None
        self.memory = ReplayMemory(self.config.buffer_size, self.config.n_step, self.config.gamma,
                                   self.config.prioritized_replay, self.config.priority_alpha,
                                   self.config.priority_epsilon)
        with _interrupts_held():
            self._apply_gradients = self._compile_optimizer_step()
            self._forward = NumpyForward(self.main_network) if NumpyForward.supports(self.main_network) \
                else self._compile_forward()
            self._training_phase = self._compile_training_phase()
            self._train_step = self._compile_train_step() if self.config.prioritized_replay and \
                self.config.priority_updates == "step" else None

    @property
    def noise_generators(self) -> list[keras.random.SeedGenerator]:
        """The random generators of the training step: both networks' noisy layers (none without noisy networks),
        and the augmentation's shifts (with `random_shift`); a checkpoint keeps their states."""
        augmentation = [self.augmentation_seed] if self.augmentation_seed else []
        return noise_generators(self.main_network) + noise_generators(self.target_network) + augmentation

    def _build_optimizer(self) -> keras.optimizers.Optimizer:
        """Adam, or RMSprop as in the Nature paper (decay 0.95, centred, `rmsprop_epsilon` under the square root);
        the global gradient norm is clipped, as Stable-Baselines3 does, to survive rare huge TD errors."""
        if self.config.optimizer == "rmsprop":
            return keras.optimizers.RMSprop(self.config.learning_rate, rho=0.95, epsilon=self.config.rmsprop_epsilon,
                                            centered=True, global_clipnorm=self.config.max_grad_norm)
        return keras.optimizers.Adam(self.config.learning_rate, epsilon=self.config.adam_epsilon,
                                     global_clipnorm=self.config.max_grad_norm)

    # ---------------------------------------------------------------------------------- acting
    def q_values(self, states: np.ndarray, noisy: bool = False) -> np.ndarray:
        """Q(s, .; theta) of a batch of states, shape (B, num_actions): the main network's function, computed
        by `networks.NumpyForward` for an MLP or MinAtar's CNN and by one compiled call for the Nature CNN (both
        always in step with the network's weights). A distributional network's Q is its distribution's mean,
        sum_j z_j p_j(s, a).

        :param noisy: noisy networks draw fresh noise, as when exploring (default: the mean weights, as greedy
            evaluation uses; without noisy layers the two are the same).
        """
        outputs = self._forward(states, self.rng if noisy and self.config.noisy_nets else None)
        return softmax(outputs) @ self.support if self.config.distributional else outputs

    def return_distributions(self, states: np.ndarray) -> np.ndarray:
        """A distributional agent's predicted distributions of the return, p_j(s, a) on the atoms `support`, of a
        batch of states (mean weights): shape (B, num_actions, num_atoms)."""
        return softmax(self._forward(states, None))

    def distribution_entropy(self, states: np.ndarray) -> float:
        """A distributional agent's mean entropy, -sum_j p_j log p_j, of the greedy action's predicted return
        distribution over a batch of states: log(num_atoms) when flat, 0 when sure (for the logs).

        :param states: a batch of observations.
        """
        probabilities = self.return_distributions(states)
        greedy = probabilities[np.arange(len(states)), np.argmax(probabilities @ self.support, axis=1)]
        return float(-(greedy * np.log(np.maximum(greedy, 1e-12))).sum(axis=-1).mean())

    def epsilon(self, step: int) -> float:
        """The exploration rate at environment step `step`: linear from epsilon_start to epsilon_end.

            epsilon(t) = epsilon_start + min(1, t / decay_steps) * (epsilon_end - epsilon_start)

        :param step: environment steps taken so far.
        """
        progress = min(1.0, step / self.config.epsilon_decay_steps) if self.config.epsilon_decay_steps else 1.0
        return self.config.epsilon_start + progress * (self.config.epsilon_end - self.config.epsilon_start)

    def greedy_action(self, state: np.ndarray, noisy: bool = False) -> int:
        """argmax_a Q(s, a; theta).

        :param state: one observation.
        :param noisy: act on a fresh draw of a noisy network's weights (default: on its mean weights).
        """
        return int(self.greedy_actions(np.asarray(state)[None], noisy)[0])

    def greedy_actions(self, states: np.ndarray, noisy: bool = False) -> np.ndarray:
        """argmax_a Q(s, a; theta) of each of a batch of states, in one forward pass (evaluations play their
        episodes side by side: `common.evaluate_policy`).

        :param states: a batch of observations.
        :param noisy: as in `greedy_action`.
        """
        return np.argmax(self.q_values(states, noisy), axis=1)

    def act(self, state: np.ndarray, epsilon: float) -> int:
        """Epsilon-greedy: a uniformly random action with probability epsilon, else the greedy one (for noisy
        networks, greedy under a fresh draw of the noise: how they explore).

        :param state: one observation.
        :param epsilon: the exploration rate, in [0, 1]; see `epsilon`.
        """
        if self.rng.random() < epsilon:
            return int(self.rng.integers(self.num_actions))
        return self.greedy_action(state, noisy=True)

    # ---------------------------------------------------------------------------- experience
    @property
    def replay_buffer(self) -> deque[Transition]:
        """The replay buffer: the `collections.deque` of stored transitions, oldest first (see `ReplayMemory`)."""
        return self.memory.transitions

    def remember(self, state: np.ndarray, action: int, reward: float, next_state: np.ndarray,
                 terminated: bool, truncated: bool = False) -> None:
        """Give the replay memory one environment step; it stores the transition (with n-step returns, the
        transitions) that the step completes, and drops the oldest once full.

        :param state: the observation s the action was taken in.
        :param action: the action a taken.
        :param reward: the reward r received.
        :param next_state: the observation s' that followed.
        :param terminated: Gymnasium's `terminated`, not ``terminated or truncated``: a transition cut by
            a time limit still bootstraps from its next state.
        :param truncated: Gymnasium's `truncated`: the episode ends here without a terminal state.
        """
        if self.config.clip_rewards:  # the Nature paper's Atari setting: one scale of error for every game
            reward = float(np.clip(reward, -1.0, 1.0))
        self.memory.add(state, action, reward, next_state, terminated, truncated)

    def priority_beta(self, progress: float) -> float:
        """Prioritized replay's importance-sampling exponent, linear from `priority_beta_start` to 1.

        :param progress: the fraction of the run done, in [0, 1].
        """
        start = self.config.priority_beta_start
        return start + min(1.0, max(0.0, progress)) * (1.0 - start)

    def sample(self, batch_size: int, num_batches: int | None = None, beta: float = 1.0) -> tuple[Batch, np.ndarray]:
        """Draw transitions with replacement from the replay memory: uniformly, or by priority.

        :param batch_size: transitions per minibatch.
        :param num_batches: if given, draw that many minibatches at once, stacked on a leading axis.
        :param beta: the importance-sampling exponent (prioritized replay only).
        :return: the arrays, of shape (batch_size, ...) or (num_batches, batch_size, ...), and the transitions'
            positions in the replay buffer (for their new priorities).
        """
        shape = (batch_size,) if num_batches is None else (num_batches, batch_size)
        drawn = self.memory.sample(shape, self.rng, beta)
        states, actions, rewards, next_states, terminated, steps = zip(*drawn.transitions, strict=True)
        return Batch(
            states=np.asarray(states, dtype=self.observation_dtype).reshape(*shape, *self.observation_shape),
            actions=np.asarray(actions, dtype=np.int32).reshape(shape),
            rewards=np.asarray(rewards, dtype=np.float32).reshape(shape),
            next_states=np.asarray(next_states, dtype=self.observation_dtype).reshape(*shape, *self.observation_shape),
            terminated=np.asarray(terminated, dtype=np.float32).reshape(shape),
            steps=np.asarray(steps, dtype=np.float32).reshape(shape),
            weights=drawn.weights.reshape(shape),
        ), drawn.indices.reshape(shape)

    # -------------------------------------------------------------------------------- learning
    def train_step(self, batch: Batch) -> tuple[StepStats, tf.Tensor]:
        """One gradient step of DQN on one minibatch from `sample`; returns the loss before the step (and the
        batch's mean max Q-value, for the logs), and each transition's new priority under prioritized replay: its
        TD error y - Q(s, a), or for C51 its cross-entropy.

        Runs inside the compiled `training_phase`; on its own (eagerly) it changes the main network's
        variables without refreshing acting's copy of them, so call `training_phase` to train.
        """
        # 0. DrQ's augmentation: s and s' each shifted by a few pixels, at random per image (the stored frames stay)
        if self.config.random_shift:
            batch = batch._replace(
                states=random_shift(batch.states, self.config.random_shift, self.augmentation_seed),
                next_states=random_shift(batch.next_states, self.config.random_shift, self.augmentation_seed))

        # 1. the target, held fixed: no gradient flows into it
        if self.config.distributional:  # C51: the distribution of R + gamma^k Z(s', a'), projected onto the atoms
            targets = ops.stop_gradient(self.target_distribution(batch))
        else:  # DQN: the number y = R + gamma^k (1 - terminated) Q(s', a'; theta^-)
            targets = ops.stop_gradient(self.td_target(batch))

        # 2. the masked loss: the taken action a's term only, weighted by prioritized replay's importance weights
        #    (all 1 for uniform replay); noisy networks draw fresh noise in each call with training=True
        action_mask = ops.one_hot(batch.actions, self.num_actions)
        with tf.GradientTape() as tape:
            outputs = self.main_network(batch.states, training=True)
            loss = self.loss_function(targets, outputs, action_mask, batch.weights)

        # 3. the gradient step on theta (the main network only): `optimizer.apply`, compiled on its own
        self._apply_gradients(tape.gradient(loss, self.main_network.trainable_variables))
        q_values = self.expected_q(outputs)
        if self.config.distributional:
            new_priorities = taken_action_cross_entropy(targets, outputs, action_mask)
        else:
            new_priorities = targets - ops.sum(q_values * action_mask, axis=1)
        return StepStats(loss, ops.mean(ops.max(q_values, axis=1))), new_priorities

    def td_target(self, batch: Batch) -> tf.Tensor:
        """DQN's target y = R + gamma^k * (1 - terminated) * Q(s', a'; theta^-), shape (B,): the target network
        values s' at the action a' of `next_actions` (n-step returns: R sums k rewards, k = n or fewer)."""
        next_q_target = self.target_outputs(batch.next_states)
        next_actions = self.next_actions(batch.next_states, next_q_target)
        next_values = ops.take_along_axis(next_q_target, next_actions[:, None], axis=1)[:, 0]
        return batch.rewards + self.bootstrap_discounts(batch) * next_values

    def target_distribution(self, batch: Batch) -> tf.Tensor:
        """C51's target, shape (B, N): the target network's distribution of the return at (s', a'), a' from
        `next_actions` on its mean, moved to R + gamma^k (1 - terminated) z and projected back onto the atoms
        (`project_distribution`)."""
        next_probabilities = ops.softmax(self.target_outputs(batch.next_states), axis=-1)
        next_actions = self.next_actions(batch.next_states, ops.sum(next_probabilities * self.support, axis=-1))
        next_distribution = ops.take_along_axis(next_probabilities, next_actions[:, None, None], axis=1)[:, 0]
        return project_distribution(batch.rewards, self.bootstrap_discounts(batch), next_distribution, self.support)

    def target_outputs(self, next_states: tf.Tensor) -> tf.Tensor:
        """The target network's outputs at s' (Q-values, or C51's logits). Where theta^- = theta at every update
        (`target_is_main`) they are the main network's, which gives the same values without a copy's forward
        pass."""
        network = self.main_network if self.target_is_main else self.target_network
        return network(next_states, training=True)

    @property
    def target_is_main(self) -> bool:
        """Whether theta^- = theta at every update: train.py copies the main network whole (tau = 1) after every
        environment step (``target_update_interval = 1``), and each training phase is one gradient step, as
        DrQ(epsilon) does. Noisy networks are left out: their two networks draw separate noise. Then Double DQN's
        choice is the target's own, and an update runs the network on s' once instead of twice (`python -m bench.costs
        --atari` times DrQ's update)."""
        config = self.config
        return (config.tau == 1.0 and config.target_update_interval == 1 and config.gradient_steps == 1
                and not config.noisy_nets)

    def next_actions(self, next_states: tf.Tensor, next_q_target: tf.Tensor) -> tf.Tensor:
        """a' at s': argmax_a' Q(s', a'; theta^-) for DQN; for Double DQN the main network chooses it,
        argmax_a' Q(s', a'; theta), and the target network values it (the same choice where theta^- = theta,
        `target_is_main`)."""
        if self.config.double_dqn and not self.target_is_main:
            return ops.argmax(self.expected_q(self.main_network(next_states, training=True)), axis=1)
        return ops.argmax(next_q_target, axis=1)

    def bootstrap_discounts(self, batch: Batch) -> tf.Tensor:
        """gamma^k * (1 - terminated): how much of s' the target keeps. k is 1 for DQN, n or fewer with n-step
        returns; a termination stops the bootstrap, a time-limit truncation does not."""
        return self.config.gamma ** batch.steps * (1.0 - batch.terminated)

    def expected_q(self, outputs: tf.Tensor) -> tf.Tensor:
        """Q-values from the network's outputs: the outputs themselves, or for C51 each action's mean return
        sum_j z_j p_j(s, a)."""
        if self.config.distributional:
            return ops.sum(ops.softmax(outputs, axis=-1) * self.support, axis=-1)
        return outputs

    def training_phase(self, num_steps: int, progress: float = 1.0) -> StepStats:
        """`num_steps` train steps in a row, each on a fresh minibatch; acting uses the new weights afterwards.

        Every minibatch of the phase is drawn at once and the phase runs in one compiled call; prioritized replay
        then updates the drawn transitions' priorities after it (priorities up to ``num_steps - 1`` steps old).
        With ``priority_updates="step"`` it draws each minibatch after the previous step's priorities are in,
        as the paper does: one compiled call per gradient step.

        :param num_steps: how many gradient steps (the config's `gradient_steps` in train.py).
        :param progress: the fraction of the run done, for prioritized replay's beta.
        :return: the phase's mean loss (NaN or infinite if training diverged), mean max Q-value and mean
            importance weight.
        """
        beta = self.priority_beta(progress)
        if not self.config.prioritized_replay or self.config.priority_updates == "phase":
            batches, indices = self.sample(self.config.batch_size, num_steps, beta)
            loss, mean_max_q, td_errors, network_weights = self._training_phase(
                Batch(*(tf.constant(field) for field in batches)))
            if self.config.prioritized_replay:  # after the phase: a transition drawn twice keeps its later error
                self.memory.update_priorities(indices.ravel(), td_errors.numpy().ravel())
            if isinstance(self._forward, NumpyForward):
                self._forward.read_weights([weight.numpy() for weight in network_weights])
            return StepStats(float(loss), float(mean_max_q), float(batches.weights.mean()))
        totals = np.zeros(3)
        for _ in range(num_steps):
            batch, indices = self.sample(self.config.batch_size, beta=beta)
            (loss, mean_max_q, _), td_errors = self._train_step(Batch(*(tf.constant(field) for field in batch)))
            self.memory.update_priorities(indices, td_errors.numpy())
            totals += (float(loss), float(mean_max_q), float(batch.weights.mean()))
        if isinstance(self._forward, NumpyForward):
            self._forward.read_weights()
        return StepStats(*(totals / num_steps))

    @tf.function
    def update_target_network(self) -> None:
        """theta^- <- tau * theta + (1 - tau) * theta^-: a hard copy when tau = 1, else Polyak averaging."""
        tau = self.config.tau
        for target, main in zip(self.target_network.weights, self.main_network.weights, strict=True):
            target.assign(main if tau == 1.0 else tau * main + (1.0 - tau) * target)

    # ------------------------------------------------------------------------- save and load
    def save(self, weights_path: str | os.PathLike | io.BytesIO) -> None:
        """Write the main network's weights (Keras 3 requires the ``.weights.h5`` suffix).

        :param weights_path: where to write: a path, or an in-memory file whose ``str`` is such a name.
        """
        self.main_network.save_weights(weights_path, overwrite=True)

    def load(self, weights_path: str | os.PathLike) -> None:
        """Load weights written by `save` into both networks.

        :param weights_path: a ``.weights.h5`` file written by `save`.
        :raises ValueError: if the file does not hold weights of this architecture.
        """
        self.main_network.load_weights(weights_path)
        self.target_network.set_weights(self.main_network.get_weights())

    # ---------------------------------------------------------- the fast path (skip on a first read)
    def _compile_training_phase(self) -> tf.types.experimental.ConcreteFunction:
        """Compile a training phase, `train_step` on each of a stack of minibatches, into one call.

        One call per phase instead of one per gradient step, and (for NumPy acting) the new weights handed
        back with the loss so that acting needs no second call to read them: ``python -m bench.costs``
        measures a gradient step at about a third of the cost of one `train_step` per call. Calling the
        concrete function with tensors skips `tf.function`'s argument matching on every call.
        """
        hand_back_weights = isinstance(self._forward, NumpyForward)

        def phase(batches: Batch) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, list[tf.Tensor]]:
            num_steps = tf.shape(batches.actions)[0]
            losses = tf.TensorArray(tf.float32, size=num_steps)
            max_qs = tf.TensorArray(tf.float32, size=num_steps)
            td_errors = tf.TensorArray(tf.float32, size=num_steps)
            for i in tf.range(num_steps):
                stats, errors = self.train_step(Batch(*(field[i] for field in batches)))
                losses, max_qs = losses.write(i, stats.loss), max_qs.write(i, stats.mean_max_q)
                td_errors = td_errors.write(i, errors)
            weights = [tf.identity(weight) for weight in self.main_network.weights] if hand_back_weights else []
            return tf.reduce_mean(losses.stack()), tf.reduce_mean(max_qs.stack()), td_errors.stack(), weights

        return tf.function(phase, jit_compile=self._use_xla).get_concrete_function(
            self._batch_spec([None, self.config.batch_size]))

    def _compile_optimizer_step(self) -> Callable[[list[tf.Tensor]], None]:
        """`optimizer.apply` on the main network's variables, for the Nature CNN compiled by XLA as a function of its
        own inside the (non-XLA) training phase: the update (the global norm's clipping, then RMSprop's or Adam's
        moments) is a dozen elementwise TensorFlow ops per variable, which XLA fuses into one call. Rainbow's
        noisy and dueling layers more than double the variables. Where the whole phase is compiled by XLA (the MLP,
        MinAtar's CNN), the optimizer step is in it."""
        variables = self.main_network.trainable_variables
        self.optimizer.build(variables)
        def apply(gradients: list[tf.Tensor]) -> None:
            self.optimizer.apply(gradients, variables)
        return apply if self._use_xla else tf.function(apply, jit_compile=True)

    def _compile_train_step(self) -> tf.types.experimental.ConcreteFunction:
        """`train_step` on one minibatch as one compiled call, for prioritized replay, which draws each minibatch
        only once the previous step's priorities are in (no loop, and no weights handed back: acting reads them
        once, after the phase)."""
        return tf.function(self.train_step, jit_compile=self._use_xla).get_concrete_function(
            self._batch_spec([self.config.batch_size]))

    @property
    def _use_xla(self) -> bool:
        """Whether the compiled update goes through XLA, which fuses its many small ops: on this CPU XLA compiles
        convolution ops into slow code (a Pong gradient step took 1,130 ms with it and 95 ms without), so the Nature
        CNN trains without it; MinAtar's CNN computes its one convolution as a matrix product (`networks.Conv2D`),
        and with XLA its Rainbow phase of 4 gradient steps took 26.0 ms against 46.4 ms without, DQN's 11.2 against
        23.4 (``python -m bench.costs --rainbow`` on the code before and after, two other runs on the cores)."""
        return self.config.network_for(self.observation_shape) in ("mlp", "minatar_cnn")

    def _batch_spec(self, leading: list[int | None]) -> Batch:
        """The `Batch` of tensor specs a compiled update takes: each field's `leading` axes (a minibatch, or a
        stack of them), then an observation's shape for the states."""
        observations = tf.TensorSpec([*leading, *self.observation_shape], tf.as_dtype(self.observation_dtype))
        column = tf.TensorSpec(leading, tf.float32)
        return Batch(states=observations, actions=tf.TensorSpec(leading, tf.int32), rewards=column,
                     next_states=observations, terminated=column, steps=column, weights=column)

    def _compile_forward(self) -> Callable[[np.ndarray, np.random.Generator | None], np.ndarray]:
        """The network's output for a batch of images in one compiled call, which reads the network's current
        variables: with noise (a noisy network's own generator draws it) when given a generator, as
        `NumpyForward` is, else on the mean weights."""
        spec = tf.TensorSpec([None, *self.observation_shape], tf.uint8)
        forward = {noisy: tf.function(lambda states, noisy=noisy: self.main_network(states, training=noisy))
                   .get_concrete_function(spec) for noisy in (False, True)}
        return lambda states, rng: forward[rng is not None](tf.constant(states, tf.uint8)).numpy()


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM while TensorFlow traces the compiled functions, then deliver them.

    A KeyboardInterrupt raised inside tracing can surface from TensorFlow's C++ as a ``SystemError`` instead
    (seen once in CI: "bad argument to internal function"), which a command cannot tell from a crash. Held
    here, a signal that arrives while tracing stops the program as soon as tracing is done, as Ctrl-C does.
    """
    if threading.current_thread() is not threading.main_thread():  # only the main thread handles signals
        yield
        return
    held: list[int] = []
    handlers = {name: signal.signal(name, lambda signum, frame: held.append(signum))
                for name in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(name) is not None}
    try:
        yield
    finally:
        for name, handler in handlers.items():
            signal.signal(name, handler)
        if held:
            signal.raise_signal(held[0])
