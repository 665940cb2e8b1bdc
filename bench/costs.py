"""What each piece of a training step costs, in milliseconds: where the time of a run goes.

    python -m bench.costs             # CartPole-v1's agent, and replay memory at 100k transitions
    python -m bench.costs --atari     # an Atari 100k run's pieces, on ALE/Pong-v5 with the drq and der presets
    python -m bench.costs --rainbow   # a MinAtar training phase: DQN, Rainbow, and Rainbow less each component

Times each call on the default agent (64-64, batch 64) with a replay buffer of 35,000 CartPole-v1
transitions (the size at which the defaults solve it), median of 5 rounds. Then acting with noisy networks and
with C51's atoms (the NumPy forward pass computes both), drawing a minibatch from 100,000 transitions,
uniformly and by priority (prioritized replay's sum tree), and a prioritized training phase (its minibatches
drawn at once, their priorities updated after it: the default ``priority_updates = "phase"``).

With ``--atari``, the pieces of an Atari 100k step (one update per environment step) on Pong: the environment,
acting (the Nature CNN in one compiled call), drawing a minibatch of 32 from stored frames, DrQ's random shifts
alone, a whole update with and without them, DER's update, and the target copy DrQ makes after every update.

With ``--rainbow``, where Rainbow's speed goes: one training phase of MinAtar/Breakout-v1's preset (4 gradient
steps on minibatches of 32, sampling included) for DQN (one-step targets), Rainbow (``--agent rainbow``) and
Rainbow with each of its components off in turn, the agents timed in turn within each of 7 rounds of 100 phases
(so that a change in the machine's load hits them alike), median of the rounds; then acting once with each.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable

import numpy as np

from bench.timed import machine
from common import OneLineErrorParser, import_agent_class
from dqn_config import DQNConfig
from environments import make_env
from presets import agent_presets_dir, find_preset


def milliseconds(call: Callable[[], object], repeats: int, per: int = 1, rounds: int = 5) -> float:
    """Median over `rounds` rounds of `repeats` calls, per call (divided by `per` more, e.g. per gradient step)."""
    call()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            call()
        times.append((time.perf_counter() - start) / repeats / per * 1000)
    return statistics.median(times)


def interleaved(calls: dict[str, Callable[[], object]], repeats: int, rounds: int = 7) -> dict[str, float]:
    """Milliseconds per call of each of `calls`, the median over `rounds` rounds that time each call `repeats`
    times in turn, so that a change in the machine's load falls on all of them alike (each is called once first,
    to trace and warm it)."""
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            times[name].append(milliseconds(call, repeats, rounds=1))
    return {name: statistics.median(values) for name, values in times.items()}


def fill_with_random_play(env: object, agents: Iterable, steps: int, seed: int) -> np.ndarray:
    """Store `steps` steps of random play in every agent's replay memory; return the last state."""
    state, _ = env.reset(seed=seed)
    for _ in range(steps):
        action = int(env.action_space.sample())
        next_state, reward, terminated, truncated, _ = env.step(action)
        for agent in agents:
            agent.remember(state, action, float(reward), next_state, terminated, truncated)
        state = env.reset()[0] if terminated or truncated else next_state
    return state


def replay_rows(agent_class: type, env: object, size: int = 100_000) -> list[tuple[str, float]]:
    """Sampling from `size` random CartPole transitions, uniform and prioritized, and a prioritized phase."""
    agents = {kind: agent_class(env.observation_space.shape, int(env.action_space.n),
                                DQNConfig(buffer_size=size, batch_size=64, prioritized_replay=kind == "prioritized"))
              for kind in ("uniform", "prioritized")}
    fill_with_random_play(env, agents.values(), size, seed=1)
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


