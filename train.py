"""Train a DQN agent on a Gymnasium environment and save its best evaluated weights.

    python train.py                        # CartPole-v1, tuned defaults, files under models/
    python train.py --env Acrobot-v1 --total-steps 100000 --seed 3
    python train.py --help                 # every flag, one per hyperparameter

For ``--out STEM`` (default ``models/<ENV_ID>``) it writes ``STEM.weights.h5`` (the best evaluated
weights), ``STEM.json`` (everything needed to rebuild the agent, and the final evaluation),
``STEM.csv`` (one row per episode and per evaluation) and ``STEM.png`` (the training curve).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import platform
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import gymnasium as gym
import numpy as np

from agent_files import describe, save_agent, weights_path
from common import (
    OneLineErrorParser,
    atomic_write,
    atomic_write_text,
    ensure_writable_dir,
    evaluate_policy,
    import_agent_class,
    run_cli,
    summarize,
)
from dqn_config import LOSSES, NETWORKS, OPTIMIZERS, ConfigError, DQNConfig
from environments import make_env, reward_threshold
from presets import PRESETS_DIR, RUN_FIELDS, Preset, PresetError, all_presets, find_preset, read_preset

if TYPE_CHECKING:
    from dqn_agent import DeepQLearning

# Evaluation episodes start from their own seeds, apart from training's; confirmations and the final
# evaluation use other seeds again, so the score the final evaluation reports is not the one the best
# weights were chosen on.
EVAL_SEED_OFFSET = 100_000
FINAL_EVAL_SEED_OFFSET = 200_000
CONFIRM_SEED_OFFSET = 300_000


@dataclass
class RunSettings:
    """How long to train, how to evaluate, and where to write; not hyperparameters of the agent.

    `reward_threshold` is the early-stop target: an evaluation that reaches it is confirmed on
    `confirm_episodes` more episodes, and the run stops only if that confirmation reaches it too.
    """

    env_id: str = "CartPole-v1"
    seed: int = 0
    total_steps: int = 50_000
    eval_interval: int = 2_500
    eval_episodes: int = 20
    final_eval_episodes: int = 100
    confirm_episodes: int = 100
    reward_threshold: float | None = None
    out: Path = Path("models/CartPole-v1")


@dataclass
class TrainingResult:
    """What a training run did: its history, how it ended, and where its best weights are."""

    steps: int = 0
    seconds: float = 0.0
    episodes: list[dict] = field(default_factory=list)
    evaluations: list[dict] = field(default_factory=list)
    best_eval_mean: float = -math.inf
    best_eval_confirmed: bool = False
    best_eval_step: int | None = None
    best_weights_seconds: float | None = None
    eval_seconds: float = 0.0
    solved_step: int | None = None
    stop_reason: str = "total steps reached"
    failure: str | None = None

    @property
    def weights_saved(self) -> bool:
        return self.best_eval_step is not None


def run_training(agent: DeepQLearning, settings: RunSettings, progress: bool = True) -> TrainingResult:
    """The DQN training loop: act, remember, learn, update the target, evaluate, keep the best.

    Saves the best evaluated weights to ``STEM.weights.h5`` as they improve (scored by their
    confirmation where they have one), and stops early once an evaluation reaches
    ``settings.reward_threshold`` and its confirmation does too. Ctrl-C stops the loop and keeps what it has.

    :param agent: a freshly built agent.
    :param settings: the run's environment, length, evaluation and output stem.
    :param progress: show a progress bar on stderr.
    """
    from tqdm import tqdm

    config = agent.config
    description = describe(agent, settings.env_id, settings.seed)
    env, eval_env = make_env(settings.env_id), make_env(settings.env_id)
    result = TrainingResult()
    start = time.perf_counter()
    bar = tqdm(total=settings.total_steps, unit="step", disable=not progress, dynamic_ncols=True,
               mininterval=0.5)
    state, _ = env.reset(seed=settings.seed)
    episode_return, episode_length = 0.0, 0
    last_eval_shown = "-"
    step = 0
    try:
        for step in range(1, settings.total_steps + 1):
            epsilon = agent.epsilon(step)
            action = agent.act(state, epsilon)
            next_state, reward, terminated, truncated, _ = env.step(action)
            agent.remember(state, action, float(reward), next_state, terminated)
            state = next_state
            episode_return += float(reward)
            episode_length += 1
            if terminated or truncated:
                result.episodes.append({"step": step, "return": episode_return, "length": episode_length,
                                        "epsilon": epsilon})
                bar.set_postfix(ret=f"{episode_return:.0f}", eval=last_eval_shown, eps=f"{epsilon:.2f}",
                                refresh=False)
                state, _ = env.reset()
                episode_return, episode_length = 0.0, 0

            if step > config.learning_starts and step % config.train_frequency == 0:
                loss = agent.training_phase(config.gradient_steps)
                if not math.isfinite(loss):
                    result.stop_reason = "loss diverged"
                    result.failure = (f"the loss became {loss} at step {step}: training stopped. Try a lower "
                                      "--learning-rate, or --loss huber")
                    break
            if step % config.target_update_interval == 0:
                agent.update_target_network()

            if step % settings.eval_interval == 0 or step == settings.total_steps:
                eval_start = time.perf_counter()
                evaluation = evaluate_checkpoint(agent.greedy_action, eval_env, settings, step)
                result.eval_seconds += time.perf_counter() - eval_start
                result.evaluations.append(evaluation)
                last_eval_shown = f"{evaluation['mean']:.0f}"
                confirmed = "confirmation_mean" in evaluation
                score = evaluation["confirmation_mean"] if confirmed else evaluation["mean"]
                if score > result.best_eval_mean:  # keep the best: a later collapse never overwrites it
                    save_agent(agent, weights_path(settings.out), description)
                    result.best_eval_mean, result.best_eval_step = score, step
                    result.best_eval_confirmed = confirmed
                    result.best_weights_seconds = time.perf_counter() - start
                if confirmed and score >= settings.reward_threshold:
                    result.solved_step = step
                    result.stop_reason = (f"solved: evaluation reached {settings.reward_threshold:g}, confirmed over "
                                          f"{settings.confirm_episodes} episodes")
                    break
            bar.update(1)
    except KeyboardInterrupt:
        result.stop_reason = "interrupted"
    finally:
        bar.close()
        env.close()
        eval_env.close()
    result.steps = step
    result.seconds = time.perf_counter() - start
    return result


def evaluate_checkpoint(policy: Callable[[np.ndarray], int], env: gym.Env, settings: RunSettings, step: int) -> dict:
    """A greedy evaluation of `settings.eval_episodes` episodes; if it reaches the early-stop target, a
    confirmation on `settings.confirm_episodes` more episodes from other starts, because a short
    evaluation that reads 500 can hide a policy that fails one start in ten.

    :param policy: the greedy action in a state (e.g. ``agent.greedy_action``).
    :return: ``step``, ``mean`` and ``std``, and ``confirmation_mean`` and ``confirmation_std`` if confirmed.
    """
    returns = evaluate_policy(env, policy, settings.eval_episodes, settings.seed + EVAL_SEED_OFFSET)
    evaluation = {"step": step, "mean": float(np.mean(returns)), "std": float(np.std(returns))}
    if settings.reward_threshold is not None and evaluation["mean"] >= settings.reward_threshold:
        confirmation = evaluate_policy(env, policy, settings.confirm_episodes,
                                       settings.seed + CONFIRM_SEED_OFFSET)
        evaluation.update(confirmation_mean=float(np.mean(confirmation)), confirmation_std=float(np.std(confirmation)))
    return evaluation


def write_history(stem: Path, result: TrainingResult, threshold: float | None) -> None:
    """``STEM.csv`` (episodes and evaluations) and ``STEM.png`` (the training curve)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["kind", "step", "return", "return_std", "episode_length", "epsilon"])
    for row in sorted([("episode", e["step"], e["return"], "", e["length"], round(e["epsilon"], 4))
                       for e in result.episodes]
                      + [("evaluation", e["step"], e["mean"], e["std"], "", 0.0) for e in result.evaluations]
                      + [("confirmation", e["step"], e["confirmation_mean"], e["confirmation_std"], "", 0.0)
                         for e in result.evaluations if "confirmation_mean" in e],
                      key=lambda row: row[1]):
        writer.writerow(row)
    atomic_write_text(stem.with_name(stem.name + ".csv"), table.getvalue())

    figure, axes = plt.subplots(figsize=(8, 4.5))
    if result.episodes:
        steps = np.array([e["step"] for e in result.episodes])
        returns = np.array([e["return"] for e in result.episodes])
        window = min(20, len(returns))
        smoothed = np.convolve(returns, np.ones(window) / window, mode="valid")
        axes.plot(steps, returns, color="tab:blue", alpha=0.25, linewidth=0.8, label="episode return")
        axes.plot(steps[window - 1:], smoothed, color="tab:blue", label=f"mean of last {window} episodes")
    if result.evaluations:
        axes.errorbar([e["step"] for e in result.evaluations], [e["mean"] for e in result.evaluations],
                      yerr=[e["std"] for e in result.evaluations], color="tab:orange", marker="o", capsize=3,
                      label="greedy evaluation (mean ± std)")
        confirmations = [e for e in result.evaluations if "confirmation_mean" in e]
        if confirmations:
            axes.plot([e["step"] for e in confirmations], [e["confirmation_mean"] for e in confirmations], "D",
                      color="tab:red", label="confirmation on other starts")
    if threshold is not None:
        axes.axhline(threshold, color="tab:green", linestyle="--", label=f"solved ({threshold:g})")
    axes.set(xlabel="environment step", ylabel="return", title=stem.name)
    axes.legend(loc="best")
    figure.tight_layout()
    atomic_write(stem.with_name(stem.name + ".png"), lambda temporary: figure.savefig(temporary, dpi=100))
    plt.close(figure)


