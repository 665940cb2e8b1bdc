"""The Atari 100k benchmark (Kaiser et al., 2019): 100k agent steps per game, beside the published table.

    python -m bench.atari100k                                  # DrQ(epsilon) on Pong, Breakout, Boxing, 3 seeds
    python -m bench.atari100k --agent der --games Pong --seeds 0 1 2 3 4
    python -m bench.atari100k --report-only                    # the table of DrQ's runs finished so far
    python -m bench.atari100k --storage postgresql+psycopg://USER@HOST/DB --jobs 4     # on many machines

Each run is ``train.py --env ALE/GAME-v5 --agent AGENT --seed N`` with the agent's Atari 100k preset
(``presets/drq/Atari.toml``, ``presets/der/Atari.toml``), which holds the protocol as Dopamine's
``labs/atari_100k`` configurations run it: no sticky actions, the game's minimal action set, a lost life ends the
learning episode but not the game, at most 27,000 agent steps (108k frames) per episode, 100k agent steps of
training, then 100 evaluation episodes (epsilon 0.001) of the weights as training left them. On this 2-core
machine one run is about an hour. The runs are the cells of a grid (`bench.grid`): resumable, each from its
checkpoint, and spread over ``--jobs`` here or over many machines through one ``--storage``.

The report: each game's mean final score over its seeds with a 95% bootstrap interval; its human-normalised
score, (score - random) / (human - random), with the random and human scores of the published table; and over
the games run, the mean, the median and the interquartile mean (IQM) of the human-normalised scores, the IQM with
its 95% stratified-bootstrap interval (`rliable`, Agarwal et al., 2021). Beside them, the published scores of
DER, OTRainbow, DrQ and SPR on the same games, aggregated the same way (their per-game means: no interval).
The report covers every finished run of the agent in ``--out``, those of this command's games and seeds and
those of earlier commands, and is written as ``atari100k-AGENT.json`` and ``atari100k-AGENT.png`` (learning curves
of every seed) into ``--out``: each agent has its own.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

from bench.grid import finished_results, interval, open_grid, train_cell, work
from bench.timed import machine
from common import OneLineErrorParser, UserError, atomic_write, atomic_write_text, figure_bytes, run_cli, seed_argument

# Published Atari 100k scores, as reported (10 seeds each), from the table of Cetin et al. (A-LIX, ICML 2022,
# Table 5), which repeats that of Schwarzer et al. (SPR, ICLR 2021); DrQ is Kostrikov et al.'s own DrQ, not
# Agarwal et al.'s re-run DrQ(epsilon). Games without a row run, but are left out of the normalised aggregate.
PUBLISHED_SOURCE = "Cetin et al. 2022 (A-LIX), Table 5, repeating Schwarzer et al. 2021 (SPR): as reported, 10 seeds"
BASELINES = ("DER", "OTRainbow", "DrQ", "SPR")
PUBLISHED: dict[str, dict[str, float]] = {
    "Pong": {"random": -20.7, "human": 14.6, "DER": -19.3, "OTRainbow": 1.3, "DrQ": -8.5, "SPR": -5.9},
    "Breakout": {"random": 1.7, "human": 30.5, "DER": 1.9, "OTRainbow": 9.8, "DrQ": 16.1, "SPR": 17.1},
    "Boxing": {"random": 0.1, "human": 12.1, "DER": 0.2, "OTRainbow": 2.5, "DrQ": 6.0, "SPR": 35.8},
}
AGENTS = ("drq", "der")


def human_normalised(game: str, score: float) -> float | None:
    """(score - random) / (human - random) with the game's published random and human scores; None for a game
    the published table does not have."""
    row = PUBLISHED.get(game)
    return None if row is None else (score - row["random"]) / (row["human"] - row["random"])


def aggregates(scores: np.ndarray) -> dict[str, float]:
    """Mean, median and interquartile mean of human-normalised scores (runs x games), the IQM with its 95%
    stratified-bootstrap interval: the IQM is the mean of the middle half of all the runs' scores, which
    a single outlier game moves less than the mean and which uses more of the runs than the median."""
    from rliable import metrics

    iqm, (low, high) = interval(metrics.aggregate_iqm, scores)
    return {"mean": float(np.mean(scores.mean(axis=0))), "median": float(np.median(scores.mean(axis=0))),
            "iqm": iqm, "iqm_low": low, "iqm_high": high}


def game_id(game: str) -> str:
    """The Gymnasium id of an Atari game's name (Pong: ALE/Pong-v5)."""
    return f"ALE/{game}-v5"


