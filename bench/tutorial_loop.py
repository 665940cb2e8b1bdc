"""The loop of the usual DQN tutorial, measured for its speed only: ``model.predict`` for every action,
and on every environment step a minibatch whose targets come from two more ``predict`` calls, then
``model.fit(epochs=...)``. Same 64-64 network and batch of 64 as this project's defaults.

    python -m bench.tutorial_loop --steps 30 --epochs 1
"""

from __future__ import annotations

import argparse
import random
import time
from collections import deque

import numpy as np

from common import import_agent_class
from environments import make_env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed environment steps")
    parser.add_argument("--epochs", type=int, default=1, help="epochs of model.fit on each step (tutorials: 1 to 100)")
    args = parser.parse_args()
    import_agent_class()  # TensorFlow, quietly
    import keras

    keras.utils.set_random_seed(0)
    env = make_env("CartPole-v1")
    layers = [keras.Input((4,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(64, activation="relu"),
              keras.layers.Dense(2)]
    model = keras.Sequential(layers)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    target = keras.models.clone_model(model)
    target.set_weights(model.get_weights())
    memory: deque = deque(maxlen=10_000)
    state, _ = env.reset(seed=0)

    def step(explore: float) -> None:
        nonlocal state
        if random.random() < explore:
            action = random.randrange(2)
        else:
            action = int(np.argmax(model.predict(state[None], verbose=0)[0]))
        next_state, reward, terminated, truncated, _ = env.step(action)
        memory.append((state, action, reward, next_state, terminated))
        state = env.reset()[0] if terminated or truncated else next_state
        if len(memory) >= 64:
            states, actions, rewards, next_states, dones = map(np.array, zip(*random.sample(memory, 64), strict=True))
            targets = model.predict(states, verbose=0)
            next_q = target.predict(next_states, verbose=0)
            targets[np.arange(64), actions] = rewards + 0.99 * (1 - dones) * next_q.max(axis=1)
            model.fit(states, targets, epochs=args.epochs, verbose=0)

    for _ in range(70):  # warm up: fill a batch and let Keras build its functions
        step(explore=1.0)
    start = time.perf_counter()
    for _ in range(args.steps):
        step(explore=0.1)
    seconds = time.perf_counter() - start
    print(f"tutorial loop (predict per action, fit(epochs={args.epochs}) per step): "
          f"{args.steps / seconds:.2f} steps/s over {args.steps} steps")


if __name__ == "__main__":
    main()
