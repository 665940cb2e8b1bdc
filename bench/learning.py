"""How reliably and how fast the agent learns an environment, seed by seed, optionally beside Stable-Baselines3.

    python -m bench.learning                              # CartPole-v1, this project's DQN, seeds 0 to 4
    python -m bench.learning --sb3                        # and SB3's DQN with the RL-Zoo's settings, interleaved
    python -m bench.learning --env LunarLander-v3 --sb3 --sb3-budget zoo
    python -m bench.learning --env MinAtar/Breakout-v1 --sb3 --seeds 0 1 2 --total-steps 200000 --jobs 2
    python -m bench.learning --seeds $(seq 100 119) --jobs 2 -- --preset tuned/CartPole-v1.toml

Each run is the real command (``python train.py --env ENV --seed N``; ``python -m bench.sb3_dqn ...``), timed
(wall clock, peak memory), one at a time, or ``--jobs`` at a time (a pool of processes on this machine: "every
seed" claims on 20 seeds in the time of a few; each run's seconds then share the cores). Both follow one
protocol, the environment's preset's run settings: a greedy evaluation every ``eval_interval`` steps by the
same code on the same episode seeds, a 100-episode confirmation on other starts of any evaluation that reaches
the early-stop target, the best evaluated weights kept, a stop once a confirmation reaches the target, at most
the preset's ``total_steps``, and a final 100-episode evaluation of the kept weights on other seeds again. A
seed counts as solved when that final mean reaches the environment's registered threshold (MinAtar registers
none: there the final means are compared). Prints a table per seed and the medians; writes ``learning.json``
and a plot of every seed's evaluation curve, ``learning.png``, into ``--out`` (``learning-ENV_ID.*`` for other
environments, ``learning-ENV_ID-VARIANT.*`` with ``--variant``), both rewritten as each run ends.

A grid of variants is one command per variant, each resumable: ``--resume`` keeps the runs already finished
and continues killed ones from their checkpoints (give ``--checkpoint-buffer`` among the train.py flags for an
exact continuation), so a bench stopped at any point goes on where it was:

    python -m bench.learning --env MinAtar/Breakout-v1 --seeds 0 1 2 --total-steps 200000 --jobs 2 --resume \
        --variant nstep3 -- --n-step 3 --checkpoint-buffer
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.sb3_dqn import RL_ZOO, checkpoint_seconds
from bench.timed import machine, run_timed
from checkpoints import unfinished_run
from common import (
    atomic_write,
    atomic_write_text,
    figure_bytes,
    output_lock,
    run_cli,
    seed_argument,
    stem_file,
)
from environments import reward_threshold

AGENTS = {"dqn": "this project (Keras)", "sb3": "Stable-Baselines3 DQN (RL-Zoo settings; MinAtar: ours)"}


def run_seed(agent: str, env_id: str, seed: int, runs: Path, extra: list[str], sb3_budget: str,
             total_steps: int | None, variant: str | None = None, resume: bool = False, sb3_n_steps: int = 1) -> dict:
    """Train one seed of one agent; return its row of the table.

    :param variant: a name for `extra`'s settings, in the run's file names (so variants do not share files).
    :param resume: keep a finished run's record instead of training again, and continue a killed run from its
        checkpoint (``train.py --resume`` with the same flags; ``bench.sb3_dqn --resume``), timed as the whole run.
    """
    name = "-".join(part for part in (agent, variant, env_id.replace("/", "-"), str(seed)) if part)
    stem = runs / name
    record_path, timing_path = stem_file(stem, ".json"), stem_file(stem, ".timed.json")
    budget = [] if total_steps is None else ["--total-steps", str(total_steps)]
    if resume and record_path.is_file() and timing_path.is_file() and (
            agent != "dqn" or unfinished_run(stem) is None):
        timing = json.loads(timing_path.read_text())
        print(f"{name}: finished before, record kept", file=sys.stderr, flush=True)
        return row_of(agent, seed, env_id, json.loads(record_path.read_text()), **timing)
    earlier_seconds = 0.0  # a continued run's seconds up to its checkpoint
    if agent == "dqn":
        again = []
        if resume and (progress := unfinished_run(stem)) is not None:
            again, earlier_seconds = ["--resume", str(stem)], progress["seconds"]
        timed = run_timed("train.py", "--env", env_id, "--seed", str(seed), "--out", str(stem), "--no-progress",
                          *budget, *extra, *again)
    else:
        if resume:
            earlier_seconds = checkpoint_seconds(record_path)
        timed = run_timed("-m", "bench.sb3_dqn", "--env", env_id, "--seed", str(seed), "--budget", sb3_budget,
                          "--out", str(record_path), "--n-steps", str(sb3_n_steps), *budget,
                          *(["--resume"] if resume else []))
    if timed.stopped:  # by Ctrl-C or SIGTERM: it goes on from its checkpoint with --resume
        raise KeyboardInterrupt
    if timed.returncode != 0:
        sys.exit(f"bench: {agent} seed {seed} failed:\n{timed.stderr[-2000:]}")
    timing = {"process_seconds": round(earlier_seconds + timed.wall_seconds, 1), "peak_mb": round(timed.peak_mb)}
    atomic_write_text(timing_path, json.dumps(timing) + "\n")
    return row_of(agent, seed, env_id, json.loads(record_path.read_text()), **timing)


def row_of(agent: str, seed: int, env_id: str, record: dict, process_seconds: float, peak_mb: float) -> dict:
    """A run's row of the table, from its record and its process's wall time and peak memory."""
    final = record["final_evaluation"]["mean"]
    solved = record["solved_step"] is not None
    threshold = reward_threshold(env_id)
    return {
        "agent": agent, "seed": seed, "steps": record["steps"], "seconds": record["seconds"],
        "seconds_without_eval": round(record["seconds"] - record["eval_seconds"], 2),
        "steps_per_second": round(record["steps"] / record["seconds"]),
        "first_solved_eval_step": record["solved_step"],
        "seconds_to_solved_policy": record["best_eval"]["seconds"] if solved else None,
        "final_eval": round(final, 2), "solved": None if threshold is None else final >= threshold,
        "process_seconds": process_seconds, "peak_mb": peak_mb,
        "evaluations": record["evaluations"],
    }


def median(rows: list[dict], key: str) -> float | None:
    values = [row[key] for row in rows if row[key] is not None]
    return statistics.median(values) if values else None


def print_table(rows: list[dict]) -> None:
    header = ("agent", "seed", "solved at", "steps", "train s", "s w/o eval", "s to solved", "steps/s",
              "final 100-ep", "solved", "process s", "peak MB")
    keys = ("agent", "seed", "first_solved_eval_step", "steps", "seconds", "seconds_without_eval",
            "seconds_to_solved_policy", "steps_per_second", "final_eval", "solved", "process_seconds", "peak_mb")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join("-" if row[k] is None else str(row[k]) for k in keys) + " |")
    for agent in dict.fromkeys(row["agent"] for row in rows):
        mine = [row for row in rows if row["agent"] == agent]
        solved = "-" if mine[0]["solved"] is None else f"{sum(r['solved'] for r in mine)}/{len(mine)}"
        cells = [f"**{agent} median**", "", *(str(median(mine, k)) for k in keys[2:9]),
                 solved, str(median(mine, "process_seconds")),
                 str(median(mine, "peak_mb"))]
        print("| " + " | ".join(cells) + " |")


def plot(rows: list[dict], threshold: float | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agents = list(dict.fromkeys(row["agent"] for row in rows))
    figure, axes = plt.subplots(1, len(agents), figsize=(6 * len(agents), 4), sharey=True, squeeze=False)
    for axis, agent in zip(axes[0], agents, strict=True):
        for row in (r for r in rows if r["agent"] == agent):
            axis.plot([e["step"] for e in row["evaluations"]], [e["mean"] for e in row["evaluations"]], marker=".",
                      label=f"seed {row['seed']} (final {row['final_eval']:g})")
        if threshold is not None:
            axis.axhline(threshold, color="gray", linestyle="--")
        axis.set(title=AGENTS[agent], xlabel="environment step", ylabel="greedy evaluation (20 episodes)")
        axis.legend(fontsize=8)
    figure.tight_layout()
    content = figure_bytes(figure, dpi=90)
    plt.close(figure)
    atomic_write(path, content)


def main() -> None:
    parser = argparse.ArgumentParser(description="Seeds of training, beside SB3 with the RL-Zoo's settings if asked.")
    parser.add_argument("--env", default="CartPole-v1",
                        help="an environment with a registered reward threshold, or a MinAtar game")
    parser.add_argument("--seeds", type=seed_argument, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--sb3", action="store_true", help="also run SB3's DQN with the RL-Zoo's settings for --env "
                        "(needs bench/requirements-sb3.txt)")
    parser.add_argument("--sb3-seeds", type=seed_argument, nargs="+", default=None,
                        help="run SB3 on these seeds only (default: all of --seeds)")
    parser.add_argument("--dqn-seeds", type=seed_argument, nargs="*", default=None,
                        help="run ours on these seeds only (default: all of --seeds; none, to add SB3's rows beside "
                        "ours from an earlier --resume run of the same --variant)")
    parser.add_argument("--sb3-budget", choices=["preset", "zoo"], default="preset",
                        help="SB3's steps at most: the preset's (as ours) or the Zoo's n_timesteps")
    parser.add_argument("--total-steps", type=int, default=None, help="steps at most for every run (default: the "
                        "preset's, or the Zoo's for SB3 with --sb3-budget zoo)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time, each in its own process")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--sb3-n-steps", type=int, default=1, help="SB3's n-step returns (its n_steps), beside ours")
    parser.add_argument("--variant", default=None, help="a name for the extra train.py flags (e.g. nstep3), in the "
                        "runs' and the results' file names, so that variants of one environment keep apart")
    parser.add_argument("--resume", action="store_true", help="keep the runs already finished in --out (and the "
                        "summary's rows of runs not asked for this time), and continue killed runs of ours from their "
                        "checkpoints: a stopped bench goes on where it was")
    parser.add_argument("train_flags", nargs="*", help="extra flags for train.py, after --")
    args = parser.parse_args()
    threshold = reward_threshold(args.env)
    minatar = args.env.startswith("MinAtar/")
    if (threshold is None and not minatar) or (args.sb3 and not minatar and args.env not in RL_ZOO):
        parser.error(f"--env needs a registered reward threshold or to be a MinAtar game, and --sb3 one of "
                     f"{', '.join(RL_ZOO)}")
    agents = ["dqn", "sb3"] if args.sb3 else ["dqn"]
    # interleaved, so that a change in the machine's load hits both agents alike
    only = {"dqn": args.dqn_seeds, "sb3": args.sb3_seeds}
    jobs = [(agent, seed) for seed in args.seeds for agent in agents if only[agent] is None or seed in only[agent]]
    if not jobs:
        parser.error("no run left to do: --dqn-seeds and --sb3-seeds leave none of --seeds")
    runs = args.out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}", flush=True)

    stem = args.out / "-".join(part for part in ("learning", None if args.env == "CartPole-v1" else
                                                 args.env.replace("/", "-"), args.variant) if part)
    command = " ".join(["python -m bench.learning", *sys.argv[1:]])
    summary_path, picture_path = (stem_file(stem, suffix) for suffix in (".json", ".png"))
    rows: list[dict] = []
    if args.resume and summary_path.is_file():  # rows from an earlier run (e.g. ours, where this one adds SB3's)
        before = json.loads(summary_path.read_text())
        rows = [row for row in before["rows"] if (row["agent"], row["seed"]) not in jobs]
        if rows and before["command"] != command:
            command = f"{before['command']}; then {command}"
    lock = threading.Lock()

    def run(job: tuple[str, int]) -> None:
        agent, seed = job
        row = run_seed(agent, args.env, seed, runs, args.train_flags, args.sb3_budget, args.total_steps,
                       args.variant, args.resume, args.sb3_n_steps)
        print(f"{agent} seed {seed}: final {row['final_eval']}, {row['steps']} steps, {row['seconds']} s",
              file=sys.stderr, flush=True)
        with lock:  # the summary is rewritten as each run ends, so a stopped bench keeps the runs that finished
            rows.append(row)
            rows.sort(key=lambda row: (row["agent"], row["seed"]))
            summary = {"machine": machine(), "command": command, "env_id": args.env, "jobs": args.jobs, "rows": rows}
            atomic_write_text(summary_path, json.dumps(summary, indent=2) + "\n")
            plot(rows, threshold, picture_path)

    with output_lock(stem, "bench.learning"), ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(run, jobs))  # each job is a process; threads only wait on them
    print_table(rows)
    print(f"wrote {summary_path} and {picture_path}")


if __name__ == "__main__":
    run_cli(lambda _: main() or 0)  # a failed write of the results: one line, exit 1
