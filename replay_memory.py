"""The replay memory: the agent's experience, kept for learning from it again.

DQN learns from minibatches drawn from a memory of past transitions (Lin, 1992; Mnih et al., 2015), which
breaks the correlation between consecutive steps. The memory here is a `collections.deque` of transitions
(`ReplayMemory.transitions`) that drops its oldest once full, and it does the three things the DQN family
asks of a memory:

n-step transitions (Sutton, 1988; Hessel et al., 2018)
    The memory sees every step, and once it has n of them stores the transition from s_t with the n-step
    return and the state k steps later:

        R_t^(k) = sum_{j=0}^{k-1} gamma^j r_{t+j},      y = R_t^(k) + gamma^k (1 - terminated) max_a' Q(s_{t+k}, a')

    with k = n, or fewer where the episode ended inside the window. A termination inside the window stops
    the bootstrap; a time-limit truncation does not (the target bootstraps from the state where the clock
    ran out). n = 1 is DQN's one-step transition.

Prioritized replay (Schaul et al., 2016, proportional variant)
    Transition i is drawn with probability P(i) = p_i^alpha / sum_j p_j^alpha, where p_i = |delta_i| + epsilon
    is its last absolute TD error (a new transition gets the largest priority seen so far), and its term of
    the loss is weighted by w_i = (N P(i))^-beta / max_j w_j, which undoes the bias of the non-uniform draw
    as beta goes to 1. The priorities live in a `SumTree` over the deque's slots, beside the deque.

Frame sharing
    An Atari observation is a stack of the last 4 frames, and consecutive stacks have 3 frames in common. The
    memory stores a stack as `StackedFrames`, which holds its frames by reference, sharing each frame with
    the stack before it: one new 84x84 frame per step instead of two whole stacks per transition.

No TensorFlow is imported here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np

# A frame smaller than this is not worth sharing: a NumPy array's own header is about 100 bytes (MinAtar's
# 10x10 channels are 100 bytes, Atari's 84x84 frames 7,056).
MIN_SHARED_FRAME_BYTES = 1024


class StackedFrames:
    """An (H, W, frames) observation that holds its frames by reference, so that it shares the frames it has in
    common with its neighbours (``np.asarray`` gives the array).

    :param frames: the frames, oldest first, each (H, W).
    """

    __slots__ = ("frames",)

    def __init__(self, frames: tuple[np.ndarray, ...]) -> None:
        self.frames = frames

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        stacked = np.stack(self.frames, axis=-1)
        return stacked if dtype is None else stacked.astype(dtype, copy=False)

    @property
    def shape(self) -> tuple[int, ...]:
        return (*self.frames[0].shape, len(self.frames))


Observation = np.ndarray | StackedFrames


class Transition(NamedTuple):
    """One stored transition: from `state`, `action` led, `steps` steps later, to `next_state`, with the discounted
    `reward` of those steps (the n-step return); `terminated` if the episode ended there by termination."""

    state: Observation
    action: int
    reward: float
    next_state: Observation
    terminated: bool
    steps: int


class SumTree:
    """Priorities on the leaves of a binary tree whose every node holds the sum below it: the total, a draw
    proportional to priority and an update each cost O(log N), for a whole batch at once in NumPy.

    :param capacity: number of leaves (slots).
    """

    def __init__(self, capacity: int) -> None:
        self.leaves = 1 << max(0, capacity - 1).bit_length()
        self.nodes = np.zeros(2 * self.leaves)

    @property
    def total(self) -> float:
        return float(self.nodes[1])

    def __getitem__(self, slots: np.ndarray) -> np.ndarray:
        return self.nodes[np.asarray(slots) + self.leaves]

    def set(self, slots: np.ndarray, priorities: np.ndarray) -> None:
        """Set the priorities of `slots` (a slot given twice keeps its last priority) and the sums above them."""
        nodes = np.asarray(slots, np.int64) + self.leaves
        self.nodes[nodes] = priorities
        while nodes[0] > 1:  # every leaf is at the same depth: go up one level at a time
            nodes = nodes // 2  # a parent met twice is summed twice from the same children: no harm done
            self.nodes[nodes] = self.nodes[2 * nodes] + self.nodes[2 * nodes + 1]

    def set_one(self, slot: int, priority: float) -> None:
        """`set` for a single slot, as each new transition needs: a plain loop up the tree, about a hundredth of
        the NumPy calls' cost for one slot."""
        node = slot + self.leaves
        self.nodes[node] = priority
        while node > 1:
            node //= 2
            self.nodes[node] = self.nodes[2 * node] + self.nodes[2 * node + 1]

    def find(self, targets: np.ndarray) -> np.ndarray:
        """For each target in [0, total), the slot where the running sum of priorities passes it."""
        nodes = np.ones(len(targets), np.int64)
        targets = np.asarray(targets, np.float64).copy()
        while nodes[0] < self.leaves:
            left = 2 * nodes
            right = targets >= self.nodes[left]
            targets -= np.where(right, self.nodes[left], 0.0)
            nodes = left + right
        return nodes - self.leaves


