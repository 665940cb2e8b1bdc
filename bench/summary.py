"""One table for every environment benchmarked by ``bench.learning``: seeds solved, median steps and seconds to
the saved solved policy, and the final evaluation, for this project and for SB3 with the RL-Zoo's settings.

    python -m bench.summary            # reads bench/results/learning*.json

Each row is read from the JSON that ``python -m bench.learning --env ID ...`` wrote, whose command it shows.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from bench.learning import AGENTS


def describe(values: list[float]) -> str:
    return "-" if not values else f"{round(statistics.median(values), 1):g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    print("| environment | agent | seeds solved | median steps to the solved policy | median s to the solved policy "
          "| median s of training, evaluations excluded | final 100-episode evaluations | command |")
    print("|" + "---|" * 8)
    for path in sorted(args.results.glob("learning*.json")):
        summary = json.loads(path.read_text())
        for agent in dict.fromkeys(row["agent"] for row in summary["rows"]):
            rows = [row for row in summary["rows"] if row["agent"] == agent]
            solved = [row for row in rows if row["solved"]]
            steps = [row["first_solved_eval_step"] for row in solved if row["first_solved_eval_step"]]
            seconds = [row["seconds_to_solved_policy"] for row in solved if row["seconds_to_solved_policy"]]
            finals = ", ".join(f"{row['final_eval']:g}" for row in rows)
            count = "- (no threshold)" if rows[0]["solved"] is None else f"{len(solved)}/{len(rows)}"
            print(f"| {summary['env_id']} | {AGENTS[agent]} | {count} | {describe(steps)} "
                  f"| {describe(seconds)} | {describe([row['seconds_without_eval'] for row in rows])} | {finals} "
                  f"| `{summary['command']}` |")


if __name__ == "__main__":
    main()
