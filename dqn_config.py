"""The hyperparameters of Deep Q-Learning, in one documented dataclass.

This module imports no TensorFlow, so that `train.py` can check every flag and answer a bad one
in a fraction of a second, before paying the several seconds that importing TensorFlow costs.
The defaults are CartPole-v1's tuned settings (found by `tune.py` from the RL-Zoo's), as plain DQN with
Double DQN on and every other extension off: the worked example. The CartPole-v1 preset adds 3-step
returns on top, which solve it in half the steps (``presets/CartPole-v1.toml``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

LOSSES = ("mse", "huber", "cross_entropy")
OPTIMIZERS = ("adam", "rmsprop")
NETWORKS = ("auto", "mlp", "nature_cnn", "minatar_cnn")
PRIORITY_UPDATES = ("step", "phase")
NATURE_CNN_MIN_SIZE = 36  # the Nature torso's 8x8/4, 4x4/2 and 3x3/1 convolutions leave 1x1 of a 36x36 image


class ConfigError(ValueError):
    """A hyperparameter with a value the algorithm cannot use.

    :param name: the field of :class:`DQNConfig` that is wrong.
    :param problem: what is wrong with it, e.g. ``"must be positive, got 0"``.
    """

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name} {problem}")
        self.name = name
        self.problem = problem


def _param(default: Any, doc: str) -> Any:
    """A dataclass field whose one-line doc is also the help text of its command-line flag."""
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class DQNConfig:
    """Hyperparameters of :class:`dqn_agent.DeepQLearning`; every instance is valid."""

    hidden_sizes: tuple[int, ...] = _param((64, 64), "units in each hidden ReLU layer of the MLP Q-network")
    learning_rate: float = _param(7.4e-3, "step size of the optimizer")
    gamma: float = _param(0.995, "discount factor of future rewards, in [0, 1]")
    buffer_size: int = _param(10_000, "capacity of the replay buffer, in transitions")
    batch_size: int = _param(128, "transitions sampled for each gradient step")
    learning_starts: int = _param(250, "environment steps taken before the first gradient step")
    train_frequency: int = _param(128, "environment steps between two training phases")
    gradient_steps: int = _param(128, "gradient steps in each training phase")
    target_update_interval: int = _param(10, "environment steps between two target-network updates")
    tau: float = _param(1.0, "target update weight: 1 copies the main network, below 1 is Polyak averaging")
    epsilon_start: float = _param(1.0, "exploration rate epsilon at the first step")
    epsilon_end: float = _param(0.05, "exploration rate epsilon after the decay")
    epsilon_decay_steps: int = _param(8_000, "environment steps over which epsilon decays linearly")
    loss: str = _param("mse", "TD loss on the taken action's Q-value: mse or huber")
    double_dqn: bool = _param(True, "choose a' with the main network and value it with the target network")
    max_grad_norm: float = _param(10.0, "clip the global gradient norm to this value")
    optimizer: str = _param("adam", "adam, or rmsprop as in the Nature paper (decay 0.95, centred)")
    adam_epsilon: float = _param(1e-7, "Adam's epsilon, added to the root mean square (Keras's default; the "
                                 "data-efficient Atari agents use 1.5e-4)")
    rmsprop_epsilon: float = _param(0.01, "RMSprop's epsilon, added to the mean square inside the square root as "
                                    "in the Nature paper and Keras (PyTorch adds it outside: its 0.01 is about "
                                    "1e-4 here)")
    network: str = _param("auto", "Q-network: auto (mlp for a vector; for an image nature_cnn if at least 36x36, "
                          "else minatar_cnn), mlp, nature_cnn or minatar_cnn")
    clip_rewards: bool = _param(False, "learn from rewards clipped to [-1, 1], as the Nature paper does on Atari "
                                "(returns shown are never clipped)")
    n_step: int = _param(1, "steps of each stored transition's discounted return before it bootstraps: 1 is DQN, 3 "
                         "as in Rainbow")
    prioritized_replay: bool = _param(False, "draw transitions in proportion to their last TD error (Schaul et al., "
                                      "2016), with importance weights in the loss")
    priority_alpha: float = _param(0.6, "prioritized replay: how much priorities count, in [0, 1] (0 is uniform)")
    priority_beta_start: float = _param(0.4, "prioritized replay: importance-weight exponent at the first step, in "
                                        "[0, 1], annealed to 1 by the last")
    priority_epsilon: float = _param(1e-6, "prioritized replay: added to each absolute TD error, so that every "
                                     "transition can be drawn")
    priority_updates: str = _param("phase", "prioritized replay: phase (a training phase's minibatches drawn at "
                                   "once, their priorities updated after it: one compiled call) or step (each "
                                   "minibatch drawn after the previous gradient step's priorities are in: exact)")
    dueling: bool = _param(False, "dueling head: a value and an advantage stream, Q = V + A - mean(A) "
                           "(Wang et al., 2016)")
    noisy_nets: bool = _param(False, "noisy networks: the last two layers' weights carry learned noise that explores "
                              "(Fortunato et al., 2018); given on the command line, epsilon defaults to 0")
    noisy_sigma: float = _param(0.5, "noisy networks: the noise's initial scale sigma_0")
    distributional: bool = _param(False, "distributional C51: learn a categorical distribution of the return over "
                                  "num_atoms atoms, by cross-entropy (Bellemare et al., 2017); given on the "
                                  "command line, the loss defaults to cross_entropy")
    num_atoms: int = _param(51, "distributional: atoms of the support, evenly spaced from v_min to v_max")
    v_min: float = _param(-10.0, "distributional: the smallest return the support holds")
    v_max: float = _param(10.0, "distributional: the largest return the support holds")
    random_shift: int = _param(0, "DrQ's augmentation (Kostrikov et al., 2020): each training step shifts every "
                               "image of its minibatch (s and s') by up to this many pixels, as padding it with "
                               "its edge and cropping it back at a random place does; stored frames are never "
                               "changed (0: off; DrQ uses 4)")
    terminal_on_life_loss: bool = _param(False, "learn as if losing a life ended the episode (the Atari 100k "
                                         "protocol): that transition does not bootstrap, while the episode and "
                                         "its score go on to the game's end")

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_sizes", tuple(self.hidden_sizes))
        if not self.hidden_sizes or any(units <= 0 for units in self.hidden_sizes):
            raise ConfigError("hidden_sizes", f"must be one or more positive sizes, got {list(self.hidden_sizes)}")
        for name in ("learning_rate", "buffer_size", "batch_size", "train_frequency", "gradient_steps",
                     "target_update_interval", "max_grad_norm", "rmsprop_epsilon", "adam_epsilon", "n_step",
                     "priority_epsilon", "noisy_sigma"):
            if not getattr(self, name) > 0:
                raise ConfigError(name, f"must be positive, got {getattr(self, name)}")
        for name in ("learning_starts", "epsilon_decay_steps", "random_shift"):
            if getattr(self, name) < 0:
                raise ConfigError(name, f"must be zero or positive, got {getattr(self, name)}")
        for name in ("gamma", "epsilon_start", "epsilon_end", "priority_alpha", "priority_beta_start"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(name, f"must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.tau <= 1.0:
            raise ConfigError("tau", f"must be in (0, 1], got {self.tau}")
        if self.n_step > self.buffer_size:
            raise ConfigError("n_step", f"({self.n_step}) must not exceed buffer_size ({self.buffer_size})")
        if self.batch_size > self.buffer_size:
            raise ConfigError("batch_size", f"({self.batch_size}) must not exceed buffer_size ({self.buffer_size})")
        if self.num_atoms < 2:
            raise ConfigError("num_atoms", f"must be at least 2 (a distribution over one return is DQN), got "
                              f"{self.num_atoms}")
        if not self.v_min < self.v_max:
            raise ConfigError("v_min", f"({self.v_min}) must be below v_max ({self.v_max})")
        if self.distributional != (self.loss == "cross_entropy"):
            raise ConfigError("loss", "must be cross_entropy for a distributional agent (a distribution is not "
                              f"regressed), got {self.loss!r}" if self.distributional else
                              "cross_entropy needs distributional (it compares distributions, not Q-values)")
        for name, choices in (("loss", LOSSES), ("optimizer", OPTIMIZERS), ("network", NETWORKS),
                              ("priority_updates", PRIORITY_UPDATES)):
            if getattr(self, name) not in choices:
                raise ConfigError(name, f"must be one of {', '.join(choices)}, got {getattr(self, name)!r}")

    def network_for(self, observation_shape: tuple[int, ...]) -> str:
        """The Q-network this config builds for observations of this shape: mlp, nature_cnn or minatar_cnn.

        :raises ConfigError: if the chosen network cannot take that shape.
        """
        shape = tuple(observation_shape)
        fits = {"mlp": len(shape) == 1, "nature_cnn": len(shape) == 3 and min(shape[:2]) >= NATURE_CNN_MIN_SIZE,
                "minatar_cnn": len(shape) == 3 and min(shape[:2]) >= 3}
        choice = self.network
        if choice == "auto":
            choice = "mlp" if len(shape) == 1 else "nature_cnn" if fits["nature_cnn"] else "minatar_cnn"
        if not fits[choice]:
            raise ConfigError("network", f"{choice} cannot take observations of shape {shape}")
        if self.random_shift and len(shape) != 3:
            raise ConfigError("random_shift", f"shifts images, and observations of shape {shape} are not images")
        return choice

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain JSON-ready values."""
        values = dataclasses.asdict(self)
        values["hidden_sizes"] = list(self.hidden_sizes)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DQNConfig:
        """Rebuild a configuration saved by :meth:`to_dict`; unknown keys are an error."""
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(sorted(unknown)[0], "is not a DQNConfig field")
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> DQNConfig:
        return cls.from_dict(json.loads(text))

    @staticmethod
    def docs() -> dict[str, str]:
        """One-line doc of each field, by field name."""
        return {f.name: f.metadata["doc"] for f in dataclasses.fields(DQNConfig)}


def implied_by_switches(given: dict[str, Any]) -> dict[str, Any]:
    """The values that a switch given on the command line brings with it, unless they are given too: C51 learns by
    cross-entropy (and turning it off goes back to the default loss), and noisy networks explore by their noise,
    so epsilon is 0 for them.

    :param given: the `DQNConfig` fields given on the command line.
    :return: fields to put under `given` (and over a preset's).
    """
    implied: dict[str, Any] = {}
    if "distributional" in given and "loss" not in given:
        implied["loss"] = "cross_entropy" if given["distributional"] else DQNConfig.loss
    if given.get("noisy_nets") and not {"epsilon_start", "epsilon_end"} & given.keys():
        implied.update(epsilon_start=0.0, epsilon_end=0.0)
    return implied