def atari_rows(agent_class: type, size: int = 5_000) -> list[tuple[str, float]]:
    """The pieces of an Atari 100k step on ALE/Pong-v5, with the drq and der presets, `size` stored steps."""
    import keras

    from dqn_agent import random_shift

    env = make_env("ALE/Pong-v5", sticky_actions=0.0)
    configs = {agent: find_preset("ALE/Pong-v5", agent_presets_dir(agent)).over(find_preset("ALE/Pong-v5")).config
               for agent in ("drq", "der")}
    agents = {"drq": DQNConfig(**configs["drq"]), "drq, no shifts": DQNConfig(**{**configs["drq"], "random_shift": 0}),
              # theta^- is then not theta at every update: the target network runs on s' beside the main one
              "drq, target network apart": DQNConfig(**{**configs["drq"], "target_update_interval": 2}),
              "der": DQNConfig(**configs["der"])}
    agents = {name: agent_class(env.observation_space.shape, int(env.action_space.n), config)
              for name, config in agents.items()}
    state = fill_with_random_play(env, agents.values(), size, seed=0)
    drq = agents["drq"]
    images = drq.sample(32)[0].states
    seed = keras.random.SeedGenerator(0)
    shift = tf_function(lambda batch: random_shift(batch, 4, seed))
    updates = interleaved({name: lambda agent=agent: agent.training_phase(1) for name, agent in agents.items()}, 10)
    return [
        ("`env.step(action)`, ALE/Pong-v5 (4 frames, preprocessing, stacking)", milliseconds(
            lambda: env.step(0) if not env.step(0)[2] else env.reset(), 200, per=2)),
        ("`act(state, 0)`, Nature CNN, one compiled call", milliseconds(lambda: drq.act(state, 0.0), 200)),
        ("`q_values` of 20 states (an evaluation's 20 episodes side by side), per state", milliseconds(
            lambda: drq.q_values(images[:20]), 50, per=20)),
        (f"`sample(32)` from {size:,} Pong steps (frames assembled into stacks)", milliseconds(
            lambda: drq.sample(32), 200)),
        ("`random_shift` of 32 84x84x4 stacks, compiled", milliseconds(lambda: shift(images), 200)),
        *[(f"`training_phase(1)`, {name}: one update (sampling included)", cost) for name, cost in updates.items()],
        ("`update_target_network()`, Nature CNN", milliseconds(drq.update_target_network, 200)),
    ]


def rainbow_rows(agent_class: type, env_id: str = "MinAtar/Breakout-v1") -> list[tuple[str, float]]:
    """A training phase of `env_id`'s preset for DQN, Rainbow and Rainbow less each component, interleaved."""
    env = make_env(env_id)
    preset = find_preset(env_id)
    dqn = preset.config
    rainbow = find_preset(env_id, agent_presets_dir("rainbow")).over(preset).config
    configs = {"DQN (one-step targets)": {**dqn, "n_step": 1}, "Rainbow": rainbow,
               **{f"Rainbow without {name}": {**rainbow, field: False, **extra} for name, field, extra in (
                   ("noisy networks", "noisy_nets", {}), ("C51", "distributional", {"loss": dqn["loss"]}),
                   ("the dueling head", "dueling", {}), ("Double DQN", "double_dqn", {}),
                   ("prioritized replay", "prioritized_replay", {}))}}
    agents = {name: agent_class(env.observation_space.shape, int(env.action_space.n), DQNConfig(**config))
              for name, config in configs.items()}
    state = fill_with_random_play(env, agents.values(), 5_000, seed=0)
    steps = agents["Rainbow"].config.gradient_steps
    phases = [(f"`training_phase({steps})`, {name}", cost) for name, cost in interleaved(
        {name: lambda agent=agent: agent.training_phase(steps) for name, agent in agents.items()}, 100).items()]
    acting = [(f"`act(state, 0)`, {name}", milliseconds(lambda agent=agent: agent.act(state, 0.0), 2000))
              for name, agent in agents.items() if name in ("DQN (one-step targets)", "Rainbow")]
    return phases + acting


def tf_function(function: Callable) -> Callable:
    """`function` compiled by `tf.function`, called on NumPy arrays."""
    import tensorflow as tf

    compiled = tf.function(function)
    return lambda array: compiled(tf.constant(array))


def main() -> None:
    parser = OneLineErrorParser(prog="bench.costs", description=__doc__.splitlines()[0])
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--atari", action="store_true", help="the pieces of an Atari 100k step instead")
    kind.add_argument("--rainbow", action="store_true", help="a MinAtar training phase, DQN against Rainbow and "
                      "Rainbow less each component, instead")
    args = parser.parse_args()
    agent_class = import_agent_class()
    import keras

    keras.utils.set_random_seed(0)
    if args.atari or args.rainbow:
        print(f"machine: {machine()}")
        print("| call | ms |\n|---|---|")
        for name, cost in (atari_rows if args.atari else rainbow_rows)(agent_class):
            print(f"| {name} | {cost:.3f} |")
        return
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
