"""The DQN family, part 2: C51's projection and loss, noisy layers, and the Rainbow agent's flags, each against
numbers worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import train
from dqn_agent import Batch, DeepQLearning, masked_cross_entropy_loss, project_distribution, taken_action_cross_entropy
from dqn_config import DQNConfig
from networks import NoisyDense, NumpyForward
from presets import agent_presets_dir, all_presets, find_preset

SUPPORT = np.array([-2.0, -1.0, 0.0, 1.0, 2.0], np.float32)  # 5 atoms, 1 apart


def project(reward: float, discount: float, probabilities: list[float]) -> np.ndarray:
    return project_distribution(tf.constant([reward]), tf.constant([discount]),
                                tf.constant([probabilities], tf.float32), tf.constant(SUPPORT)).numpy()[0]


def test_the_projection_splits_each_shifted_atom_between_its_two_neighbours():
    # R = 0.5, discount 0.5: the atoms move to -0.5, 0, 0.5, 1, 1.5; each of -0.5, 0.5 and 1.5 splits half and half
    np.testing.assert_allclose(project(0.5, 0.5, [0.2] * 5), [0.0, 0.1, 0.4, 0.4, 0.1], atol=1e-6)
    # an atom that lands on an atom keeps all its probability: R = 1, discount 1 moves -2..1 onto -1..2
    np.testing.assert_allclose(project(1.0, 1.0, [0.1, 0.2, 0.3, 0.4, 0.0]), [0.0, 0.1, 0.2, 0.3, 0.4], atol=1e-6)
    # a quarter of the way: R = 0.25 moves atom 0 to 0.25, three quarters to atom 0, one quarter to atom 1
    np.testing.assert_allclose(project(0.25, 1.0, [0, 0, 1, 0, 0]), [0, 0, 0.75, 0.25, 0], atol=1e-6)


def test_the_projection_clips_at_the_supports_edges():
    # R = 3, discount 1: atom -2 lands on atom 1; the others land above 2 and are clipped onto the last atom
    np.testing.assert_allclose(project(3.0, 1.0, [0.1, 0.2, 0.3, 0.2, 0.2]), [0, 0, 0, 0.1, 0.9], atol=1e-6)
    # R = -1.5, discount 1: -2 and -1 fall at -3.5 and -2.5 and clip to -2; 0, 1 and 2 fall at -1.5, -0.5 and 0.5
    # and split half and half between their neighbours
    np.testing.assert_allclose(project(-1.5, 1.0, [0.2] * 5), [0.2 + 0.2 + 0.1, 0.1 + 0.1, 0.1 + 0.1, 0.1, 0.0],
                               atol=1e-6)


def test_a_terminal_transition_puts_everything_beside_its_reward():
    # discount 0 (terminated): whatever the next distribution, R = 0.7 goes 30% to atom 0 and 70% to atom 1
    np.testing.assert_allclose(project(0.7, 0.0, [0.5, 0.0, 0.0, 0.0, 0.5]), [0, 0, 0.3, 0.7, 0], atol=1e-6)


def test_the_cross_entropy_is_the_taken_actions_only():
    target = tf.constant([[0.0, 1.0, 0.0]])
    logits = tf.Variable([[[0.0, 0.0, 0.0], [5.0, -3.0, 1.0]]])  # action 0 uniform, action 1 anything
    mask = tf.constant([[1.0, 0.0]])
    with tf.GradientTape() as tape:
        loss = masked_cross_entropy_loss(target, logits, mask)
    assert float(loss) == pytest.approx(np.log(3.0))  # -log(1/3): the uniform action's probability of atom 1
    gradient = tape.gradient(loss, logits).numpy()
    np.testing.assert_allclose(gradient[0, 1], 0.0)  # the untaken action gets no gradient
    np.testing.assert_allclose(gradient[0, 0], [1 / 3, 1 / 3 - 1, 1 / 3], atol=1e-6)  # softmax - target
    weighted = masked_cross_entropy_loss(tf.concat([target] * 2, 0), tf.concat([logits] * 2, 0),
                                         tf.concat([mask] * 2, 0), tf.constant([1.0, 0.5]))
    assert float(weighted) == pytest.approx(np.log(3.0) * 1.5 / 2)
    np.testing.assert_allclose(taken_action_cross_entropy(target, logits, mask).numpy(), [np.log(3.0)], rtol=1e-6)


def test_a_noisy_layer_draws_new_noise_in_training_and_is_its_mean_outside():
    layer = NoisyDense(3, seed=0)
    inputs = tf.constant(np.random.default_rng(0).normal(size=(4, 5)), tf.float32)
    layer(inputs)  # builds it
    # the mean weights' output; float32 products of TensorFlow and NumPy agree to about 1e-7 absolute, not relative
    mean = inputs.numpy() @ layer.kernel_mean.numpy() + layer.bias_mean.numpy()
    np.testing.assert_allclose(layer(inputs).numpy(), mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(layer(inputs, training=False).numpy(), mean, rtol=1e-6, atol=1e-6)
    first, second = layer(inputs, training=True).numpy(), layer(inputs, training=True).numpy()
    assert not np.allclose(first, mean) and not np.allclose(first, second)
    # factorised noise: the change to W x is ((x * f(e_in)) sigma_W) * f(e_out), one draw for the whole batch, so
    # the sigmas set its size: with sigma 0 the noise is gone
    for sigma in (layer.kernel_sigma, layer.bias_sigma):
        sigma.assign(tf.zeros_like(sigma))
    np.testing.assert_allclose(layer(inputs, training=True).numpy(), mean, rtol=1e-6, atol=1e-6)


def test_noisy_acting_explores_by_its_noise_and_greedy_evaluation_acts_on_the_mean():
    agent = DeepQLearning((3,), 4, DQNConfig(hidden_sizes=(8,), noisy_nets=True, noisy_sigma=5.0))
    assert isinstance(agent._forward, NumpyForward)
    state = np.ones(3, np.float32)
    assert len({agent.greedy_action(state) for _ in range(50)}) == 1  # the mean network: always the same action
    assert len({agent.act(state, epsilon=0.0) for _ in range(200)}) > 1  # a fresh draw of the noise each time
    # NumPy's noisy pass is NoisyDense's: the same noise gives the same Q-values as Keras's layer with that noise
    noisy = agent.q_values(state[None], noisy=True)
    assert not np.allclose(noisy, agent.q_values(state[None]))


@pytest.mark.parametrize(("shape", "network", "numpy"), [((10, 10, 4), "minatar_cnn", True),
                                                       ((84, 84, 4), "nature_cnn", False)])
def test_a_cnn_agent_acts_as_its_network_does_noise_and_atoms_included(shape, network, numpy):
    # MinAtar's small CNN acts in NumPy (a convolution as one matrix product), the Nature CNN in one compiled call
    config = DQNConfig(network=network, noisy_nets=True, distributional=True, loss="cross_entropy", num_atoms=7,
                       dueling=True, batch_size=4)
    agent = DeepQLearning(shape, 3, config)
    assert isinstance(agent._forward, NumpyForward) == numpy
    states = np.random.default_rng(0).integers(0, 256, size=(5, *shape)).astype(np.uint8)
    np.testing.assert_allclose(agent.q_values(states), agent.expected_q(agent.main_network(states)).numpy(),
                               rtol=1e-5, atol=1e-5)
    assert agent.main_network(states).shape == (5, 3, 7)
    assert not np.allclose(agent.q_values(states, noisy=True), agent.q_values(states))
    for _ in range(8):  # and after training, with the weights the phase hands back
        agent.remember(states[0], 1, 1.0, states[1], False)
    agent.training_phase(2)
    np.testing.assert_allclose(agent.q_values(states), agent.expected_q(agent.main_network(states)).numpy(),
                               rtol=1e-5, atol=1e-5)


def test_a_distributional_agent_learns_the_return_of_a_terminal_transition():
    config = DQNConfig(hidden_sizes=(8,), distributional=True, loss="cross_entropy", num_atoms=5, v_min=-2.0,
                       v_max=2.0, batch_size=4, learning_rate=0.05)
    agent = DeepQLearning((3,), 2, config)
    state = np.ones(3, np.float32)
    for _ in range(4):
        agent.remember(state, 1, 1.0, state, terminated=True)
    for _ in range(20):
        agent.training_phase(10)
    # the target is all on atom 1.0: the taken action's distribution moves there, and its Q with it
    probabilities = tf.nn.softmax(agent.main_network(state[None])[0, 1]).numpy()
    assert probabilities[3] > 0.9 and agent.q_values(state[None])[0, 1] == pytest.approx(1.0, abs=0.1)


def test_double_dqn_chooses_the_next_action_on_the_main_networks_mean_return():
    config = DQNConfig(hidden_sizes=(8,), distributional=True, loss="cross_entropy", num_atoms=5, v_min=-2.0,
                       v_max=2.0)
    agent = DeepQLearning((3,), 2, config)
    batch = Batch(*(tf.constant(a) for a in (np.ones((2, 3), np.float32), np.zeros(2, np.int32),
                                            np.array([0.0, 0.5], np.float32), np.ones((2, 3), np.float32),
                                            np.zeros(2, np.float32), np.ones(2, np.float32), np.ones(2, np.float32))))
    chosen = int(np.argmax(agent.q_values(np.ones((1, 3), np.float32))[0]))
    next_distribution = tf.nn.softmax(agent.target_network(np.ones((1, 3), np.float32))[0, chosen]).numpy()
    expected = project_distribution(batch.rewards, agent.bootstrap_discounts(batch),
                                    tf.constant(np.stack([next_distribution] * 2)), tf.constant(agent.support))
    np.testing.assert_allclose(agent.target_distribution(batch).numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)


def test_a_switch_on_the_command_line_brings_its_own_defaults(tmp_path):
    out = ["--out", str(tmp_path / "run")]
    # the MinAtar preset's loss is huber: --distributional alone learns by cross-entropy, and says nothing wrong
    command = train.parse_args(["--env", "MinAtar/Breakout-v1", "--distributional", *out])
    assert command.config.distributional and command.config.loss == "cross_entropy"
    command = train.parse_args(["--noisy-nets", *out])
    assert command.config.epsilon_start == command.config.epsilon_end == 0.0
    command = train.parse_args(["--noisy-nets", "--epsilon-end", "0.01", *out])  # a given epsilon stays
    assert command.config.epsilon_start == 1.0 and command.config.epsilon_end == 0.01


def test_the_rainbow_agent_is_the_environments_preset_with_all_six_extensions(tmp_path):
    command = train.parse_args(["--env", "MinAtar/Breakout-v1", "--agent", "rainbow", "--out", str(tmp_path / "r")])
    config, dqn = command.config, find_preset("MinAtar/Breakout-v1").config
    assert config.double_dqn and config.dueling and config.n_step == 3 and config.prioritized_replay
    assert config.noisy_nets and config.distributional and config.loss == "cross_entropy"
    assert config.buffer_size == dqn["buffer_size"] and config.batch_size == dqn["batch_size"]  # kept
    assert config.optimizer == "adam" != dqn["optimizer"] and config.learning_rate == 1e-4  # Rainbow's own
    assert command.preset["file"] == "presets/rainbow/MinAtar.toml" and command.settings.agent == "rainbow"
    flags = train.parse_args(["--env", "MinAtar/Breakout-v1", "--agent", "rainbow", "--n-step", "5",
                              "--out", str(tmp_path / "r")])
    assert flags.config.n_step == 5  # a flag still overrides its one value


@pytest.mark.parametrize("preset", all_presets(agent_presets_dir("rainbow")), ids=lambda preset: preset.path.stem)
def test_each_rainbow_preset_goes_over_its_environments_preset_into_a_valid_config(preset):
    base = find_preset(preset.env_ids[0])
    assert base is not None and preset.source.get("from") and preset.source.get("measured")
    config = DQNConfig(**preset.over(base).config)
    assert (config.double_dqn, config.dueling, config.n_step > 1, config.prioritized_replay, config.noisy_nets,
            config.distributional) == (True,) * 6
