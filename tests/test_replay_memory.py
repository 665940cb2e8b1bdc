"""The replay memory: n-step transitions, prioritized sampling and frame sharing, against hand computations."""

from __future__ import annotations

import numpy as np
import pytest

from replay_memory import ReplayMemory, StackedFrames, SumTree


def states(count: int) -> list[np.ndarray]:
    return [np.full(2, i, np.float32) for i in range(count)]


def test_n_step_transitions_across_a_termination_and_a_truncation_inside_the_window():
    memory = ReplayMemory(capacity=100, n_step=3, gamma=0.5)
    s = states(6)
    for t, reward in enumerate([1.0, 2.0, 3.0, 4.0, 5.0]):  # the step from s4 ends in a terminal s5
        memory.add(s[t], t, reward, s[t + 1], terminated=t == 4)
    assert len(memory) == 5 and not memory.window
    # worked by hand, gamma 0.5: 1 + 0.5*2 + 0.25*3 = 2.75, 2 + 1.5 + 1 = 4.5, 3 + 2 + 1.25 = 6.25, 4 + 2.5, 5
    expected = [(0, 2.75, 3, 3, False), (1, 4.5, 4, 3, False), (2, 6.25, 5, 3, True), (3, 6.5, 5, 2, True),
                (4, 5.0, 5, 1, True)]
    for transition, (start, reward, end, k, terminated) in zip(memory.transitions, expected, strict=True):
        assert transition.state is s[start] and transition.next_state is s[end]
        assert (transition.reward, transition.steps, transition.terminated) == (pytest.approx(reward), k, terminated)
    # a time limit after two steps: both transitions end at the state where the clock ran out, and bootstrap there
    t = states(3)
    memory.add(t[0], 0, 1.0, t[1], terminated=False)
    assert len(memory) == 5  # one step in the window of three: nothing stored yet
    memory.add(t[1], 1, 1.0, t[2], terminated=False, truncated=True)
    first, second = list(memory.transitions)[-2:]
    assert (first.reward, first.steps, first.terminated, first.next_state is t[2]) == (1.5, 2, False, True)
    assert (second.reward, second.steps, second.terminated, second.next_state is t[2]) == (1.0, 1, False, True)


def test_one_step_transitions_are_dqns():
    memory = ReplayMemory(capacity=10, n_step=1, gamma=0.9)
    s = states(3)
    memory.add(s[0], 1, 2.0, s[1], terminated=False)
    memory.add(s[1], 0, 3.0, s[2], terminated=True)
    assert [(t.reward, t.steps, t.terminated) for t in memory.transitions] == [(2.0, 1, False), (3.0, 1, True)]


def test_a_sum_tree_sums_and_finds_by_running_sum():
    tree = SumTree(5)  # padded to 8 leaves
    tree.set(np.arange(5), np.array([1.0, 0.0, 2.0, 3.0, 4.0]))
    assert tree.total == 10.0
    # running sums 1, 1, 3, 6, 10: a target falls in the slot whose interval holds it
    np.testing.assert_array_equal(tree.find(np.array([0.0, 0.99, 1.0, 2.9, 3.0, 5.99, 6.0, 9.99])),
                                  [0, 0, 2, 2, 3, 3, 4, 4])
    tree.set(np.array([4]), np.array([0.5]))
    assert tree.total == 6.5


def test_every_node_of_a_sum_tree_is_the_sum_below_it_after_batch_and_single_updates():
    rng = np.random.default_rng(0)
    tree = SumTree(100)  # 128 leaves, 7 levels
    tree.set(np.arange(100), rng.random(100))
    slots = rng.integers(0, 100, 64)  # repeated slots and shared parents: a slot keeps its last priority
    priorities = rng.random(64)
    tree.set(slots, priorities)
    last = {int(slot): priority for slot, priority in zip(slots, priorities, strict=True)}
    np.testing.assert_array_equal(tree[np.array(list(last))], list(last.values()))
    for slot, priority in zip(rng.integers(0, 100, 20), rng.random(20), strict=True):
        tree.set_one(int(slot), float(priority))
    leaves = tree.nodes[tree.leaves:]
    for _ in range(7):  # the nodes of each level, rebuilt from the leaves by pairwise sums
        leaves = leaves.reshape(-1, 2).sum(axis=1)
        np.testing.assert_allclose(tree.nodes[len(leaves):2 * len(leaves)], leaves)


def filled(priorities: list[float], alpha: float = 1.0, capacity: int = 16) -> ReplayMemory:
    memory = ReplayMemory(capacity=capacity, prioritized=True, priority_alpha=alpha, priority_epsilon=0.0)
    s = states(len(priorities) + 1)
    for i in range(len(priorities)):
        memory.add(s[i], i, float(i), s[i + 1], terminated=False)
    memory.update_priorities(np.arange(len(priorities)), np.array(priorities))
    return memory


def test_prioritized_sampling_draws_each_transition_in_proportion_to_its_priority():
    memory = filled([1.0, 2.0, 3.0, 4.0], alpha=1.0)
    rng = np.random.default_rng(0)
    drawn = np.concatenate([memory.sample((32,), rng).indices for _ in range(500)])
    counts = np.bincount(drawn, minlength=4)
    expected = len(drawn) * np.array([0.1, 0.2, 0.3, 0.4])
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    assert chi_square < 16.27  # the 0.999 quantile with 3 degrees of freedom: uniform draws give about 1,600
    # alpha 0 is uniform whatever the priorities
    uniform = filled([1.0, 2.0, 3.0, 4.0], alpha=0.0)
    counts = np.bincount(np.concatenate([uniform.sample((32,), rng).indices for _ in range(500)]), minlength=4)
    assert float(((counts - 4000) ** 2 / 4000).sum()) < 16.27


