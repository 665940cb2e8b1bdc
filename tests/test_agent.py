"""The algorithm's pieces, each against numbers worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from dqn_agent import DeepQLearning, masked_huber_loss, masked_mse_loss
from dqn_config import DQNConfig


def small_agent(**overrides) -> DeepQLearning:
    return DeepQLearning(observation_size=3, num_actions=2, config=DQNConfig(hidden_sizes=(8,), **overrides))


def test_masked_mse_counts_only_the_taken_action():
    targets = tf.constant([1.0, 2.0])
    q_values = tf.constant([[0.0, 100.0], [-50.0, 5.0]])
    mask = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    # (1 - 0)^2 and (2 - 5)^2, averaged over the batch of 2; 100 and -50 are never looked at
    assert float(masked_mse_loss(targets, q_values, mask)) == pytest.approx((1.0 + 9.0) / 2)


def test_untaken_actions_get_no_gradient():
    q_values = tf.Variable([[3.0, 7.0], [4.0, -2.0]])
    with tf.GradientTape() as tape:
        loss = masked_mse_loss(tf.constant([1.0, 0.0]), q_values, tf.constant([[1.0, 0.0], [0.0, 1.0]]))
    gradient = tape.gradient(loss, q_values).numpy()
    # d/dq of (y - q)^2 / 2 is (q - y): 3 - 1 for the first row's action 0, -2 - 0 for the second's action 1
    np.testing.assert_allclose(gradient, [[2.0, 0.0], [0.0, -2.0]])


def test_masked_huber_is_quadratic_near_zero_and_linear_far():
    targets = tf.constant([0.5, 10.0])
    q_values = tf.constant([[0.0, 9.0], [9.0, 0.0]])
    mask = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    # error 0.5: 0.5 * 0.25 = 0.125; error 10: 1 * (10 - 0.5) = 9.5
    assert float(masked_huber_loss(targets, q_values, mask)) == pytest.approx((0.125 + 9.5) / 2)


def set_constant_q(network: tf.keras.Model, q_per_action: list[float]) -> None:
    """Zero the kernels so that the network outputs `q_per_action` for every state."""
    weights = [np.zeros_like(w) for w in network.get_weights()]
    weights[-1] = np.array(q_per_action, dtype=np.float32)
    network.set_weights(weights)


def test_td_target_stops_bootstrapping_only_on_termination():
    agent = small_agent(gamma=0.9, double_dqn=False)
    set_constant_q(agent.target_network, [2.0, 5.0])
    rewards = tf.constant([1.0, 1.0])
    terminated = tf.constant([1.0, 0.0])  # the second transition was cut by a time limit: not terminated
    targets = agent.td_targets(rewards, tf.zeros((2, 3)), terminated).numpy()
    np.testing.assert_allclose(targets, [1.0, 1.0 + 0.9 * 5.0])


def test_double_dqn_target_values_the_main_networks_choice_with_the_target_network():
    agent = small_agent(gamma=0.5, double_dqn=True)
    set_constant_q(agent.main_network, [9.0, 1.0])  # main prefers action 0
    set_constant_q(agent.target_network, [2.0, 5.0])  # target values action 0 at 2 (and would pick 1)
    targets = agent.td_targets(tf.constant([1.0]), tf.zeros((1, 3)), tf.constant([0.0])).numpy()
    np.testing.assert_allclose(targets, [1.0 + 0.5 * 2.0])
    plain = small_agent(gamma=0.5, double_dqn=False)
    set_constant_q(plain.target_network, [2.0, 5.0])
    np.testing.assert_allclose(plain.td_targets(tf.constant([1.0]), tf.zeros((1, 3)), tf.constant([0.0])).numpy(),
                               [1.0 + 0.5 * 5.0])


def test_hard_target_update_copies_the_main_network():
    agent = small_agent(tau=1.0)
    set_constant_q(agent.main_network, [1.0, 2.0])
    assert not np.allclose(agent.target_network.get_weights()[-1], [1.0, 2.0])
    agent.update_target_network()
    for target, main in zip(agent.target_network.get_weights(), agent.main_network.get_weights(), strict=True):
        np.testing.assert_array_equal(target, main)


def test_soft_target_update_moves_tau_of_the_way():
    agent = small_agent(tau=0.25)
    set_constant_q(agent.main_network, [4.0, 8.0])
    set_constant_q(agent.target_network, [0.0, 0.0])
    agent.update_target_network()
    np.testing.assert_allclose(agent.target_network.get_weights()[-1], [1.0, 2.0])
    agent.update_target_network()
    np.testing.assert_allclose(agent.target_network.get_weights()[-1], [1.75, 3.5])


def test_gradient_step_moves_the_taken_actions_q_value_towards_the_target():
    agent = small_agent(learning_rate=0.01, gamma=0.0)
    states = np.ones((4, 3), dtype=np.float32)
    before = agent.q_values(states)[0]
    for _ in range(50):
        agent.gradient_step(states, np.zeros(4, np.int32), np.full(4, 10.0, np.float32), states, np.ones(4, np.float32))
    agent.refresh_acting_weights()
    after = agent.q_values(states)[0]
    assert abs(after[0] - 10.0) < abs(before[0] - 10.0) - 0.1


def test_replay_buffer_keeps_only_the_newest_transitions():
    agent = small_agent(buffer_size=5, batch_size=2)
    for i in range(12):
        agent.remember(np.full(3, i, np.float32), i % 2, float(i), np.full(3, i + 1, np.float32), False)
    assert len(agent.replay_buffer) == 5
    assert [reward for _, _, reward, _, _ in agent.replay_buffer] == [7.0, 8.0, 9.0, 10.0, 11.0]


def test_sample_batch_stacks_transitions_into_arrays():
    agent = small_agent()
    for i in range(10):
        agent.remember(np.full(3, i, np.float32), i % 2, float(i), np.full(3, i + 1, np.float32), i == 9)
    batch = agent.sample_batch(16, num_batches=4)
    assert batch.states.shape == (4, 16, 3) and batch.next_states.shape == (4, 16, 3)
    assert batch.actions.shape == batch.rewards.shape == batch.terminated.shape == (4, 16)
    # each sampled row is one whole transition: next_state = state + 1, reward = state, terminated iff reward 9
    np.testing.assert_array_equal(batch.next_states, batch.states + 1)
    np.testing.assert_array_equal(batch.rewards, batch.states[..., 0])
    np.testing.assert_array_equal(batch.terminated, batch.rewards == 9)


def test_epsilon_decays_linearly_then_stays():
    agent = small_agent(epsilon_start=1.0, epsilon_end=0.1, epsilon_decay_steps=100)
    assert agent.epsilon(0) == pytest.approx(1.0)
    assert agent.epsilon(50) == pytest.approx(0.55)
    assert agent.epsilon(100) == pytest.approx(0.1)
    assert agent.epsilon(10_000) == pytest.approx(0.1)


def test_act_explores_at_rate_epsilon():
    agent = small_agent()
    set_constant_q(agent.main_network, [0.0, 1.0])
    agent.refresh_acting_weights()
    state = np.zeros(3, np.float32)
    assert all(agent.act(state, 0.0) == 1 for _ in range(100))
    actions = [agent.act(state, 0.5) for _ in range(4000)]
    # greedy half the time, and a random half of the random choices: action 0 a quarter of the time
    assert actions.count(0) / len(actions) == pytest.approx(0.25, abs=0.03)


def test_numpy_q_values_match_the_keras_network():
    agent = small_agent()
    states = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    np.testing.assert_allclose(agent.q_values(states), agent.main_network(states).numpy(), rtol=1e-5, atol=1e-6)


def test_save_then_load_gives_identical_q_values(tmp_path):
    agent = small_agent()
    states = np.random.default_rng(1).normal(size=(5, 3)).astype(np.float32)
    path = tmp_path / "agent.weights.h5"
    agent.save(path)
    other = small_agent()
    assert not np.allclose(other.q_values(states), agent.q_values(states))
    other.load(path)
    np.testing.assert_array_equal(other.q_values(states), agent.q_values(states))
    np.testing.assert_array_equal(other.target_network(states).numpy(), agent.main_network(states).numpy())
    assert [p.name for p in tmp_path.iterdir()] == ["agent.weights.h5"]  # no temporary file left behind
