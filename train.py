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
import itertools
import json
import math
import platform
import shlex
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import gymnasium as gym
import numpy as np

from agent_files import describe, save_agent, weights_path
from checkpoints import (
    Resumed,
    checkpoint_path,
    read_checkpoint_state,
    restore_checkpoint,
    save_checkpoint,
    unfinished_run_note,
)
from common import (
    OneLineErrorParser,
    UserError,
    WriteError,
    atomic_write,
    atomic_write_text,
    ensure_writable_dir,
    evaluate_policy,
    figure_bytes,
    import_agent_class,
    output_lock,
    raise_if_stopped,
    release_free_memory,
    remove_leftover_temporaries,
    run_cli,
    seed_argument,
    stem_file,
    summarize,
    write_problem,
)
from dqn_config import LOSSES, NETWORKS, OPTIMIZERS, PRIORITY_UPDATES, ConfigError, DQNConfig, implied_by_switches
from environments import make_env, reward_threshold
from presets import (
    AGENTS,
    PRESETS_DIR,
    RUN_FIELDS,
    PresetError,
    agent_presets_dir,
    all_presets,
    find_preset,
    read_preset,
)

if TYPE_CHECKING:
    from dqn_agent import DeepQLearning
    from tensorboard_log import TensorBoardLog

# Evaluation episodes start from their own seeds, apart from training's; confirmations and the final
# evaluation use other seeds again, so the score the final evaluation reports is not the one the best
# weights were chosen on.
EVAL_SEED_OFFSET = 100_000
FINAL_EVAL_SEED_OFFSET = 200_000
CONFIRM_SEED_OFFSET = 300_000
# Episodes an evaluation plays side by side, their states one batch through the network (`common.evaluate_policy`)
EVAL_ENVS = 20
# Steps between two calls of `common.release_free_memory`: at most about 100 MB of freed heap held in between
RELEASE_MEMORY_INTERVAL = 2_000


