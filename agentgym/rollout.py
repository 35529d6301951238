"""The rollout engine: many episodes at once, one batched policy call per turn, trajectories out.

Each turn, the observations of all live episodes go to the policy in one ``act`` call (one batched generate for
an LLM, one forward for a neural policy); then every env steps (in a thread pool when ``env_workers`` > 0, for
envs whose steps wait on I/O or subprocesses). Finished episodes are replaced from the queue, so the batch stays
full. A job is a (task, seed) pair run ``group_size`` times with the same seed: the groups that leave-one-out and
group-normalised advantages need. Policies that keep per-episode memory (LLM conversations) provide
``begin(env, obs, info) -> memory``; the engine hands the memories back on every ``act`` call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from agentgym.env import observation_text
from agentgym.trajectory import Trajectory, TrajectoryWriter, Turn, to_jsonable


@dataclass(frozen=True)
class RolloutConfig:
    """How episodes are scheduled.

    Attributes:
        num_envs: episodes run concurrently (the policy's batch size).
        group_size: episodes per job, all with the job's task and seed.
        max_turns: per-episode turn budget; an episode reaching it is truncated (None: the env's own limit).
        max_episode_tokens: per-episode budget of generated tokens; reaching it truncates the episode.
        env_workers: threads stepping envs (0 steps in the calling thread: right for cheap envs).
        record_text: keep each turn's text observation in the trajectory.
    """

    num_envs: int = 16
    group_size: int = 1
    max_turns: int | None = None
    max_episode_tokens: int | None = None
    env_workers: int = 0
    record_text: bool = True

    def __post_init__(self) -> None:
        for name in ("num_envs", "group_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1.")
        if self.max_turns is not None and self.max_turns < 1:
            raise ValueError(f"max_turns={self.max_turns} must be >= 1 or None.")


def _snapshot(obs: Any) -> Any:
    """A copy of an observation's arrays (envs may reuse their buffers between steps)."""
    if isinstance(obs, np.ndarray):
        return obs.copy()
    if isinstance(obs, dict):
        return {k: _snapshot(v) for k, v in obs.items()}
    if isinstance(obs, (list, tuple)):
        return type(obs)(_snapshot(v) for v in obs)
    return obs


@dataclass
class _Episode:
    env: Any
    trajectory: Trajectory
    obs: Any
    memory: Any
    started: float


class RolloutEngine:
    """Runs jobs of (task, seed) through a policy and returns finished trajectories.

    Args:
        make_env: builds one env (called up to ``num_envs`` times; envs are reused across episodes).
        policy: anything with ``act(observations, *, envs, rng, memories=None) -> ActionBatch``.
        config: scheduling settings.
        env_id: recorded in trajectories.
        policy_name: recorded in trajectories.
        writer: streams each finished trajectory to JSONL.
    """

    def __init__(
        self,
        make_env: Callable[[], Any],
        policy: Any,
        config: RolloutConfig | None = None,
        *,
        env_id: str = "",
        policy_name: str = "",
        writer: TrajectoryWriter | None = None,
    ) -> None:
        self.make_env, self.policy = make_env, policy
        self.config = config or RolloutConfig()
        self.env_id, self.policy_name, self.writer = env_id, policy_name, writer
        self._envs: list[Any] = []
        self._pool = ThreadPoolExecutor(self.config.env_workers) if self.config.env_workers > 0 else None
        self.generate_s = 0.0
        self.env_s = 0.0

    def close(self) -> None:
        """Close envs and the worker pool."""
        for env in self._envs:
            env.close()
        if self._pool is not None:
            self._pool.shutdown()

    # ------------------------------------------------------------------ public
    def run(
        self,
        jobs: Sequence[tuple[Hashable, int]],
        *,
        seed: int = 0,
        on_episode: Callable[[Trajectory], None] | None = None,
    ) -> list[Trajectory]:
        """Run every job ``group_size`` times; returns trajectories in completion order.

        Ctrl-C stops the run and returns what finished (already streamed to the writer, if any).
        """
        rng = np.random.default_rng(seed)
        queue = [(task, s, g) for task, s in jobs for g in range(self.config.group_size)]
        queue.reverse()  # pop() from the end keeps job order
        free = list(range(self.config.num_envs - 1, -1, -1))  # pop() hands out slot 0 first: envs are made lazily
        live: dict[int, _Episode] = {}
        done: list[Trajectory] = []
        try:
            while queue or live:
                while queue and free:
                    slot = free.pop()
                    live[slot] = self._start(slot, *queue.pop())
                for slot in self._turn(live, rng):
                    episode = live.pop(slot)
                    free.append(slot)
                    done.append(self._finish(episode))
                    if self.writer is not None:
                        self.writer.write(done[-1])
                    if on_episode is not None:
                        on_episode(done[-1])
        except KeyboardInterrupt:
            pass
        return done

    # ------------------------------------------------------------------ internals
    def _env(self, slot: int) -> Any:
        while len(self._envs) <= slot:
            self._envs.append(self.make_env())
        return self._envs[slot]

    def _start(self, slot: int, task: Hashable, seed: int, group: int) -> _Episode:
        env = self._env(slot)
        obs, info = env.reset(seed=seed, options={"task": task})
        memory = self.policy.begin(env, obs, info) if hasattr(self.policy, "begin") else None
        names = getattr(env.unwrapped.task_set, "names", None)  # finite task sets (level files) name their tasks
        trajectory = Trajectory(
            env_id=self.env_id,
            task=to_jsonable(task),
            seed=seed,
            group=group,
            split=str(info.get("split", "")),
            difficulty=info.get("difficulty"),
            start_moves=int(info.get("start_moves", 0)),
            task_name=names[int(task)] if names else None,
            policy=self.policy_name,
        )
        if getattr(self.policy, "records_observations", False):  # neural policies: re-scored by their trainer
            trajectory.observations, trajectory.logprobs = [], []
        return _Episode(env, trajectory, obs, memory, time.perf_counter())

    def _turn(self, live: dict[int, _Episode], rng: np.random.Generator) -> list[int]:
        """One batched policy call and one step of every live env; returns the slots that finished."""
        slots = list(live)
        episodes = [live[s] for s in slots]
        kwargs = {"memories": [e.memory for e in episodes]} if hasattr(self.policy, "begin") else {}
        start = time.perf_counter()
        batch = self.policy.act([e.obs for e in episodes], envs=[e.env for e in episodes], rng=rng, **kwargs)
        gen_s = time.perf_counter() - start
        self.generate_s += gen_s
        per_episode = batch.info.get("episodes") or [{} for _ in episodes]
        texts = [observation_text(e.env, e.obs) if self.config.record_text else None for e in episodes]

        def step(i: int) -> tuple[tuple, float]:
            t0 = time.perf_counter()
            out = episodes[i].env.step(batch.actions[i])
            return out, time.perf_counter() - t0

        start = time.perf_counter()
        results = (
            list(self._pool.map(step, range(len(episodes)))) if self._pool else [step(i) for i in range(len(episodes))]
        )
        self.env_s += time.perf_counter() - start
        finished = []
        for i, (slot, episode) in enumerate(zip(slots, episodes)):
            (obs, reward, terminated, truncated, info), env_s = results[i]
            meta = per_episode[i]
            traj = episode.trajectory
            traj.turns.append(
                Turn(
                    observation=texts[i],
                    action=to_jsonable(batch.actions[i]),
                    reward=float(reward),
                    action_valid=bool(info.get("action_valid", True)),
                    info=to_jsonable(info),
                    prompt_tokens=int(meta.get("prompt_tokens", 0)),
                    response_tokens=int(meta.get("response_tokens", 0)),
                    finish_reason=str(meta.get("finish_reason", "")),
                    generate_s=gen_s / len(episodes),
                    env_s=env_s,
                )
            )
            traj.warnings.extend(meta.get("warnings", ()))
            if traj.observations is not None:
                traj.observations.append(_snapshot(episode.obs))
                traj.logprobs.append(float(batch.logprobs[i]))
            traj.episode_return += float(reward)
            traj.success = bool(info.get("success", False))
            episode.obs = obs
            if meta.get("stop"):  # the policy cannot go on (e.g. its context is full): truncate, say why
                truncated = True
            truncated = truncated or self._over_budget(traj)
            if terminated or truncated:
                traj.terminated, traj.truncated = bool(terminated), bool(truncated and not terminated)
                finished.append(slot)
        return finished

    def _over_budget(self, traj: Trajectory) -> bool:
        cfg = self.config
        if cfg.max_turns is not None and traj.steps >= cfg.max_turns:
            traj.warnings.append(f"turn budget reached ({cfg.max_turns} turns); episode truncated")
            return True
        if cfg.max_episode_tokens is not None and traj.response_tokens >= cfg.max_episode_tokens:
            traj.warnings.append(
                f"token budget reached ({traj.response_tokens} >= {cfg.max_episode_tokens}); episode truncated"
            )
            return True
        return False

    def _finish(self, episode: _Episode) -> Trajectory:
        traj = episode.trajectory
        export = getattr(episode.memory, "export", None)
        if export is not None:
            for key, value in export().items():
                setattr(traj, key, value)
        traj.wall_s = time.perf_counter() - episode.started
        return traj
