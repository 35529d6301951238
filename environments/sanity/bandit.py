"""A one-step text bandit with a known optimum, for trainer learning tests."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from gymnasium import spaces

from agentgym.env import AgentEnv
from agentgym.errors import StateError
from agentgym.tasks import SeedTasks, TaskSet
from environments.sanity.parse import first_name, name_pattern

#: Arm names in arm order. All lowercase, and each is one token with and without a leading space in common BPE
#: vocabularies (checked with SmolLM2's; "Purple" and "Orange" capitalised are not), so an LLM answers in one
#: token and a trainer's learning signal is not spread over sub-word pieces.
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange", "black", "white")
TASK = "task"
# The longest text view: the contextual line plus the question, with the longest colour name.
_TEXT_MAX_LENGTH = 96


@dataclass(frozen=True)
class BanditState:
    """A snapshot of a bandit episode (see ``BanditEnv.get_state``).

    Attributes:
        num_arms: number of arms, checked on restore.
        paying_arm: the arm that pays in this episode.
        chosen: the arm chosen, or None while the episode waits for a valid answer.
        steps: steps taken in the episode (invalid ones included).
        task: the task (seed) of the episode.
        rng: ``np_random.bit_generator.state``, which draws the next task on an unseeded reset.
    """

    num_arms: int
    paying_arm: int
    chosen: int | None
    steps: int
    task: Hashable
    rng: dict[str, Any]


class BanditEnv(AgentEnv[BanditState]):
    """Bandit: choose one of a few colours; one of them pays 1.

    ## Description
    A one-step multi-armed bandit with deterministic rewards, used to test that a trainer learns at all. With a
    fixed ``paying_arm`` the same colour pays in every episode and the agent must learn it from rewards alone.
    With ``paying_arm="task"`` the paying colour is drawn per task and the observation names it ("The lucky
    colour today is blue."), a contextual bandit whose optimum requires reading the prompt.

    ## Action Space
    ``Discrete(num_arms)``: arm ``i`` is the colour ``COLOURS[i]`` (red, green, blue, yellow, purple, orange,
    black, white; ``action_names`` holds the first ``num_arms``). Text is accepted too: the first colour word in
    the text, in any case, or in the last ``<answer>...</answer>`` when there is one (see ``parse_action``).

    ## Observation Space
    Set by ``obs_mode``:
    - ``"struct"``: ``Box(0, 1, (num_arms,), float32)``, one-hot of the paying arm in contextual mode and all
      zeros with a fixed paying arm (which the agent is not told).
    - ``"text"``: ``"The lucky colour today is blue. Which colour do you choose?"`` in contextual mode,
      ``"Which colour do you choose?"`` otherwise; after a choice, ``"You chose green."``.
    - ``"dict"``: ``{"text": ..., "struct": ...}``.

    ## Rewards
    1.0 for choosing the paying arm, 0.0 for any other arm. Input that is not an arm (unparseable text, an
    out-of-range index) is a no-op step with ``-invalid_action_penalty`` and ``info["action_valid"] = False``.

    ## Starting State
    The task is an int seed. In contextual mode it fixes the paying arm (through its own generator, so the arm
    does not depend on ``reset``'s seed); with a fixed paying arm every task is the same game. Train/dev/test
    split the seeds by hash, not by paying arm: with only ``num_arms`` distinct games, a split by content would
    leave most splits without some colours. Held-out tasks therefore differ from training ones only in seed.

    ## Episode End
    - Terminated: after the first valid action (any arm). ``info["success"]`` is True when it was the paying arm.
    - Truncated: ``max_steps`` steps passed without a valid action (only invalid input was given).
    Stepping after the end is a no-op that repeats the end flags with reward 0.

    ## Known Optimum
    Return 1.0 and success 1.0 per episode (the oracle); a uniform random arm gets ``1 / num_arms``.

    ## Arguments
    - ``num_arms``: number of arms, 2 to 8 (default 4: red, green, blue, yellow).
    - ``paying_arm``: the arm index that always pays (default 2, blue), or ``"task"`` for the contextual bandit.
    - ``max_steps``: steps allowed for a valid answer before truncation (default 3).
    - ``obs_mode``, ``invalid_action_penalty`` (default 0.0), ``render_mode`` (``"ansi"`` or ``"human"``): see
      ``AgentEnv``.

    ## Version History
    - v0: initial version.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi", "human"], "render_fps": 4}
    tags: ClassVar[tuple[str, ...]] = ("sanity", "bandit", "single-step", "single-agent")
    views: ClassVar[tuple[str, ...]] = ("struct", "text")
    text_max_length: int = _TEXT_MAX_LENGTH

    def __init__(
        self,
        *,
        num_arms: int = 4,
        paying_arm: int | str = 2,
        max_steps: int = 3,
        obs_mode: str = "dict",
        invalid_action_penalty: float = 0.0,
        render_mode: str | None = None,
    ) -> None:
        super().__init__(obs_mode=obs_mode, invalid_action_penalty=invalid_action_penalty, render_mode=render_mode)
        _validate(num_arms, paying_arm, max_steps)
        self.num_arms = num_arms
        self.paying_arm = paying_arm
        self.contextual = paying_arm == TASK
        self.max_steps = max_steps
        # Per instance, because the names depend on num_arms; text views, prompts and play read them from here.
        self.action_names = COLOURS[:num_arms]  # type: ignore[misc]
        self._pattern = name_pattern(self.action_names)
        self._tasks = SeedTasks(namespace=f"bandit/{num_arms}/{'task' if self.contextual else 'fixed'}")
        self.action_space = spaces.Discrete(num_arms)
        self._build_observation_space(spaces.Box(0.0, 1.0, (num_arms,), dtype=np.float32))
        self._paying = 0 if self.contextual else int(paying_arm)
        self._chosen: int | None = None
        self._steps = 0

    # ------------------------------------------------------------------ episode
    @property
    def task_set(self) -> TaskSet:
        """Int seeds, split by hash under the namespace ``bandit/<num_arms>/<task|fixed>``."""
        return self._tasks

    @property
    def current_paying_arm(self) -> int:
        """The arm that pays in the current episode."""
        return self._paying

    def paying_arm_of(self, task: int) -> int:
        """The arm that pays in ``task`` (the same arm for every task unless the bandit is contextual)."""
        if not self.contextual:
            return int(self.paying_arm)
        # A generator of its own, keyed by the task alone, so that a task always means the same paying arm.
        return int(np.random.default_rng(int(task)).integers(self.num_arms))

    def _reset_task(self, task: Hashable) -> dict[str, Any]:
        self._paying = self.paying_arm_of(int(task))  # type: ignore[arg-type]
        self._chosen = None
        self._steps = 0
        return {"arm": None}

    def _step(self, action: int | None) -> tuple[float, bool, bool, dict[str, Any]]:
        ended = self._chosen is not None or self._steps >= self.max_steps
        self._steps += 1
        reward = 0.0
        if not ended and action is not None:
            self._chosen = action
            reward = 1.0 if action == self._paying else 0.0
        terminated = self._chosen is not None
        truncated = not terminated and self._steps >= self.max_steps
        info = {"success": self._chosen == self._paying, "arm": self._chosen}
        return reward, terminated, truncated, info

    # ------------------------------------------------------------------ views
    def _struct_obs(self) -> np.ndarray:
        obs = np.zeros(self.num_arms, dtype=np.float32)
        if self.contextual:
            obs[self._paying] = 1.0
        return obs

    def text_observation(self) -> str:
        """The question (naming the lucky colour in contextual mode), or the choice once made."""
        if self._chosen is not None:
            return f"You chose {COLOURS[self._chosen]}."
        question = "Which colour do you choose?"
        if self.contextual:
            return f"The lucky colour today is {COLOURS[self._paying]}. {question}"
        return question

    def instructions(self) -> str:
        """The rules and the answer format."""
        listed = _or_list(self.action_names)
        if self.contextual:
            rule = "Each round one colour is lucky, and the message names it. The lucky colour pays 1, the others 0."
        else:
            rule = "One of the colours always pays 1 and the others pay 0; you are not told which."
        return (
            f"You are choosing a colour. {rule} You get one choice per round.\n"
            f"Answer with one colour: {listed}, for example <answer>{self.action_names[0]}</answer>."
        )

    def action_format(self) -> str:
        """One line telling how to write a choice."""
        return f"answer with one colour: {_or_list(self.action_names)}"

    def parse_action(self, text: str) -> int | None:
        """The first colour named in the text (in the last ``<answer>...</answer>`` if any), ignoring case.

        "Blue, not red" is blue: the first colour counts, so a model should answer before explaining or use the
        answer tags. None when no colour of this bandit is named.
        """
        return first_name(text, self._pattern, self.action_names)

    # ------------------------------------------------------------------ state
    def get_state(self) -> BanditState:
        """A picklable snapshot (paying arm, choice, step count, RNG); ``set_state`` continues exactly from it."""
        return BanditState(self.num_arms, self._paying, self._chosen, self._steps, self.task, self._rng_state())

    def set_state(self, state: BanditState) -> None:
        """Restore a snapshot of a bandit with the same ``num_arms``."""
        if not isinstance(state, BanditState):
            raise StateError(f"set_state got a {type(state).__name__}; pass a BanditState from get_state().")
        if state.num_arms != self.num_arms:
            raise StateError(
                f"The state is of a {state.num_arms}-arm bandit but this env has {self.num_arms} arms; restore it "
                f"into an env made with num_arms={state.num_arms}."
            )
        self._paying, self._chosen, self._steps, self.task = state.paying_arm, state.chosen, state.steps, state.task
        self._restore_rng(state.rng)

    def state_key(self) -> bytes:
        """Paying arm and choice: everything the observation and the future rewards depend on (not the steps)."""
        return bytes((self._paying, 0 if self._chosen is None else self._chosen + 1))

    # ------------------------------------------------------------------ expert
    def oracle_action(self) -> int:
        """The paying arm (privileged in fixed mode, where the observation does not name it)."""
        return self._paying


def _or_list(names: tuple[str, ...]) -> str:
    """``"red, green, blue or yellow"``."""
    return f"{', '.join(names[:-1])} or {names[-1]}"


def _validate(num_arms: int, paying_arm: int | str, max_steps: int) -> None:
    if isinstance(num_arms, bool) or not isinstance(num_arms, int) or not 2 <= num_arms <= len(COLOURS):
        raise ValueError(f"num_arms={num_arms!r} must be an int from 2 to {len(COLOURS)} (one colour per arm).")
    if paying_arm != TASK and (
        isinstance(paying_arm, bool) or not isinstance(paying_arm, int) or not 0 <= paying_arm < num_arms
    ):
        raise ValueError(
            f"paying_arm={paying_arm!r} must be an arm index in [0, {num_arms}) or {TASK!r} to draw the paying arm "
            "per task and show it in the observation."
        )
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps={max_steps!r} must be a positive int: the steps allowed for a valid answer.")
