"""The configuration: JSON round trip and refusal of values the algorithm cannot use."""

from __future__ import annotations

import pytest

from dqn_config import ConfigError, DQNConfig


def test_json_round_trip_keeps_every_field():
    config = DQNConfig(hidden_sizes=(32, 16, 8), learning_rate=1e-4, loss="huber", double_dqn=False, tau=0.5)
    assert DQNConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize(("overrides", "field"), [
    ({"learning_rate": 0.0}, "learning_rate"),
    ({"batch_size": -1}, "batch_size"),
    ({"buffer_size": 0}, "buffer_size"),
    ({"gamma": 1.5}, "gamma"),
    ({"batch_size": 128, "buffer_size": 64}, "batch_size"),
    ({"tau": 0.0}, "tau"),
    ({"hidden_sizes": ()}, "hidden_sizes"),
    ({"loss": "l1"}, "loss"),
    ({"n_step": 0}, "n_step"),
    ({"n_step": 20, "buffer_size": 10, "batch_size": 8}, "n_step"),
    ({"priority_alpha": 1.5}, "priority_alpha"),
    ({"priority_beta_start": -0.1}, "priority_beta_start"),
    ({"priority_epsilon": 0.0}, "priority_epsilon"),
])
def test_invalid_values_are_refused_naming_the_field(overrides, field):
    with pytest.raises(ConfigError) as caught:
        DQNConfig(**overrides)
    assert caught.value.name == field


def test_unknown_keys_in_a_saved_config_are_refused():
    with pytest.raises(ConfigError, match="not a DQNConfig field"):
        DQNConfig.from_dict({**DQNConfig().to_dict(), "learning_rat": 1e-3})


def test_every_field_has_a_doc():
    assert all(doc.strip() for doc in DQNConfig.docs().values())