def library_versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    return {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "gymnasium": gym.__version__, "numpy": np.__version__}


# ------------------------------------------------------------------------------------ the command
CHOICES = {"loss": LOSSES, "optimizer": OPTIMIZERS, "network": NETWORKS}


class ListPresets(argparse.Action):
    """``--list-presets``: print every preset and exit, as ``--help`` does."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(f"{'preset file':<28}{'environments':<18}{'steps':>8}  where the numbers come from")
        for preset in all_presets():
            print(f"{'presets/' + preset.path.name:<28}{', '.join(preset.env_ids):<18}"
                  f"{preset.run.get('total_steps', ''):>8}  {preset.source.get('from', '')}")
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    """Run flags, then one flag per field of DQNConfig, its help taken from the field's doc.

    Every flag a preset can set defaults to None, so that only the flags given on the command line
    override the preset; the help shows the value used when neither says otherwise.
    """
    parser = OneLineErrorParser(description="Train a DQN agent and save its best evaluated weights. The "
                                "environment's preset (presets/*.toml) sets its steps and hyperparameters; a flag "
                                "given here overrides that one value.")
    defaults = RunSettings()
    run = parser.add_argument_group("run")
    run.add_argument("--env", default=defaults.env_id, help="Gymnasium environment id (vector observation, "
                     "discrete actions)")
    run.add_argument("--seed", type=int, default=defaults.seed, help="seed of the whole run")
    run.add_argument("--preset", type=Path, default=None,
                     help="a preset file to use instead of the environment's own (see --list-presets)")
    run.add_argument("--list-presets", action=ListPresets, help="list the presets and exit")
    for name, doc in (("total_steps", "environment steps at most"),
                      ("eval_interval", "environment steps between two greedy evaluations"),
                      ("eval_episodes", "episodes per greedy evaluation"),
                      ("confirm_episodes", "episodes of the confirmation of an evaluation that reaches the "
                       "early-stop target, on other starts"),
                      ("final_eval_episodes", "episodes of the final evaluation of the saved weights")):
        run.add_argument("--" + name.replace("_", "-"), type=int, default=None,
                         help=f"{doc} (default: the preset's, else {getattr(defaults, name)})")
    run.add_argument("--reward-threshold", type=float, default=None,
                     help="early-stop target: stop once an evaluation's mean return reaches it and its confirmation "
                     "does too (default: the preset's, else the environment's registered threshold, 475 for "
                     "CartPole-v1)")
    run.add_argument("--no-early-stop", action="store_true", help="train for all --total-steps")
    run.add_argument("--out", type=Path, default=None,
                     help="output stem: writes STEM.weights.h5, .json, .csv and .png (default: models/ENV_ID; a "
                     "trailing .weights.h5 is dropped)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")

    hyper = parser.add_argument_group("hyperparameters (DQNConfig; default: the preset's, else the value shown)")
    for config_field in dataclasses.fields(DQNConfig):
        flag = "--" + config_field.name.replace("_", "-")
        default = config_field.default
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        doc = f"{config_field.metadata['doc']} ({shown})"
        if config_field.type == "bool":
            hyper.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=doc)
        elif config_field.name == "hidden_sizes":
            hyper.add_argument(flag, type=int, nargs="+", metavar="UNITS", default=None, help=doc)
        elif config_field.name in CHOICES:
            hyper.add_argument(flag, choices=CHOICES[config_field.name], default=None, help=doc)
        else:
            hyper.add_argument(flag, type=type(default), default=None, help=doc)
    return parser


def parse_args(argv: list[str] | None) -> tuple[RunSettings, DQNConfig, Preset | None, bool]:
    """Parse and check every flag, and take the environment's preset under them; no TensorFlow is imported yet.

    :return: the run settings, the agent's configuration, the preset used, and whether to show a progress bar.
    :raises PresetError: for a preset file that cannot be used.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    given = {name: value for name, value in vars(args).items() if value is not None}
    env = make_env(args.env)
    observation_shape = env.observation_space.shape
    env.close()
    preset = read_preset(args.preset) if args.preset is not None else find_preset(args.env)
    if preset is None:
        print(f"train.py: no preset for {args.env}: using the CartPole-v1 defaults (--list-presets shows the "
              "presets)", file=sys.stderr)
    config_fields = [f.name for f in dataclasses.fields(DQNConfig)]
    try:
        config = DQNConfig(**{**(preset.config if preset else {}),
                              **{name: given[name] for name in config_fields if name in given}})
        config.network_for(observation_shape)
    except ConfigError as error:
        if error.name not in given and preset is not None:
            raise PresetError(preset.path, f"config.{error.name}", error.problem) from error
        parser.error(f"argument --{error.name.replace('_', '-')}: {error.problem}")
    run = {**dataclasses.asdict(RunSettings()), **(preset.run if preset else {}),
           **{name: given[name] for name in RUN_FIELDS if name in given}}
    for name in ("total_steps", "eval_interval", "eval_episodes", "confirm_episodes", "final_eval_episodes"):
        if run[name] <= 0:
            parser.error(f"argument --{name.replace('_', '-')}: must be positive, got {run[name]}")
    if args.no_early_stop:
        run["reward_threshold"] = None
    elif run["reward_threshold"] is None:
        run["reward_threshold"] = reward_threshold(args.env)
    settings = RunSettings(**{**run, "env_id": args.env, "seed": args.seed,
                              "out": Path("models") / args.env if args.out is None else
                              args.out.with_name(args.out.name.removesuffix(".weights.h5"))})
    if settings.out.name in ("", ".", "..") or settings.out.is_dir():
        parser.error(f"argument --out: {settings.out} is a folder; give a file stem such as "
                     f"{settings.out / args.env}")
    ensure_writable_dir(settings.out.parent, "--out")
    return settings, config, preset, not args.no_progress


