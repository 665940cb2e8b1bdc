"""The learning curve of a run that has not written its final record yet: one still going, or one stopped
by a kill, read from its last checkpoint (``STEM.checkpoint.h5``, written at every evaluation).

    python -m bench.curve models/Pong --out bench/results/pong/ALE-Pong-v5-seed0

Prints each greedy evaluation and the run's speed; writes the same ``OUT.csv`` and ``OUT.png`` that
``train.py`` writes at the end of a run. Reads the checkpoint only (no TensorFlow), so it can run beside
the training it watches.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from checkpoints import checkpoint_path, read_checkpoint_state
from common import UserError
from train import TrainingResult, write_history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stem", type=Path, help="the --out STEM of the run")
    parser.add_argument("--out", type=Path, required=True, help="stem of the CSV and PNG to write")
    args = parser.parse_args()
    try:
        state = read_checkpoint_state(checkpoint_path(args.stem))
    except UserError as error:
        sys.exit(f"bench.curve: error: {error}")
    result = TrainingResult(**state["result"])
    print(f"{state['settings']['env_id']}: {result.steps} steps in {result.seconds:.0f} s "
          f"({result.steps / result.seconds:.1f} steps/s, evaluations included; {result.eval_seconds:.0f} s of "
          f"evaluation), {len(result.episodes)} training episodes")
    print("| step | greedy evaluation (mean ± std) |")
    print("|---|---|")
    for evaluation in result.evaluations:
        print(f"| {evaluation['step']} | {evaluation['mean']:.1f} ± {evaluation['std']:.1f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_history(args.out, result, state["settings"]["reward_threshold"])
    print(f"wrote {args.out}.csv and {args.out}.png")


if __name__ == "__main__":
    main()
