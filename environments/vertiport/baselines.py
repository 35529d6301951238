"""Baseline dispatchers for the vertiport env as rollout policies: random feasible, greedy, and the GA planner.

All three are privileged: they read the env's fleet state (``env.unwrapped.sim``), like the ``oracle`` policy, so
they serve as reference points in reports, not as learned policies. Registered in ``policies/__init__.py`` as
``vertiport_random``, ``vertiport_greedy`` and ``vertiport_ga`` (``agentgym eval --env vertiport --policy
vertiport_ga``). Each takes one env per observation and works for any batch of vertiport envs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

import numpy as np

from agentgym.types import ActionBatch
from environments.vertiport.ga import GAConfig, GAPlanner
from environments.vertiport.oracle import greedy_choices, random_choices


def _vertiport(env: Any) -> Any:
    inner = getattr(env, "unwrapped", env)
    if not hasattr(inner, "sim") or not hasattr(inner, "action_mask"):
        raise TypeError(f"{type(inner).__name__} is not a vertiport env; these baselines need agentgym/Vertiport-v0.")
    return inner


class VertiportRandomPolicy:
    """A uniformly random allowed destination for every deciding aircraft (staying included)."""

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
        """One random feasible dispatch per env."""
        actions = []
        for env in envs:
            inner = _vertiport(env)
            actions.append(random_choices(inner.sim, rng, inner.action_mask()))
        return ActionBatch(actions)


class VertiportGreedyPolicy:
    """The greedy highest-expected-revenue dispatcher (the env's oracle; see ``oracle.py``).

    Args:
        env: unused (the policy reads each env's state at ``act``).
        min_profit: a flight is taken only if its immediate profit exceeds this (default 0).
    """

    def __init__(self, env: Any | None = None, *, min_profit: float = 0.0) -> None:
        del env
        self.min_profit = float(min_profit)
        self.decide_seconds = 0.0
        self.decisions = 0

    def act(
        self,
        observations: Sequence[Any],
        *,
        envs: Sequence[Any],
        rng: np.random.Generator,
        memories: Sequence[Any] | None = None,
    ) -> ActionBatch:
        """The greedy dispatch of each env."""
        start = time.perf_counter()
        actions = []
        for env in envs:
            inner = _vertiport(env)
            actions.append(greedy_choices(inner.sim, inner.action_mask(), min_profit=self.min_profit))
        self.decide_seconds += time.perf_counter() - start
        self.decisions += len(envs)
        return ActionBatch(actions)


class VertiportGAPolicy:
    """The genetic-algorithm planner (see ``ga.py``): expensive, strong, and re-planning as the day unfolds.

    One planner per env, created on first use and reset when an episode starts again; planning time is summed in
    ``plan_seconds`` and decisions in ``decisions`` (the amortised planning time per decision is their ratio).

    Args:
        env: unused.
        seed: seed of the planners' own random streams (futures, selection, mutation); None draws it from the
            ``rng`` of the first ``act`` call.
        **config: ``GAConfig`` fields (population, generations, futures, block_ticks, horizon_ticks, ...).
    """

    def __init__(self, env: Any | None = None, *, seed: int | None = None, **config: Any) -> None:
        del env
        known = {f.name for f in fields(GAConfig)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise TypeError(f"Unknown GA setting(s) {unknown}; the settings are {sorted(known)}.")
        self.config = GAConfig(**config)
        self.seed = seed
        self._planners: dict[int, tuple[GAPlanner, int]] = {}
        self._retired_seconds = 0.0  # planning time of planners replaced for a new scenario
        self.decisions = 0

    @property
    def plan_seconds(self) -> float:
        """Seconds spent planning so far, over all envs."""
        return self._retired_seconds + sum(p.plan_seconds for p, _ in self._planners.values())

    def act(
        self,
        observations: Sequence[Any],
        *,
        envs: Sequence[Any],
        rng: np.random.Generator,
        memories: Sequence[Any] | None = None,
    ) -> ActionBatch:
        """The current plan's dispatch for each env (planning first where a plan is due)."""
        if self.seed is None:
            self.seed = int(rng.integers(2**31))
        actions = []
        for env in envs:
            inner = _vertiport(env)
            sim = inner.sim
            key = id(inner)
            planner, last_tick = self._planners.get(key, (None, -1))
            if planner is None or planner.scenario is not sim.scenario:
                self._retired_seconds += planner.plan_seconds if planner is not None else 0.0
                stream = np.random.default_rng([self.seed, len(self._planners)])
                planner = GAPlanner(sim.scenario, self.config, stream)
            elif sim.tick <= last_tick:
                planner.reset()  # a new day on the same scenario
            actions.append(planner.choose(sim))
            self._planners[key] = (planner, sim.tick)
        self.decisions += len(envs)
        return ActionBatch(actions)
