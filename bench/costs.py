"""What each piece of a training step costs, in milliseconds: where the time of a run goes.

    python -m bench.costs

Times each call on the default agent (64-64, batch 64) with a replay buffer of 35,000 CartPole-v1
transitions (the size at which the defaults solve it), median of 5 rounds. Then acting with noisy networks and
with C51's atoms (the NumPy forward pass computes both), drawing a minibatch from 100,000 transitions,
uniformly and by priority (prioritized replay's sum tree), and a prioritized training phase (its minibatches
drawn at once, their priorities updated after it: the default ``priority_updates = "phase"``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np

from bench.timed import machine
from common import import_agent_class
from dqn_config import DQNConfig
from environments import make_env


def milliseconds(call: Callable[[], object], repeats: int, per: int = 1) -> float:
    """Median over 5 rounds of `repeats` calls, per call (divided by `per` more, e.g. per gradient step)."""
    call()
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            call()
        rounds.append((time.perf_counter() - start) / repeats / per * 1000)
    return statistics.median(rounds)


def replay_rows(agent_class: type, env: object, size: int = 100_000) -> list[tuple[str, float]]:
    """Sampling from `size` random CartPole transitions, uniform and prioritized, and a prioritized phase."""
    agents = {kind: agent_class(env.observation_space.shape, int(env.action_space.n),
                                DQNConfig(buffer_size=size, batch_size=64, prioritized_replay=kind == "prioritized"))
              for kind in ("uniform", "prioritized")}
    state, _ = env.reset(seed=1)
    for _ in range(size):
        action = int(env.action_space.sample())
        next_state, reward, terminated, truncated, _ = env.step(action)
        for agent in agents.values():
            agent.remember(state, action, float(reward), next_state, terminated, truncated)
        state = env.reset()[0] if terminated or truncated else next_state
    uniform, prioritized = agents["uniform"], agents["prioritized"]
    prioritized.memory.update_priorities(np.arange(size), np.random.default_rng(0).exponential(size=size))
    return [
        (f"`sample(64)` from {size:,} transitions, uniform", milliseconds(lambda: uniform.sample(64), 500)),
        (f"`sample(64)` from {size:,} transitions, prioritized", milliseconds(lambda: prioritized.sample(64), 500)),
        ("`update_priorities` of 64 transitions", milliseconds(
            lambda: prioritized.memory.update_priorities(np.arange(64) * 997, np.ones(64)), 500)),
        ("`training_phase(128)`, uniform, per gradient step", milliseconds(lambda: uniform.training_phase(128), 5,
                                                                           per=128)),
        ("`training_phase(128)`, prioritized, per gradient step", milliseconds(
            lambda: prioritized.training_phase(128), 5, per=128)),
    ]


def main() -> None:
    agent_class = import_agent_class()
    import keras

    keras.utils.set_random_seed(0)
    env = make_env("CartPole-v1")
    agent = agent_class(env.observation_space.shape, int(env.action_space.n))
    state, _ = env.reset(seed=0)
    for _ in range(35_000):
        action = agent.act(state, epsilon=1.0)
        next_state, reward, terminated, truncated, _ = env.step(action)
        agent.remember(state, action, float(reward), next_state, terminated, truncated)
        state = env.reset()[0] if terminated or truncated else next_state
    state = state.astype(np.float32)
    rows = [
        ("`model.predict(state[None])`, one state", milliseconds(
            lambda: agent.main_network.predict(state[None], verbose=0), 20)),
        ("`model(state[None])`, eager, one state", milliseconds(lambda: agent.main_network(state[None]), 200)),
        ("`greedy_action(state)`: NumPy forward pass", milliseconds(lambda: agent.greedy_action(state), 5000)),
        ("`env.step(action)`, CartPole-v1", milliseconds(lambda: env.step(0) if env.step(0)[2] else env.reset(), 2000,
                                                         per=2)),
        ("`sample(64)` from the deque, one batch", milliseconds(lambda: agent.sample(64), 500)),
        ("`sample(64, 128)`, per batch", milliseconds(lambda: agent.sample(64, 128), 10, per=128)),
        ("`training_phase(1)`: one gradient step in its own call", milliseconds(lambda: agent.training_phase(1), 500)),
        ("`training_phase(128)`, per gradient step (sampling included)",
         milliseconds(lambda: agent.training_phase(128), 10, per=128)),
        ("`update_target_network()`", milliseconds(agent.update_target_network, 500)),
    ]
    for name, overrides in (("noisy networks", {"noisy_nets": True}),
                            ("C51, 51 atoms", {"distributional": True, "loss": "cross_entropy"})):
        other = agent_class(env.observation_space.shape, int(env.action_space.n), DQNConfig(**overrides))
        rows.append((f"`act(state, 0)` with {name}: NumPy forward pass", milliseconds(lambda a=other: a.act(state, 0.0),
                                                                                      5000)))
    rows += replay_rows(agent_class, env)
    print(f"machine: {machine()}")
    print("| call | ms |\n|---|---|")
    for name, cost in rows:
        print(f"| {name} | {cost:.3f} |")


if __name__ == "__main__":
    main()