def test_importance_weights_undo_the_skew_and_peak_at_one():
    memory = filled([1.0, 2.0, 3.0, 4.0], alpha=1.0)
    sample = memory.sample((64,), np.random.default_rng(1), beta=0.5)
    assert set(sample.indices) == {0, 1, 2, 3}
    # w_i = (N P(i))^-beta / max_j w_j = (p_i / p_min)^-0.5, the rarest transition weighing 1
    by_index = dict(zip(sample.indices, sample.weights, strict=True))
    np.testing.assert_allclose([by_index[i] for i in range(4)], [1.0, 2 ** -0.5, 3 ** -0.5, 0.5], rtol=1e-6)
    assert np.all(memory.sample((8,), np.random.default_rng(1), beta=0.0).weights == 1.0)


def test_priorities_follow_the_deque_as_its_oldest_transitions_drop_out():
    memory = filled([0.001, 0.001, 0.001, 5.0], alpha=1.0, capacity=4)  # rewards 0 to 3; 3 has priority 5
    s = states(3)
    memory.add(s[0], 0, 4.0, s[1], terminated=False)  # drops rewards 0 and 1: new ones get the largest priority, 5
    memory.add(s[1], 0, 5.0, s[2], terminated=False)
    assert [t.reward for t in memory.transitions] == [2.0, 3.0, 4.0, 5.0]
    np.testing.assert_allclose(memory.priorities[memory._slot(np.arange(4))], [0.001, 5.0, 5.0, 5.0])
    rng = np.random.default_rng(2)
    rewards = [t.reward for _ in range(200) for t in memory.sample((16,), rng).transitions]
    counts = {reward: rewards.count(reward) / len(rewards) for reward in (2.0, 3.0, 4.0, 5.0)}
    assert counts[2.0] < 0.01 and all(abs(counts[r] - 1 / 3) < 0.05 for r in (3.0, 4.0, 5.0)), counts


def frame_stacks(count: int, frames: int = 4) -> list[np.ndarray]:
    """Atari-like observations: the last `frames` 84x84 frames, the first one repeated at the reset."""
    rng = np.random.default_rng(0)
    screens = [rng.integers(0, 255, (84, 84), dtype=np.uint8) for _ in range(count)]
    return [np.stack([screens[max(0, t - frames + 1 + i)] for i in range(frames)], axis=-1) for t in range(count)]


def test_the_memory_stores_each_frame_of_a_stack_once_and_gives_back_the_same_arrays():
    observations = frame_stacks(40)
    memory = ReplayMemory(capacity=100, n_step=3, gamma=0.9)
    for t in range(39):
        memory.add(observations[t], 0, 1.0, observations[t + 1], terminated=False)
    assert len(memory) == 37
    frames = {id(frame): frame.nbytes for transition in memory.transitions
              for frame in (*transition.state.frames, *transition.next_state.frames)}
    assert sum(frames.values()) <= 40 * 84 * 84  # one frame per step, however many stacks hold it
    for t, transition in enumerate(memory.transitions):
        assert isinstance(transition.state, StackedFrames)
        np.testing.assert_array_equal(np.asarray(transition.state), observations[t])
        np.testing.assert_array_equal(np.asarray(transition.next_state), observations[t + 3])
    assert memory.transitions[1].state.frames[:3] == memory.transitions[0].state.frames[1:]  # shared, not copied


def test_small_boards_are_kept_whole():
    board = np.zeros((10, 10, 4), np.uint8)  # a MinAtar board: 100-byte channels are not worth sharing
    memory = ReplayMemory(capacity=10)
    memory.add(board, 0, 0.0, board.copy(), terminated=False)
    assert isinstance(memory.transitions[0].state, np.ndarray)


@pytest.mark.parametrize("observations", [frame_stacks(12), states(12)], ids=["frames", "vectors"])
def test_the_memory_comes_back_whole_from_its_arrays(observations):
    memory = ReplayMemory(capacity=6, n_step=3, gamma=0.9, prioritized=True)
    for t in range(10):  # past the capacity, with two steps still in the window
        memory.add(observations[t], t % 2, float(t), observations[t + 1], terminated=False)
    memory.update_priorities(np.arange(6), np.arange(6) + 0.5)
    copy = ReplayMemory(capacity=6, n_step=3, gamma=0.9, prioritized=True)
    copy.restore_arrays(memory.state_arrays())
    for original, restored in zip([*memory.transitions], [*copy.transitions], strict=True):
        np.testing.assert_array_equal(np.asarray(original.state), np.asarray(restored.state))
        np.testing.assert_array_equal(np.asarray(original.next_state), np.asarray(restored.next_state))
        assert original[1:3] + original[4:] == restored[1:3] + restored[4:]
    assert [(a, r) for _, a, r in memory.window] == [(a, r) for _, a, r in copy.window] and len(copy.window) == 2
    np.testing.assert_allclose(copy.priorities[copy._slot(np.arange(6))],
                               memory.priorities[memory._slot(np.arange(6))])
    assert copy.max_priority == memory.max_priority