@dataclass
class RunSettings:
    """How long to train, how to evaluate, and where to write; not hyperparameters of the agent.

    `reward_threshold` is the early-stop target: an evaluation that reaches it is confirmed on
    `confirm_episodes` more episodes, and the run stops only if that confirmation's lower confidence bound
    (`lower_confidence_bound`) reaches it too.
    `checkpoint_buffer` puts the replay buffer in each checkpoint, so that a resumed run is bit for bit
    the run never stopped.
    `keep_best` keeps the best evaluated weights; without it, the weights saved are the last evaluated ones (a
    benchmark such as Atari 100k scores the agent as training left it). `eval_epsilon` is the chance of a random
    action in every evaluation (0: greedy). `sticky_actions` is an Atari game's chance of repeating the last
    action instead of the new one (None: the environment's own, 0.25 for ALE v5).
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
    checkpoint_buffer: bool = False
    agent: str = "dqn"
    keep_best: bool = True
    eval_epsilon: float = 0.0
    sticky_actions: float | None = None

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "out": str(self.out)}


@dataclass
class TrainingResult:
    """What a training run did: its history, how it ended, and where its best weights are."""

    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
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


def run_training(agent: DeepQLearning, settings: RunSettings, progress: bool = True,
                 log: TensorBoardLog | None = None, resumed: Resumed | None = None,
                 preset: dict | None = None,
                 on_evaluation: Callable[[int, dict], None] | None = None) -> TrainingResult:
    """The DQN training loop: act, remember, learn, update the target, evaluate, keep the best.

    Saves the best evaluated weights to ``STEM.weights.h5`` as they improve (scored by their
    confirmation where they have one; every evaluated weights without ``settings.keep_best``), and a checkpoint
    to ``STEM.checkpoint.h5`` at every evaluation.
    Stops early once an evaluation reaches ``settings.reward_threshold`` and its confirmation's lower confidence
    bound does too.
    Ctrl-C stops the loop and keeps what it has.

    :param agent: a freshly built agent, or one that `checkpoints.restore_checkpoint` has filled.
    :param settings: the run's environment, length, evaluation and output stem.
    :param progress: show a progress bar on stderr.
    :param log: where to write TensorBoard scalars (default: nowhere).
    :param resumed: the checkpoint to continue from (default: start a new run).
    :param preset: the preset used, as `Command.preset`, kept in the checkpoints for the final record.
    :param on_evaluation: called with the step and the evaluation after each evaluation (`tune.py` reports
        it to Optuna there, and stops a pruned trial by raising).
    """
    from tqdm import tqdm

    config = agent.config
    description = describe(agent, settings.env_id, settings.seed)
    eval_envs = evaluation_envs(settings, max(settings.eval_episodes, settings.confirm_episodes))
    result = TrainingResult()
    env, state = make_env(settings.env_id, sticky_actions=settings.sticky_actions), None
    episode_return, episode_length, learning_starts = 0.0, 0, config.learning_starts
    if resumed is not None:
        result = TrainingResult(**resumed.state["result"])
        if resumed.env is not None:  # the episode in progress, as it was
            env.close()
            env, state = resumed.env, resumed.observation
            episode_return, episode_length = resumed.state["loop"]["episode"]
            lives = resumed.state["loop"].get("lives", 0)  # an Atari game's lives left (older checkpoints: 0)
        learning_starts = resumed.state["loop"]["learning_starts"]
        if not len(agent.replay_buffer):  # no buffer in the checkpoint: refill it before learning again
            learning_starts = result.steps + max(config.learning_starts, config.batch_size)
    if state is None:
        state, info = env.reset(seed=settings.seed + result.steps)
        lives = int(info.get("lives", 0))
    start = time.perf_counter() - result.seconds
    bar = tqdm(total=settings.total_steps, initial=result.steps, unit="step", disable=not progress,
               dynamic_ncols=True, mininterval=0.5)
    last_eval_shown = "-"
    step = result.steps
    checkpoint_step = result.steps if resumed is not None else None  # the last whole checkpoint of this run
    try:
        for step in range(result.steps + 1, settings.total_steps + 1):
            epsilon = agent.epsilon(step)
            action = agent.act(state, epsilon)
            next_state, reward, terminated, truncated, info = env.step(action)
            life_lost = config.terminal_on_life_loss and info.get("lives", lives) < lives
            lives = int(info.get("lives", lives))
            agent.remember(state, action, float(reward), next_state, terminated or life_lost, truncated)
            state = next_state
            episode_return += float(reward)
            episode_length += 1
            if terminated or truncated:
                result.episodes.append({"step": step, "return": episode_return, "length": episode_length,
                                        "epsilon": epsilon})
                if log:
                    log.scalar("episode/return", step, episode_return)
                    log.scalar("episode/length", step, episode_length)
                    log.scalar("episode/epsilon", step, epsilon)
                bar.set_postfix(ret=f"{episode_return:.0f}", eval=last_eval_shown, eps=f"{epsilon:.2f}",
                                refresh=False)
                state, info = env.reset()
                episode_return, episode_length, lives = 0.0, 0, int(info.get("lives", 0))

            if step > learning_starts and step % config.train_frequency == 0 and agent.replay_buffer:
                loss, mean_max_q, mean_weight = agent.training_phase(config.gradient_steps, step / settings.total_steps)
                if log:
                    log.scalar("train/loss", step, loss)
                    log.scalar("train/mean_max_q", step, mean_max_q)
                    if config.prioritized_replay:
                        log.scalar("replay/mean_importance_weight", step, mean_weight)
                if not math.isfinite(loss):
                    result.stop_reason = "loss diverged"
                    result.failure = (f"the loss became {loss} at step {step}: training stopped. Try a lower "
                                      "--learning-rate, or --loss huber")
                    break
            if step % config.target_update_interval == 0:
                agent.update_target_network()
            if step % RELEASE_MEMORY_INTERVAL == 0:
                release_free_memory()  # the memory TensorFlow's freed buffers leave in the C heap

            if step % settings.eval_interval == 0 or step == settings.total_steps:
                eval_start = time.perf_counter()
                evaluation = evaluate_checkpoint(evaluation_policy(agent, settings), eval_envs, settings, step)
                # when it came: the run's seconds so far without its evaluations (score against time; steps/s)
                evaluation["training_seconds"] = round(eval_start - start - result.eval_seconds, 3)
                result.eval_seconds += time.perf_counter() - eval_start
                result.evaluations.append(evaluation)
                last_eval_shown = f"{evaluation['mean']:.0f}"
                score, confirmed = evaluation_score(evaluation)
                # keep the best, so that a later collapse never overwrites it (without keep_best: the last)
                if score > result.best_eval_mean or not settings.keep_best:
                    save_agent(agent, weights_path(settings.out), description)
                    result.best_eval_mean, result.best_eval_step = score, step
                    result.best_eval_confirmed = confirmed
                    result.best_weights_seconds = time.perf_counter() - start
                if reached_target(evaluation, settings.reward_threshold):
                    result.solved_step = step
                    result.stop_reason = (f"solved: evaluation reached {settings.reward_threshold:g}, confirmed over "
                                          f"{settings.confirm_episodes} episodes (mean minus three standard errors)")
                result.steps, result.seconds = step, time.perf_counter() - start
                loop = {"episode": [episode_return, episode_length], "lives": lives, "learning_starts": learning_starts,
                        "tensorboard": log and str(log.directory)}
                save_checkpoint(checkpoint_path(settings.out), agent,
                                {"settings": settings.to_dict(), "config": config.to_dict(), "loop": loop,
                                 "result": dataclasses.asdict(result), "preset": preset},
                                env, state, settings.checkpoint_buffer)
                checkpoint_step = step
                if on_evaluation:
                    on_evaluation(step, evaluation)
                if log:
                    for name in ("mean", "std", "confirmation_mean"):
                        if name in evaluation:
                            log.scalar(f"eval/{name}", step, evaluation[name])
                    if config.prioritized_replay:  # reads every priority: once per evaluation, not per phase
                        log.scalar("replay/max_to_mean_priority", step, agent.memory.priority_spread())
                    if config.distributional and agent.replay_buffer:  # on the latest states stored
                        recent = [t.state for t in itertools.islice(reversed(agent.replay_buffer), 256)]
                        log.scalar("train/distribution_entropy", step, agent.distribution_entropy(np.asarray(
                            recent, agent.observation_dtype)))
                    log.write(step)
                if result.solved_step is not None:
                    break
            bar.update(1)
            raise_if_stopped()  # a Ctrl-C that Python lost in a finalizer still ends the run here
    except KeyboardInterrupt:
        result.stop_reason = "interrupted"
    except WriteError as error:  # a full disk, a read-only or vanished folder: what was written before stays whole
        result.stop_reason = "write failed"
        result.failure = f"{error}; {saved_so_far(settings.out, result, checkpoint_step)}"
    finally:
        bar.close()
        for closing in (env, *eval_envs):
            closing.close()
    result.steps = step
    result.seconds = time.perf_counter() - start
    return result


def saved_so_far(stem: Path, result: TrainingResult, checkpoint_step: int | None) -> str:
    """What a run that stopped on a failed write still has: its best weights and its last checkpoint."""
    kept = []
    if result.weights_saved:
        kept.append(f"the best weights so far (step {result.best_eval_step}) are in {weights_path(stem)}")
    if checkpoint_step is not None:
        kept.append(f"continue from step {checkpoint_step} with: python train.py --resume {shlex.quote(str(stem))}")
    return "; ".join(kept) if kept else "this run had saved nothing yet"


def evaluate_checkpoint(policy: Callable[[np.ndarray], np.ndarray], envs: list[gym.Env], settings: RunSettings,
                        step: int) -> dict:
    """A greedy evaluation of `settings.eval_episodes` episodes; if it reaches the early-stop target, a
    confirmation on `settings.confirm_episodes` more episodes from other starts, because a short
    evaluation that reads 500 can hide a policy that fails one start in ten.

    :param policy: the greedy actions in a batch of states (`evaluation_policy`).
    :param envs: the environments the episodes are played on, side by side (`evaluation_envs`).
    :return: ``step``, ``mean`` and ``std``; if confirmed, ``confirmation_mean``, ``confirmation_std`` and
        ``confirmation_lower_bound`` (see `lower_confidence_bound`).
    """
    returns = evaluate_policy(envs, policy, settings.eval_episodes, settings.seed + EVAL_SEED_OFFSET)
    evaluation = {"step": step, "mean": float(np.mean(returns)), "std": float(np.std(returns))}
    if settings.reward_threshold is not None and evaluation["mean"] >= settings.reward_threshold:
        confirmation = evaluate_policy(envs, policy, settings.confirm_episodes,
                                       settings.seed + CONFIRM_SEED_OFFSET)
        evaluation.update(confirmation_mean=float(np.mean(confirmation)), confirmation_std=float(np.std(confirmation)),
                          confirmation_lower_bound=lower_confidence_bound(confirmation))
    return evaluation


def lower_confidence_bound(returns: np.ndarray) -> float:
    """The mean of `returns` minus three standard errors: the policy's mean return is below it with a chance of
    about 0.13%, so that over the 20 to 40 evaluations of a run the chance that any confirmation passes a policy
    whose true mean is under the target stays under about 5% (Bonferroni's bound), where two standard errors
    (2.3% each) let some runs stop on a lucky confirmation. A confirmation whose mean only grazes the target
    does not clear it: 477 over 100 CartPole episodes with a standard deviation of 80 gives 453."""
    if len(returns) < 2:
        return float(np.mean(returns))
    return float(np.mean(returns) - 3.0 * np.std(returns, ddof=1) / math.sqrt(len(returns)))


def evaluation_score(evaluation: dict) -> tuple[float, bool]:
    """How an evaluation ranks for keeping the best weights: the mean of its confirmation where it has
    one (more episodes, from other starts), else its own mean; and whether it was confirmed."""
    confirmed = "confirmation_mean" in evaluation
    return evaluation["confirmation_mean" if confirmed else "mean"], confirmed


def reached_target(evaluation: dict, threshold: float | None) -> bool:
    """Whether an evaluation ends the run early: the lower confidence bound of its confirmation's mean reached the
    early-stop target, so that the policy's true mean is at the target or above it, not just its sample mean."""
    return threshold is not None and evaluation.get("confirmation_lower_bound", -math.inf) >= threshold


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
    atomic_write_text(stem_file(stem, ".csv"), table.getvalue())

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
    content = figure_bytes(figure, dpi=100)
    plt.close(figure)
    atomic_write(stem_file(stem, ".png"), content)


def library_versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    return {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "gymnasium": gym.__version__, "numpy": np.__version__}


# ------------------------------------------------------------------------------------ the command
CHOICES = {"loss": LOSSES, "optimizer": OPTIMIZERS, "network": NETWORKS, "priority_updates": PRIORITY_UPDATES}


class ListPresets(argparse.Action):
    """``--list-presets``: print every preset and exit, as ``--help`` does."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(f"{'preset file':<28}{'environments':<18}{'steps':>8}  where the numbers come from")
        for preset in [preset for agent in AGENTS for preset in all_presets(agent_presets_dir(agent))]:
            print(f"{'presets/' + preset.path.relative_to(PRESETS_DIR).as_posix():<28}{', '.join(preset.env_ids):<18}"
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
    run.add_argument("--seed", type=seed_argument, default=defaults.seed, help="seed of the whole run")
    run.add_argument("--preset", type=Path, default=None,
                     help="a preset file to use instead of the environment's own (see --list-presets)")
    run.add_argument("--list-presets", action=ListPresets, help="list the presets and exit")
    run.add_argument("--agent", choices=AGENTS, default=defaults.agent,
                     help="; ".join(f"{name}: {doc}" for name, doc in AGENTS.items()) + ". Each agent's preset for "
                     "the environment goes over the environment's own preset")
    for name, doc in (("total_steps", "environment steps at most"),
                      ("eval_interval", "environment steps between two greedy evaluations"),
                      ("eval_episodes", "episodes per greedy evaluation"),
                      ("confirm_episodes", "episodes of the confirmation of an evaluation that reaches the "
                       "early-stop target, on other starts"),
                      ("final_eval_episodes", "episodes of the final evaluation of the saved weights")):
        run.add_argument("--" + name.replace("_", "-"), type=int, default=None,
                         help=f"{doc} (default: the preset's, else {getattr(defaults, name)})")
    run.add_argument("--reward-threshold", type=float, default=None,
                     help="early-stop target: stop once an evaluation's mean return reaches it and its confirmation's "
                     "mean minus three standard errors does too (default: the preset's, else the environment's "
                     "registered threshold, 475 for CartPole-v1)")
    run.add_argument("--no-early-stop", action="store_true", help="train for all --total-steps")
    run.add_argument("--keep-best", action=argparse.BooleanOptionalAction, default=None,
                     help="keep the best evaluated weights; --no-keep-best keeps the last evaluated ones, as a "
                     "benchmark that scores the agent as training left it does (default: the preset's, else keep "
                     "the best)")
    run.add_argument("--eval-epsilon", type=float, default=None,
                     help="chance of a random action in evaluations (default: the preset's, else 0: greedy)")
    run.add_argument("--sticky-actions", type=float, default=None, metavar="P",
                     help="Atari: the chance that the game repeats the previous action instead of the new one "
                     "(default: the preset's, else the game's own: 0.25 for ALE v5)")
    run.add_argument("--out", type=Path, default=None,
                     help="output stem: writes STEM.weights.h5, .json, .csv and .png (default: models/ENV_ID; a "
                     "trailing .weights.h5 is dropped)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--tensorboard", type=Path, default=None, metavar="DIR",
                     help="write TensorBoard logs into a folder of this run under DIR (default: runs/ beside --out; "
                     "see them with `tensorboard --logdir DIR`)")
    run.add_argument("--no-tensorboard", action="store_true", help="write no TensorBoard logs")
    run.add_argument("--checkpoint-buffer", action="store_true", default=None,
                     help="put the replay buffer in each checkpoint, so that --resume continues the run exactly "
                     "(costs time at each evaluation, and disk: see the README)")
    run.add_argument("--resume", type=Path, default=None, metavar="STEM",
                     help="continue the run whose --out was STEM from its last checkpoint, with its own settings: "
                     "--total-steps (to raise it), --no-progress and the TensorBoard flags may be given too, and any "
                     "other flag only with the run's own value. A checkpoint is trusted input: it holds the training "
                     "environment pickled, so resume only your own runs' checkpoints (saved agents, .weights.h5, "
                     "never unpickle anything)")

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


@dataclass
class Command:
    """What `python train.py ...` asks for, checked.

    :param settings: the run settings.
    :param config: the agent's hyperparameters.
    :param preset: the preset used, as the record shows it (name, file, source), or None.
    :param progress: show a progress bar.
    :param tensorboard: the folder under which this run's TensorBoard folder goes, or None for no logs.
    :param resume: the checkpoint to continue from, or None for a new run.
    """

    settings: RunSettings
    config: DQNConfig
    preset: dict | None
    progress: bool
    tensorboard: Path | None
    resume: Path | None = None


# what `--resume` accepts beside itself: the run continues with its own settings otherwise
RESUME_FLAGS = {"resume", "total_steps", "no_progress", "tensorboard", "no_tensorboard"}


def parse_args(argv: list[str] | None) -> Command:
    """Parse and check every flag, and take the environment's preset under them; no TensorFlow is imported yet.

    :raises PresetError: for a preset file that cannot be used.
    :raises UserError: for a checkpoint that cannot be resumed.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume is not None:
        changed = {name: value for name, value in vars(args).items() if value != parser.get_default(name)}
        return resume_command(parser, args.resume, changed, not args.no_progress)
    given = {name: value for name, value in vars(args).items() if value is not None}
    env = make_env(args.env)
    observation_shape = env.observation_space.shape
    env.close()
    preset = read_preset(args.preset) if args.preset is not None else find_preset(args.env)
    if preset is None:
        print(f"train.py: no preset for {args.env}: using the CartPole-v1 defaults (--list-presets shows the "
              "presets)", file=sys.stderr)
    if args.agent != "dqn":
        folder = agent_presets_dir(args.agent)
        agent_preset = find_preset(args.env, folder)
        if agent_preset is None:
            parser.error(f"argument --agent: no {args.agent} preset for {args.env} in presets/{folder.name}/ (it "
                         f"has {', '.join(p for preset in all_presets(folder) for p in preset.env_ids)}); give "
                         "the switches yourself (--help lists them)")
        preset = agent_preset.over(preset)
    config_fields = [f.name for f in dataclasses.fields(DQNConfig)]
    flags = {name: given[name] for name in config_fields if name in given}
    try:
        config = DQNConfig(**{**(preset.config if preset else {}), **implied_by_switches(flags), **flags})
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
    if not 0.0 <= run["eval_epsilon"] <= 1.0:
        parser.error(f"argument --eval-epsilon: must be in [0, 1], got {run['eval_epsilon']}")
    if run["sticky_actions"] is not None:
        try:
            make_env(args.env, sticky_actions=run["sticky_actions"]).close()
        except UserError as error:
            parser.error(f"argument --sticky-actions: {error}")
    if args.no_early_stop:
        run["reward_threshold"] = None
    elif run["reward_threshold"] is None:
        run["reward_threshold"] = reward_threshold(args.env)
    settings = RunSettings(**{**run, "env_id": args.env, "seed": args.seed, "agent": args.agent,
                              "checkpoint_buffer": bool(args.checkpoint_buffer),
                              "out": Path("models") / args.env if args.out is None else
                              args.out.with_name(args.out.name.removesuffix(".weights.h5"))})
    if settings.out.name in ("", ".", "..") or settings.out.is_dir():
        parser.error(f"argument --out: {settings.out} is a folder; give a file stem such as "
                     f"{settings.out / args.env}")
    ensure_writable_dir(settings.out.parent, "--out")
    preset_record = preset and {"name": preset.name, "source": preset.source,
                                "file": f"presets/{preset.path.relative_to(PRESETS_DIR).as_posix()}"
                                if preset.path.is_relative_to(PRESETS_DIR) else str(preset.path)}
    return Command(settings, config, preset_record, not args.no_progress,
                   None if args.no_tensorboard else args.tensorboard or settings.out.parent / "runs")


def resume_command(parser: argparse.ArgumentParser, stem: Path, given: dict, progress: bool) -> Command:
    """The `Command` that continues the run at `stem` from its checkpoint (`--resume STEM`).

    A flag given beside ``--resume`` whose value is the run's own changes nothing and is accepted, so that a
    user can repeat the run's command with ``--resume`` added; one with another value is refused, naming both.

    :param given: the flags given, with their values.
    """
    stem = stem.with_name(stem.name.removesuffix(".weights.h5").removesuffix(".checkpoint.h5"))
    state = read_checkpoint_state(checkpoint_path(stem))
    for name, value in given.items():
        if name in RESUME_FLAGS:
            continue
        own = run_value(name, state, stem)
        if not same_value(name, value, own):
            flag = "--" + name.replace("_", "-")
            parser.error(f"argument {flag}: the run at {stem} has {shown(own)}, not {shown(value)}; --resume "
                         f"continues a run with its own settings: drop {flag}, or start a new run")
    settings = RunSettings(**{**state["settings"], "out": stem})
    step = state["result"]["steps"]
    if state["result"]["solved_step"] is not None:
        raise UserError(f"the run at {stem} ended solved at step {step}: there is nothing to continue")
    settings.total_steps = given.get("total_steps", settings.total_steps)
    if settings.total_steps <= step:
        parser.error(f"argument --total-steps: the run at {stem} is already at step {step}; pass a larger "
                     "--total-steps to continue it")
    tensorboard = given.get("tensorboard")
    if tensorboard is None and "no_tensorboard" not in given and state["loop"]["tensorboard"]:
        tensorboard = Path(state["loop"]["tensorboard"]).parent
    return Command(settings, DQNConfig.from_dict(state["config"]), state.get("preset"), progress, tensorboard,
                   resume=checkpoint_path(stem))


def run_value(name: str, state: dict, stem: Path) -> object:
    """The value that the flag `name` had in the run whose checkpoint `state` is, as the parser gives it."""
    settings = state["settings"]
    if name in state["config"]:
        return state["config"][name]
    if name == "env":
        return settings["env_id"]
    if name == "out":
        return stem
    if name == "no_early_stop":
        return settings["reward_threshold"] is None
    if name == "preset":
        preset = state.get("preset")
        return preset and (PRESETS_DIR.parent / preset["file"] if preset["file"].startswith("presets/")
                           else Path(preset["file"]))
    return settings.get(name, getattr(RunSettings(), name, None))  # a run from before the setting had its default


def same_value(name: str, value: object, own: object) -> bool:
    """Whether a flag's value given with ``--resume`` is the run's own."""
    if name == "out":
        return Path(value).with_name(Path(value).name.removesuffix(".weights.h5")).resolve() == Path(own).resolve()
    if name == "preset":
        return own is not None and Path(value).resolve() == Path(own).resolve()
    if isinstance(value, list | tuple):
        return list(value) == list(own or [])
    return value == own


def shown(value: object) -> str:
    """A flag's value as a user would type it."""
    if isinstance(value, list | tuple):
        return " ".join(map(str, value))
    return "none" if value is None else str(value)


def run_files(stem: Path) -> list[Path]:
    """The files a run writes at `stem`."""
    return [weights_path(stem), checkpoint_path(stem),
            *(stem_file(stem, suffix) for suffix in (".json", ".csv", ".png"))]


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


def evaluation_policy(agent: DeepQLearning, settings: RunSettings) -> Callable[[np.ndarray], np.ndarray]:
    """The policy that evaluations play, on a batch of states: the greedy actions, or with `settings.eval_epsilon`
    each a random one at that rate, drawn from a generator of the evaluation's own (the same draws at every
    evaluation, and none taken from training's)."""
    if not settings.eval_epsilon:
        return agent.greedy_actions
    rng = np.random.default_rng(settings.seed + EVAL_SEED_OFFSET)

    def epsilon_greedy(states: np.ndarray) -> np.ndarray:
        explore = rng.random(len(states)) < settings.eval_epsilon
        return np.where(explore, rng.integers(agent.num_actions, size=len(states)), agent.greedy_actions(states))

    return epsilon_greedy


def evaluation_envs(settings: RunSettings, episodes: int) -> list[gym.Env]:
    """The environments an evaluation of `episodes` episodes plays on side by side (`common.evaluate_policy`): as
    many as it has episodes, up to `EVAL_ENVS`."""
    return [make_env(settings.env_id, sticky_actions=settings.sticky_actions)
            for _ in range(min(episodes, EVAL_ENVS))]


def final_evaluation(agent: DeepQLearning, settings: RunSettings) -> np.ndarray:
    """Reload the saved weights and play ``final_eval_episodes`` episodes (`evaluation_policy`) on fresh seeds."""
    agent.load(weights_path(settings.out))
    envs = evaluation_envs(settings, settings.final_eval_episodes)
    returns = evaluate_policy(envs, evaluation_policy(agent, settings), settings.final_eval_episodes,
                              settings.seed + FINAL_EVAL_SEED_OFFSET)
    for env in envs:
        env.close()
    return returns


def run_record(agent: DeepQLearning, settings: RunSettings, preset: dict | None, result: TrainingResult,
               final_returns: np.ndarray | None, argv: list[str]) -> dict:
    """The ``STEM.json`` record: enough to rebuild the agent, and how the run went."""
    record = {
        **describe(agent, settings.env_id, settings.seed),
        "command": shlex.join(["python", "train.py", *argv]),
        "preset": preset,
        "run": {name: getattr(settings, name) for name in RUN_FIELDS},
        "run_id": result.run_id,
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


def open_log(command: Command, agent: DeepQLearning, resumed: Resumed | None) -> TensorBoardLog | None:
    """The run's TensorBoard log: a new folder under ``command.tensorboard``, or the resumed run's own."""
    if command.tensorboard is None:
        return None
    import tensorflow as tf

    from tensorboard_log import TensorBoardLog

    settings = command.settings
    folder = Path(resumed.state["loop"]["tensorboard"] or "") if resumed else None
    if folder is None or folder.parent != command.tensorboard:
        folder = command.tensorboard / f"{settings.out.name}-seed{settings.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    hyperparameters = {**agent.config.to_dict(), "env_id": settings.env_id, "seed": settings.seed,
                       **{name: getattr(settings, name) for name in RUN_FIELDS}}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return TensorBoardLog(folder, {k: v for k, v in hyperparameters.items() if v is not None},
                              first_step=resumed.state["result"]["steps"] if resumed else 0)
    except (OSError, tf.errors.OpError) as error:
        raise UserError(f"cannot write TensorBoard logs to {folder} ({write_problem(error)}); pass a writable "
                        "--tensorboard DIR, or --no-tensorboard") from error


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = parse_args(argv)
    with output_lock(command.settings.out, "train.py"):  # a second run on this --out is refused while this one runs
        return train(command, argv)


def train(command: Command, argv: list[str]) -> int:
    """Run the command: train, evaluate the kept weights, write the record; the exit status."""
    settings = command.settings
    stem = settings.out
    if command.resume is None and (note := unfinished_run_note(stem)):
        print(f"train.py: {note} (this new run replaces its checkpoint at its first evaluation)", file=sys.stderr)
    if removed := remove_leftover_temporaries(run_files(stem)):
        print(f"train.py: deleted {removed} temporary file(s) that a killed run left beside {stem}", file=sys.stderr)
    agent = build_agent(settings, command.config)
    resumed = restore_checkpoint(command.resume, agent) if command.resume else None
    log = open_log(command, agent, resumed)
    result = run_training(agent, settings, command.progress, log, resumed, command.preset)
    if log:
        log.write(result.steps)
        log.close()
    weights = weights_path(stem)
    interrupted = result.stop_reason == "interrupted"
    resume_hint = f"continue it with: python train.py --resume {shlex.quote(str(stem))}"
    if result.stop_reason == "write failed":
        print(f"train.py: error: {result.failure}", file=sys.stderr)
        return 1
    if not result.weights_saved:
        problem = result.failure or "interrupted"
        print(f"train.py: error: {problem} before the first evaluation: nothing saved", file=sys.stderr)
        return 130 if interrupted else 1
    final_returns = None
    if not interrupted and result.failure is None:
        final_returns = final_evaluation(agent, settings)
    try:
        atomic_write_text(stem_file(stem, ".json"), json.dumps(
            run_record(agent, settings, command.preset, result, final_returns, argv), indent=2) + "\n")
        write_history(stem, result, settings.reward_threshold)
    except WriteError as error:
        print(f"train.py: error: {error}; the best weights (step {result.best_eval_step}) are whole in {weights}",
              file=sys.stderr)
        return 1

    print(f"{settings.env_id}: {result.stop_reason} after {result.steps} steps in {result.seconds:.1f} s "
          f"({result.steps / result.seconds:.0f} steps/s)")
    kept = "best" if settings.keep_best else "last"
    print(f"{kept} evaluation: {result.best_eval_mean:.1f} at step {result.best_eval_step}")
    if final_returns is not None:
        print(f"final evaluation of the saved weights: {summarize(final_returns)}")
    print(f"wrote {weights}, {stem.name}.json, {stem.name}.csv, {stem.name}.png, {stem.name}.checkpoint.h5"
          + (f"; TensorBoard: tensorboard --logdir {command.tensorboard}" if log and not log.failure else ""))
    if result.failure is not None:
        print(f"train.py: error: {result.failure}; the best weights so far are in {weights}", file=sys.stderr)
        return 1
    if interrupted:
        print(f"interrupted: the best weights so far are in {weights}; {resume_hint} (from its last evaluation)",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    run_cli(main)
