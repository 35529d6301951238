"""Evaluate a policy on held-out tasks of a registered env, through the rollout engine.

Tasks come in canonical order from the split, so two evaluations on the same split see the same tasks; each task
is played ``k`` times with the same seed (a group), which gives pass@k (unbiased estimator) and mean@k. Ctrl-C
stops early and keeps the finished episodes.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Callable, Hashable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agentgym.registry import make, policy_spec, trainer_spec
from agentgym.rollout import RolloutConfig, RolloutEngine
from agentgym.tasks import ALL
from agentgym.trajectory import Trajectory, TrajectoryWriter, to_jsonable


@dataclass
class EvalSummary:
    """Aggregates over the evaluated episodes."""

    env_id: str
    policy: str
    split: str
    tasks: int
    k: int
    episodes: int
    success_rate: float
    success_ci95: tuple[float, float]
    pass_at_k: float
    mean_at_k: float
    mean_return: float
    std_return: float
    mean_steps: float
    invalid_action_rate: float
    mean_response_tokens: float
    tokens_per_s: float
    generate_share: float
    wall_s: float
    interrupted: bool
    decision_ms: float = 0.0
    """Milliseconds in the policy per env step (its batched calls divided among the episodes they served)."""
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


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples with ``c`` successes: 1 - C(n-c, k) / C(n, k)."""
    if k > n:
        raise ValueError(f"pass@k needs k <= n samples; got k={k}, n={n}.")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def select_tasks(env: Any, split: str | None, count: int | None) -> tuple[str, list[Hashable]]:
    """The tasks an evaluation runs: a finite task set defaults to all its tasks, others to 20 test tasks."""
    task_set = env.unwrapped.task_set
    if split is None:
        split = ALL if task_set.finite else "test"
    if task_set.finite:
        tasks = task_set.tasks(split)
        return split, tasks if count is None else tasks[:count]
    return split, task_set.tasks(split, n=20 if count is None else count)


def is_run_dir(name: str) -> bool:
    """Whether ``name`` is a training run directory (its latest checkpoint can serve as a policy)."""
    path = Path(name)
    return (path / "config.yaml").is_file() and (path / "checkpoints").is_dir()


def build_policy(name: str, env: Any, **kwargs: Any) -> Any:
    """Build a policy from a name.

    A registered name; ``kind:ARG`` (``hf:./model``, ``openai:gpt-x``: ARG becomes ``model``); or a training run
    directory (its latest checkpoint, with the run's prompt and sampling settings).
    """
    if is_run_dir(name):
        import yaml

        trainer = yaml.safe_load((Path(name) / "config.yaml").read_text()).get("trainer")
        return trainer_spec(trainer).load().policy_from_run(name, **kwargs)
    kind, sep, arg = name.partition(":")
    if sep and arg:
        kwargs = {"model": arg, **kwargs}
    return policy_spec(kind if sep else name).load()(env, **kwargs)


def summarize(
    env_id: str,
    policy: str,
    split: str,
    k: int,
    trajectories: list[Trajectory],
    wall_s: float,
    expected: int,
    generate_s: float,
) -> EvalSummary:
    """Aggregate trajectories into an ``EvalSummary``."""
    n = len(trajectories)
    returns = np.array([t.episode_return for t in trajectories], dtype=float)
    successes = sum(t.success for t in trajectories)
    steps = sum(t.steps for t in trajectories)
    tokens = sum(t.response_tokens for t in trajectories)
    groups: dict[tuple[str, int], list[bool]] = defaultdict(list)
    for t in trajectories:
        groups[(json.dumps(t.task), t.seed)].append(t.success)
    complete = [g for g in groups.values() if len(g) >= k]
    by_difficulty: dict[str, dict[str, float]] = {}
    for label in sorted({str(t.difficulty) for t in trajectories}):
        group = [t for t in trajectories if str(t.difficulty) == label]
        by_difficulty[label] = {
            "episodes": len(group),
            "success_rate": sum(t.success for t in group) / len(group),
            "mean_return": float(np.mean([t.episode_return for t in group])),
        }
    return EvalSummary(
        env_id=env_id,
        policy=policy,
        split=split,
        tasks=len(groups),
        k=k,
        episodes=n,
        success_rate=successes / n if n else 0.0,
        success_ci95=wilson_interval(successes, n),
        pass_at_k=float(np.mean([pass_at_k(len(g), sum(g), k) for g in complete])) if complete else 0.0,
        mean_at_k=float(np.mean([sum(g) / len(g) for g in complete])) if complete else 0.0,
        mean_return=float(returns.mean()) if n else 0.0,
        std_return=float(returns.std()) if n else 0.0,
        mean_steps=steps / n if n else 0.0,
        invalid_action_rate=sum(t.invalid_actions for t in trajectories) / steps if steps else 0.0,
        mean_response_tokens=tokens / n if n else 0.0,
        tokens_per_s=tokens / generate_s if generate_s > 0 else 0.0,
        generate_share=generate_s / wall_s if wall_s > 0 else 0.0,
        decision_ms=1000 * generate_s / max(sum(t.steps for t in trajectories), 1),
        wall_s=wall_s,
        interrupted=n < expected,
        by_difficulty=by_difficulty,
    )


