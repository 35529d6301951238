"""The registry-wide contract check: every registered env, built-in or plugin, is tested with no new code."""

from __future__ import annotations

import pytest

import agentgym
from agentgym.errors import ContractError
from agentgym.testing import check_determinism, check_env, check_state_roundtrip, deep_equal

ENV_IDS = [s.id for s in agentgym.list_envs()]


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_registered_env_passes_the_contract(env_id):
    report = check_env(env_id, steps=60)
    assert [r.name for r in report.results] == ["gymnasium checker", "determinism", "state round-trip", "oracle solves"]
    assert report.passed
    assert "60 steps" in report.results[1].detail  # the determinism check says how many steps it compared


def test_contract_check_runs_on_plugins(corridor_id):
    assert check_env(corridor_id).passed


def test_check_catches_a_nondeterministic_env(corridor_id, monkeypatch, corridor_cls):
    import random

    original = corridor_cls._reset_task

    def leaky_reset(self, task):  # uses the global RNG instead of np_random: a classic bug
        info = original(self, task)
        self.position = random.randrange(self.length - 1)
        return info

    monkeypatch.setattr(corridor_cls, "_reset_task", leaky_reset)
    with pytest.raises(ContractError, match="differ"):
        check_determinism(corridor_id, steps=50)


def test_check_catches_a_state_that_forgets_the_rng(corridor_id, monkeypatch, corridor_cls):
    monkeypatch.setattr(corridor_cls, "set_state", lambda self, s: setattr(self, "position", s.position))
    with pytest.raises(ContractError, match="did not continue exactly"):
        check_state_roundtrip(corridor_id)


def test_deep_equal_is_exact():
    import numpy as np

    assert deep_equal({"a": np.arange(3), "b": [1.0, float("nan")]}, {"a": np.arange(3), "b": [1.0, float("nan")]})
    assert not deep_equal(np.arange(3), np.arange(3).astype(np.int32))
    assert not deep_equal({"a": 1}, {"a": 1.0})
    assert not deep_equal((1, 2), [1, 2])
