"""The Rainbow ablation on MinAtar: DQN, Rainbow, and Rainbow with each of its six components removed in turn.

    python -m bench.ablation                    # the default grid, two runs at a time; run it again to go on
    python -m bench.ablation --report-only      # the table and picture of the cells finished so far
    python -m bench.ablation --storage postgresql+psycopg://USER@HOST/DB --jobs 8    # the same on many machines

Each cell of the grid (game, variant, seed) is one run of ``train.py`` under the protocol of ``bench.learning``:
the MinAtar preset's evaluations, the best evaluated weights kept, a final 100-episode evaluation of them. The
default grid is DQN and Rainbow on all five MinAtar games with 3 seeds, the six ablations on MinAtar/Breakout-v1
with 2 seeds, and sb3-contrib's QR-DQN (with the MinAtar preset's settings and network, as ``bench.sb3_dqn``
runs SB3) on Breakout and SpaceInvaders with 3 seeds: 48 runs of 200,000 steps, about 20 to 35 minutes each on
2 cores two at a time.

The cells are handed out by an Optuna study whose `GridSampler` holds the grid, in ``--storage`` (an SQLite file
in ``--out`` by default; PostgreSQL for many machines, as ``tune.py``'s workers share a study): every worker
(``--jobs`` threads per command, each running one ``train.py`` at a time) asks the study for a cell nobody has
taken, trains it and tells the study its final score. A worker that dies stops its heartbeat; its cell is then
failed and put back in the grid, and whoever takes it continues the run from its checkpoint. Ctrl-C stops the
runs, each with its checkpoint, and puts their cells back; the next command continues them, and tries again any
cell whose run failed. A cell whose run finished before is not trained again.

The report: each game and variant's mean final score over its seeds with a 95% bootstrap interval, its median
env steps/s and largest peak memory, Rainbow's median env steps/s as a fraction of DQN's on each game, and across
games the interquartile mean (IQM) of the scores normalised by DQN's mean on each game, with its stratified
bootstrap interval (both by `rliable`, Agarwal et al., 2021); written as ``ablation.json`` and ``ablation.png``
into ``--out``. The env steps/s are of runs made two at a time, each beside whatever cell held the other core, and
a Rainbow run slows a Rainbow run beside it more than a DQN run does: ``python -m bench.family --only-rainbow``
times the two agents alike, one run at a time.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bench.grid import finished_results, interval, open_grid, timed_cell, train_cell, work
from bench.sb3_dqn import checkpoint_seconds
from bench.timed import machine
from common import UserError, atomic_write, atomic_write_text, figure_bytes, run_cli, seed_argument, stem_file
from presets import find_preset

if TYPE_CHECKING:
    import optuna

GAMES = ["MinAtar/Asterix-v1", "MinAtar/Breakout-v1", "MinAtar/Freeway-v1", "MinAtar/Seaquest-v1",
         "MinAtar/SpaceInvaders-v1"]


def variants() -> dict[str, list[str]]:
    """Each variant's train.py flags: DQN is the MinAtar preset with one-step targets, Rainbow ``--agent rainbow``,
    and each ablation Rainbow with one component off (and what that component had replaced back: epsilon-greedy
    exploration for the noisy networks, the MinAtar preset's loss for C51)."""
    dqn = find_preset(GAMES[0]).config
    rainbow = ["--agent", "rainbow"]
    return {
        "DQN": ["--n-step", "1"],  # the MinAtar preset's own 3-step returns off: DQN as the Nature paper has it
        "Rainbow": rainbow,
        "Rainbow - Double": [*rainbow, "--no-double-dqn"],
        "Rainbow - dueling": [*rainbow, "--no-dueling"],
        "Rainbow - n-step": [*rainbow, "--n-step", "1"],
        "Rainbow - prioritized": [*rainbow, "--no-prioritized-replay"],
        "Rainbow - noisy": [*rainbow, "--no-noisy-nets", "--epsilon-start", str(dqn["epsilon_start"]),
                            "--epsilon-end", str(dqn["epsilon_end"])],
        "Rainbow - distributional": [*rainbow, "--no-distributional", "--loss", dqn["loss"]],
    }


# sb3-contrib's QR-DQN (Dabney et al., 2018), a distributional DQN, with the MinAtar preset's settings and network
QR_DQN = "QR-DQN (SB3)"


def grid(args: argparse.Namespace) -> list[str]:
    """The cells, as ``GAME|VARIANT|SEED``: DQN and Rainbow on --games x --seeds, the ablations on
    --ablation-games x --ablation-seeds, QR-DQN on --qrdqn-games x --seeds."""
    cells = [f"{game}|{variant}|{seed}" for game in args.games for variant in ("DQN", "Rainbow")
             for seed in args.seeds]
    cells += [f"{game}|{variant}|{seed}" for game in args.ablation_games for variant in variants()
              if variant.startswith("Rainbow - ") for seed in args.ablation_seeds]
    cells += [f"{game}|{QR_DQN}|{seed}" for game in args.qrdqn_games for seed in args.seeds]
    return cells


def run_cell(cell: str, args: argparse.Namespace, train: bool = True) -> dict:
    """Train one cell (or continue it from its checkpoint, or keep its finished record); return its result. A
    QR-DQN cell is ``python -m bench.sb3_dqn --algo qrdqn``, which goes on from its own checkpoint.

    :param train: False to keep a finished record only (FileNotFoundError if there is none)."""
    game, variant, seed = cell.split("|")
    name = "-".join([variant.replace(" - ", "-no-").replace(" ", "-"), game.replace("/", "-"), seed]).lower()
    if variant == QR_DQN:
        stem = args.out / "runs" / name.replace("(", "").replace(")", "")
        record, timing = timed_cell(stem, ["-m", "bench.sb3_dqn", "--env", game, "--seed", seed, "--algo", "qrdqn",
                                           "--total-steps", str(args.total_steps), "--out", f"{stem}.json", "--resume"],
                                    args.total_steps, train=train,
                                    earlier_seconds=checkpoint_seconds(stem_file(stem, ".json")) if train else 0.0)
    else:
        record, timing = train_cell(args.out / "runs" / name, ["--env", game, "--seed", seed, *variants()[variant],
                                                               *args.train_flags], args.total_steps, train)
    return {"game": game, "variant": variant, "seed": int(seed), "final": record["final_evaluation"]["mean"],
            "steps_per_second": round(record["steps"] / (record["seconds"] - record["eval_seconds"])), **timing}


def report(study: optuna.Study, args: argparse.Namespace) -> dict:
    """The finished cells' table, per game and variant, and the IQM across games; printed, and returned."""
    from rliable import metrics

    rows = finished_results(study, grid(args), lambda cell: run_cell(cell, args, train=False))
    results: dict = {"machine": machine(), "command": " ".join(["python -m bench.ablation", *sys.argv[1:]]),
                     "cells": sorted(rows, key=lambda r: (r["game"], r["variant"], r["seed"])), "games": [],
                     "rainbow_speed": [], "aggregate": []}
    print("| game | variant | seeds | final (mean) | 95% bootstrap interval | env steps/s | peak MB |\n"
          "|---|---|---|---|---|---|---|")
    for game in dict.fromkeys(r["game"] for r in results["cells"]):
        for variant in [*variants(), QR_DQN]:
            cells = [r for r in results["cells"] if (r["game"], r["variant"]) == (game, variant)]
            finals, rates, peaks = ([r[key] for r in cells] for key in ("final", "steps_per_second", "peak_mb"))
            if not finals:
                continue
            mean, (low, high) = interval(metrics.aggregate_mean, np.array(finals)[:, None])
            results["games"].append({"game": game, "variant": variant, "seeds": len(finals), "mean": mean,
                                     "low": low, "high": high, "steps_per_second": float(np.median(rates)),
                                     "peak_mb": max(peaks)})
            print(f"| {game} | {variant} | {len(finals)} | {mean:.2f} | [{low:.2f}, {high:.2f}] | "
                  f"{np.median(rates):.0f} | {max(peaks)} |")
    for game in dict.fromkeys(r["game"] for r in results["cells"]):  # the speed asked of Rainbow: half of DQN's
        rates = {row["variant"]: row["steps_per_second"] for row in results["games"] if row["game"] == game}
        if {"DQN", "Rainbow"} <= rates.keys():
            results["rainbow_speed"].append({"game": game, "of_dqn": rates["Rainbow"] / rates["DQN"]})
            print(f"{game}: Rainbow's median env steps/s is {rates['Rainbow'] / rates['DQN']:.0%} of DQN's")
    for variant in ("DQN", "Rainbow"):  # over the games both ran on every seed of, where DQN scored (to divide by)
        games = [g for g in args.games if all(any((r["game"], r["variant"], r["seed"]) == (g, v, s)
                                                  for r in results["cells"]) for v in ("DQN", "Rainbow")
                                              for s in args.seeds) and dqn_mean(results, g) > 0]
        if not games:
            continue
        scores = np.array([[next(r["final"] for r in results["cells"] if (r["game"], r["variant"], r["seed"]) ==
                                 (g, variant, s)) / dqn_mean(results, g) for g in games] for s in args.seeds])
        iqm, (low, high) = interval(metrics.aggregate_iqm, scores)
        results["aggregate"].append({"variant": variant, "games": games, "iqm": iqm, "low": low, "high": high})
        print(f"IQM of DQN-normalised finals over {len(games)} games, {variant}: {iqm:.3f} [{low:.3f}, {high:.3f}]")
    return results


def dqn_mean(results: dict, game: str) -> float:
    return next(row["mean"] for row in results["games"] if (row["game"], row["variant"]) == (game, "DQN"))


def plot(results: dict, path: Path) -> None:
    """Each game's variants as bars with their intervals, and the IQM across games."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    games = list(dict.fromkeys(row["game"] for row in results["games"]))
    names = [name for name in [*variants(), QR_DQN] if any(row["variant"] == name for row in results["games"])]
    panels = [*games, "IQM"] if results["aggregate"] else games
    figure, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), squeeze=False, sharey=True)
    for axis, panel in zip(axes[0], panels, strict=True):
        rows = results["aggregate"] if panel == "IQM" else [r for r in results["games"] if r["game"] == panel]
        values = [row["iqm" if panel == "IQM" else "mean"] for row in rows]
        errors = [[v - row["low"] for v, row in zip(values, rows, strict=True)],
                  [row["high"] - v for v, row in zip(values, rows, strict=True)]]
        axis.barh([names.index(row["variant"]) for row in rows], values, xerr=errors, color="tab:blue", capsize=3)
        axis.set_title(panel.removeprefix("MinAtar/") if panel != "IQM" else "IQM, DQN-normalised", fontsize=9)
        axis.tick_params(labelsize=7)
    axes[0][0].set_yticks(range(len(names)), names)
    axes[0][0].invert_yaxis()
    figure.tight_layout()
    content = figure_bytes(figure, dpi=90)
    plt.close(figure)
    atomic_write(path, content)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--games", nargs="+", default=GAMES, help="games of DQN and Rainbow")
    parser.add_argument("--seeds", type=seed_argument, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ablation-games", nargs="*", default=["MinAtar/Breakout-v1"],
                        help="games of the six ablations (none: --ablation-games with no value)")
    parser.add_argument("--ablation-seeds", type=seed_argument, nargs="+", default=[0, 1])
    parser.add_argument("--qrdqn-games", nargs="*", default=["MinAtar/Breakout-v1", "MinAtar/SpaceInvaders-v1"],
                        help="games of sb3-contrib's QR-DQN, with --seeds (none: --qrdqn-games with no value; needs "
                        "pip install -r bench/requirements-sb3.txt)")
    parser.add_argument("--total-steps", type=int, default=200_000, help="steps of every run")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time in this command")
    parser.add_argument("--out", type=Path, default=Path("bench/results/ablation"))
    parser.add_argument("--storage", default=None, help="the study's database URL, shared by every worker "
                        "(default: sqlite:///OUT/ablation.db)")
    parser.add_argument("--report-only", action="store_true", help="report the finished cells and train none")
    parser.add_argument("train_flags", nargs="*", help="extra flags for every train.py, after --")
    args = parser.parse_args()
    for game in {*args.games, *args.ablation_games, *args.qrdqn_games}:
        if not game.startswith("MinAtar/"):
            parser.error(f"argument --games: {game} is not a MinAtar game")
    if args.qrdqn_games and not args.report_only and importlib.util.find_spec("sb3_contrib") is None:
        parser.error("argument --qrdqn-games: QR-DQN's cells need sb3-contrib: pip install -r "
                     "bench/requirements-sb3.txt (or give --qrdqn-games with no value)")
    (args.out / "runs").mkdir(parents=True, exist_ok=True)
    storage = args.storage or f"sqlite:///{(args.out / 'ablation.db').resolve()}"
    study = open_grid(storage, "ablation", grid(args), str(args.total_steps), *args.train_flags)
    if not args.report_only:
        print(f"machine: {machine()}; study {study.study_name} in {storage}", flush=True)
        failed = work(study, grid(args), lambda cell: run_cell(cell, args), args.jobs)
        if failed:
            raise UserError(f"bench.ablation: {len(failed)} cells failed: {'; '.join(failed)}")
    results = report(study, args)
    atomic_write_text(args.out / "ablation.json", json.dumps(results, indent=2) + "\n")
    if results["games"]:
        plot(results, args.out / "ablation.png")
    print(f"wrote {args.out / 'ablation.json'}" + (f" and {args.out / 'ablation.png'}" if results["games"] else ""))


if __name__ == "__main__":
    run_cli(lambda _: main() or 0)  # a failed write or an unreachable storage: one line, exit 1
