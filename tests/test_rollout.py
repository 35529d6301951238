"""The rollout engine with non-LLM policies: batching, groups, budgets, JSONL streaming, Ctrl-C, replay."""

from __future__ import annotations

import numpy as np
import pytest

import agentgym
from agentgym.cli import main
from agentgym.evaluation import pass_at_k, wilson_interval
from agentgym.rollout import RolloutConfig, RolloutEngine
from agentgym.trajectory import TrajectoryWriter, read_trajectories
from agentgym.types import ActionBatch


class CountingRandom:
    """A random policy that records the batch size of every call (to observe the engine's batching)."""

    def __init__(self):
        self.batch_sizes = []

    def act(self, observations, *, envs, rng, memories=None):
        self.batch_sizes.append(len(observations))
        return ActionBatch([int(rng.integers(2)) for _ in observations])


def _engine(corridor_id, policy, **cfg):
    return RolloutEngine(
        lambda: agentgym.make(corridor_id, length=6, max_steps=8),
        policy,
        RolloutConfig(**cfg),
        env_id=corridor_id,
        policy_name="test",
    )


def test_one_policy_call_per_turn_for_all_live_episodes(corridor_id):
    policy = CountingRandom()
    engine = _engine(corridor_id, policy, num_envs=4)
    trajs = engine.run([(t, 100 + t) for t in range(10)], seed=0)
    assert len(trajs) == 10
    assert max(policy.batch_sizes) == 4  # the batch is filled up to num_envs
    assert sum(policy.batch_sizes) == sum(t.steps for t in trajs)  # every step of every episode came from a call
    assert len(policy.batch_sizes) < sum(t.steps for t in trajs)  # ... and calls were shared across episodes


def test_groups_share_task_and_seed_and_are_deterministic(corridor_id):
    jobs = [(3, 7), (5, 8)]
    a = _engine(corridor_id, CountingRandom(), num_envs=3, group_size=4).run(jobs, seed=1)
    b = _engine(corridor_id, CountingRandom(), num_envs=3, group_size=4).run(jobs, seed=1)
    assert sorted((t.task, t.seed, t.group) for t in a) == sorted(
        (task, seed, g) for task, seed in jobs for g in range(4)
    )
    assert [(t.task, t.group, t.episode_return) for t in a] == [(t.task, t.group, t.episode_return) for t in b]
    starts = {}
    for t in a:  # copies of a group start from the same observation
        starts.setdefault(t.task, set()).add(t.turns[0].observation)
    assert all(len(s) == 1 for s in starts.values())


def test_turn_budget_truncates_with_a_warning(corridor_id):
    class Left:
        def act(self, observations, *, envs, rng, memories=None):
            return ActionBatch([0] * len(observations))

    trajs = _engine(corridor_id, Left(), num_envs=2, max_turns=3).run([(0, 0), (1, 1)])
    assert all(t.steps == 3 and t.truncated and not t.terminated for t in trajs)
    assert all("turn budget" in t.warnings[0] for t in trajs)


def test_trajectories_stream_to_jsonl_and_replay(tmp_path, corridor_id, capsys):
    path = tmp_path / "t.jsonl"
    with TrajectoryWriter(path) as writer:
        engine = _engine(corridor_id, CountingRandom(), num_envs=2)
        engine.writer = writer
        trajs = engine.run([(t, t) for t in range(3)])
    back = list(read_trajectories(path))
    assert [t.to_json() for t in back] == [t.to_json() for t in trajs]
    assert main(["replay", str(path), "--episode", "1"]) == 0
    out = capsys.readouterr().out
    assert "turn 1" in out and f"task {trajs[1].task}" in out
    assert main(["replay", str(path), "--episode", "9"]) == 2


def test_ctrl_c_keeps_finished_episodes(corridor_id):
    seen = []

    def interrupt_after_two(trajectory):
        seen.append(trajectory)
        if len(seen) == 2:
            raise KeyboardInterrupt

    trajs = _engine(corridor_id, CountingRandom(), num_envs=1).run(
        [(t, t) for t in range(5)], on_episode=interrupt_after_two
    )
    assert len(trajs) == 2


def test_env_worker_pool_gives_the_same_results(corridor_id):
    jobs = [(t, t) for t in range(6)]
    inline = _engine(corridor_id, CountingRandom(), num_envs=3).run(jobs, seed=4)
    pooled = _engine(corridor_id, CountingRandom(), num_envs=3, env_workers=2).run(jobs, seed=4)
    key = lambda t: (t.task, [turn.action for turn in t.turns], t.episode_return)  # noqa: E731
    assert sorted(map(key, inline)) == sorted(map(key, pooled))


def test_pass_at_k_and_wilson_golden_values():
    assert pass_at_k(5, 0, 1) == 0.0
    assert pass_at_k(5, 5, 3) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 - C(3,2)/C(4,2)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-3)
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-3) and hi == pytest.approx(0.7634, abs=1e-3)


def test_eval_with_k_reports_pass_at_k_and_writes_report(tmp_path, corridor_id):
    out = tmp_path / "run"
    assert (
        main(
            [
                "eval",
                "--env",
                corridor_id,
                "--policy",
                "random",
                "-n",
                "5",
                "--k",
                "4",
                "--out",
                str(out),
                "--env-kwargs",
                "length=6",
                "max_steps=6",
            ]
        )
        == 0
    )
    import json

    summary = json.loads((out / "summary.json").read_text())["summary"]
    assert summary["k"] == 4 and summary["episodes"] == 20 and summary["tasks"] == 5
    assert summary["pass_at_k"] >= summary["mean_at_k"]
    report = (out / "report.md").read_text()
    assert "pass@4" in report and (out / "success_by_difficulty.png").stat().st_size > 1000
    assert len(list(read_trajectories(out / "trajectories.jsonl"))) == 20
    assert np.isclose(summary["mean_at_k"], summary["success_rate"])
