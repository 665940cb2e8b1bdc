"""The algorithm's pieces, each against numbers worked out by hand."""

from __future__ import annotations

import signal

import keras
import numpy as np
import pytest
import tensorflow as tf

from dqn_agent import Batch, DeepQLearning, masked_huber_loss, masked_mse_loss
from dqn_config import DQNConfig
from networks import Conv2D, NumpyForward


def small_agent(**overrides) -> DeepQLearning:
    return DeepQLearning(observation_shape=(3,), num_actions=2, config=DQNConfig(**{"hidden_sizes": (8,), **overrides}))


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


def constant_batch(rewards: list[float], terminated: list[float], actions: list[int]) -> Batch:
    size = len(rewards)
    return Batch(states=tf.zeros((size, 3)), actions=tf.constant(actions, tf.int32), rewards=tf.constant(rewards),
                 next_states=tf.zeros((size, 3)), terminated=tf.constant(terminated), steps=tf.ones(size),
                 weights=tf.ones(size))


def test_train_step_bootstraps_through_truncation_and_stops_only_on_termination():
    agent = small_agent(gamma=0.9, double_dqn=False)
    set_constant_q(agent.main_network, [0.0, 0.0])
    set_constant_q(agent.target_network, [2.0, 5.0])
    # the second transition was cut by a time limit: not terminated, so y = 1 + 0.9 * max(2, 5)
    (loss, _, _), _ = agent.train_step(constant_batch(rewards=[1.0, 1.0], terminated=[1.0, 0.0], actions=[0, 1]))
    assert float(loss) == pytest.approx((1.0**2 + (1.0 + 0.9 * 5.0) ** 2) / 2)


def test_double_dqn_target_values_the_main_networks_choice_with_the_target_network():
    batch = constant_batch(rewards=[1.0], terminated=[0.0], actions=[1])
    double = small_agent(gamma=0.5, double_dqn=True)
    set_constant_q(double.main_network, [9.0, 1.0])  # main prefers action 0; Q(s, 1) = 1 enters the loss
    set_constant_q(double.target_network, [2.0, 5.0])  # target values action 0 at 2 (and would pick 1)
    assert float(double.train_step(batch)[0].loss) == pytest.approx((1.0 + 0.5 * 2.0 - 1.0) ** 2)
    plain = small_agent(gamma=0.5, double_dqn=False)
    set_constant_q(plain.main_network, [9.0, 1.0])
    set_constant_q(plain.target_network, [2.0, 5.0])
    assert float(plain.train_step(batch)[0].loss) == pytest.approx((1.0 + 0.5 * 5.0 - 1.0) ** 2)


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


# train.py copies theta into theta^- after every environment step and updates one gradient step at a time (DrQ)
COPIED_BEFORE_EVERY_UPDATE = {"tau": 1.0, "target_update_interval": 1, "train_frequency": 1, "gradient_steps": 1}


class CountedNetwork:
    """A network that counts its calls."""

    def __init__(self, network: keras.Model) -> None:
        self.network, self.calls = network, 0

    def __call__(self, inputs: tf.Tensor, training: bool = False) -> tf.Tensor:
        self.calls += 1
        return self.network(inputs, training=training)


def test_where_the_target_network_is_the_main_one_at_every_update_the_target_runs_one_network_once():
    agent = small_agent(gamma=0.5, double_dqn=True, **COPIED_BEFORE_EVERY_UPDATE)
    set_constant_q(agent.main_network, [2.0, 5.0])
    agent.update_target_network()  # theta^- = theta, as train.py leaves it before each update
    assert agent.target_is_main
    agent.main_network, agent.target_network = CountedNetwork(agent.main_network), None  # None: never run
    # Double DQN: the main network chooses action 1 and the target network (the same weights) values it at 5
    assert float(agent.td_target(constant_batch(rewards=[1.0], terminated=[0.0], actions=[1]))[0]) == \
        pytest.approx(1.0 + 0.5 * 5.0)
    assert agent.main_network.calls == 1