def known_game(game: str) -> bool:
    """Whether ALE has the game (ale-py's ROMs are in its wheel)."""
    import ale_py
    import gymnasium as gym

    gym.register_envs(ale_py)
    return game_id(game) in gym.registry


def finished_runs(runs: Path, agent: str) -> list[str]:
    """The cells (``GAME|AGENT|SEED``) of `agent`'s runs with a record in `runs` (``AGENT-GAME-SEED.json``), run by
    this command or another."""
    names = (re.fullmatch(rf"{agent}-(?P<game>[A-Za-z0-9]+)-(?P<seed>\d+)\.json", path.name)
             for path in sorted(runs.glob(f"{agent}-*.json")))
    return [f"{name['game']}|{agent}|{name['seed']}" for name in names if name]


def run_cell(cell: str, args: argparse.Namespace, train: bool = True) -> dict:
    """Train one run (or continue it from its checkpoint, or keep its finished record); return its result.

    :param train: False to keep a finished record only (FileNotFoundError if there is none)."""
    game, agent, seed = cell.split("|")
    record, timing = train_cell(args.out / "runs" / f"{agent}-{game}-{seed}",
                                ["--env", game_id(game), "--agent", agent, "--seed", seed, *args.train_flags],
                                args.total_steps, train)
    return {"game": game, "agent": agent, "seed": int(seed), "final": record["final_evaluation"]["mean"],
            "final_episodes": record["final_evaluation"]["episodes"], "steps": record["steps"],
            "seconds": record["seconds"],
            "steps_per_second": round(record["steps"] / (record["seconds"] - record["eval_seconds"]), 1),
            "evaluations": [[e["step"], e["mean"]] for e in record["evaluations"]], **timing}


def report(rows: list[dict], games: list[str]) -> dict:
    """The table of the finished runs beside the published one, printed and returned."""
    from rliable import metrics

    results: dict = {"machine": machine(), "command": " ".join(["python -m bench.atari100k", *sys.argv[1:]]),
                     "published": PUBLISHED_SOURCE, "runs": sorted(rows, key=lambda r: (r["game"], r["seed"])),
                     "games": [], "aggregate": None, "published_aggregate": {}, "left_out": []}
    print(f"| game | seeds | ours (mean) | 95% bootstrap interval | human-normalised | random | human | "
          f"{' | '.join(BASELINES)} | env steps/s | wall s | peak MB |\n|{'---|' * (10 + len(BASELINES))}")
    for game in games:
        runs = [r for r in results["runs"] if r["game"] == game]
        if not runs:
            continue
        finals = np.array([r["final"] for r in runs])
        mean, (low, high) = interval(metrics.aggregate_mean, finals[:, None])
        normalised = human_normalised(game, mean)
        row = {"game": game, "seeds": len(runs), "mean": mean, "low": low, "high": high,
               "human_normalised": normalised, **{name: float(np.median([r[name] for r in runs]))
                                                  for name in ("steps_per_second", "process_seconds")},
               "peak_mb": float(max(r["peak_mb"] for r in runs))}
        results["games"].append(row)
        published = PUBLISHED.get(game, {})
        cells = [f"{published[name]:g}" if name in published else "-" for name in ("random", "human", *BASELINES)]
        print(f"| {game} | {len(runs)} | {mean:.1f} | [{low:.1f}, {high:.1f}] | "
              f"{'-' if normalised is None else f'{normalised:.3f}'} | {' | '.join(cells)} | "
              f"{row['steps_per_second']:.0f} | {row['process_seconds']:.0f} | {row['peak_mb']:.0f} |")
    scored = [row["game"] for row in results["games"] if row["human_normalised"] is not None]
    results["left_out"] = [row["game"] for row in results["games"] if row["human_normalised"] is None]
    if results["left_out"]:
        print(f"left out of the aggregate (no published random and human scores): {', '.join(results['left_out'])}")
    seeds = min((row["seeds"] for row in results["games"] if row["game"] in scored), default=0)
    if scored and seeds:
        # runs x games: each game's first `seeds` runs, so that every game counts as many runs
        scores = np.array([[human_normalised(game, r["final"]) for r in [r for r in results["runs"]
                                                                          if r["game"] == game][:seeds]]
                           for game in scored]).T
        results["aggregate"] = {"games": scored, "runs_per_game": seeds, **aggregates(scores)}
        ours = results["aggregate"]
        counts = ", ".join(f"{row['game']} {row['seeds']}" for row in results["games"] if row["game"] in scored)
        print(f"\nhuman-normalised over {len(scored)} games ({', '.join(scored)}), each game's first {seeds} "
              f"run(s), as many as the game with the fewest has (finished: {counts}):")
        print(f"| agent | mean | median | IQM | IQM 95% interval |\n|---|---|---|---|---|\n"
              f"| ours | {ours['mean']:.3f} | {ours['median']:.3f} | {ours['iqm']:.3f} | "
              f"[{ours['iqm_low']:.3f}, {ours['iqm_high']:.3f}] |")
        for name in BASELINES:
            published = np.array([[human_normalised(game, PUBLISHED[game][name]) for game in scored]])
            results["published_aggregate"][name] = {"mean": float(published.mean()),
                                                    "median": float(np.median(published)),
                                                    "iqm": float(metrics.aggregate_iqm(published))}
            print(f"| {name} (published) | {published.mean():.3f} | {np.median(published):.3f} | "
                  f"{metrics.aggregate_iqm(published):.3f} | - |")
        print(f"published: {PUBLISHED_SOURCE}")
    return results


