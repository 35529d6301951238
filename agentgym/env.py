"""The agentgym environment contract: a ``gymnasium.Env`` with views, text actions, tasks, state and an oracle.

Subclasses implement a handful of ``_``-prefixed hooks; this base turns them into the full contract so that
every env handles text actions, invalid actions, task selection and observation modes the same way.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Hashable
from typing import Any, ClassVar, Generic, TypeVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from agentgym.errors import TaskError
from agentgym.tasks import SPLITS, TaskSet

StateT = TypeVar("StateT")

OBS_MODES = ("dict", "struct", "text")
#: Characters every text view may use; envs extend it with their own symbols.
BASE_CHARSET = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 \n\t.,:;!?'\"()[]{}<>-_+=*/#@$%&|^~`\\"
)


class AgentEnv(gym.Env, Generic[StateT]):
    """Base class of agentgym environments.

    ``step`` accepts an action from ``action_space`` *or* a string, which is parsed with ``parse_action``. An
    unparseable string, an out-of-range index or a wrong type is never an exception: it is a no-op step with
    ``info["action_valid"] = False``, ``info["action_error"]`` naming the problem, and ``invalid_action_penalty``
    subtracted from the reward. Every step reports ``info["success"]``.

    Observations follow ``obs_mode``: ``"dict"`` gives ``{"text": str, "struct": array}``, ``"struct"`` only the
    array (fastest; text is then rendered only when ``text_observation()`` is called) and ``"text"`` only the
    string.

    Subclasses set ``action_space``, ``_struct_space``, ``text_max_length``, ``text_charset`` and implement
    ``_reset_task``, ``_step``, ``_struct_obs``, ``text_observation``, ``instructions``, ``parse_action``,
    ``get_state``, ``set_state``, ``state_key``, ``oracle_action`` and ``task_set``.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi", "rgb_array", "human"], "render_fps": 4}
    #: Display name of each discrete action, in index order (used by text views and ``agentgym play``).
    action_names: ClassVar[tuple[str, ...]] = ()
    #: Free-form tags shown by ``agentgym envs`` (family, skills, multi-agent, ...).
    tags: ClassVar[tuple[str, ...]] = ()
    #: Observation views offered: a subset of ("struct", "text", "rgb", "graph").
    views: ClassVar[tuple[str, ...]] = ("struct", "text")
    text_max_length: int = 4096
    text_charset: frozenset[str] = BASE_CHARSET

    def __init__(self, *, obs_mode: str = "dict", invalid_action_penalty: float = 0.0, render_mode: str | None = None):
        if obs_mode not in OBS_MODES:
            raise ValueError(f"obs_mode={obs_mode!r} is not one of {OBS_MODES}.")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode={render_mode!r} is not one of {self.metadata['render_modes']}.")
        if not np.isfinite(invalid_action_penalty) or invalid_action_penalty < 0:
            raise ValueError(
                f"invalid_action_penalty={invalid_action_penalty!r} must be a finite magnitude >= 0; "
                "it is subtracted from the reward of an invalid step."
            )
        self.obs_mode = obs_mode
        self.render_mode = render_mode
        self.invalid_action_penalty = float(invalid_action_penalty)
        self.task: Hashable | None = None

    # ------------------------------------------------------------------ spaces
    def _build_observation_space(self, struct_space: spaces.Space) -> None:
        """Call from the subclass ``__init__`` once ``struct_space`` is known."""
        text = spaces.Text(max_length=self.text_max_length, min_length=0, charset=frozenset(self.text_charset))
        self.observation_space = {
            "dict": spaces.Dict({"text": text, "struct": struct_space}),
            "struct": struct_space,
            "text": text,
        }[self.obs_mode]

    def observation(self) -> Any:
        """The observation of the current state in ``obs_mode`` (e.g. after ``set_state``)."""
        return self._observation()

    def _observation(self) -> Any:
        if self.obs_mode == "struct":
            return self._struct_obs()
        if self.obs_mode == "text":
            return self.text_observation()
        return {"text": self.text_observation(), "struct": self._struct_obs()}

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """Start an episode.

        Options:
            task: the task to set up (see ``task_set``); wins over ``split``.
            split: draw a task of this split with ``self.np_random`` (default ``"train"``).
        """
        super().reset(seed=seed)
        options = options or {}
        unknown = set(options) - {"task", "split"}
        if unknown:
            raise TaskError(f"Unknown reset option(s) {sorted(unknown)}; reset understands 'task' and 'split'.")
        if options.get("task") is not None:
            task = options["task"]
            split = self.task_set.split_of(task)
        else:
            split = options.get("split", "train")
            if split not in SPLITS and not (split == "all" and self.task_set.finite):
                raise TaskError(f"Unknown split {split!r}; choose one of {SPLITS}.")
            task = self.task_set.sample(split, self.np_random) if split != "all" else self._sample_any()
            split = self.task_set.split_of(task)
        info = self._reset_task(task)
        self.task = task
        info.update(task=task, split=split, difficulty=self.task_set.difficulty(task), success=False)
        return self._observation(), info

    def _sample_any(self) -> Hashable:
        members = self.task_set.tasks("all")
        return members[int(self.np_random.integers(len(members)))]

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        """Advance one step; ``action`` is an action index or text (see the class docstring)."""
        parsed, error = self.coerce_action(action)
        reward, terminated, truncated, info = self._step(parsed)
        if error is None:
            info["action_valid"] = True
        else:
            info["action_valid"] = False
            info["action_error"] = error
            reward -= self.invalid_action_penalty
        if self.render_mode == "human":
            self.render()
        return self._observation(), reward, terminated, truncated, info

    def coerce_action(self, action: Any) -> tuple[Any | None, str | None]:
        """Map what ``step`` received to a valid action, or ``(None, reason)`` for an invalid one."""
        if isinstance(action, str):
            parsed = self.parse_action(action)
            if parsed is None:
                shown = action if len(action) <= 60 else action[:57] + "..."
                return None, f"could not parse an action from {shown!r}; {self.action_format()}"
            return parsed, None
        if isinstance(self.action_space, spaces.Discrete):
            if isinstance(action, (bool, np.bool_)) or not isinstance(action, (int, np.integer)):
                if isinstance(action, np.ndarray) and action.shape == () and np.issubdtype(action.dtype, np.integer):
                    action = int(action)
                else:
                    return None, f"action {action!r} has type {type(action).__name__}; pass an int or text"
            lo, n = int(self.action_space.start), int(self.action_space.n)
            if not lo <= action < lo + n:
                return None, f"action {action} is out of range; valid actions are {lo}..{lo + n - 1}"
            return int(action), None
        if action not in self.action_space:
            return None, f"action {action!r} is not in {self.action_space}"
        return action, None

    def action_format(self) -> str:
        """One line telling how to write an action as text."""
        names = ", ".join(self.action_names)
        return f"answer with one of: {names}" if names else "see instructions()"

    def render(self) -> Any:
        """``ansi``: the text view; ``rgb_array``: an RGB image; ``human``: print the text view."""
        if self.render_mode == "rgb_array":
            return self.render_rgb()
        if self.render_mode == "human":
            print(self.text_observation())
            return None
        return self.text_observation()

    def render_rgb(self) -> np.ndarray:
        """An ``(H, W, 3)`` uint8 image of the state (envs with an ``rgb`` view override this)."""
        raise NotImplementedError(f"{type(self).__name__} has no rgb view; use render_mode='ansi'.")

    # ------------------------------------------------------------------ hooks for subclasses
    @property
    @abstractmethod
    def task_set(self) -> TaskSet:
        """The tasks this env can set up, with disjoint train/dev/test splits."""

    @abstractmethod
    def _reset_task(self, task: Hashable) -> dict[str, Any]:
        """Set up ``task`` (drawing any randomness from ``self.np_random``) and return the reset info."""

    @abstractmethod
    def _step(self, action: Any | None) -> tuple[float, bool, bool, dict[str, Any]]:
        """Apply a valid action, or a no-op when ``action`` is None; return reward, terminated, truncated, info."""

    @abstractmethod
    def _struct_obs(self) -> Any:
        """The structured observation (a fresh array the caller may keep)."""

    @abstractmethod
    def text_observation(self) -> str:
        """The per-step text view of the current state."""

    @abstractmethod
    def instructions(self) -> str:
        """Rules and action format; stable for a given task (the system part of an LLM prompt)."""

    @abstractmethod
    def parse_action(self, text: str) -> Any | None:
        """Extract an action from model text; None when there is none. Pure: no side effects."""

    @abstractmethod
    def get_state(self) -> StateT:
        """A picklable snapshot, RNG included, after which ``set_state`` continues exactly like this env."""

    @abstractmethod
    def set_state(self, state: StateT) -> None:
        """Restore a snapshot taken by ``get_state`` (of this env or another instance with the same config)."""

    @abstractmethod
    def state_key(self) -> bytes:
        """A hashable, history-free key of the current state (equal states give equal keys)."""

    @abstractmethod
    def oracle_action(self) -> Any | None:
        """The expert's action from the current state, or None when the expert has none (a dead end)."""

    # ------------------------------------------------------------------ helpers for subclasses
    def _rng_state(self) -> dict[str, Any]:
        return self.np_random.bit_generator.state

    def _restore_rng(self, state: dict[str, Any]) -> None:
        # np_random is created lazily by gymnasium; restoring must not depend on whether reset ran here.
        bit_gen = getattr(np.random, state["bit_generator"])()
        bit_gen.state = state
        self._np_random = np.random.Generator(bit_gen)


def observation_text(env: Any, obs: Any) -> str | None:
    """The text view of an observation.

    The obs itself (``obs_mode="text"``), its ``"text"`` entry (``"dict"``), or the env's ``text_observation()``
    (``"struct"``: rendered only now); None for an env with no text view.
    """
    if isinstance(obs, str):
        return obs
    if isinstance(obs, dict) and isinstance(obs.get("text"), str):
        return obs["text"]
    render = getattr(getattr(env, "unwrapped", env), "text_observation", None)
    return render() if render is not None else None
