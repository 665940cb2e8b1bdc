"""What a training run writes for TensorBoard, through TensorFlow's own `tf.summary` writer.

    tensorboard --logdir models/runs

Scalars are gathered in memory as the run goes and written in one compiled call at each evaluation
(and at the end): one eager `tf.summary.scalar` costs about 0.7 ms on this machine, as much as ten
CartPole steps, while a row written by the compiled call costs about 30 µs. Tags:

- ``episode/return``, ``episode/length``, ``episode/epsilon``: each training episode, at its last step;
- ``train/loss``, ``train/mean_max_q``: each training phase's mean over its gradient steps;
- ``replay/mean_importance_weight``, ``replay/max_to_mean_priority``: with prioritized replay, each phase's mean
  importance weight, and at each evaluation how skewed the draw is (the largest p^alpha over the mean);
- ``train/distribution_entropy``: with C51, at each evaluation, the mean entropy of the greedy action's predicted
  return distribution on the latest 256 stored states (log num_atoms when flat, 0 when sure);
- ``eval/mean``, ``eval/std`` (and ``eval/confirmation_mean`` when confirmed): each greedy evaluation;
- ``time/steps_per_second``: environment steps per second since the previous write;
- the hyperparameters and run settings, in TensorBoard's HParams tab.

The logs are an optional output: if they cannot be written (a full disk, a read-only or vanished folder),
that is said once on stderr, the logs stop, and training goes on.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from common import write_problem


class TensorBoardLog:
    """Scalars of one run, buffered and written to ``directory`` as TensorBoard event files.

    :param directory: this run's folder (TensorBoard shows each folder under ``--logdir`` as a run).
    :param hyperparameters: name -> value, shown in the HParams tab (tuples are written as text).
    :param first_step: the step the run starts from (a resumed run continues its earlier curves).
    """

    def __init__(self, directory: Path, hyperparameters: dict[str, Any], first_step: int = 0) -> None:
        import tensorflow as tf
        from tensorboard.plugins.hparams import api as hparams_api
        from tensorboard.plugins.scalar import metadata

        self.directory = directory
        self.failure: str | None = None
        self.writer = tf.summary.create_file_writer(str(directory))
        self.tags: list[str] = []
        self.steps: list[int] = []
        self.values: list[float] = []
        self.clock = (first_step, time.perf_counter())
        scalar_metadata = metadata.create_summary_metadata(display_name=None, description=None)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.int64),
                                      tf.TensorSpec([None], tf.float32)])
        def write_rows(tags: tf.Tensor, steps: tf.Tensor, values: tf.Tensor) -> None:
            with self.writer.as_default():
                for i in tf.range(tf.shape(tags)[0]):
                    tf.summary.write(tags[i], values[i], steps[i], metadata=scalar_metadata)

        self._write_rows = write_rows
        write_rows(np.array([], str), np.array([], np.int64), np.array([], np.float32))  # traced now, not mid-run
        with self.writer.as_default():
            hparams_api.hparams({name: value if isinstance(value, bool | int | float | str) else str(value)
                                 for name, value in hyperparameters.items()})

    def scalar(self, tag: str, step: int, value: float) -> None:
        """Add one point to the curve `tag` (written at the next `write`)."""
        self.tags.append(tag)
        self.steps.append(step)
        self.values.append(value)

    def write(self, step: int) -> None:
        """Write every buffered point, and the steps per second since the previous write, to disk.

        :param step: the run's current environment step.
        """
        last_step, last_time = self.clock
        now = time.perf_counter()
        if step > last_step:
            self.scalar("time/steps_per_second", step, (step - last_step) / (now - last_time))
        self.clock = (step, now)
        tags, steps, values = np.array(self.tags), np.array(self.steps, np.int64), np.array(self.values, np.float32)
        self.tags, self.steps, self.values = [], [], []
        if self.failure is None:
            self._guarded(lambda: (self._write_rows(tags, steps, values), self.writer.flush()))

    def close(self) -> None:
        self._guarded(self.writer.close)

    def _guarded(self, write: Callable[[], object]) -> None:
        """Do a write of the event files; if it fails, say so once and stop writing."""
        import tensorflow as tf

        try:
            write()
        except (tf.errors.OpError, OSError) as error:
            if self.failure is None:
                self.failure = write_problem(error)
                print(f"{Path(sys.argv[0]).name}: warning: TensorBoard logs stopped ({self.failure} for "
                      f"{self.directory}); training goes on", file=sys.stderr)