class Sample(NamedTuple):
    """Transitions drawn from the memory: their positions in the deque and their importance weights."""

    transitions: list[Transition]
    indices: np.ndarray
    weights: np.ndarray


class ReplayMemory:
    """The replay memory of `DeepQLearning`: a deque of `Transition`s, its n-step window and its priorities.

    :param capacity: transitions kept; the oldest drop out past it.
    :param n_step: steps of each transition's return (1: one-step DQN transitions).
    :param gamma: discount of the n-step return.
    :param prioritized: draw transitions in proportion to priority (else uniformly).
    :param priority_alpha: how much priorities count: 0 is uniform, 1 fully proportional.
    :param priority_epsilon: added to each absolute TD error, so that no transition is never drawn again.
    """

    def __init__(self, capacity: int, n_step: int = 1, gamma: float = 0.99, prioritized: bool = False,
                 priority_alpha: float = 0.6, priority_epsilon: float = 1e-6) -> None:
        self.capacity = capacity
        self.n_step = n_step
        self.gamma = gamma
        self.transitions: deque[Transition] = deque(maxlen=capacity)
        # the last n steps (state, action, reward) whose transitions are not stored yet
        self.window: deque[tuple[Observation, int, float]] = deque()
        self.prioritized = prioritized
        self.priority_alpha = priority_alpha
        self.priority_epsilon = priority_epsilon
        self.priorities = SumTree(capacity) if prioritized else None
        self.max_priority = 1.0
        self.added = 0  # transitions ever stored: the newest sits in slot (added - 1) % capacity
        self._last: tuple[Any, Observation] | None = None  # the last observation seen, and as it is stored

    def __len__(self) -> int:
        return len(self.transitions)

    # ----------------------------------------------------------------------------------- storing
    def add(self, state: np.ndarray, action: int, reward: float, next_state: np.ndarray, terminated: bool,
            truncated: bool = False) -> None:
        """Take one environment step; store the transition(s) it completes.

        :param terminated: the episode ended in a terminal state: no bootstrap from `next_state`.
        :param truncated: the episode was cut (a time limit): the window's transitions end here, and bootstrap.
        """
        self.window.append((self._stored(state), action, reward))
        stored_next = self._stored(next_state)
        if terminated or truncated:
            while self.window:  # the episode ended: every step in the window gets its (shorter) transition
                self._store(stored_next, terminated)
        elif len(self.window) == self.n_step:
            self._store(stored_next, False)

    def _store(self, next_state: Observation, terminated: bool) -> None:
        """Store the transition from the window's oldest step to `next_state`, and drop that step."""
        rewards = [reward for _, _, reward in self.window]
        n_step_return = sum(reward * self.gamma ** j for j, reward in enumerate(rewards))
        state, action, _ = self.window.popleft()
        self.transitions.append(Transition(state, action, float(n_step_return), next_state, terminated, len(rewards)))
        if self.priorities is not None:
            slot = self.added % self.capacity
            self.priorities.set_one(slot, self.max_priority ** self.priority_alpha)
        self.added += 1

    def _stored(self, observation: np.ndarray) -> Observation:
        """The observation as the memory keeps it: an image stack of large frames as `StackedFrames` sharing the
        frames of the stack before it; anything else as it is."""
        if self._last is not None and observation is self._last[0]:
            return self._last[1]  # the last step's next state is this step's state: the same stored object
        stored: Observation = observation
        array = np.asarray(observation)
        if array.ndim == 3 and array[..., 0].nbytes >= MIN_SHARED_FRAME_BYTES:
            previous = self._last[1].frames if self._last and isinstance(self._last[1], StackedFrames) else ()
            frames: list[np.ndarray] = []
            for i in range(array.shape[-1]):
                frame = array[..., i]
                # frame i of this stack was frame i + 1 of the previous one; at a reset, the repeated first frame
                candidates = previous[i + 1:i + 2] or frames[-1:]
                shared = [candidate for candidate in candidates if np.array_equal(candidate, frame)]
                frames.append(shared[0] if shared else frame.copy())
            stored = StackedFrames(tuple(frames))
        self._last = (observation, stored)
        return stored

    # ---------------------------------------------------------------------------------- sampling
    def sample(self, shape: tuple[int, ...], rng: np.random.Generator, beta: float = 1.0) -> Sample:
        """Draw transitions with replacement, uniformly or in proportion to priority, for minibatches of
        ``shape[-1]`` (``shape`` may stack several of them).

        :param beta: the importance-sampling exponent of prioritized replay (1: full correction).
        :return: the transitions, their deque positions, and their importance weights (all 1 when uniform), flat;
            with prioritized replay each weight is normalised by the largest of its minibatch.
        """
        size = int(np.prod(shape))
        if self.priorities is None:
            indices = rng.integers(len(self.transitions), size=size)
            weights = np.ones(size, np.float32)
        else:  # stratified: each minibatch draws once in each of its `batch` equal parts of the total priority
            total, batch = self.priorities.total, shape[-1]
            targets = (np.arange(batch) + rng.random((size // batch, batch))) * (total / batch)
            # slots 0 to len - 1 hold transitions (all of them once full); a rounding error must not land past them
            slots = np.minimum(self.priorities.find(targets.ravel()), len(self.transitions) - 1)
            probabilities = self.priorities[slots] / total
            weights = ((len(self.transitions) * probabilities) ** -beta).reshape(-1, batch)
            weights = (weights / weights.max(axis=1, keepdims=True)).astype(np.float32).ravel()
            indices = (slots - self._slot(0)) % self.capacity
        return Sample([self.transitions[i] for i in indices], indices, weights)

    def _slot(self, index: int | np.ndarray) -> int | np.ndarray:
        """The sum tree's slot of the transition at deque position `index` (0 is the oldest)."""
        return (self.added - len(self.transitions) + index) % self.capacity

    def update_priorities(self, indices: np.ndarray, td_errors: np.ndarray) -> None:
        """New priorities p_i = |delta_i| + epsilon for the transitions at deque positions `indices`."""
        priorities = np.abs(np.asarray(td_errors, np.float64)) + self.priority_epsilon
        self.priorities.set(self._slot(np.asarray(indices)), priorities ** self.priority_alpha)
        self.max_priority = max(self.max_priority, float(priorities.max()))

    def priority_spread(self) -> float:
        """How skewed the draw is: the largest sampling weight p^alpha over the mean one (1 when uniform)."""
        if self.priorities is None or not self.transitions:
            return 1.0
        weights = self.priorities[np.arange(len(self.transitions))]
        return float(weights.max() / weights.mean())

    # ------------------------------------------------------------------------------ save and load
    def state_arrays(self) -> dict[str, np.ndarray]:
        """Everything in the memory as arrays (each stored observation once, and each shared frame once), for a
        checkpoint; `restore_arrays` reads them back."""
        observations = [t.state for t in self.transitions] + [t.next_state for t in self.transitions] \
            + [state for state, _, _ in self.window]
        unique, positions = _by_identity(observations)
        count, window = len(self.transitions), len(self.window)
        arrays = {
            "indices": np.array(positions[:2 * count], np.int64).reshape(2, count).T.copy(),
            "actions": np.array([t.action for t in self.transitions], np.int64),
            "rewards": np.array([t.reward for t in self.transitions], np.float64),
            "terminated": np.array([t.terminated for t in self.transitions], bool),
            "steps": np.array([t.steps for t in self.transitions], np.int64),
            "window_indices": np.array(positions[2 * count:], np.int64),
            "window_actions": np.array([action for _, action, _ in self.window], np.int64).reshape(window),
            "window_rewards": np.array([reward for _, _, reward in self.window], np.float64).reshape(window),
        }
        if any(isinstance(observation, StackedFrames) for observation in unique):
            frames, frame_positions = _by_identity(frame for stack in unique for frame in (
                stack.frames if isinstance(stack, StackedFrames) else tuple(np.moveaxis(stack, -1, 0))))
            arrays["frames"] = np.stack(frames)
            arrays["stacks"] = np.array(frame_positions, np.int64).reshape(len(unique), -1)
        else:
            arrays["observations"] = np.stack(unique) if unique else np.zeros((0,))
        if self.priorities is not None:
            arrays["priorities"] = self.priorities[self._slot(np.arange(count))]
            arrays["max_priority"] = np.array(self.max_priority)
        return arrays

    def restore_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Fill an empty memory from `state_arrays` (or from a checkpoint written before n-step transitions, whose
        transitions are all one step)."""
        if "frames" in arrays:
            frames = list(arrays["frames"])
            unique: list[Observation] = [StackedFrames(tuple(frames[i] for i in stack)) for stack in arrays["stacks"]]
        else:
            unique = list(arrays["observations"])
        steps = arrays.get("steps", np.ones(len(arrays["actions"]), np.int64))
        for (state, next_state), action, reward, terminated, k in zip(
                arrays["indices"], arrays["actions"], arrays["rewards"], arrays["terminated"], steps, strict=True):
            self.transitions.append(Transition(unique[state], int(action), float(reward), unique[next_state],
                                               bool(terminated), int(k)))
        self.added = len(self.transitions)
        self.window.extend((unique[i], int(a), float(r)) for i, a, r in zip(
            arrays.get("window_indices", ()), arrays.get("window_actions", ()), arrays.get("window_rewards", ()),
            strict=True))
        if self.priorities is not None:
            count = len(self.transitions)
            saved = arrays.get("priorities")
            self.max_priority = float(arrays["max_priority"]) if "max_priority" in arrays else 1.0
            self.priorities.set(np.arange(count), saved if saved is not None else
                                np.full(count, self.max_priority ** self.priority_alpha))


def _by_identity(objects: Iterable[Any]) -> tuple[list[Any], list[int]]:
    """Each distinct object once (the same object, not an equal one), and the position of each in that list."""
    position: dict[int, int] = {}
    distinct: list[Any] = []
    indices = []
    for item in objects:
        if id(item) not in position:
            position[id(item)] = len(distinct)
            distinct.append(item)
        indices.append(position[id(item)])
    return distinct, indices
