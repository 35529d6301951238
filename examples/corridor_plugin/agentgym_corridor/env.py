"""A 1-D corridor: start at a random cell, reach the exit at the right end. Optimal return is known exactly."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces

from agentgym import AgentEnv, SeedTasks


@dataclass(frozen=True)
class CorridorState:
    """Everything the corridor needs to continue exactly."""

    position: int
    start: int
    steps: int
    rng: dict[str, Any]


class CorridorEnv(AgentEnv[CorridorState]):
    """Corridor.

    ## Action Space
    ``Discrete(2)``: 0 Left, 1 Right (text: "left"/"right").

    ## Observation Space
    ``struct``: one-hot position, float32 of shape ``(length,)``; ``text``: the corridor as ``.A..E``.

    ## Rewards
    +1 on reaching the exit, -0.01 per step otherwise.

    ## Episode End
    Terminates at the exit; truncates after ``max_steps``.

    ## Arguments
    ``length`` cells; ``max_steps``.

    ## Version History
    v0: initial version.
    """

    action_names = ("Left", "Right")
    tags = ("example",)

    def __init__(self, length: int = 5, max_steps: int = 20, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if length < 2:
            raise ValueError(f"length={length} must be >= 2 so that there is a cell besides the exit.")
        self.length, self.max_steps = length, max_steps
        self.action_space = spaces.Discrete(2)
        self.text_max_length = length + 1
        self._build_observation_space(spaces.Box(0.0, 1.0, (length,), np.float32))
        self._tasks = SeedTasks(namespace=f"corridor/{length}")
        self.position = self.start = self.steps = 0

    @property
    def task_set(self) -> SeedTasks:
        """Seeds; the start cell is drawn from the seed."""
        return self._tasks

    def _reset_task(self, task: Hashable) -> dict[str, Any]:
        self.start = self.position = int(np.random.default_rng(int(task)).integers(0, self.length - 1))
        self.steps = 0
        return {"optimal_steps": self.length - 1 - self.start}

    def _step(self, action: int | None) -> tuple[float, bool, bool, dict[str, Any]]:
        if action is not None:
            self.position = min(max(self.position + (1 if action == 1 else -1), 0), self.length - 1)
        self.steps += 1
        success = self.position == self.length - 1
        return (1.0 if success else -0.01), success, self.steps >= self.max_steps and not success, {"success": success}

    def _struct_obs(self) -> np.ndarray:
        obs = np.zeros(self.length, np.float32)
        obs[self.position] = 1.0
        return obs

    def text_observation(self) -> str:
        """The corridor as a row of cells: A agent, E exit."""
        return "".join(
            "A" if i == self.position else ("E" if i == self.length - 1 else ".") for i in range(self.length)
        )

    def instructions(self) -> str:
        """Rules and answer format."""
        return "You are A in a corridor; reach the exit E. Answer Left or Right."

    def parse_action(self, text: str) -> int | None:
        """The last Left/Right word in the text."""
        words = text.lower().split()
        for word in reversed(words):
            if word.strip(".,!<>/") in ("left", "right"):
                return int(word.strip(".,!<>/") == "right")
        return None

    def get_state(self) -> CorridorState:
        """Position, start, step count and RNG."""
        return CorridorState(self.position, self.start, self.steps, self._rng_state())

    def set_state(self, state: CorridorState) -> None:
        """Restore a ``get_state`` snapshot."""
        self.position, self.start, self.steps = state.position, state.start, state.steps
        self._restore_rng(state.rng)

    def state_key(self) -> bytes:
        """The position (the only state that matters for acting)."""
        return self.position.to_bytes(4, "little")

    def oracle_action(self) -> int:
        """Always Right: the exit is at the right end."""
        return 1
