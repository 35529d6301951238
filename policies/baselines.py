"""Baseline policies that need no learning: uniform random and the env's oracle."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from agentgym.types import ActionBatch


class RandomPolicy:
    """Samples uniformly from each env's action space (a lower bound for reports)."""

    def __init__(self, env: Any | None = None) -> None:
        del env  # the action space is read per call, so one instance serves envs of different sizes

    def act(
        self,
        observations: Sequence[Any],
        *,
        envs: Sequence[Any],
        rng: np.random.Generator,
        memories: Sequence[Any] | None = None,
    ) -> ActionBatch:
        """One uniform action per env."""
        actions = []
        for env in envs:
            space = env.action_space
            if hasattr(space, "n"):
                actions.append(int(space.start) + int(rng.integers(int(space.n))))
            else:
                space.seed(int(rng.integers(2**31)))
                actions.append(space.sample())
        return ActionBatch(actions)


class OraclePolicy:
    """The env's own expert: an exact solver or a search agent, read through ``env.oracle_action()``.

    Privileged (it reads the env's state), so it is an upper bound and a demonstrator, not a learned policy. When
    the expert has no action (a dead end), it returns None, which the env records as an invalid no-op.
    """

    def __init__(self, env: Any | None = None) -> None:
        del env

    def act(
        self,
        observations: Sequence[Any],
        *,
        envs: Sequence[Any],
        rng: np.random.Generator,
        memories: Sequence[Any] | None = None,
    ) -> ActionBatch:
        """The oracle's action for each env's current state."""
        return ActionBatch([env.unwrapped.oracle_action() for env in envs])