@pytest.mark.parametrize("overrides", [{"target_update_interval": 2}, {"gradient_steps": 4}, {"tau": 0.5},
                                       {"noisy_nets": True}])
def test_otherwise_the_target_network_values_s_prime_itself(overrides):
    agent = small_agent(gamma=0.5, double_dqn=True, **{**COPIED_BEFORE_EVERY_UPDATE, **overrides})
    assert not agent.target_is_main  # noisy networks: the two networks draw separate noise
    if not agent.config.noisy_nets:
        set_constant_q(agent.main_network, [9.0, 1.0])
        set_constant_q(agent.target_network, [2.0, 5.0])
        batch = constant_batch(rewards=[1.0], terminated=[0.0], actions=[1])
        assert float(agent.td_target(batch)[0]) == pytest.approx(1.0 + 0.5 * 2.0)


@pytest.mark.parametrize("optimizer", ["adam", "rmsprop"])
def test_a_training_phase_moves_the_taken_actions_q_value_towards_the_target(optimizer):
    agent = small_agent(learning_rate=0.01, gamma=0.0, batch_size=4, optimizer=optimizer)
    state = np.ones(3, dtype=np.float32)
    for _ in range(4):
        agent.remember(state, 0, 10.0, state, True)
    before = agent.q_values(state[None])[0]
    loss, mean_max_q, _ = agent.training_phase(50)
    after = agent.q_values(state[None])[0]
    assert type(agent.optimizer).__name__.lower() == optimizer
    if optimizer == "rmsprop":
        assert agent.optimizer.epsilon == agent.config.rmsprop_epsilon and agent.optimizer.centered
    assert loss > 0 and abs(after[0] - 10.0) < abs(before[0] - 10.0) - 0.1
    assert before.max() - 1 < mean_max_q < after.max() + 1  # the batch is this one state


def test_replay_buffer_keeps_only_the_newest_transitions():
    agent = small_agent(buffer_size=5, batch_size=2)
    for i in range(12):
        agent.remember(np.full(3, i, np.float32), i % 2, float(i), np.full(3, i + 1, np.float32), False)
    assert len(agent.replay_buffer) == 5
    assert [transition.reward for transition in agent.replay_buffer] == [7.0, 8.0, 9.0, 10.0, 11.0]


def test_sample_batch_stacks_transitions_into_arrays():
    agent = small_agent()
    for i in range(10):
        agent.remember(np.full(3, i, np.float32), i % 2, float(i), np.full(3, i + 1, np.float32), i == 9)
    batch, _ = agent.sample(16, num_batches=4)
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
    set_constant_q(agent.main_network, [0.0, 1.0])  # acting sees the new weights with no refresh call
    state = np.zeros(3, np.float32)
    assert all(agent.act(state, 0.0) == 1 for _ in range(100))
    actions = [agent.act(state, 0.5) for _ in range(4000)]
    # greedy half the time, and a random half of the random choices: action 0 a quarter of the time
    assert actions.count(0) / len(actions) == pytest.approx(0.25, abs=0.03)


def assert_acting_matches_the_network(agent: DeepQLearning, states: np.ndarray) -> None:
    # greedy acting uses the mean weights of noisy layers, which is the network outside training
    np.testing.assert_allclose(agent.q_values(states), agent.expected_q(agent.main_network(states)).numpy(),
                               rtol=1e-5, atol=1e-5)


NETWORK_KINDS = {"dense": {}, "dueling": {"dueling": True}, "noisy": {"noisy_nets": True},
                 "distributional": {"distributional": True, "loss": "cross_entropy", "num_atoms": 5},
                 "rainbow": {"dueling": True, "noisy_nets": True, "distributional": True, "loss": "cross_entropy",
                             "num_atoms": 5}}