def evaluate(
    env_id: str,
    policy: str = "random",
    *,
    policy_kwargs: dict[str, Any] | None = None,
    env_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> tuple[EvalSummary, list[Trajectory]]:
    """Evaluate a registered policy by name (``random``, ``oracle``, ``smollm2``, ``hf:PATH``, ...).

    Builds the policy with ``policy_kwargs`` and calls ``evaluate_policy`` (see there for the other arguments).
    """
    agent = build_policy(policy, make(env_id, **(env_kwargs or {})), **(policy_kwargs or {}))
    return evaluate_policy(env_id, agent, policy_name=policy, env_kwargs=env_kwargs, **kwargs)


def evaluate_policy(
    env_id: str,
    agent: Any,
    *,
    policy_name: str = "policy",
    episodes: int | None = None,
    split: str | None = None,
    k: int = 1,
    seed: int = 0,
    env_kwargs: dict[str, Any] | None = None,
    rollout: RolloutConfig | None = None,
    trajectories_path: str | Path | None = None,
    on_start: Callable[[int], None] | None = None,
    on_episode: Callable[[Trajectory], None] | None = None,
) -> tuple[EvalSummary, list[Trajectory]]:
    """Evaluate a built policy on ``episodes`` tasks of ``split``, ``k`` samples per task.

    Args:
        env_id: a registered env id or alias.
        agent: the policy object (``act``, optionally ``begin``).
        policy_name: recorded in the summary and trajectories.
        episodes: number of tasks (None: all tasks of a finite set, else 20).
        split: ``train``/``dev``/``test``, or ``all`` for finite task sets (None: ``all`` if finite, else ``test``).
        k: episodes per task (same seed); pass@k and mean@k are computed over them.
        seed: task ``i`` resets with ``seed + i``; the policy's sampling RNG is seeded with ``seed``.
        env_kwargs: keyword arguments for ``make``.
        rollout: scheduling (concurrency, turn/token budgets); ``group_size`` is set to ``k``.
        trajectories_path: stream every finished trajectory to this JSONL file.
        on_start: called once with the number of episodes that will run.
        on_episode: called after each finished episode (progress bars).
    """
    env_kwargs = env_kwargs or {}
    probe = make(env_id, **env_kwargs)
    split, tasks = select_tasks(probe, split, episodes)
    cfg = RolloutConfig(**{**asdict(rollout or RolloutConfig()), "group_size": k})
    if on_start is not None:
        on_start(len(tasks) * k)
    writer = TrajectoryWriter(trajectories_path) if trajectories_path else None
    envs = iter([probe])
    engine = RolloutEngine(
        lambda: next(envs, None) or make(env_id, **env_kwargs),
        agent,
        cfg,
        env_id=probe.spec_id,
        policy_name=policy_name,
        writer=writer,
    )
    start = time.perf_counter()
    try:
        trajectories = engine.run([(t, seed + i) for i, t in enumerate(tasks)], seed=seed, on_episode=on_episode)
    finally:
        engine.close()
        if writer is not None:
            writer.close()
    wall = time.perf_counter() - start
    trajectories.sort(key=lambda t: (t.seed, t.group))  # task order (seed = seed + task index), not finish order
    summary = summarize(probe.spec_id, policy_name, split, k, trajectories, wall, len(tasks) * k, engine.generate_s)
    return summary, trajectories


def episode_record(t: Trajectory) -> dict[str, Any]:
    """The compact per-episode record of ``--json``: task, return, steps, success and the final info."""
    return {
        "task": t.task,
        "task_name": t.task_name,
        "seed": t.seed,
        "group": t.group,
        "split": t.split,
        "difficulty": t.difficulty,
        "episode_return": t.episode_return,
        "steps": t.steps,
        "success": t.success,
        "invalid_actions": t.invalid_actions,
        "response_tokens": t.response_tokens,
        "wall_s": t.wall_s,
        "final_info": t.turns[-1].info if t.turns else {},
        "warnings": t.warnings,
    }


def write_json(path: str | Path, summary: EvalSummary, trajectories: list[Trajectory]) -> None:
    """Write the summary and one compact record per episode as one JSON document."""
    payload = {"summary": to_jsonable(asdict(summary)), "episodes": [episode_record(t) for t in trajectories]}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=2) + "\n")
