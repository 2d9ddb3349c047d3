"""The typed configs: settings added after the first release leave records and fingerprints of earlier runs
valid, and a config checks its own values."""

from __future__ import annotations

import hashlib
import json

import pytest

from grads.config import DataConfig, ModelConfig, SelectConfig, SelectJob, TrainConfig
from grads.errors import GradsError
from grads.experiment.config import ExperimentConfig


def test_an_added_setting_at_its_default_is_left_out_of_settings_and_fingerprints():
    cfg = TrainConfig(epochs=2.0)
    full = cfg.model_dump(mode="json")
    later = ("max_steps", "activation_checkpointing")  # an added and a runtime setting, both at their defaults
    assert all(k in full and k not in cfg.settings() for k in later)
    assert cfg.settings() == {k: v for k, v in full.items() if k not in later}
    # the fingerprint a release without them computed: the same payload, hashed the same way
    earlier = hashlib.sha256(json.dumps({"config": {k: v for k, v in full.items() if k not in later}, "x": 1},
                                        sort_keys=True).encode()).hexdigest()[:20]
    assert cfg.fingerprint(x=1) == earlier
    # once set, it counts
    stepped = TrainConfig(epochs=2.0, max_steps=10)
    assert stepped.settings()["max_steps"] == 10 and stepped.fingerprint(x=1) != earlier
    # a runtime setting is recorded when set, and never fingerprinted
    lighter = TrainConfig(epochs=2.0, activation_checkpointing=False)
    assert lighter.settings()["activation_checkpointing"] is False and lighter.fingerprint(x=1) == earlier


def test_nested_configs_drop_added_defaults_too():
    exp = ExperimentConfig(train=TrainConfig(max_steps=7))
    settings = exp.settings()
    assert "warmup_from" not in settings and settings["train"]["max_steps"] == 7
    assert "max_steps" not in ExperimentConfig().settings()["train"]


def test_ratio_of_one_is_accepted(tmp_path):
    job = SelectJob(model=ModelConfig(model="m"), data=DataConfig(data=tmp_path), out=tmp_path,
                    select=SelectConfig(ratios=(1.0, 1e-9)))  # the config checks ratios, methods and the signal
    assert job.select.ratios == (1.0, 1e-9)
    with pytest.raises(GradsError, match="a ratio must be in"):
        SelectConfig(ratios=(1.0001,))
