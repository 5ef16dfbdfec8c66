from __future__ import annotations

import dataclasses

import pytest

from client.control import Control
from client.errors import ControlError, EntmonError
from entmon.wire.knobs import DEFAULTS


def test_defaults_are_the_shared_rules_defaults() -> None:
    assert Control().knobs() == DEFAULTS
    assert Control().version == 0


def test_wire_round_trip() -> None:
    c = Control(loss_mode="kl_cov", kl_cov_ratio=2e-4, ppo_kl_coef=0.1, version=7)
    assert Control.from_wire(c.to_wire()) == c
    assert c.to_wire() == {**c.knobs(), "version": 7}


def test_from_wire_fills_absent_knobs_with_defaults() -> None:
    c = Control.from_wire({"loss_mode": "clip_cov", "version": 3})
    assert c.loss_mode == "clip_cov" and c.version == 3
    assert c.clip_cov_ratio == DEFAULTS["clip_cov_ratio"]


def test_from_wire_names_every_unknown_field() -> None:
    with pytest.raises(ControlError) as info:
        Control.from_wire({"loss_mode": "vanilla", "k_percent": 0.2, "beta": 1.0})
    assert "k_percent" in str(info.value) and "beta" in str(info.value)


def test_invalid_values_name_every_bad_field() -> None:
    wire = {
        "loss_mode": "entropy_bonus",
        "clip_cov_ratio": 2.0,
        "ppo_kl_coef": -1.0,
        "clip_cov_lb": 5.0,
        "clip_cov_ub": 1.0,
        "kl_cov_ratio": float("nan"),
    }
    with pytest.raises(ControlError) as info:
        Control.from_wire(wire)
    message = str(info.value)
    for name in ("loss_mode", "clip_cov_ratio", "ppo_kl_coef", "clip_cov_lb", "kl_cov_ratio"):
        assert name in message


@pytest.mark.parametrize("version", [-1, 1.5, True, "3"])
def test_bad_version(version: object) -> None:
    with pytest.raises(ControlError, match="version"):
        Control.from_wire({"version": version})


def test_error_hierarchy_and_immutability() -> None:
    assert issubclass(ControlError, EntmonError) and issubclass(ControlError, ValueError)
    with pytest.raises(ControlError):
        Control(clip_ratio_low=0.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        Control().loss_mode = "kl_cov"  # type: ignore[misc]
    with pytest.raises(TypeError):
        Control("kl_cov")  # type: ignore[misc]  # keyword-only