def build_agent(settings: RunSettings, config: DQNConfig) -> DeepQLearning:
    """Seed everything, then build the agent for the environment's observation and action sizes."""
    agent_class = import_agent_class()
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(settings.seed)  # Python, NumPy and TensorFlow: same seed, same run
    tf.config.experimental.enable_op_determinism()
    env = make_env(settings.env_id)
    agent = agent_class(env.observation_space.shape, int(env.action_space.n), config, seed=settings.seed)
    env.close()
    return agent


def final_evaluation(agent: DeepQLearning, settings: RunSettings) -> np.ndarray:
    """Reload the saved best weights and play ``final_eval_episodes`` greedy episodes on fresh seeds."""
    agent.load(weights_path(settings.out))
    env = make_env(settings.env_id)
    returns = evaluate_policy(env, agent.greedy_action, settings.final_eval_episodes,
                              settings.seed + FINAL_EVAL_SEED_OFFSET)
    env.close()
    return returns


def run_record(agent: DeepQLearning, settings: RunSettings, preset: Preset | None, result: TrainingResult,
               final_returns: np.ndarray | None, argv: list[str]) -> dict:
    """The ``STEM.json`` record: enough to rebuild the agent, and how the run went."""
    record = {
        **describe(agent, settings.env_id, settings.seed),
        "command": shlex.join(["python", "train.py", *argv]),
        "preset": preset and {"name": preset.name, "file": f"presets/{preset.path.name}"
                              if preset.path.parent == PRESETS_DIR else str(preset.path), "source": preset.source},
        "run": {name: getattr(settings, name) for name in RUN_FIELDS},
        "steps": result.steps,
        "seconds": round(result.seconds, 2),
        "eval_seconds": round(result.eval_seconds, 2),
        "stop_reason": result.stop_reason,
        "best_eval": {"step": result.best_eval_step, "mean": result.best_eval_mean,
                      "confirmed": result.best_eval_confirmed,
                      "seconds": result.best_weights_seconds and round(result.best_weights_seconds, 2)},
        "solved_step": result.solved_step,
        "evaluations": result.evaluations,
        "versions": library_versions(),
    }
    if final_returns is not None:
        record["final_evaluation"] = {"episodes": len(final_returns), "mean": float(np.mean(final_returns)),
                                      "std": float(np.std(final_returns)), "min": float(np.min(final_returns)),
                                      "max": float(np.max(final_returns))}
    return record


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    settings, config, preset, progress = parse_args(argv)
    agent = build_agent(settings, config)
    result = run_training(agent, settings, progress=progress)
    stem, weights = settings.out, weights_path(settings.out)
    interrupted = result.stop_reason == "interrupted"
    if not result.weights_saved:
        problem = result.failure or "interrupted"
        print(f"train.py: error: {problem} before the first evaluation: nothing saved", file=sys.stderr)
        return 130 if interrupted else 1
    final_returns = None
    if not interrupted and result.failure is None:
        final_returns = final_evaluation(agent, settings)
    atomic_write_text(stem.with_name(stem.name + ".json"),
                      json.dumps(run_record(agent, settings, preset, result, final_returns, argv), indent=2) + "\n")
    write_history(stem, result, settings.reward_threshold)

    print(f"{settings.env_id}: {result.stop_reason} after {result.steps} steps in {result.seconds:.1f} s "
          f"({result.steps / result.seconds:.0f} steps/s)")
    print(f"best evaluation: {result.best_eval_mean:.1f} at step {result.best_eval_step}")
    if final_returns is not None:
        print(f"final evaluation of the saved weights: {summarize(final_returns)}")
    print(f"wrote {weights}, {stem.name}.json, {stem.name}.csv, {stem.name}.png")
    if result.failure is not None:
        print(f"train.py: error: {result.failure}; the best weights so far are in {weights}", file=sys.stderr)
        return 1
    if interrupted:
        print(f"interrupted: the best weights so far are in {weights}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    run_cli(main)
