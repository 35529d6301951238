"""The registry-wide environment contract check, used by the test suite and by ``agentgym check ENV``.

``check_env`` runs four checks on a registered env and returns a report (raising ``ContractError`` on the first
failure when ``raise_on_failure`` is set):

1. gymnasium's own ``check_env`` on the unwrapped env, with every warning treated as a failure;
2. determinism: two envs with the same seed, fed the same mixed actions (indices, text, invalid input), agree
   exactly over at least ``steps`` steps (across episode boundaries);
3. state round-trip: ``get_state`` -> pickle -> ``set_state`` (into the same env and into a fresh one) continues
   exactly like the original, and ``state_key`` agrees;
4. oracle: the env's expert reaches ``info["success"]`` on held-out tasks within the episode limit.
"""

from __future__ import annotations

import pickle
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gymnasium.utils.env_checker import check_env as gymnasium_check_env

from agentgym.errors import ContractError
from agentgym.registry import make, spec


@dataclass
class CheckResult:
    """Outcome of one named check."""

    name: str
    passed: bool
    detail: str
    seconds: float


@dataclass
class CheckReport:
    """All check results for one env."""

    env_id: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when every check passed."""
        return all(r.passed for r in self.results)


def deep_equal(a: Any, b: Any) -> bool:
    """Exact structural equality over dicts, sequences, numpy arrays and scalars (NaN equals NaN)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.shape == b.shape
            and a.dtype == b.dtype
            and bool(np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))
        )
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(deep_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(deep_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
        return True
    return type(a) is type(b) and a == b


def _mixed_actions(env: Any, rng: np.random.Generator, n: int) -> list[Any]:
    """Mostly sampled actions, with text, garbage text and out-of-range indices mixed in."""
    names = list(getattr(env, "action_names", ()))
    actions: list[Any] = []
    for _ in range(n):
        u = rng.random()
        if u < 0.75:
            actions.append(_sample(env, rng))
        elif u < 0.85 and names:
            actions.append(str(names[int(rng.integers(len(names)))]))
        elif u < 0.95:
            actions.append("not an action ###")
        else:
            actions.append(10_000)
    return actions


def _sample(env: Any, rng: np.random.Generator) -> Any:
    space = env.action_space
    n = getattr(space, "n", None)
    if n is not None:
        return int(space.start) + int(rng.integers(int(n)))
    space.seed(int(rng.integers(2**31)))
    return space.sample()


def _transition_equal(t1: tuple, t2: tuple) -> bool:
    return all(deep_equal(x, y) for x, y in zip(t1, t2, strict=True))


def check_gymnasium(env_id: str, **kwargs: Any) -> str:
    """Gymnasium's env checker on the unwrapped env; any warning it emits is a failure."""
    env = make(env_id, **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gymnasium_check_env(env.unwrapped, skip_render_check=True)
    env.close()
    relevant = [w for w in caught if not issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning))]
    if relevant:
        raise ContractError(f"gymnasium's checker warned: {relevant[0].message}")
    return "gymnasium env checker passed with no warnings"


def check_determinism(env_id: str, *, steps: int = 50, seed: int = 0, **kwargs: Any) -> str:
    """Two envs, same seeds and actions, identical transitions for at least ``steps`` steps."""
    env1, env2 = make(env_id, **kwargs), make(env_id, **kwargs)
    actions = _mixed_actions(env1, np.random.default_rng(seed), steps)
    compared, episodes, episode_seed = 0, 1, seed
    out1, out2 = env1.reset(seed=episode_seed), env2.reset(seed=episode_seed)
    if not _transition_equal(out1, out2):
        raise ContractError(f"reset(seed={episode_seed}) gave different observations/infos in two envs.")
    for action in actions:
        t1, t2 = env1.step(action), env2.step(action)
        if not _transition_equal(t1, t2):
            raise ContractError(f"Step {compared} (action {action!r}) differed between two identically seeded envs.")
        compared += 1
        if t1[2] or t1[3]:
            episode_seed += 1
            episodes += 1
            if not _transition_equal(env1.reset(seed=episode_seed), env2.reset(seed=episode_seed)):
                raise ContractError(f"reset(seed={episode_seed}) differed between two envs.")
    if compared < steps:
        raise ContractError(f"Only {compared} steps were compared; the check needs {steps}.")
    return f"{compared} steps over {episodes} episode(s) identical"


def check_state_roundtrip(env_id: str, *, steps: int = 30, seed: int = 0, **kwargs: Any) -> str:
    """get_state -> pickle -> set_state continues exactly like the original, in the same and in a fresh env."""
    rng = np.random.default_rng(seed + 1)
    env = make(env_id, **kwargs)
    env.reset(seed=seed)
    for action in _mixed_actions(env, rng, 3):
        if any(env.step(action)[2:4]):
            env.reset(seed=seed + 1)
    state = env.get_state()
    key = env.state_key()
    if not isinstance(key, bytes):
        raise ContractError(f"state_key() returned {type(key).__name__}; it must return bytes.")
    restored = pickle.loads(pickle.dumps(state))
    actions = _mixed_actions(env, rng, steps)

    def run(target: Any) -> list[tuple]:
        # Episodes that end are restarted with an *unseeded* reset, which draws the next task from np_random:
        # that is what proves the RNG travelled with the state.
        trace = []
        for action in actions:
            out = target.step(action)
            trace.append(out)
            if out[2] or out[3]:
                trace.append(target.reset())
        return trace

    original = run(env)
    env.set_state(restored)
    if env.state_key() != key:
        raise ContractError("state_key() after set_state differs from the key when the state was taken.")
    same_env = run(env)
    fresh = make(env_id, **kwargs)
    fresh.reset(seed=seed + 12345)
    fresh.set_state(pickle.loads(pickle.dumps(state)))
    fresh_env = run(fresh)
    for label, trace in (("the same env", same_env), ("a fresh env", fresh_env)):
        if len(trace) != len(original) or not all(map(_transition_equal, original, trace)):
            raise ContractError(f"After set_state in {label}, the env did not continue exactly like the original.")
    resets = len(original) - steps
    return f"restored state continued identically for {steps} steps, {resets} unseeded resets (same and fresh env)"


def check_oracle(
    env_id: str, *, episodes: int = 5, min_success: float = 1.0, split: str = "test", seed: int = 0, **kwargs: Any
) -> str:
    """The env's oracle reaches success on held-out tasks within the episode limit."""
    env = make(env_id, **kwargs)
    successes, steps_taken = 0, []
    tasks = env.unwrapped.task_set.tasks(split, n=episodes) if not env.unwrapped.task_set.finite else None
    if tasks is None:
        tasks = env.unwrapped.task_set.tasks("all")[:episodes]
    for i, task in enumerate(tasks):
        env.reset(seed=seed + i, options={"task": task})
        steps, info = 0, {"success": False}
        while True:
            action = env.unwrapped.oracle_action()
            if action is None:
                break
            _, _, terminated, truncated, info = env.step(action)
            steps += 1
            if terminated or truncated:
                break
        successes += bool(info.get("success"))
        steps_taken.append(steps)
    rate = successes / max(len(tasks), 1)
    if not tasks:
        raise ContractError(f"No {split!r} tasks to run the oracle on.")
    if rate < min_success:
        raise ContractError(
            f"The oracle succeeded on {successes}/{len(tasks)} tasks; at least {min_success:.0%} needed."
        )
    return f"oracle solved {successes}/{len(tasks)} {split} tasks (mean {np.mean(steps_taken):.1f} steps)"


def check_env(
    env_id: str, *, seed: int = 0, steps: int = 50, raise_on_failure: bool = True, **kwargs: Any
) -> CheckReport:
    """Run the four contract checks on a registered env; settings come from its spec's ``check`` dict."""
    env_spec = spec(env_id)
    cfg = env_spec.check
    make_kwargs = {**cfg.get("make_kwargs", {}), **kwargs}
    oracle_kwargs = {**make_kwargs, **cfg.get("oracle_kwargs", {})}
    checks: list[tuple[str, Callable[[], str]]] = [
        ("gymnasium checker", lambda: check_gymnasium(env_spec.id, **make_kwargs)),
        ("determinism", lambda: check_determinism(env_spec.id, steps=steps, seed=seed, **make_kwargs)),
        ("state round-trip", lambda: check_state_roundtrip(env_spec.id, seed=seed, **make_kwargs)),
        (
            "oracle solves",
            lambda: check_oracle(
                env_spec.id,
                episodes=cfg.get("oracle_episodes", 5),
                min_success=cfg.get("oracle_min_success", 1.0),
                seed=seed,
                **oracle_kwargs,
            ),
        ),
    ]
    report = CheckReport(env_spec.id)
    for name, fn in checks:
        start = time.perf_counter()
        try:
            detail, passed = fn(), True
        except ContractError as exc:
            if raise_on_failure:
                raise ContractError(f"{env_spec.id}: {name}: {exc}") from exc
            detail, passed = str(exc), False
        report.results.append(CheckResult(name, passed, detail, time.perf_counter() - start))
    return report
