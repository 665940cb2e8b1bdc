"""What each extension of the DQN family costs in speed: env steps per second of a training run, beside DQN.

    python -m bench.family                                  # CartPole-v1 and MinAtar/Breakout-v1
    python -m bench.family --envs CartPole-v1 --repeats 3
    python -m bench.family --envs MinAtar/Seaquest-v1 --only-rainbow   # DQN and Rainbow only

Each run is the real ``train.py`` with the environment's preset and one variant's flags (DQN, n-step returns,
the dueling head, prioritized replay, all three, noisy networks, C51, Rainbow), each timed, for
a fixed number of steps with no early stop, past the preset's ``learning_starts`` so that its update schedule
runs, with a one-episode evaluation every `EVAL_INTERVAL` steps. Variants are interleaved, so that a change in
the machine's load hits them alike; steps/s excludes the evaluations. Prints each variant's median steps/s and
its ratio to DQN's, two ways: over the whole run, and from the first evaluation on (each evaluation records the
run's training seconds before it). The second leaves out the start, where the agent acts without learning and
the first training phase compiles (XLA: seconds, several times longer for Rainbow's update than for DQN's),
which weighs on a short run's rate and hardly on a long run's; it is the rate a long run settles at. Writes
``family.json`` into ``--out``.

Runs go one at a time, because a run's speed depends on what shares the machine with it: on these two cores a
Rainbow run slows another Rainbow run beside it far more than a DQN run does, so a grid that runs two cells at a
time (``bench.ablation``) times each variant beside different neighbours. This bench compares them alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from bench.timed import machine, run_timed
from common import atomic_write_text, run_cli, stem_file

RAINBOW = "Rainbow (--agent rainbow)"
VARIANTS = {
    "DQN": ["--n-step", "1"],  # the CartPole-v1 preset's own n-step returns off
    "n-step (3)": ["--n-step", "3"],
    "dueling": ["--n-step", "1", "--dueling"],
    "prioritized replay": ["--n-step", "1", "--prioritized-replay"],
    "prioritized replay, updates per step": ["--n-step", "1", "--prioritized-replay", "--priority-updates", "step"],
    "all three": ["--n-step", "3", "--dueling", "--prioritized-replay"],
    "noisy networks": ["--n-step", "1", "--noisy-nets"],
    "C51": ["--n-step", "1", "--distributional"],
    RAINBOW: ["--agent", "rainbow"],
}
# steps per run, and learning_starts where the preset's would leave too little of the run
BUDGETS = {"CartPole-v1": ["--total-steps", "20000"],
           **{f"MinAtar/{game}-v1": ["--total-steps", "30000", "--learning-starts", "5000"]
              for game in ("Asterix", "Breakout", "Freeway", "Seaquest", "SpaceInvaders")}}
# steps between two evaluations: the first comes after learning has started and the update is compiled
EVAL_INTERVAL = {"CartPole-v1": 5_000, **{env_id: 10_000 for env_id in BUDGETS if env_id.startswith("MinAtar/")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", default=["CartPole-v1", "MinAtar/Breakout-v1"], choices=list(BUDGETS))
    parser.add_argument("--only-rainbow", action="store_true", help="run DQN and Rainbow only, not each extension")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each variant (the median is shown)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    runs = args.out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}", flush=True)
    variants = {name: VARIANTS[name] for name in ("DQN", RAINBOW)} if args.only_rainbow else VARIANTS
    rates: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for env_id in args.envs:
        for _ in range(args.repeats):
            for variant, flags in variants.items():
                stem = runs / f"family-{env_id.replace('/', '-')}"
                timed = run_timed("train.py", "--env", env_id, *BUDGETS[env_id], "--no-early-stop",
                                  "--eval-interval", str(EVAL_INTERVAL[env_id]), "--eval-episodes", "1",
                                  "--final-eval-episodes", "1", "--no-progress", "--no-tensorboard", "--out", str(stem),
                                  *flags)
                if timed.returncode != 0:
                    sys.exit(f"bench: train.py {variant} on {env_id} failed:\n{timed.stderr[-2000:]}")
                record = json.loads(stem_file(stem, ".json").read_text())
                rate = record["steps"] / (record["seconds"] - record["eval_seconds"]), steady_rate(record)
                rates.setdefault((env_id, variant), []).append(rate)
                print(f"{env_id} {variant}: {rate[0]:.0f} steps/s, {rate[1]:.0f} from the first evaluation on",
                      file=sys.stderr, flush=True)
    rows = []
    print("| environment | variant | env steps/s, whole run (median) | of DQN's | from the first evaluation on "
          "| of DQN's |\n|---|---|---|---|---|---|")
    for env_id in args.envs:
        baseline = [statistics.median(values) for values in zip(*rates[(env_id, "DQN")], strict=True)]
        for variant in variants:
            whole, steady = zip(*rates[(env_id, variant)], strict=True)
            rate, steady_median = statistics.median(whole), statistics.median(steady)
            rows.append({"env_id": env_id, "variant": variant, "steps_per_second": round(rate),
                         "runs": [round(r) for r in whole], "of_dqn": round(rate / baseline[0], 2),
                         "steady_from_step": EVAL_INTERVAL[env_id], "steady_steps_per_second": round(steady_median),
                         "steady_runs": [round(r) for r in steady],
                         "steady_of_dqn": round(steady_median / baseline[1], 2)})
            print(f"| {env_id} | {variant} | {rate:.0f} | {rate / baseline[0]:.0%} | {steady_median:.0f} "
                  f"| {steady_median / baseline[1]:.0%} |")
    summary = {"machine": machine(), "command": " ".join(["python -m bench.family", *sys.argv[1:]]), "rows": rows}
    atomic_write_text(args.out / "family.json", json.dumps(summary, indent=2) + "\n")


def steady_rate(record: dict) -> float:
    """Env steps/s between a run's first and last evaluations, from the training seconds each one records."""
    first, last = record["evaluations"][0], record["evaluations"][-1]
    return (last["step"] - first["step"]) / (last["training_seconds"] - first["training_seconds"])


if __name__ == "__main__":
    run_cli(lambda _: main() or 0)  # a failed write of the results: one line, exit 1
