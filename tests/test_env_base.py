"""The base-class contract (text actions, invalid actions, task options, obs modes) on the example corridor."""

from __future__ import annotations

import numpy as np
import pytest

from agentgym.errors import TaskError


def test_text_actions_are_parsed_and_invalid_ones_are_penalised_no_ops(corridor_cls):
    env = corridor_cls(length=6, invalid_action_penalty=0.5)
    task = next(t for t in range(100) if env.reset(options={"task": t})[1]["optimal_steps"] >= 3)
    env.reset(seed=0, options={"task": task})
    start = env.position
    _, reward, _, _, info = env.step("I will go RIGHT")
    assert info["action_valid"] and env.position == start + 1 and reward == pytest.approx(-0.01)
    for bad in ("dance", 7, -1, 1.5, None, True, np.array([1])):
        before = env.position
        _, reward, _, _, info = env.step(bad)
        assert info["action_valid"] is False and env.position == before
        assert reward == pytest.approx(-0.01 - 0.5)
        assert repr(bad)[:5] in info["action_error"] or "parse" in info["action_error"]
    _, _, _, _, info = env.step(np.int64(1))
    assert info["action_valid"]


def test_out_of_range_error_names_the_valid_range(corridor_cls):
    env = corridor_cls()
    env.reset(seed=0)
    info = env.step(5)[4]
    assert "out of range" in info["action_error"] and "0..1" in info["action_error"]


def test_reset_options_select_tasks_and_splits(corridor_cls):
    env = corridor_cls()
    _, info = env.reset(seed=3, options={"split": "test"})
    assert info["split"] == "test" and env.task_set.split_of(info["task"]) == "test"
    _, info2 = env.reset(options={"task": info["task"]})
    assert info2["task"] == info["task"] and info2["split"] == "test"
    with pytest.raises(TaskError, match="split"):
        env.reset(options={"split": "validation"})
    with pytest.raises(TaskError, match="Unknown reset option"):
        env.reset(options={"level": 3})


def test_obs_modes_and_bad_constructor_arguments(corridor_cls):
    for mode, check in (
        ("dict", lambda o: set(o) == {"text", "struct"}),
        ("struct", lambda o: o.shape == (5,)),
        ("text", lambda o: isinstance(o, str)),
    ):
        env = corridor_cls(obs_mode=mode)
        obs, _ = env.reset(seed=0)
        assert check(obs) and obs in env.observation_space
    with pytest.raises(ValueError, match="obs_mode='pixels'"):
        corridor_cls(obs_mode="pixels")
    with pytest.raises(ValueError, match="invalid_action_penalty=-1"):
        corridor_cls(invalid_action_penalty=-1)


def test_same_seed_same_task_and_unseeded_resets_follow_the_rng(corridor_cls):
    a, b = corridor_cls(), corridor_cls()
    assert a.reset(seed=11)[1]["task"] == b.reset(seed=11)[1]["task"]
    assert [a.reset()[1]["task"] for _ in range(5)] == [b.reset()[1]["task"] for _ in range(5)]
