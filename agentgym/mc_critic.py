"""MC-Critic: non-parametric Monte-Carlo values from copies of env states (ProAct, spec section 4.3).

``V(s)`` is the mean discounted return of ``M`` rollouts of ``H`` steps started from a copy of ``s``;
``Q(s, a)`` is the same with the first action fixed to ``a``:

    V_MC(s)    = (1/M) sum_m sum_{k=0}^{H-1} gamma^k r_k^(m)
    Q_MC(s, a) = (1/M) sum_m [ r(s, a) + sum_{k=1}^{H-1} gamma^k r_k^(m) ]

A rollout ends early when its episode terminates or truncates (no bootstrap: the env's own episode end). Rollouts
run on scratch envs restored with ``set_state``, so no env is built per rollout; the default factory builds them
with ``obs_mode="struct"`` so that cheap envs never render text. Each rollout draws fresh random numbers for its
actions and (``reseed_env``) for the env's own randomness (2048's spawns) instead of replaying the snapshot's RNG.
The streams are derived from ``(seed, state key, action)`` (and the rollout's place in its lockstep batch for
Policy objects): estimates are deterministic given the seed, whatever the caching, the workers or (random and
oracle rollouts) the batching.

Estimates are cached per ``(state_key, canonical action)``; text that does not parse and out-of-range actions share
one "invalid" key per state. The cache trusts ``state_key``: what the key leaves out (step counters, the stuck
counter of 2048) is assumed not to change the value.
"""

from __future__ import annotations

import hashlib
import pickle
import queue
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any, Literal

import numpy as np
from gymnasium import spaces

from agentgym.config import ConfigError
from agentgym.errors import AgentGymError

_VALUE: tuple[str] = ("value",)  # cache tag of V(s): no first action
_INVALID: tuple[str] = ("invalid",)  # cache tag of every action the env cannot use
_STATE_METHODS = ("get_state", "set_state", "state_key")


