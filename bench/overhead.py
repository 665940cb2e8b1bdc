"""What TensorBoard logging and checkpoints cost: training steps/s with and without the logs, and the time
and size of one checkpoint with and without the replay buffer.

    python -m bench.overhead

Runs ``train.py`` with the CartPole-v1 defaults for 20,000 steps without early stop (an evaluation, so a
checkpoint and a log write, every 2,500 steps), with ``--no-tensorboard`` and with the logs on, in
interleaved pairs so that a change in the machine's load hits both alike; steps/s excludes the
evaluation episodes. Then times `checkpoints.save_checkpoint` on a CartPole agent with a full
100,000-transition buffer. Writes ``overhead.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.timed import machine, run_timed
from common import atomic_write_text, run_cli, stem_file


def training_rate(runs: Path, logs: list[str]) -> float:
    """Steps/s of one default CartPole run, evaluations excluded."""
    stem = runs / "overhead"
    timed = run_timed("train.py", "--total-steps", "20000", "--no-early-stop", "--no-progress", "--out", str(stem),
                      "--tensorboard", str(runs / "overhead-logs"), *logs)
    if timed.returncode != 0:
        sys.exit(f"bench: train.py failed:\n{timed.stderr[-2000:]}")
    record = json.loads(stem_file(stem, ".json").read_text())
    return record["steps"] / (record["seconds"] - record["eval_seconds"])


def checkpoint_costs() -> dict[str, dict[str, float]]:
    """Seconds and megabytes of one checkpoint of a CartPole agent whose buffer holds 100,000 transitions."""
    import gymnasium as gym
    import numpy as np

    from checkpoints import save_checkpoint
    from common import import_agent_class

    agent = import_agent_class()((4,), 2)
    env = gym.make("CartPole-v1")
    state, _ = env.reset(seed=0)
    for _ in range(agent.config.buffer_size):
        next_state, reward, terminated, truncated, _ = env.step(int(np.random.randint(2)))
        agent.remember(state, 0, float(reward), next_state, terminated)
        state = next_state if not (terminated or truncated) else env.reset()[0]
    costs = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, buffer in (("without the buffer", False), ("with 100,000 transitions", True)):
            path = Path(folder) / f"{buffer}.checkpoint.h5"
            start = time.perf_counter()
            save_checkpoint(path, agent, {"step": 0}, env, state, buffer)
            costs[name] = {"seconds": round(time.perf_counter() - start, 3),
                           "megabytes": round(path.stat().st_size / 1e6, 2)}
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    runs = args.out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}", flush=True)
    rates: dict[str, list[float]] = {"no logs": [], "TensorBoard logs": []}
    for _ in range(args.pairs):
        rates["no logs"].append(training_rate(runs, ["--no-tensorboard"]))
        rates["TensorBoard logs"].append(training_rate(runs, []))
    medians = {name: round(statistics.median(values)) for name, values in rates.items()}
    cost = 1 - medians["TensorBoard logs"] / medians["no logs"]
    print("| CartPole-v1 defaults, 20,000 steps | median steps/s (evaluations excluded) | runs |\n|---|---|---|")
    for name, values in rates.items():
        print(f"| {name} | {medians[name]} | {', '.join(f'{v:.0f}' for v in values)} |")
    print(f"TensorBoard logging costs {100 * cost:.1f}% of training speed")
    checkpoints = checkpoint_costs()
    print("| one checkpoint, CartPole-v1 | seconds | MB |\n|---|---|---|")
    for name, row in checkpoints.items():
        print(f"| {name} | {row['seconds']} | {row['megabytes']} |")
    summary = {"machine": machine(), "command": " ".join(["python -m bench.overhead", *sys.argv[1:]]),
               "steps_per_second": rates, "medians": medians, "logging_cost": round(cost, 4),
               "checkpoint": checkpoints}
    atomic_write_text(args.out / "overhead.json", json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    run_cli(lambda _: main() or 0)  # a failed write of the results: one line, exit 1
