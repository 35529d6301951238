"""OracleStarts: training episodes that start on the oracle's path, and the trainer settings that use it."""

from __future__ import annotations

import collections

import gymnasium as gym
import numpy as np
import pytest

from agentgym.config import ConfigError, load_config
from agentgym.curriculum import OracleStarts
from agentgym.registry import make


def _tiny(**kwargs):
    return make("sokoban", preset="tiny", **kwargs)


def _jobs(n: int, seed: int = 0) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    tasks = _tiny().unwrapped.task_set
    return [(tasks.sample("train", rng), int(rng.integers(2**31))) for _ in range(n)]


def _remaining_moves(env) -> int:
    """Moves of the oracle's plan (push-optimal, ties by moves) from the env's current position."""
    return len(env.unwrapped.optimal_plan(from_start=False).plan)


def test_starts_lie_on_the_oracle_path_and_repeat_with_the_seed():
    env = OracleStarts(_tiny(), 1.0)
    plain = _tiny()
    seen = collections.Counter()
    for task, seed in _jobs(40):
        obs, info = env.reset(seed=seed, options={"task": task})
        again, info_again = env.reset(seed=seed, options={"task": task})
        assert again["text"] == obs["text"] and info_again["start_moves"] == info["start_moves"]
        moves = info["start_moves"]
        seen[moves] += 1
        plain.reset(seed=seed, options={"task": task})
        path_length = len(plain.unwrapped.optimal_plan().plan)
        assert 0 <= moves < path_length
        # ``moves`` oracle moves in: the rest of the oracle's plan is exactly that much shorter.
        assert _remaining_moves(env) == _remaining_moves(plain) - moves
        # Then the episode plays on from there: the oracle still solves it.
        for _ in range(path_length - moves):
            _, _, terminated, _, step_info = env.step(env.unwrapped.oracle_action())
        assert step_info["success"] and terminated
    assert seen[0] > 0 and sum(seen.values()) - seen[0] > 20  # the task's start is one of the path's states


def test_share_sets_how_many_episodes_start_off_the_task_start():
    for share, low, high in ((0.0, 0, 0), (0.5, 60, 140), (1.0, 150, 200)):
        env = OracleStarts(_tiny(), share)
        moved = sum(env.reset(seed=s, options={"task": t})[1]["start_moves"] > 0 for t, s in _jobs(200, seed=1))
        assert low <= moved <= high, (share, moved)


def test_a_task_the_oracle_does_not_finish_starts_at_its_start():
    env = OracleStarts(_tiny(), 1.0, max_moves=1)
    plain = _tiny()
    for task, seed in _jobs(10, seed=2):
        obs, info = env.reset(seed=seed, options={"task": task})
        assert info["start_moves"] == 0
        assert obs["text"] == plain.reset(seed=seed, options={"task": task})[0]["text"]


def test_bad_share_and_an_env_without_an_oracle_are_refused():
    with pytest.raises(ValueError, match="share=1.5"):
        OracleStarts(_tiny(), 1.5)
    with pytest.raises(ValueError, match="oracle_action, get_state, set_state.*oracle_starts=0"):
        OracleStarts(gym.make("CartPole-v1"), 0.5)


def test_oracle_starts_config_is_validated_and_dropped_for_another_env():
    from agentgym.training import resolve_config
    from trainers.loop import LoopConfig
    from trainers.proact import ProActConfig
    from trainers.sft import SFTConfig

    assert LoopConfig().env.oracle_starts == 0.5
    with pytest.raises(ConfigError, match=r"env.oracle_starts=2.0 must be a share in \[0, 1\]"):
        load_config(LoopConfig, overrides=["env.oracle_starts=2.0"])
    for cls in (SFTConfig, ProActConfig):
        with pytest.raises(ConfigError, match="env.oracle_starts=0.5: this trainer always starts"):
            load_config(cls, overrides=["env.oracle_starts=0.5"])
    assert resolve_config(LoopConfig, env="sokoban").env.oracle_starts == 0.5
    assert resolve_config(LoopConfig, env="2048").env.oracle_starts == 0.0


def test_loop_collects_groups_that_share_their_start(tmp_path, tiny_backend):
    from agentgym.runs import RunDir
    from trainers.loop import LoopTrainer

    cfg = load_config(
        LoopTrainer.Config,
        overrides=["env.oracle_starts=1.0", "env.max_turns=2", "tasks_per_iteration=6", "group_size=2"],
    )
    trainer = LoopTrainer(cfg, RunDir(tmp_path / "run", tensorboard=False), backend=tiny_backend(seed=0))
    trajectories = trainer.collect(0)
    starts = collections.defaultdict(set)
    for t in trajectories:
        starts[(t.task, t.seed)].add(t.start_moves)
    assert all(len(s) == 1 for s in starts.values())  # K rollouts of a task begin at the same state
    assert any(t.start_moves > 0 for t in trajectories)
    metrics = trainer.iteration_metrics(trajectories, 0.0)
    assert metrics["task_start_share"] == pytest.approx(np.mean([t.start_moves == 0 for t in trajectories]))


def test_a_trainer_on_an_env_without_state_copying_fails_at_start(tmp_path, tiny_backend, monkeypatch):
    from agentgym.runs import RunDir
    from environments.sokoban.env import SokobanEnv
    from trainers.loop import LoopTrainer

    monkeypatch.delattr(SokobanEnv, "set_state")  # falls back to the abstract base method
    cfg = load_config(LoopTrainer.Config)
    with pytest.raises(ConfigError, match="env.oracle_starts=0.5: SokobanEnv .* does not implement set_state"):
        LoopTrainer(cfg, RunDir(tmp_path / "run", tensorboard=False), backend=tiny_backend(seed=0))