@pytest.mark.parametrize("kind", NETWORK_KINDS.values(), ids=NETWORK_KINDS.keys())
def test_acting_computes_the_networks_function_after_every_kind_of_weight_change(tmp_path, kind):
    agent = small_agent(hidden_sizes=(8, 8), batch_size=4, **kind)
    assert isinstance(agent._forward, NumpyForward)  # NumPy acting, every head included
    states = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    assert_acting_matches_the_network(agent, states)
    for i in range(8):
        agent.remember(states[i % 5], i % 2, float(i), states[(i + 1) % 5], False)
    agent.training_phase(20)
    assert_acting_matches_the_network(agent, states)
    agent.save(tmp_path / "a.weights.h5")
    agent.main_network.set_weights([w + 0.5 for w in agent.main_network.get_weights()])
    assert_acting_matches_the_network(agent, states)
    agent.load(tmp_path / "a.weights.h5")
    assert_acting_matches_the_network(agent, states)


def test_the_numpy_forward_pass_is_read_off_the_network_not_written_again():
    agent = small_agent(hidden_sizes=(8, 4))
    layers = agent._forward.layers
    assert [weights[0].shape for _, weights in layers] == [(3, 8), (8, 4), (4, 2)]
    assert not NumpyForward.supports(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="tanh")]))


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


@pytest.mark.parametrize("strides", [1, 2])
def test_the_windowed_convolution_is_keras_convolution(strides):
    # networks.Conv2D (a convolution as one matrix product, which XLA compiles well) against Keras's own
    images = tf.constant(np.random.default_rng(3).normal(size=(2, 10, 9, 4)), tf.float32)
    ours, keras_own = Conv2D(5, 3, strides=strides), keras.layers.Conv2D(5, 3, strides=strides)
    ours.build(images.shape)
    keras_own.build(images.shape)
    keras_own.set_weights(ours.get_weights())
    assert ours(images).shape == keras_own(images).shape == ((2, 8, 7, 5) if strides == 1 else (2, 4, 4, 5))
    np.testing.assert_allclose(ours(images).numpy(), keras_own(images).numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="valid"):
        Conv2D(5, 3, padding="same")


def test_a_minatar_agent_saved_with_keras_convolution_still_loads(tmp_path):
    # an agent file written when MinAtar's network used keras.layers.Conv2D: same layer names, same weights
    agent = DeepQLearning((10, 10, 4), 3, DQNConfig(network="minatar_cnn"))
    old = keras.Sequential([keras.Input((10, 10, 4)), keras.layers.Rescaling(1 / 255),
                            keras.layers.Conv2D(16, 3, activation="relu"), keras.layers.Flatten(),
                            keras.layers.Dense(128, activation="relu"), keras.layers.Dense(3)])
    old.save_weights(tmp_path / "old.weights.h5")
    agent.load(tmp_path / "old.weights.h5")
    states = np.random.default_rng(4).integers(0, 256, size=(5, 10, 10, 4)).astype(np.uint8)
    np.testing.assert_allclose(agent.q_values(states), old(states).numpy(), rtol=1e-5, atol=1e-5)


def test_a_dueling_head_is_the_value_plus_the_advantages_less_their_mean():
    agent = small_agent(dueling=True, hidden_sizes=(8, 4))
    head = agent.main_network.layers[-1]
    assert type(head).__name__ == "DuelingHead"
    assert [type(layer).__name__ for layer in agent.main_network.layers] == ["Dense", "Dense", "DuelingHead"]
    features = np.random.default_rng(2).normal(size=(5, 4)).astype(np.float32)  # the last hidden layer's 4 units
    value, advantage = head.value(features).numpy(), head.advantage(features).numpy()
    assert value.shape == (5, 1) and advantage.shape == (5, 2)
    np.testing.assert_allclose(head(features).numpy(), value + advantage - advantage.mean(axis=1, keepdims=True),
                               rtol=1e-5, atol=1e-6)
    # the advantages of a state average to zero: the mean of Q over the actions is V
    np.testing.assert_allclose(head(features).numpy().mean(axis=1, keepdims=True), value, rtol=1e-5, atol=1e-6)


