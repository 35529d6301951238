"""A multi-turn memory test with a known optimum: recall a word shown only on the first turn."""

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

#: Secret words, in index order. Lowercase, and each is one token with and without a leading space in common
#: BPE vocabularies (checked with SmolLM2's), none a colour of the bandit or the word "ok".
WORDS: tuple[str, ...] = ("apple", "river", "stone", "cloud", "lion", "bear", "cat", "dog")
#: The acknowledgement accepted on the turns before the question (action 0).
OK = "ok"
_TEXT_MAX_LENGTH = 64


@dataclass(frozen=True)
class MemoryState:
    """A snapshot of a memory episode (see ``MemoryEnv.get_state``).

    Attributes:
        num_words: size of the word set, checked on restore.
        num_turns: turns up to and including the question, checked on restore.
        secret: index of the secret word.
        answer: the word index answered at the question, or None before a valid answer.
        steps: steps taken in the episode (invalid ones included).
        task: the task (seed) of the episode.
        rng: ``np_random.bit_generator.state``, which draws the next task on an unseeded reset.
    """

    num_words: int
    num_turns: int
    secret: int
    answer: int | None
    steps: int
    task: Hashable
    rng: dict[str, Any]


class MemoryEnv(AgentEnv[MemoryState]):
    """Memory: a secret word is shown once; after a few filler turns, say which word it was.

    ## Description
    Turn 1 shows the secret word ("The secret word is river. Remember it."), turns 2 to ``num_turns - 1`` show
    only "Wait.", and turn ``num_turns`` asks "What was the secret word?". No observation after the first one
    mentions the word, so answering right requires remembering the first observation (a recurrent state, or an
    LLM's conversation history); an agent that sees only the current observation can do no better than a guess.

    ## Action Space
    ``Discrete(num_words + 1)``: 0 is ``ok`` and ``i >= 1`` is the word ``WORDS[i - 1]`` (``action_names``
    holds ``ok`` and the first ``num_words`` words). Before the question every action is accepted and ignored;
    at the question a word is the answer and ``ok`` a wrong answer. Text is accepted too: the first of these
    words in the text, in any case, or in the last ``<answer>...</answer>`` when there is one.

    ## Observation Space
    Set by ``obs_mode``:
    - ``"struct"``: ``Box(0, 1, (num_words + 1,), float32)``: a one-hot of the secret word on turn 1 only (zeros
      afterwards) in the first ``num_words`` entries, and a last entry that is 1 while the question is asked.
    - ``"text"``: "The secret word is river. Remember it.", then "Wait.", then "What was the secret word?";
      after the answer, "You answered river.".
    - ``"dict"``: ``{"text": ..., "struct": ...}``.

    ## Rewards
    1.0 for answering the secret word at the question, 0.0 for every other step. Input that is not an action
    (unparseable text, an out-of-range index) is a no-op step with ``-invalid_action_penalty`` and
    ``info["action_valid"] = False``; a no-op still lets time pass, so an invalid step on turn 1 moves on to
    the filler turns just as ``ok`` would.

    ## Starting State
    The task is an int seed that fixes the secret word (through its own generator). Train/dev/test split the
    seeds by hash, not by word, so every split holds every word; held-out tasks differ only in seed.

    ## Episode End
    - Terminated: a valid action at the question (any word, or ``ok``). ``info["success"]`` is True when it was
      the secret word.
    - Truncated: ``max_steps`` steps passed without a valid answer to the question (invalid input at the
      question is a no-op, and the question is asked again).
    Stepping after the end is a no-op that repeats the end flags with reward 0.

    ## Known Optimum
    Return 1.0 in ``num_turns`` steps (the oracle, which answers ``ok`` and then the secret). A policy that does
    not use the first observation succeeds with probability ``1 / num_words`` (all words are equally likely).

    ## Arguments
    - ``num_words``: size of the word set, 2 to 8 (default 4: apple, river, stone, cloud).
    - ``num_turns``: turns up to and including the question, at least 2 (default 4: show, two waits, ask).
    - ``max_steps``: steps before truncation, at least ``num_turns`` (default ``num_turns + 2``, so two invalid
      replies are tolerated).
    - ``obs_mode``, ``invalid_action_penalty`` (default 0.0), ``render_mode`` (``"ansi"`` or ``"human"``): see
      ``AgentEnv``.

    ## Version History
    - v0: initial version.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi", "human"], "render_fps": 4}
    tags: ClassVar[tuple[str, ...]] = ("sanity", "memory", "multi-turn", "single-agent")
    views: ClassVar[tuple[str, ...]] = ("struct", "text")
    text_max_length: int = _TEXT_MAX_LENGTH

    def __init__(
        self,
        *,
        num_words: int = 4,
        num_turns: int = 4,
        max_steps: int | None = None,
        obs_mode: str = "dict",
        invalid_action_penalty: float = 0.0,
        render_mode: str | None = None,
    ) -> None:
        super().__init__(obs_mode=obs_mode, invalid_action_penalty=invalid_action_penalty, render_mode=render_mode)
        max_steps = num_turns + 2 if max_steps is None and _is_int(num_turns) else max_steps
        _validate(num_words, num_turns, max_steps)
        self.num_words = num_words
        self.num_turns = num_turns
        self.max_steps: int = max_steps  # type: ignore[assignment]
        self.words = WORDS[:num_words]
        # Per instance, because the names depend on num_words; text views, prompts and play read them from here.
        self.action_names = (OK, *self.words)  # type: ignore[misc]
        self._pattern = name_pattern(self.action_names)
        self._tasks = SeedTasks(namespace=f"memory/{num_words}")
        self.action_space = spaces.Discrete(num_words + 1)
        self._build_observation_space(spaces.Box(0.0, 1.0, (num_words + 1,), dtype=np.float32))
        self._secret = 0
        self._answer: int | None = None
        self._steps = 0

    # ------------------------------------------------------------------ episode
    @property
    def task_set(self) -> TaskSet:
        """Int seeds, split by hash under the namespace ``memory/<num_words>``."""
        return self._tasks

    @property
    def secret_word(self) -> str:
        """The secret word of the current episode."""
        return self.words[self._secret]

    def secret_of(self, task: int) -> int:
        """The index in ``words`` of the secret word of ``task``."""
        # A generator of its own, keyed by the task alone, so that a task always means the same word.
        return int(np.random.default_rng(int(task)).integers(self.num_words))

    @property
    def asking(self) -> bool:
        """True while the question is asked (the last turn, until a valid answer)."""
        return self._answer is None and self._steps >= self.num_turns - 1

    def _reset_task(self, task: Hashable) -> dict[str, Any]:
        self._secret = self.secret_of(int(task))  # type: ignore[arg-type]
        self._answer = None
        self._steps = 0
        return {"turn": 1}

    def _step(self, action: int | None) -> tuple[float, bool, bool, dict[str, Any]]:
        was_asking = self.asking and self._steps < self.max_steps
        self._steps += 1
        reward = 0.0
        if was_asking and action is not None:
            # A word is the answer; "ok" (action 0) is a valid but wrong one, stored as -1 to tell it from a word.
            self._answer = action - 1
            reward = 1.0 if self._answer == self._secret else 0.0
        terminated = self._answer is not None
        truncated = not terminated and self._steps >= self.max_steps
        info = {"success": self._answer == self._secret, "turn": min(self._steps, self.num_turns - 1) + 1}
        return reward, terminated, truncated, info

    # ------------------------------------------------------------------ views
    def _struct_obs(self) -> np.ndarray:
        obs = np.zeros(self.num_words + 1, dtype=np.float32)
        if self._steps == 0:
            obs[self._secret] = 1.0
        if self.asking:
            obs[-1] = 1.0
        return obs

    def text_observation(self) -> str:
        """The secret (first turn only), the filler, the question, or the answer given."""
        if self._answer is not None:
            return f"You answered {self.action_names[self._answer + 1]}."
        if self._steps == 0:
            return f"The secret word is {self.secret_word}. Remember it."
        if self.asking:
            return "What was the secret word?"
        return "Wait."

    def instructions(self) -> str:
        """The rules and the answer format."""
        listed = f"{', '.join(self.words[:-1])} or {self.words[-1]}"
        return (
            "This is a memory test. On turn 1 you are shown a secret word; until you are asked for it you are "
            f"told to wait, and you answer ok. On turn {self.num_turns} you are asked for the secret word: "
            "answering it right scores 1.\n"
            f"Answer with one word: ok while waiting, and at the question one of {listed}, for example "
            f"<answer>{OK}</answer>."
        )

    def action_format(self) -> str:
        """One line telling how to write an action."""
        return f"answer with one word: {', '.join(self.action_names)}"

    def parse_action(self, text: str) -> int | None:
        """The first of ``ok`` and the words named in the text (in the last ``<answer>...</answer>`` if any)."""
        return first_name(text, self._pattern, self.action_names)

    # ------------------------------------------------------------------ state
    def get_state(self) -> MemoryState:
        """A picklable snapshot (secret, answer, step count, RNG); ``set_state`` continues exactly from it."""
        return MemoryState(
            self.num_words, self.num_turns, self._secret, self._answer, self._steps, self.task, self._rng_state()
        )

    def set_state(self, state: MemoryState) -> None:
        """Restore a snapshot of a memory env with the same ``num_words`` and ``num_turns``."""
        if not isinstance(state, MemoryState):
            raise StateError(f"set_state got a {type(state).__name__}; pass a MemoryState from get_state().")
        if (state.num_words, state.num_turns) != (self.num_words, self.num_turns):
            raise StateError(
                f"The state is of an env with num_words={state.num_words}, num_turns={state.num_turns}, but this "
                f"one has {self.num_words}, {self.num_turns}; restore it into an env made with those."
            )
        self._secret, self._answer, self._steps, self.task = state.secret, state.answer, state.steps, state.task
        self._restore_rng(state.rng)

    def state_key(self) -> bytes:
        """Secret, turn (retries at the question count as the same turn) and answer."""
        turn = min(self._steps, self.num_turns - 1)
        return bytes((self._secret, turn, 0 if self._answer is None else self._answer + 2))

    # ------------------------------------------------------------------ expert
    def oracle_action(self) -> int:
        """``ok`` before the question, then the secret word (privileged: it reads the secret, not its memory)."""
        return self._secret + 1 if self.asking else 0


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate(num_words: int, num_turns: int, max_steps: int | None) -> None:
    if not _is_int(num_words) or not 2 <= num_words <= len(WORDS):
        raise ValueError(f"num_words={num_words!r} must be an int from 2 to {len(WORDS)}.")
    if not _is_int(num_turns) or num_turns < 2:
        raise ValueError(f"num_turns={num_turns!r} must be an int >= 2: one turn to show the word, one to ask.")
    if not _is_int(max_steps) or max_steps < num_turns:  # type: ignore[operator]
        raise ValueError(
            f"max_steps={max_steps!r} must be an int >= num_turns={num_turns}, or None for num_turns + 2; with "
            "fewer steps the question is never asked."
        )
