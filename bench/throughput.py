"""Environment steps per second while training, and peak memory, beside the usual tutorial loop.

    python -m bench.throughput

Runs ``train.py`` for 20,000 CartPole-v1 steps (no early stop, one evaluation episode at the end) in
three update schedules, each timed (wall clock, peak memory): 128 gradient steps every 256 environment steps
(0.5 per step, the defaults until tune.py found others), one gradient step per environment step done 4 at
a time, and one gradient step after every single environment step. Steps/s excludes the evaluation episode. Then the
tutorial loop (``bench.tutorial_loop``) over a short window. Writes ``throughput.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from bench.timed import machine, run_timed
from common import atomic_write_text, run_cli

# the batch and buffer of the defaults until tune.py found others, so that the figures stay comparable
EARLIER_DEFAULTS = ["--batch-size", "64", "--buffer-size", "100000"]
SCHEDULES = {
    "128 gradient steps every 256 env steps": ["--train-frequency", "256"],
    "1 gradient step per env step, 4 every 4 steps": ["--train-frequency", "4", "--gradient-steps", "4"],
    "1 gradient step after every env step": ["--train-frequency", "1", "--gradient-steps", "1"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--tutorial-steps", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    runs = args.out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}")
    print("| update schedule | env steps/s | gradient steps/s | peak MB |\n|---|---|---|---|")
    rows = []
    for name, flags in SCHEDULES.items():
        timed = run_timed("train.py", "--total-steps", str(args.steps), "--no-early-stop", "--learning-starts", "64",
                          "--eval-interval", str(args.steps), "--eval-episodes", "1", "--final-eval-episodes", "1",
                          "--no-progress", "--out", str(runs / "throughput"), *EARLIER_DEFAULTS, *flags)
        if timed.returncode != 0:
            sys.exit(f"bench: train.py failed:\n{timed.stderr[-2000:]}")
        record = json.loads((runs / "throughput.json").read_text())
        steps_per_second = record["steps"] / (record["seconds"] - record["eval_seconds"])
        config = record["config"]
        gradient_rate = steps_per_second * config["gradient_steps"] / config["train_frequency"]
        rows.append({"schedule": name, "steps_per_second": round(steps_per_second),
                     "gradient_steps_per_second": round(gradient_rate), "peak_mb": round(timed.peak_mb)})
        print(f"| {name} | {rows[-1]['steps_per_second']} | {rows[-1]['gradient_steps_per_second']} | "
              f"{rows[-1]['peak_mb']} |", flush=True)
    tutorial = run_timed("-m", "bench.tutorial_loop", "--steps", str(args.tutorial_steps))
    found = re.search(r"([\d.]+) steps/s", tutorial.stdout)
    if tutorial.returncode != 0 or not found:
        sys.exit(f"bench: the tutorial loop failed:\n{tutorial.stderr[-2000:]}")
    tutorial_rate = float(found.group(1))
    print(f"| tutorial loop: predict per action, fit(epochs=1) per env step | {tutorial_rate:.2f} | "
          f"{tutorial_rate:.2f} | {round(tutorial.peak_mb)} |")
    strict = rows[-1]["steps_per_second"]
    print(f"1 gradient step after every env step: {strict / tutorial_rate:.0f} times the tutorial loop's steps/s")
    summary = {"machine": machine(), "command": " ".join(["python -m bench.throughput", *sys.argv[1:]]),
               "rows": rows, "tutorial_steps_per_second": tutorial_rate}
    atomic_write_text(args.out / "throughput.json", json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    run_cli(lambda _: main() or 0)  # a failed write of the results: one line, exit 1
