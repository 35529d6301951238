"""Token-exact multi-turn conversations: the chat template is rendered once per new message, never re-applied.

A conversation is a list of segments (system prompt, then per turn: the user message, the sampled assistant
tokens, and the template's closing tokens). The assistant segment holds exactly the ids the backend sampled, so
the sequence a trainer scores is the sequence that was generated, and the loss mask covers those ids only.
Each new message is tokenized as the *difference* between two renderings of the template, which works for any
template whose rendering of a longer conversation extends the shorter one (checked, with a clear error if not).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agentgym.errors import AgentGymError
from policies.llm.base import Generation

_SENTINEL = "\x00agentgym-sentinel\x00"


class ContextOverflowError(AgentGymError, ValueError):
    """Even the system prompt and the newest observation do not fit in the context budget."""


@dataclass
class Segment:
    """A run of tokens of one kind.

    Attributes:
        role: ``system``, ``user``, ``assistant`` (sampled, trainable), ``context`` (an assistant reply that is
            history only: a demonstration's untaught detour, never in the loss mask) or ``template`` (closing
            tokens the template adds after an assistant message; not trainable).
        ids: token ids.
        turn: the turn the segment belongs to (-1 for the system prompt).
        logprobs: per-token sampling log-probs (assistant segments only).
        entropies: per-token entropies (assistant segments only, when the backend gives them).
        choice_sets: per-token guided-decoding choice sets (assistant segments only; see ``Generation``).
    """

    role: str
    ids: list[int]
    turn: int
    logprobs: list[float] | None = None
    entropies: list[float] | None = None
    choice_sets: list[tuple[int, ...] | None] | None = None


@dataclass
class Conversation:
    """The token-level history of one episode's chat."""

    tokenizer: Any
    system: str
    budget: int | None = None
    segments: list[Segment] = field(default_factory=list)
    messages: list[dict[str, str]] = field(default_factory=list)
    dropped_turns: int = 0
    turn: int = 0

    def __post_init__(self) -> None:
        self.messages = [{"role": "system", "content": self.system}]
        text = self._render(self.messages, generation_prompt=False)
        self.segments = [Segment("system", self._encode(text), -1)]

    # ------------------------------------------------------------------ building
    def _render(self, messages: list[dict[str, str]], *, generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def add_user(self, content: str) -> None:
        """Append a user message (an observation) and the assistant header the template adds after it."""
        before = self._render(self.messages, generation_prompt=False)
        self.messages.append({"role": "user", "content": content})
        after = self._render(self.messages, generation_prompt=True)
        if not after.startswith(before):
            raise AgentGymError(
                "This tokenizer's chat template re-renders earlier messages differently when a message is added, so "
                "a multi-turn prompt cannot be built token-exactly; use a model whose template extends the prefix."
            )
        self.segments.append(Segment("user", self._encode(after[len(before) :]), self.turn))

    def add_assistant(self, generation: Generation, *, trainable: bool = True) -> None:
        """Append the sampled tokens and the template's closing tokens (not trainable).

        With ``trainable=False`` the reply is history only (role ``context``): later turns see it, no loss covers it.
        """
        self.segments.append(
            Segment(
                "assistant" if trainable else "context",
                list(generation.token_ids),
                self.turn,
                list(generation.logprobs),
                None if generation.entropies is None else list(generation.entropies),
                None if generation.choice_sets is None else list(generation.choice_sets),
            )
        )
        self.messages.append({"role": "assistant", "content": generation.text})
        closing = self._closing(generation)
        if closing:
            self.segments.append(Segment("template", closing, self.turn))
        self.turn += 1

    def _closing(self, generation: Generation) -> list[int]:
        """Template tokens that follow an assistant message, minus an end-of-turn token the model already sampled."""
        probe = [*self.messages[:-1], {"role": "assistant", "content": _SENTINEL}]
        rendered = self._render(probe, generation_prompt=False)
        closing = rendered[rendered.index(_SENTINEL) + len(_SENTINEL) :]
        eos = self.tokenizer.eos_token
        ids = generation.token_ids
        if eos and ids and ids[-1] == self.tokenizer.eos_token_id and closing.startswith(eos):
            closing = closing[len(eos) :]
        return self._encode(closing) if closing else []

    # ------------------------------------------------------------------ reading
    def prompt_ids(self, reserve: int = 0, max_turns: int | None = None) -> list[int]:
        """The ids to generate from: system prompt plus as many recent turns as fit ``budget - reserve``.

        Whole old turns are dropped (counted in ``dropped_turns``); the newest user message is always kept, and
        at most ``max_turns`` earlier turns are (None: no limit). Raises ``ContextOverflowError`` when even the
        system prompt and the newest message do not fit, so nothing ever overflows silently.
        """
        system, rest = self.segments[0], self.segments[1:]
        total = len(system.ids) + sum(len(s.ids) for s in rest)
        turns = sorted({s.turn for s in rest})
        must_drop = max(0, len(turns) - 1 - max_turns) if max_turns is not None else 0
        if must_drop == 0 and (self.budget is None or total + reserve <= self.budget):
            return [t for s in self.segments for t in s.ids]
        budget = self.budget if self.budget is not None else float("inf")
        dropped = 0
        while (dropped < must_drop or total + reserve > budget) and dropped < len(turns) - 1:
            total -= sum(len(s.ids) for s in rest if s.turn == turns[dropped])
            dropped += 1
        if total + reserve > budget:
            raise ContextOverflowError(
                f"The system prompt and the current observation take {total} tokens, plus {reserve} reserved for "
                f"the answer, over the context budget of {self.budget}; raise the budget or shorten the prompt."
            )
        self.dropped_turns = max(self.dropped_turns, dropped)
        kept = [s for s in rest if s.turn >= turns[dropped]]
        return [t for s in (system, *kept) for t in s.ids]

    def sequence(self) -> tuple[list[int], list[int], list[float]]:
        """The whole episode as one sequence: ids, loss mask (1 on sampled tokens) and sampling log-probs."""
        ids: list[int] = []
        mask: list[int] = []
        logprobs: list[float] = []
        for s in self.segments:
            ids += s.ids
            trainable = s.role == "assistant"
            mask += [int(trainable)] * len(s.ids)
            logprobs += s.logprobs if trainable and s.logprobs is not None else [0.0] * len(s.ids)
        return ids, mask, logprobs

    def choice_sets(self) -> list[list[Any]] | None:
        """Guided tokens of the whole sequence as ``[[position, [ids]], ...]`` (None when no reply has any)."""
        found: list[list[Any]] = []
        pos = 0
        for s in self.segments:
            for j, ids in enumerate(s.choice_sets or ()):
                if ids is not None:
                    found.append([pos + j, list(ids)])
            pos += len(s.ids)
        return found or None