@dataclass(frozen=True)
class MCCriticConfig:
    """Settings of the Monte-Carlo critic (defaults: cheap enough for a 2-core CPU; ProAct uses M=1000)."""

    rollouts: int = 64
    """M: rollouts averaged per estimate."""
    horizon: int = 20
    """H: steps per rollout, the fixed first action of Q included (0: V = 0 and Q = r(s, a))."""
    gamma: float = 0.95
    """Discount per step, in [0, 1] (ProAct: 0.95 Sokoban, 0.9 2048)."""
    rollout_policy: Literal["random", "oracle", "policy"] = "random"
    """random: uniform over the action space; oracle: env.oracle_action(); policy: the Policy given to MCCritic."""
    workers: int = 0
    """0 or 1: rollouts run in this process; N > 1: N worker threads or processes (see parallel)."""
    parallel: Literal["process", "thread"] = "process"
    """How workers run: processes (CPU-bound Python envs; needs a picklable env factory) or threads (envs that
    wait on I/O or release the GIL)."""
    seed: int = 0
    """Root of every rollout's random streams."""
    reseed_env: bool = True
    """Give each rollout a fresh env RNG stream (spawns, noise) instead of the snapshot's own."""
    cache: bool = True
    """Reuse estimates per (state_key, canonical action)."""
    policy_batch: int = 64
    """Rollouts run in lockstep with a Policy object (one act() call per step for all of them)."""

    def __post_init__(self) -> None:
        def need_int(name: str, low: int, why: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ConfigError(f"MCCriticConfig.{name}={value!r} is invalid: {why}")

        need_int("rollouts", 1, "the number of rollouts M must be an int >= 1, e.g. rollouts=64.")
        need_int("horizon", 0, "the horizon H must be an int >= 0 steps, e.g. horizon=20.")
        need_int("workers", 0, "workers must be 0 (in-process) or a number of workers >= 1.")
        need_int("policy_batch", 1, "policy_batch must be an int >= 1, e.g. policy_batch=64.")
        if isinstance(self.gamma, bool) or not isinstance(self.gamma, (int, float)) or not 0.0 <= self.gamma <= 1.0:
            raise ConfigError(f"MCCriticConfig.gamma={self.gamma!r} must be a discount in [0, 1], e.g. gamma=0.95.")
        if self.rollout_policy not in ("random", "oracle", "policy"):
            raise ConfigError(
                f"MCCriticConfig.rollout_policy={self.rollout_policy!r} must be 'random', 'oracle' or 'policy' "
                "(a Policy object passed as MCCritic(..., policy=...))."
            )
        if self.parallel not in ("process", "thread"):
            raise ConfigError(f"MCCriticConfig.parallel={self.parallel!r} must be 'process' or 'thread'.")


@dataclass(frozen=True)
class EnvFactory:
    """A picklable env factory: ``agentgym.make(env_id, **kwargs)`` (worker processes can rebuild it)."""

    env_id: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __call__(self) -> Any:
        """Build the env."""
        from agentgym.registry import make

        return make(self.env_id, **self.kwargs)


def snapshot(env: Any) -> Any:
    """``env.get_state()``, with a clear error for envs that cannot copy their state."""
    base = getattr(env, "unwrapped", env)
    _require_state_methods(base)
    try:
        return base.get_state()
    except NotImplementedError as exc:
        raise _no_state_error(base, "get_state") from exc


def missing_state_methods(env: Any, *, seed: int = 0) -> list[str]:
    """The state-copy methods ``env`` lacks or raises ``NotImplementedError`` from ([] when it can copy its state).

    ``get_state``, ``set_state`` and ``state_key`` are looked up, then called once the env is reset with ``seed``.
    """
    base = env.unwrapped
    missing = [name for name in _STATE_METHODS if not callable(getattr(base, name, None))]
    if missing:
        return missing
    env.reset(seed=seed)
    try:
        state = base.get_state()
    except NotImplementedError:
        missing.append("get_state")
    else:
        try:
            base.set_state(state)
        except NotImplementedError:
            missing.append("set_state")
    try:
        base.state_key()
    except NotImplementedError:
        missing.append("state_key")
    return missing


def _require_state_methods(base: Any) -> None:
    missing = [name for name in _STATE_METHODS if not callable(getattr(base, name, None))]
    if missing:
        raise _no_state_error(base, ", ".join(missing))


def _no_state_error(base: Any, what: str) -> AgentGymError:
    return AgentGymError(
        f"MC-Critic needs {type(base).__name__} to copy its state, but it does not implement {what}. Implement "
        "get_state()/set_state()/state_key() (the agentgym env contract; an env whose state cannot be copied "
        "cheaply implements them by replay), or use a learned critic instead."
    )


def _digest(key: bytes, tag: Hashable) -> list[int]:
    """Four 32-bit words hashing ``(state key, action tag)``: the per-estimate part of the rollout seeds."""
    raw = hashlib.blake2b(key + b"\x00" + repr(tag).encode(), digest_size=16).digest()
    return [int.from_bytes(raw[i : i + 4], "little") for i in range(0, 16, 4)]


class MCCritic:
    """Monte-Carlo values and action values from copies of env states (see the module docstring).

    Args:
        make_env: builds a scratch env of the same configuration as the envs whose states are evaluated. Use
            ``MCCritic.for_env`` for a registered env (struct observations, picklable for worker processes).
        config: the critic's settings.
        policy: the rollout policy when ``config.rollout_policy == "policy"`` (any object with the agentgym
            ``Policy.act`` protocol; ``begin(env, obs, info)`` is called per rollout when it has one).

    Raises:
        ConfigError: a policy given without ``rollout_policy="policy"`` or the other way round, or worker
            processes with an unpicklable factory or a Policy object.
        AgentGymError: the env cannot copy its state.
    """

    def __init__(self, make_env: Callable[[], Any], config: MCCriticConfig | None = None, *,
                 policy: Any | None = None) -> None:
        self.config = cfg = config or MCCriticConfig()
        if (policy is not None) != (cfg.rollout_policy == "policy"):
            raise ConfigError(
                "MC-Critic: pass a Policy object exactly when rollout_policy='policy' "
                f"(got rollout_policy={cfg.rollout_policy!r} and policy={type(policy).__name__})."
            )
        if cfg.workers > 1 and cfg.parallel == "process":
            if policy is not None:
                raise ConfigError("MC-Critic: a Policy object cannot be copied into worker processes; set "
                                  "parallel='thread' (env steps then run in threads) or workers=0.")
            try:
                pickle.dumps(make_env)
            except Exception as exc:
                raise ConfigError(
                    f"MC-Critic with worker processes needs a picklable env factory, got {make_env!r} ({exc}); use "
                    "MCCritic.for_env(env_id, ...) or an EnvFactory, or set parallel='thread'."
                ) from exc
        self.make_env, self.policy = make_env, policy
        self.env = make_env()
        self.base = getattr(self.env, "unwrapped", self.env)
        _require_state_methods(self.base)
        self._cache: dict[tuple[bytes, Hashable], float] = {}
        self._pool: Executor | None = None
        self._envs: queue.SimpleQueue[Any] = queue.SimpleQueue()  # scratch envs of the worker threads
        self._lockstep: list[Any] = []
        self.stats = {"estimates": 0, "cache_hits": 0, "rollouts": 0, "env_steps": 0}

    @classmethod
    def for_env(cls, env_id: str, config: MCCriticConfig | None = None, *, policy: Any | None = None,
                **env_kwargs: Any) -> MCCritic:
        """A critic for a registered env; scratch envs are ``make(env_id, obs_mode="struct", **env_kwargs)``."""
        return cls(EnvFactory(env_id, {"obs_mode": "struct", **env_kwargs}), config, policy=policy)

    # ------------------------------------------------------------------ public API
    def values(self, states: Sequence[Any]) -> np.ndarray:
        """``V(s)`` for each state snapshot (from ``env.get_state()``), as a float64 array."""
        return self._evaluate(states, [_VALUE] * len(states))

    def value(self, state: Any) -> float:
        """``V(s)`` of one state snapshot."""
        return float(self.values([state])[0])

    def q_values(self, states: Sequence[Any], actions: Sequence[Any]) -> np.ndarray:
        """``Q(s, a)`` for each (state, action) pair; actions are action-space values or text the env parses."""
        if len(states) != len(actions):
            raise AgentGymError(f"q_values got {len(states)} states but {len(actions)} actions; pass one per state.")
        return self._evaluate(states, list(actions))

    def q_table(self, states: Sequence[Any]) -> np.ndarray:
        """``Q(s, a)`` of every action of a ``Discrete`` action space: shape ``(len(states), n)``."""
        space = self.base.action_space
        if not isinstance(space, spaces.Discrete):
            raise AgentGymError(f"q_table needs a Discrete action space, got {space}; call q_values per action.")
        actions = [int(space.start) + i for i in range(int(space.n))]
        flat = self._evaluate([s for s in states for _ in actions], [a for _ in states for a in actions])
        return flat.reshape(len(states), len(actions))

    def clear_cache(self) -> None:
        """Forget every cached estimate."""
        self._cache.clear()

    def close(self) -> None:
        """Stop worker processes/threads and close the scratch envs."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        while not self._envs.empty():
            self._envs.get().close()
        for env in self._lockstep:
            env.close()
        self._lockstep.clear()
        self.env.close()

    def __enter__(self) -> MCCritic:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ batching and caching
    def _evaluate(self, states: Sequence[Any], actions: Sequence[Any]) -> np.ndarray:
        out = np.empty(len(states), dtype=np.float64)
        todo: dict[tuple[bytes, Hashable], list[int]] = {}
        jobs: list[Job] = []
        for i, (state, action) in enumerate(zip(states, actions)):
            key = self._key_of(state)
            fixed = action is not _VALUE
            tag, step_action = self._canonical(action) if fixed else (_VALUE, None)
            ck = (key, tag)
            if self.config.cache and ck in self._cache:
                out[i] = self._cache[ck]
                self.stats["cache_hits"] += 1
            elif ck in todo:  # the same estimate twice in one batch: compute it once
                todo[ck].append(i)
            else:
                todo[ck] = [i]
                jobs.append(Job(state, fixed, step_action, key, tag))
        for (ck, rows), value in zip(todo.items(), self._run(jobs)):
            out[rows] = value
            if self.config.cache:
                self._cache[ck] = value
        self.stats["estimates"] += len(jobs)
        self.stats["rollouts"] += len(jobs) * self.config.rollouts
        return out

    def _key_of(self, state: Any) -> bytes:
        try:
            self.base.set_state(state)
            return bytes(self.base.state_key())
        except NotImplementedError as exc:
            raise _no_state_error(self.base, "set_state/state_key") from exc

    def _canonical(self, action: Any) -> tuple[Hashable, Any]:
        """``(cache tag, action to step with)``; every action the env cannot use shares the invalid tag."""
        coerce = getattr(self.base, "coerce_action", None)
        if coerce is None:
            return (action if isinstance(action, Hashable) else repr(action)), action
        parsed, error = coerce(action)
        if error is not None:
            return _INVALID, action
        if isinstance(parsed, np.ndarray):
            return parsed.tobytes(), parsed
        return parsed, parsed

    def _run(self, jobs: list[Job]) -> list[float]:
        cfg = self.config
        if not jobs:
            return []
        if cfg.rollout_policy == "policy":
            return self._policy_estimates(jobs)
        if cfg.workers <= 1:
            return [_estimate(self.env, cfg, job) for job in jobs]
        if self._pool is None:
            if cfg.parallel == "process":
                self._pool = ProcessPoolExecutor(cfg.workers, mp_context=get_context("spawn"),
                                                 initializer=_init_worker, initargs=(self.make_env, cfg))
            else:
                self._pool = ThreadPoolExecutor(cfg.workers)
        if cfg.parallel == "process":
            return list(self._pool.map(_worker_estimate, jobs, chunksize=max(1, len(jobs) // (4 * cfg.workers))))
        return list(self._pool.map(self._thread_estimate, jobs))

    def _thread_estimate(self, job: Job) -> float:
        try:
            env = self._envs.get_nowait()
        except queue.Empty:
            env = self.make_env()
        try:
            return _estimate(env, self.config, job)
        finally:
            self._envs.put(env)

    # ------------------------------------------------------------------ Policy-object rollouts
    def _policy_estimates(self, jobs: list[Job]) -> list[float]:
        """Rollouts of a Policy object, ``policy_batch`` at a time in lockstep (one act() call per step)."""
        cfg = self.config
        runs = [(j, m) for j in range(len(jobs)) for m in range(cfg.rollouts)]
        totals = np.zeros(len(jobs))
        for start in range(0, len(runs), cfg.policy_batch):
            chunk = runs[start : start + cfg.policy_batch]
            words = [w for j, m in chunk for w in (*_digest(jobs[j].key, jobs[j].tag), m)]
            rng = np.random.default_rng([cfg.seed, *words])
            for (j, _), ret in zip(chunk, self._lockstep_returns([jobs[j] for j, _ in chunk], rng)):
                totals[j] += ret
        return [float(t) for t in totals / cfg.rollouts]

    def _lockstep_returns(self, jobs: list[Job], rng: np.random.Generator) -> list[float]:
        cfg, policy = self.config, self.policy
        while len(self._lockstep) < len(jobs):
            self._lockstep.append(self.make_env())
        envs = self._lockstep[: len(jobs)]
        obs, memories = [], []
        for env, job in zip(envs, jobs):
            base = env.unwrapped
            base.set_state(job.state)
            if cfg.reseed_env:
                base.np_random = np.random.Generator(np.random.PCG64(int(rng.integers(2**63))))
            obs.append(base._observation() if hasattr(base, "_observation") else None)
            memories.append(policy.begin(env, obs[-1], {}) if hasattr(policy, "begin") else None)
        if cfg.workers > 1 and self._pool is None:
            self._pool = ThreadPoolExecutor(cfg.workers)
        mapper = self._pool.map if cfg.workers > 1 and self._pool is not None else map
        returns, discount = [0.0] * len(jobs), 1.0
        live = list(range(len(jobs)))
        for k in range(max(cfg.horizon, 1)):
            live = [i for i in live if k < _horizon(cfg, jobs[i])]
            if not live:
                break
            ask = [i for i in live if k > 0 or not jobs[i].fixed]
            chosen = {i: jobs[i].action for i in live if i not in ask}
            if ask:
                kwargs = {"memories": [memories[i] for i in ask]} if hasattr(policy, "begin") else {}
                batch = policy.act([obs[i] for i in ask], envs=[envs[i] for i in ask], rng=rng, **kwargs)
                chosen.update(zip(ask, batch.actions))
            pairs = [(envs[i], chosen[i]) for i in live]
            still = []
            for i, (o, r, terminated, truncated, _) in zip(live, mapper(lambda p: p[0].step(p[1]), pairs)):
                returns[i] += discount * float(r)
                obs[i] = o
                if not (terminated or truncated):
                    still.append(i)
            self.stats["env_steps"] += len(live)
            live, discount = still, discount * cfg.gamma
        return returns


@dataclass(frozen=True)
class Job:
    """One estimate to compute: M rollouts from ``state``, the first action fixed when ``fixed``."""

    state: Any
    fixed: bool
    action: Any
    key: bytes
    tag: Hashable


def _horizon(cfg: MCCriticConfig, job: Job) -> int:
    """Steps per rollout: H, and at least the fixed first action of a Q estimate."""
    return max(cfg.horizon, 1) if job.fixed else cfg.horizon


def _estimate(env: Any, cfg: MCCriticConfig, job: Job) -> float:
    """The mean discounted return of ``cfg.rollouts`` random/oracle rollouts on one scratch env (the hot loop)."""
    base = env.unwrapped
    rng = np.random.default_rng([cfg.seed, *_digest(job.key, job.tag)])
    horizon = _horizon(cfg, job)
    # One env stream per estimate, continued across its rollouts (set_state rewinds the env's own RNG, and the
    # stream is put back after it): each rollout draws fresh numbers, with one Generator built per estimate.
    env_rng = np.random.Generator(np.random.PCG64(int(rng.integers(2**63))))
    space = base.action_space
    draws = None
    if cfg.rollout_policy == "random" and isinstance(space, spaces.Discrete):
        lo = int(space.start)
        draws = rng.integers(lo, lo + int(space.n), size=(cfg.rollouts, horizon)).tolist()
    oracle = cfg.rollout_policy == "oracle"
    gamma, total, state, fixed = cfg.gamma, 0.0, job.state, job.fixed
    step, set_state = base.step, base.set_state
    for m in range(cfg.rollouts):
        set_state(state)
        if cfg.reseed_env:
            base.np_random = env_rng
        if draws is None and not oracle:
            space.seed(int(rng.integers(2**63)))
        ret, discount = 0.0, 1.0
        for k in range(horizon):
            if k == 0 and fixed:
                a = job.action
            elif oracle:
                a = base.oracle_action()
            else:
                a = draws[m][k] if draws is not None else space.sample()
            _, r, terminated, truncated, _ = step(a)
            ret += discount * r
            if terminated or truncated:
                break
            discount *= gamma
        total += ret
    return float(total / cfg.rollouts)


_WORKER_ENV: Any = None
_WORKER_CONFIG: MCCriticConfig | None = None


def _init_worker(make_env: Callable[[], Any], cfg: MCCriticConfig) -> None:
    """Build the one scratch env of a worker process."""
    global _WORKER_ENV, _WORKER_CONFIG
    _WORKER_ENV, _WORKER_CONFIG = make_env(), cfg


def _worker_estimate(job: Job) -> float:
    assert _WORKER_CONFIG is not None  # set by _init_worker
    return _estimate(_WORKER_ENV, _WORKER_CONFIG, job)


def exact_random_value(make_env: Callable[[], Any], state: Any, *, horizon: int, gamma: float,
                       max_states: int = 200_000) -> float:
    """The exact ``H``-step discounted value of the uniform-random policy, by dynamic programming.

    For deterministic envs with a ``Discrete`` action space and a small reachable state graph (tiny Sokoban):
    the graph is explored from ``state`` through ``set_state``/``step`` up to depth ``H`` (states merged by
    ``state_key``), then ``V_h(s) = mean_a [r(s, a) + gamma (1 - done) V_{h-1}(s')]`` with ``V_0 = 0``. An episode
    end (terminated or truncated) stops the return, as in the MC rollouts; give the env a step limit beyond the
    horizon so that truncation (which ``state_key`` does not see) never happens inside it.

    Raises:
        AgentGymError: more than ``max_states`` states are reachable within the horizon.
    """
    env = make_env()
    base = env.unwrapped
    n = int(base.action_space.n)
    base.set_state(state)
    root = bytes(base.state_key())
    snapshots, depth = {root: state}, {root: 0}
    edges: dict[bytes, list[tuple[float, bool, bytes]]] = {}
    frontier = [root]
    while frontier:
        nxt = []
        for key in frontier:
            if depth[key] >= horizon:
                continue
            out = []
            for a in range(n):
                base.set_state(snapshots[key])
                _, r, terminated, truncated, _ = base.step(int(base.action_space.start) + a)
                child = bytes(base.state_key())
                done = bool(terminated or truncated)
                out.append((float(r), done, child))
                if not done and child not in snapshots:
                    if len(snapshots) >= max_states:
                        raise AgentGymError(f"exact_random_value: more than {max_states} states are reachable within "
                                            f"{horizon} steps; use a smaller level or horizon.")
                    snapshots[child], depth[child] = base.get_state(), depth[key] + 1
                    nxt.append(child)
            edges[key] = out
        frontier = nxt
    env.close()
    value = dict.fromkeys(snapshots, 0.0)
    for h in range(1, horizon + 1):
        # Only states reached within horizon - h steps matter for V_h at the root.
        value = {key: (sum(r + (0.0 if done else gamma * value[c]) for r, done, c in edges[key]) / n
                       if key in edges and depth[key] <= horizon - h else 0.0) for key in snapshots}
    return value[root]
