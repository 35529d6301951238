"""Start-state curriculum: begin some training episodes part-way along the oracle's solution.

A policy that almost never reaches the goal from a task's start gets almost no reward signal. Starting some
episodes from states on the expert's own path to the goal, a few moves short of it, gives it successes to learn
from, and the states it learns near the goal are the ones it must reach from the start (Backplay, Resnick et al.
2018, arXiv 1807.06919; learning from a single demonstration, Salimans and Chen 2018, arXiv 1812.03381). Here
the demonstration is the env's oracle, and the start is drawn uniformly from the states of its path.

Only training uses it: held-out evaluation always starts at the task's start.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

#: What an env needs for oracle starts, by method name.
REQUIRED = ("oracle_action", "get_state", "set_state")


def missing_methods(env: Any) -> list[str]:
    """The methods of ``REQUIRED`` that ``env`` (unwrapped) does not implement."""
    base = env.unwrapped
    missing = []
    for name in REQUIRED:
        method = getattr(type(base), name, None)
        if method is None or getattr(method, "__isabstractmethod__", False):  # AgentEnv's own are abstract
            missing.append(name)
    return missing


class OracleStarts(gym.Wrapper):
    """Start a share of episodes at a random state on the oracle's path from the task's start to the goal.

    On ``reset``, with probability ``share`` (drawn from the reset seed, so episodes reset with the same seed and
    task get the same start, as the K rollouts of a group must), the oracle plays the task from its start until
    ``info["success"]``, and the episode begins at one of the path's unsolved states, drawn uniformly (the
    task's own start is one of them). ``info["start_moves"]`` says how many oracle moves the start is in (0: the
    task's start). A task the oracle does not solve within ``max_moves`` starts at its start.

    The oracle's moves are real env steps: an env that counts steps toward its own limit (Sokoban's
    ``max_steps``) counts them too.

    Raises:
        ValueError: ``share`` outside [0, 1], or an env without an oracle and state copying (named).
    """

    def __init__(self, env: gym.Env, share: float, *, max_moves: int = 500) -> None:
        super().__init__(env)
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share={share!r} must be a probability in [0, 1] (0: every episode at the task's start).")
        missing = missing_methods(env)
        if missing:
            raise ValueError(
                f"{type(env.unwrapped).__name__} cannot start episodes along the oracle's path: it does not "
                f"implement {', '.join(missing)}. Set env.oracle_starts=0 for this env."
            )
        self.share, self.max_moves = float(share), int(max_moves)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """The task's start, or with probability ``share`` a state on the oracle's path (``info["start_moves"]``)."""
        obs, info = self.env.reset(seed=seed, options=options)
        info["start_moves"] = 0
        rng = np.random.default_rng(None if seed is None else [seed, 0x5EED])
        if self.share == 0.0 or rng.random() >= self.share:
            return obs, info
        path = self._oracle_path()
        if path is None:
            return obs, info
        moves = int(rng.integers(len(path)))
        base = self.env.unwrapped
        base.set_state(path[moves])
        info["start_moves"] = moves
        return base.observation(), info

    def _oracle_path(self) -> list[Any] | None:
        """The unsolved states along the oracle's path from the current state, or None (the env is restored)."""
        base = self.env.unwrapped
        path = [base.get_state()]
        for _ in range(self.max_moves):
            action = base.oracle_action()
            if action is None:
                break
            _, _, terminated, truncated, info = base.step(action)
            if info.get("success"):
                return path
            if terminated or truncated:
                break
            path.append(base.get_state())
        base.set_state(path[0])
        return None
