"""Learning from pixels on this machine: env steps per second on Atari and MinAtar, bytes per stored Atari
transition, and the peak memory of a run whose replay buffer holds 100,000 Atari transitions.

    python -m bench.pixels

Each run is the real ``train.py`` with the game's preset, timed (wall clock, peak memory):
- steps/s: a short run past ``learning_starts``, so that the preset's update schedule runs (Atari: one
  gradient step every 4 env steps; MinAtar: 4 every 4), evaluation excluded;
- memory: ALE/Pong-v5 for 101,000 steps with learning from step 100,000 on, so the buffer holds
  100,000 transitions when the gradient steps run; the process's peak resident memory is the figure.
Bytes per transition count each distinct frame object once, over 5,000 stored Pong transitions, beside
what storing s and s' as separate 84x84x4 arrays would take. Writes ``pixels.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.timed import machine, run_timed
from common import atomic_write_text, run_cli, stem_file

THROUGHPUT = {
    "ALE/Pong-v5": ["--total-steps", "6000", "--learning-starts", "1000"],
    "MinAtar/Breakout-v1": ["--total-steps", "20000", "--learning-starts", "5000"],
}
ONE_EVALUATION = ["--eval-episodes", "1", "--final-eval-episodes", "1", "--no-early-stop", "--no-progress"]


def train_timed(env_id: str, flags: list[str], out: Path) -> dict:
    """Run train.py on `env_id`; return its record with the process's peak memory."""
    steps = flags[flags.index("--total-steps") + 1]
    timed = run_timed("train.py", "--env", env_id, "--eval-interval", steps, *ONE_EVALUATION, "--out", str(out),
                      *flags)
    if timed.returncode != 0:
        sys.exit(f"bench: train.py --env {env_id} failed:\n{timed.stderr[-2000:]}")
    record = json.loads(stem_file(out, ".json").read_text())
    return {**record, "peak_mb": round(timed.peak_mb)}


def bytes_per_transition(steps: int = 5_000) -> float:
    """Distinct frame bytes per transition in an agent's replay buffer after `steps` random Pong steps."""
    from common import import_agent_class
    from dqn_config import DQNConfig
    from environments import make_env

    env = make_env("ALE/Pong-v5")
    agent = import_agent_class()(env.observation_space.shape, int(env.action_space.n), DQNConfig(batch_size=32))
    state, _ = env.reset(seed=0)
    for _ in range(steps):
        action = int(env.action_space.sample())
        next_state, reward, terminated, truncated, _ = env.step(action)
        agent.remember(state, action, float(reward), next_state, terminated, truncated)
        state = env.reset()[0] if terminated or truncated else next_state
    frames = {id(frame): frame.nbytes for transition in agent.replay_buffer
              for frame in (*transition.state.frames, *transition.next_state.frames)}
    return sum(frames.values()) / len(agent.replay_buffer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    runs = args.out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}")
    print("| environment (preset schedule) | env steps/s, evaluation excluded | peak MB |\n|---|---|---|")
    rows = []
    for env_id, flags in THROUGHPUT.items():
        record = train_timed(env_id, flags, runs / f"pixels-{env_id.replace('/', '-')}")
        rate = round(record["steps"] / (record["seconds"] - record["eval_seconds"]))
        rows.append({"env_id": env_id, "steps_per_second": rate, "peak_mb": record["peak_mb"]})
        print(f"| {env_id} | {rate} | {record['peak_mb']} |", flush=True)
    stored = bytes_per_transition()
    naive = 2 * 84 * 84 * 4
    print(f"bytes per stored Pong transition: {stored:.0f} (s and s' as separate stacks: {naive})", flush=True)
    full = train_timed("ALE/Pong-v5", ["--total-steps", "101000", "--learning-starts", "100000"],
                       runs / "pixels-full-buffer")
    print(f"peak memory with 100,000 Pong transitions in the buffer: {full['peak_mb']} MB "
          f"({full['steps']} steps in {full['seconds']:.0f} s)")
    summary = {"machine": machine(), "command": " ".join(["python -m bench.pixels", *sys.argv[1:]]),
               "throughput": rows, "bytes_per_transition": round(stored), "naive_bytes_per_transition": naive,
               "full_buffer_peak_mb": full["peak_mb"], "full_buffer_seconds": full["seconds"]}
    atomic_write_text(args.out / "pixels.json", json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    run_cli(lambda _: main() or 0)  # a failed write of the results: one line, exit 1
