"""Stable-Baselines3's DQN with the RL-Zoo's tuned hyperparameters for an environment, trained and scored
under exactly the protocol of ``train.py`` with that environment's preset: the preset's step budget,
evaluation interval and early-stop target, greedy evaluations (and their 100-episode confirmations)
by the same `train.evaluate_checkpoint` on the same episode seeds, the best evaluated weights kept, and a
final 100-episode evaluation of the kept weights. Writes a JSON record with the same keys as train.py's.

    python -m bench.sb3_dqn --env CartPole-v1 --seed 0 --out bench/results/runs/sb3-0.json
    python -m bench.sb3_dqn --env LunarLander-v3 --budget zoo --seed 0 --out /tmp/sb3.json
    python -m bench.sb3_dqn --env MinAtar/Breakout-v1 --algo qrdqn --seed 0 --out /tmp/qrdqn.json

``--algo qrdqn`` runs sb3-contrib's QR-DQN (Dabney et al., 2018: a distributional DQN, 200 quantiles of the
return per action, Q their mean) with the same settings, network and protocol.

A run killed or stopped before its end continues when the same command runs again with ``--resume``. After
each evaluation it writes a checkpoint beside ``--out`` (``OUT.checkpoint.zip``: SB3's saved model with its
optimizer and step count, its replay buffer, the best evaluated weights and the record so far), and deletes it
once the record is written. The continuation is not the run bit for bit, as ``train.py --resume`` is: SB3 saves
neither its random generators nor the episode under way, so the run goes on from a fresh episode.

The Zoo's exploration schedule is kept in environment steps whatever the budget (SB3 states it as a
fraction of the budget). The Zoo has no MinAtar entry: for ``MinAtar/*`` SB3 gets this project's MinAtar
preset, network included (`MinAtarTorso`: one 16-filter 3x3 convolution and 128 units) and the centred
RMSprop of the MinAtar paper, so that the two agents differ only in their implementation.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import io
import json
import time
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np

from common import UserError, atomic_write, atomic_write_text, evaluate_policy, run_cli, stem_file
from environments import make_env, reward_threshold
from presets import find_preset
from train import (
    FINAL_EVAL_SEED_OFFSET,
    RunSettings,
    evaluate_checkpoint,
    evaluation_envs,
    evaluation_score,
    reached_target,
)

# rl-baselines3-zoo, hyperparams/dqn.yml: n_timesteps, and the arguments of stable_baselines3.DQN
_CLASSIC = {"learning_rate": 6.3e-4, "batch_size": 128, "buffer_size": 50_000, "learning_starts": 0, "gamma": 0.99,
            "target_update_interval": 250, "train_freq": 4, "gradient_steps": -1, "exploration_fraction": 0.12,
            "exploration_final_eps": 0.1, "policy_kwargs": {"net_arch": [256, 256]}}
RL_ZOO: dict[str, tuple[int, dict]] = {
    "CartPole-v1": (50_000, {
        "learning_rate": 2.3e-3, "batch_size": 64, "buffer_size": 100_000, "learning_starts": 1000, "gamma": 0.99,
        "target_update_interval": 10, "train_freq": 256, "gradient_steps": 128, "exploration_fraction": 0.16,
        "exploration_final_eps": 0.04, "policy_kwargs": {"net_arch": [256, 256]}}),
    "Acrobot-v1": (100_000, _CLASSIC),
    "LunarLander-v3": (100_000, _CLASSIC),
    "MinAtar/*": (500_000, {
        "learning_rate": 2.5e-4, "batch_size": 32, "buffer_size": 100_000, "learning_starts": 5_000, "gamma": 0.99,
        "target_update_interval": 1_000, "train_freq": 4, "gradient_steps": 4, "exploration_fraction": 0.2,
        "exploration_initial_eps": 1.0, "exploration_final_eps": 0.1}),
    "MountainCar-v0": (120_000, {
        "learning_rate": 4e-3, "batch_size": 128, "buffer_size": 10_000, "learning_starts": 1000, "gamma": 0.98,
        "target_update_interval": 600, "train_freq": 16, "gradient_steps": 8, "exploration_fraction": 0.2,
        "exploration_final_eps": 0.07, "policy_kwargs": {"net_arch": [256, 256]}}),
}


def zoo_entry(env_id: str) -> tuple[int, dict]:
    """The RL_ZOO entry for this environment id (`MinAtar/*` covers every MinAtar game)."""
    return RL_ZOO["MinAtar/*" if env_id.startswith("MinAtar/") else env_id]


def minatar_policy_kwargs() -> dict:
    """SB3 policy arguments for the MinAtar network of `networks.build_q_network` and the MinAtar paper's
    centred RMSprop (SB3 scales uint8 images to [0, 1] and hands them over channel-first)."""
    import torch
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

    class MinAtarTorso(BaseFeaturesExtractor):
        """One 16-filter 3x3 convolution, then 128 ReLU units (Young and Tian, 2019)."""

        def __init__(self, observation_space: object) -> None:
            channels, height, width = observation_space.shape
            super().__init__(observation_space, features_dim=128)
            self.torso = torch.nn.Sequential(
                torch.nn.Conv2d(channels, 16, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                torch.nn.Linear(16 * (height - 2) * (width - 2), 128), torch.nn.ReLU())

        def forward(self, observations: torch.Tensor) -> torch.Tensor:
            return self.torso(observations)

    return {"features_extractor_class": MinAtarTorso, "net_arch": [], "optimizer_class": torch.optim.RMSprop,
            "optimizer_kwargs": {"alpha": 0.95, "eps": 0.01, "centered": True}}


def checkpoint_path(out: Path) -> Path:
    """The checkpoint of the run whose record is `out`: ``OUT.checkpoint.zip`` beside it."""
    return stem_file(out, ".checkpoint.zip")


def write_checkpoint(path: Path, state: dict, members: dict[str, bytes]) -> None:
    """Write a checkpoint in one step (`common.atomic_write`): a zip of ``state.json``, which `checkpoint_state`
    reads alone, and `members`, each a name and its bytes."""
    content = io.BytesIO()
    with zipfile.ZipFile(content, "w") as archive:
        archive.writestr("state.json", json.dumps(state))
        for name, member in members.items():
            archive.writestr(name, member)
    atomic_write(path, content.getbuffer())


def checkpoint_state(path: Path) -> dict | None:
    """The ``state.json`` of the checkpoint at `path` (see `write_checkpoint`); None if there is none.

    :raises UserError: if the file is not a checkpoint.
    """
    if not path.is_file():
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("state.json"))
    except (OSError, zipfile.BadZipFile, KeyError, ValueError) as error:
        raise UserError(f"{path}: not a checkpoint of bench.sb3_dqn ({error}): move it away to start anew") from None


def checkpoint_seconds(out: Path) -> float:
    """The seconds a run whose record is `out` had trained up to its checkpoint (0 without one): what a timing of
    the command that continues it adds."""
    state = checkpoint_state(checkpoint_path(out))
    return 0.0 if state is None else state["seconds"]


def run_identity(args: argparse.Namespace, settings: RunSettings) -> dict:
    """What a checkpoint must share with the command that goes on from it."""
    return {"env_id": settings.env_id, "seed": settings.seed, "algo": args.algo, "n_steps": args.n_steps,
            "total_steps": settings.total_steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="CartPole-v1", help=f"one of {', '.join(sorted(RL_ZOO))}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", choices=["preset", "zoo"], default="preset",
                        help="steps at most: the preset's, as this project's agent gets, or the Zoo's n_timesteps")
    parser.add_argument("--total-steps", type=int, default=None, help="steps at most, overriding --budget")
    parser.add_argument("--out", type=Path, required=True, help="the JSON record to write")
    parser.add_argument("--n-steps", type=int, default=1, help="SB3's own n-step returns (SB3 2.7 and later)")
    parser.add_argument("--algo", choices=["dqn", "qrdqn"], default="dqn", help="SB3's DQN, or sb3-contrib's "
                        "QR-DQN (distributional: quantiles of the return)")
    parser.add_argument("--resume", action="store_true", help="go on from the checkpoint beside --out, if a run "
                        "left one (killed or stopped before its end); without it the run starts anew")
    args = parser.parse_args()
    if not (args.env in RL_ZOO or args.env.startswith("MinAtar/")):
        parser.error(f"--env: no RL-Zoo entry for {args.env}")

    zoo_steps, hyperparameters = zoo_entry(args.env)
    preset = find_preset(args.env)
    run = {**dataclasses.asdict(RunSettings()), **preset.run}
    if args.budget == "zoo":
        run["total_steps"] = zoo_steps
    if args.total_steps is not None:
        run["total_steps"] = args.total_steps
    if run["reward_threshold"] is None:
        run["reward_threshold"] = reward_threshold(args.env)
    settings = RunSettings(**{**run, "env_id": args.env, "seed": args.seed})
    hyperparameters = {**hyperparameters, "exploration_fraction":
                       hyperparameters["exploration_fraction"] * zoo_steps / settings.total_steps}
    if args.n_steps != 1:
        hyperparameters = {**hyperparameters, "n_steps": args.n_steps}
    checkpoint = checkpoint_path(args.out)
    state = checkpoint_state(checkpoint) if args.resume else None
    if state is not None and state["run"] != run_identity(args, settings):
        raise UserError(f"{checkpoint}: the checkpoint of another run ({state['run']}): move it away to run this one")

    import torch

    torch.set_num_threads(1)  # one core, as the two agents share a 2-core machine when benched side by side
    env, eval_envs = make_env(settings.env_id), evaluation_envs(settings, settings.final_eval_episodes)
    try:
        train_and_record(args, settings, hyperparameters, env, eval_envs, checkpoint, state)
    finally:
        for each in (env, *eval_envs):
            each.close()


def train_and_record(args: argparse.Namespace, settings: RunSettings, hyperparameters: dict, env: gym.Env,
                     eval_envs: list[gym.Env], checkpoint: Path, state: dict | None) -> None:
    """Train SB3's agent under the protocol, anew or from its checkpoint, and write its record to ``args.out``.

    :param hyperparameters: the agent's arguments (the RL-Zoo's, its exploration in env steps).
    :param env: the environment it learns on; `eval_envs`, the ones its evaluations play on.
    :param checkpoint: where this run's checkpoint is written (`checkpoint_path`), and read when `state` is given.
    :param state: that checkpoint's state (`checkpoint_state`) to go on from it, or None to start anew.
    """
    import torch
    from stable_baselines3 import DQN
    from stable_baselines3.common.callbacks import BaseCallback

    images = len(env.observation_space.shape) == 3
    if images:
        hyperparameters = {**hyperparameters, "policy_kwargs": minatar_policy_kwargs(), "optimize_memory_usage": False}
    if args.algo == "qrdqn":
        from sb3_contrib import QRDQN as Algorithm
    else:
        Algorithm = DQN
    agent_name = "sb3-contrib QR-DQN" if args.algo == "qrdqn" else "stable-baselines3 DQN"
    record = {"env_id": settings.env_id, "seed": settings.seed, "agent": f"{agent_name} (RL-Zoo)",
              "hyperparameters": hyperparameters, "run": dataclasses.asdict(settings) | {"out": None},
              "evaluations": [], "solved_step": None, "eval_seconds": 0.0,
              "best_eval": {"step": None, "mean": -np.inf, "seconds": None}}
    best_policy: dict = {}
    if state is None:
        model = Algorithm("CnnPolicy" if images else "MlpPolicy", env, seed=settings.seed, device="cpu", verbose=0,
                          **hyperparameters)
    else:
        with zipfile.ZipFile(checkpoint) as archive:
            model = Algorithm.load(io.BytesIO(archive.read("model.zip")), env=env, device="cpu",
                                   custom_objects={"policy_kwargs": hyperparameters.get("policy_kwargs", {})})
            model.load_replay_buffer(io.BytesIO(archive.read("replay_buffer.pkl")))
            best_policy["state"] = torch.load(io.BytesIO(archive.read("best_policy.pt")))
        record.update(state["progress"])
    earlier_seconds, start = 0.0 if state is None else state["seconds"], time.perf_counter()

    def seconds() -> float:
        """The run's seconds so far, its earlier commands' included."""
        return earlier_seconds + time.perf_counter() - start

    def save_checkpoint() -> None:
        """The model (optimizer and step count included), its replay buffer, the best weights and the record's
        evaluations so far, in `checkpoint`."""
        model_file, buffer_file, best_file = io.BytesIO(), io.BytesIO(), io.BytesIO()
        model.save(model_file)
        model.save_replay_buffer(buffer_file)
        torch.save(best_policy["state"], best_file)
        progress = {key: record[key] for key in ("evaluations", "eval_seconds", "best_eval")}
        write_checkpoint(checkpoint, {"run": run_identity(args, settings), "steps": int(model.num_timesteps),
                                      "seconds": seconds(), "progress": progress},
                         {"model.zip": model_file.getvalue(), "replay_buffer.pkl": buffer_file.getvalue(),
                          "best_policy.pt": best_file.getvalue()})

    def greedy(states: np.ndarray) -> np.ndarray:
        """The greedy actions in a batch of states from the Q-network's forward pass, as this project's agent
        evaluates (model.predict costs milliseconds a call and would make SB3's evaluations, not its learning, the
        bench's measure); QR-DQN's Q-values are its quantiles' means."""
        with torch.no_grad():
            if images:  # SB3's own preprocessing: channel-first, then scaled by the features extractor
                observations = model.policy.obs_to_tensor(states)[0]
            else:
                observations = torch.as_tensor(states, dtype=torch.float32)
            if args.algo == "qrdqn":
                return model.quantile_net(observations).mean(dim=1).argmax(dim=1).numpy()
            return model.q_net(observations).argmax(dim=1).numpy()

    class Protocol(BaseCallback):
        """Evaluate every eval_interval steps, keep the best policy, stop at a confirmed early-stop target; after
        an evaluation, write a checkpoint at the start of the next rollout, when SB3 has stored the step and
        trained on it."""

        checkpoint_due = False

        def _on_step(self) -> bool:
            step = self.num_timesteps
            if step % settings.eval_interval and step != settings.total_steps:
                return True
            eval_start = time.perf_counter()
            evaluation = evaluate_checkpoint(greedy, eval_envs, settings, step)
            record["eval_seconds"] += time.perf_counter() - eval_start
            record["evaluations"].append(evaluation)
            score, confirmed = evaluation_score(evaluation)
            if score > record["best_eval"]["mean"]:
                best_policy["state"] = copy.deepcopy(model.policy.state_dict())
                record["best_eval"] = {"step": step, "mean": score, "confirmed": confirmed,
                                       "seconds": round(seconds(), 2)}
            if reached_target(evaluation, settings.reward_threshold):
                record["solved_step"] = step
                return False
            self.checkpoint_due = step < settings.total_steps
            return True

        def _on_rollout_start(self) -> None:
            if self.checkpoint_due:
                save_checkpoint()
                self.checkpoint_due = False

    model.learn(total_timesteps=settings.total_steps - model.num_timesteps, callback=Protocol(),
                reset_num_timesteps=state is None)
    record["steps"] = int(model.num_timesteps)
    record["seconds"] = round(seconds(), 2)
    record["eval_seconds"] = round(record["eval_seconds"], 2)
    model.policy.load_state_dict(best_policy["state"])
    returns = evaluate_policy(eval_envs, greedy, settings.final_eval_episodes, settings.seed + FINAL_EVAL_SEED_OFFSET)
    record["final_evaluation"] = {"episodes": len(returns), "mean": float(np.mean(returns)),
                                  "std": float(np.std(returns))}
    record["versions"] = {"stable_baselines3": __import__("stable_baselines3").__version__,
                          "torch": torch.__version__}
    if args.algo == "qrdqn":
        record["versions"]["sb3_contrib"] = __import__("sb3_contrib").__version__
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(record, indent=2, default=str) + "\n")
    checkpoint.unlink(missing_ok=True)


if __name__ == "__main__":
    run_cli(lambda _: main() or 0)  # a failed write of the results: one line, exit 1