def test_an_n_step_target_bootstraps_with_gamma_to_the_k_and_importance_weights_scale_each_term():
    agent = small_agent(gamma=0.5, double_dqn=False)
    set_constant_q(agent.main_network, [0.0, 0.0])
    set_constant_q(agent.target_network, [2.0, 4.0])
    batch = constant_batch(rewards=[3.0, 3.0], terminated=[0.0, 1.0], actions=[0, 1])
    # a 2-step transition bootstraps with 0.5^2: y = 3 + 0.25 * 4 = 4; a terminated one does not: y = 3
    batch = batch._replace(steps=tf.constant([2.0, 3.0]), weights=tf.constant([1.0, 0.5]))
    (loss, _, _), td_errors = agent.train_step(batch)
    assert float(loss) == pytest.approx((4.0**2 + 0.5 * 3.0**2) / 2)
    np.testing.assert_allclose(td_errors.numpy(), [4.0, 3.0])  # y - Q(s, a): the transitions' new priorities


def test_a_prioritized_training_phase_gives_the_sampled_transitions_their_new_priorities():
    agent = small_agent(prioritized_replay=True, priority_updates="step", batch_size=4, priority_alpha=1.0,
                        priority_epsilon=1e-6)
    rng = np.random.default_rng(4)
    for i in range(6):  # terminated transitions: each target is the reward itself
        agent.remember(rng.normal(size=3).astype(np.float32), i % 2, float(i), rng.normal(size=3).astype(np.float32),
                       True)
    assert np.all(agent.memory.priorities[np.arange(6)] == 1.0)  # new transitions: the largest priority so far
    before = [agent.q_values(t.state[None])[0][t.action] for t in agent.replay_buffer]
    _, _, mean_weight = agent.training_phase(1, progress=0.0)
    priorities = agent.memory.priorities[np.arange(6)]
    drawn = np.flatnonzero(priorities != 1.0)
    assert len(drawn) > 0 and 0.0 < mean_weight <= 1.0
    # p_i = |y_i - Q(s_i, a_i)| + epsilon, Q from the weights the step started with
    expected = [abs(agent.replay_buffer[i].reward - before[i]) + 1e-6 for i in drawn]
    np.testing.assert_allclose(priorities[drawn], expected, rtol=1e-5)


def test_a_phase_of_prioritized_replay_can_draw_its_minibatches_at_once_and_update_their_priorities_after():
    agent = small_agent(prioritized_replay=True, priority_updates="phase", batch_size=4, priority_alpha=1.0)
    assert agent._train_step is None  # the whole phase is one compiled call, as with uniform replay
    rng = np.random.default_rng(5)
    for i in range(40):
        agent.remember(rng.normal(size=3).astype(np.float32), i % 2, float(i), rng.normal(size=3).astype(np.float32),
                       True)
    batch, _ = agent.sample(4, 3)
    # each of the phase's minibatches is a stratified draw of its own, weighted against its own largest weight
    assert batch.weights.shape == (3, 4) and np.allclose(batch.weights.max(axis=1), 1.0)
    _, _, mean_weight = agent.training_phase(3, progress=0.0)
    changed = agent.memory.priorities[np.arange(40)] != 1.0
    assert 0 < changed.sum() <= 12 and 0.0 < mean_weight <= 1.0  # at most 3 minibatches of 4 got new priorities


def test_ctrl_c_while_the_agent_compiles_waits_for_tracing_to_finish_then_interrupts(monkeypatch):
    """A KeyboardInterrupt inside TensorFlow's tracing can come out as a SystemError (seen in CI); held until
    tracing ends, it comes out as itself."""
    compiled = []
    trace = DeepQLearning._compile_training_phase

    def interrupted_trace(self):
        signal.raise_signal(signal.SIGINT)  # Ctrl-C, in this thread: its handler runs here, during tracing
        compiled.append(trace(self))
        return compiled[-1]

    monkeypatch.setattr(DeepQLearning, "_compile_training_phase", interrupted_trace)
    # Python's own Ctrl-C handler, whatever this process was started with: a shell starts a background job with
    # SIGINT ignored (this test failed so, run by `.ci/run &`), and an ignored Ctrl-C rightly stops nothing
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            DeepQLearning((4,), 2, DQNConfig(hidden_sizes=(8,), batch_size=4))
        assert len(compiled) == 1, "tracing was cut short"
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)