def plot(results: dict, path: Path) -> None:
    """Each game's learning curves (the 5-episode evaluations every 10k steps), one line per seed, with the
    published DER and DrQ scores as reference lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    games = [row["game"] for row in results["games"]]
    figure, axes = plt.subplots(1, len(games), figsize=(3.6 * len(games), 3.2), squeeze=False)
    for axis, game in zip(axes[0], games, strict=True):
        for run in (r for r in results["runs"] if r["game"] == game):
            steps, means = zip(*run["evaluations"], strict=True)
            axis.plot(steps, means, marker=".", label=f"{run['agent']} seed {run['seed']}")
        for name, style in (("DER", ":"), ("DrQ", "--")):
            if game in PUBLISHED:
                axis.axhline(PUBLISHED[game][name], linestyle=style, color="grey", label=f"{name} (published)")
        axis.set(title=game, xlabel="agent step")
        axis.legend(fontsize=6)
    axes[0][0].set_ylabel("evaluation return (game score)")
    figure.tight_layout()
    content = figure_bytes(figure, dpi=90)
    plt.close(figure)
    atomic_write(path, content)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="bench.atari100k", description=__doc__.splitlines()[0])
    parser.add_argument("--games", nargs="+", default=["Pong", "Breakout", "Boxing"],
                        help="Atari games by name (ALE/NAME-v5)")
    parser.add_argument("--seeds", type=seed_argument, nargs="+", default=[0, 1, 2])
    parser.add_argument("--agent", choices=AGENTS, default="drq", help="the agent's Atari 100k preset "
                        "(train.py --agent)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time in this command")
    parser.add_argument("--total-steps", type=int, default=100_000, help="agent steps of every run (the "
                        "benchmark's 100k; fewer only to try the command)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/atari100k"))
    parser.add_argument("--storage", default=None, help="the grid's database URL, shared by every worker "
                        "(default: sqlite:///OUT/atari100k.db)")
    parser.add_argument("--report-only", action="store_true", help="report the finished runs and train none")
    parser.add_argument("train_flags", nargs="*", help="extra flags for every train.py, after --")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"argument --jobs: must be at least 1, got {args.jobs}")
    if args.total_steps < 1:
        parser.error(f"argument --total-steps: must be positive, got {args.total_steps}")
    unknown = [game for game in args.games if not known_game(game)]
    if unknown:
        parser.error(f"argument --games: ALE has no game {unknown[0]!r} (names as in ALE/Pong-v5: Pong)")
    cells = [f"{game}|{args.agent}|{seed}" for game in args.games for seed in args.seeds]
    (args.out / "runs").mkdir(parents=True, exist_ok=True)
    storage = args.storage or f"sqlite:///{(args.out / 'atari100k.db').resolve()}"
    study = open_grid(storage, "atari100k", cells, str(args.total_steps), *args.train_flags)
    if not args.report_only:
        print(f"machine: {machine()}; study {study.study_name} in {storage}", flush=True)
        failed = work(study, cells, lambda cell: run_cell(cell, args), args.jobs)
        if failed:
            raise UserError(f"bench.atari100k: {len(failed)} runs failed: {'; '.join(failed)}")
    reported = cells + [cell for cell in finished_runs(args.out / "runs", args.agent) if cell not in cells]
    games = list(dict.fromkeys(cell.split("|")[0] for cell in reported))
    results = report(finished_results(study, reported, lambda cell: run_cell(cell, args, train=False)), games)
    stem = args.out / f"atari100k-{args.agent}"
    atomic_write_text(stem.with_suffix(".json"), json.dumps(results, indent=2) + "\n")
    if results["games"]:
        plot(results, stem.with_suffix(".png"))
    print(f"wrote {stem}.json" + (f" and {stem}.png" if results["games"] else ""))
    return 0


if __name__ == "__main__":
    run_cli(main)
