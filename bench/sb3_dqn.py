"""Stable-Baselines3's DQN with the RL-Zoo's tuned CartPole-v1 hyperparameters, trained and scored under
exactly the protocol of ``train.py``: greedy evaluations by the same `common.evaluate_policy` on the
same episode seeds, the best evaluated weights kept, early stop at the reward threshold, and a final
100-episode evaluation of the kept weights. Writes a JSON record with the same keys as train.py's.

    python -m bench.sb3_dqn --seed 0 --out bench/results/runs/sb3-0.json
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np

from common import evaluate_policy, make_env, reward_threshold
from train import EVAL_SEED_OFFSET, FINAL_EVAL_SEED_OFFSET, RunSettings

# rl-baselines3-zoo, hyperparams/dqn.yml, CartPole-v1
RL_ZOO_CARTPOLE = {
    "learning_rate": 2.3e-3, "batch_size": 64, "buffer_size": 100_000, "learning_starts": 1000, "gamma": 0.99,
    "target_update_interval": 10, "train_freq": 256, "gradient_steps": 128, "exploration_fraction": 0.16,
    "exploration_final_eps": 0.04, "policy_kwargs": {"net_arch": [256, 256]},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="the JSON record to write")
    args = parser.parse_args()

    import torch
    from stable_baselines3 import DQN
    from stable_baselines3.common.callbacks import BaseCallback

    settings = RunSettings(seed=args.seed, reward_threshold=reward_threshold(RunSettings.env_id))
    env, eval_env = make_env(settings.env_id), make_env(settings.env_id)
    model = DQN("MlpPolicy", env, seed=settings.seed, device="cpu", verbose=0, **RL_ZOO_CARTPOLE)

    def greedy(state: np.ndarray) -> int:
        return int(model.predict(state, deterministic=True)[0])

    record = {"env_id": settings.env_id, "seed": settings.seed, "agent": "stable-baselines3 DQN (RL-Zoo)",
              "evaluations": [], "solved_step": None, "eval_seconds": 0.0,
              "best_eval": {"step": None, "mean": -np.inf, "seconds": None}}
    best_policy: dict = {}
    start = time.perf_counter()

    class Protocol(BaseCallback):
        """Evaluate every eval_interval steps, keep the best policy, stop at the threshold."""

        def _on_step(self) -> bool:
            step = self.num_timesteps
            if step % settings.eval_interval and step != settings.total_steps:
                return True
            eval_start = time.perf_counter()
            returns = evaluate_policy(eval_env, greedy, settings.eval_episodes, settings.seed + EVAL_SEED_OFFSET)
            record["eval_seconds"] += time.perf_counter() - eval_start
            mean = float(np.mean(returns))
            record["evaluations"].append({"step": step, "mean": mean, "std": float(np.std(returns))})
            if mean > record["best_eval"]["mean"]:
                best_policy["state"] = copy.deepcopy(model.policy.state_dict())
                record["best_eval"] = {"step": step, "mean": mean, "seconds": round(time.perf_counter() - start, 2)}
            if mean >= settings.reward_threshold:
                record["solved_step"] = step
                return False
            return True

    model.learn(total_timesteps=settings.total_steps, callback=Protocol())
    record["steps"] = int(model.num_timesteps)
    record["seconds"] = round(time.perf_counter() - start, 2)
    record["eval_seconds"] = round(record["eval_seconds"], 2)
    model.policy.load_state_dict(best_policy["state"])
    returns = evaluate_policy(eval_env, greedy, settings.final_eval_episodes, settings.seed + FINAL_EVAL_SEED_OFFSET)
    record["final_evaluation"] = {"episodes": len(returns), "mean": float(np.mean(returns)),
                                  "std": float(np.std(returns))}
    record["versions"] = {"stable_baselines3": __import__("stable_baselines3").__version__,
                          "torch": torch.__version__}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
