"""Evaluate a policy on held-out tasks of a registered env: success, returns, steps, invalid actions.

One episode per task, tasks taken in canonical order from the split, so two evaluations of the same policy on
the same split see the same tasks. Ctrl-C stops early and keeps the finished episodes.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Hashable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agentgym.registry import make, policy_spec
from agentgym.tasks import ALL


@dataclass
class EpisodeRecord:
    """One evaluated episode."""

    task: Any
    split: str
    seed: int
    difficulty: str | None
    episode_return: float
    steps: int
    success: bool
    invalid_actions: int
    wall_s: float
    final_info: dict[str, Any]


@dataclass
class EvalSummary:
    """Aggregates over the evaluated episodes."""

    env_id: str
    policy: str
    split: str
    episodes: int
    success_rate: float
    success_ci95: tuple[float, float]
    mean_return: float
    std_return: float
    mean_steps: float
    invalid_action_rate: float
    wall_s: float
    interrupted: bool
    by_difficulty: dict[str, dict[str, float]] = field(default_factory=dict)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate (well-behaved at 0 and n, unlike the normal interval)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def to_jsonable(value: Any) -> Any:
    """Convert numpy scalars/arrays and tuples so ``json.dumps`` accepts the value."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def select_tasks(env: Any, split: str | None, episodes: int | None) -> tuple[str, list[Hashable]]:
    """The tasks an evaluation runs: a finite task set defaults to all its tasks, others to the test split."""
    task_set = env.unwrapped.task_set
    if split is None:
        split = ALL if task_set.finite else "test"
    if task_set.finite:
        tasks = task_set.tasks(split)
        return split, tasks if episodes is None else tasks[:episodes]
    return split, task_set.tasks(split, n=20 if episodes is None else episodes)


def run_episode(env: Any, policy: Any, task: Hashable, seed: int, rng: np.random.Generator) -> EpisodeRecord:
    """Play one episode of ``task`` with ``policy`` and record it."""
    start = time.perf_counter()
    obs, info = env.reset(seed=seed, options={"task": task})
    split, difficulty = info.get("split", ""), info.get("difficulty")
    total, steps, invalid = 0.0, 0, 0
    while True:
        action = policy.act([obs], envs=[env], rng=rng).actions[0]
        obs, reward, terminated, truncated, info = env.step(action)
        total += float(reward)
        steps += 1
        invalid += not info.get("action_valid", True)
        if terminated or truncated:
            break
    return EpisodeRecord(
        task=to_jsonable(task), split=split, seed=seed, difficulty=difficulty, episode_return=total, steps=steps,
        success=bool(info.get("success", False)), invalid_actions=invalid, wall_s=time.perf_counter() - start,
        final_info=to_jsonable(info),
    )


def summarize(env_id: str, policy: str, split: str, records: list[EpisodeRecord], wall_s: float,
              interrupted: bool) -> EvalSummary:
    """Aggregate episode records into an ``EvalSummary``."""
    n = len(records)
    returns = np.array([r.episode_return for r in records], dtype=float)
    successes = sum(r.success for r in records)
    steps = sum(r.steps for r in records)
    by_difficulty: dict[str, dict[str, float]] = {}
    for label in sorted({str(r.difficulty) for r in records}):
        group = [r for r in records if str(r.difficulty) == label]
        by_difficulty[label] = {
            "episodes": len(group),
            "success_rate": sum(r.success for r in group) / len(group),
            "mean_return": float(np.mean([r.episode_return for r in group])),
        }
    return EvalSummary(
        env_id=env_id, policy=policy, split=split, episodes=n,
        success_rate=successes / n if n else 0.0, success_ci95=wilson_interval(successes, n),
        mean_return=float(returns.mean()) if n else 0.0, std_return=float(returns.std()) if n else 0.0,
        mean_steps=steps / n if n else 0.0,
        invalid_action_rate=sum(r.invalid_actions for r in records) / steps if steps else 0.0,
        wall_s=wall_s, interrupted=interrupted, by_difficulty=by_difficulty,
    )


def evaluate(
    env_id: str,
    policy: str = "random",
    *,
    episodes: int | None = None,
    split: str | None = None,
    seed: int = 0,
    env_kwargs: dict[str, Any] | None = None,
    policy_kwargs: dict[str, Any] | None = None,
    on_start: Callable[[int], None] | None = None,
    on_episode: Callable[[EpisodeRecord], None] | None = None,
) -> tuple[EvalSummary, list[EpisodeRecord]]:
    """Evaluate ``policy`` (a registered policy name) on ``episodes`` tasks of ``split``.

    Args:
        env_id: a registered env id or alias.
        policy: a registered policy name (``random``, ``oracle``, ...).
        episodes: number of tasks (None: all tasks of a finite set, else 20).
        split: ``train``/``dev``/``test`` or ``all`` for finite task sets (None: ``all`` for finite sets, else ``test``).
        seed: episode ``i`` resets with ``seed + i``; the policy's sampling RNG is seeded with ``seed`` too.
        env_kwargs: keyword arguments for ``make``.
        policy_kwargs: keyword arguments for the policy factory.
        on_start: called once with the number of episodes that will run.
        on_episode: called after each finished episode (progress bars).
    """
    env = make(env_id, **(env_kwargs or {}))
    agent = policy_spec(policy).load()(env, **(policy_kwargs or {}))
    split, tasks = select_tasks(env, split, episodes)
    if on_start is not None:
        on_start(len(tasks))
    rng = np.random.default_rng(seed)
    records: list[EpisodeRecord] = []
    start, interrupted = time.perf_counter(), False
    try:
        for i, task in enumerate(tasks):
            records.append(run_episode(env, agent, task, seed + i, rng))
            if on_episode is not None:
                on_episode(records[-1])
    except KeyboardInterrupt:
        interrupted = True
    finally:
        env.close()
    return summarize(env.spec_id, policy, split, records, time.perf_counter() - start, interrupted), records


def write_json(path: str | Path, summary: EvalSummary, records: list[EpisodeRecord]) -> None:
    """Write the summary and one record per episode as one JSON document."""
    payload = {"summary": to_jsonable(asdict(summary)), "episodes": [to_jsonable(asdict(r)) for r in records]}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=2) + "\n")
