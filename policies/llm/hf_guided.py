"""Guided decoding for the hf backend: restrict a completion to end with prefix + one of the choices + suffix.

``ChoiceGuide`` holds what is shared by every row of a ``generate`` call (token texts, allowed-token masks,
budgets); ``RowState`` tracks one completion (its tokens, statistics and where it is in prefix / choice /
suffix). Rows without guided decoding use ``RowState`` too, with no guide.
"""

from __future__ import annotations

from typing import Any

import torch

from policies.llm.base import Generation, SamplingParams

_NEG_INF = float("-inf")


def token_strings(tokenizer: Any) -> list[str]:
    """The text each token id adds when it follows ordinary text ("" for special tokens).

    Each id is decoded after an anchor token and the anchor's text is cut off, because tokenizers such as
    SentencePiece drop a token's leading space when it is decoded alone. One batched decode of the whole
    vocabulary (about a second), done once per backend and only when guided decoding is used.
    """
    anchor = tokenizer.encode("a", add_special_tokens=False)[-1]
    head = len(tokenizer.decode([anchor]))
    texts = tokenizer.batch_decode([[anchor, i] for i in range(len(tokenizer))], skip_special_tokens=False)
    special = set(tokenizer.all_special_ids)
    return ["" if i in special else text[head:] for i, text in enumerate(texts)]


class ChoiceGuide:
    """Guided decoding for one (choices, prefix, suffix, max_new_tokens) setting; shared by all rows.

    A row generates freely until its output contains ``choice_prefix``, then every token must keep the text
    after the prefix a prefix of some choice. In ``canonical`` mode (the default) only the tokenizer's own
    spelling of each choice is allowed; in ``any`` mode a token is allowed when its text, appended, still
    spells the beginning of a choice. When the text equals a choice the
    suffix tokens are forced (log-prob 0) and the row finishes with ``"choice"``. Guarantees that every
    completion ends with prefix + choice + suffix:

    * in the free part, EOS is banned and stop strings are ignored, and so are tokens that would complete the
      prefix and run on into text that matches no choice (the ``banned`` sets, per length of prefix matched);
    * when only ``reserve`` tokens are left (prefix + the longest choice in its fewest tokens + suffix), the
      prefix is forced; inside the choice, tokens that could no longer finish in the budget are masked.

    When a choice is a prefix of another (``"Up"``, ``"Upper"``), the shorter one ends the row as soon as it
    is spelled, so the longer can never be chosen.
    """

    def __init__(self, strings: list[str], tokenizer: Any, params: SamplingParams, vocab: int,
                 eos: torch.Tensor) -> None:
        self.strings, self.vocab, self.eos = strings, vocab, eos
        self.prefix, self.choices = params.choice_prefix, tuple(params.choices or ())
        self.by_text: dict[str, list[int]] = {}
        for i, text in enumerate(strings):
            if text:
                self.by_text.setdefault(text, []).append(i)
        self._longest = max(len(t) for t in self.by_text)
        self._costs: dict[str, float] = {"": 0}
        self.prefix_ids = tokenizer.encode(self.prefix, add_special_tokens=False) if self.prefix else []
        self.suffix_ids = tokenizer.encode(params.choice_suffix, add_special_tokens=False)
        # Canonical mode: each choice only as the tokenizer itself spells it after the prefix, with the text
        # each of its token-prefixes spells (so the row's spelled text says where it is in the sequence).
        self.canonical: dict[str, tuple[list[int], list[str]]] | None = None
        if params.choice_tokenization == "canonical":
            self.canonical = {}
            for choice in self.choices:
                ids = self._canonical_ids(tokenizer, choice)
                self.canonical[choice] = (ids, ["".join(strings[t] for t in ids[:k]) for k in range(len(ids))])
        unspellable = [c for c in self.choices if not c or self.cost(c) == float("inf")]
        if unspellable:
            raise ValueError(f"Choices {unspellable} are empty or cannot be spelled with this tokenizer's tokens; "
                             "use non-empty plain text.")
        self.reserve = len(self.prefix_ids) + int(max(self.cost(c) for c in self.choices)) + len(self.suffix_ids)
        if self.reserve > params.max_new_tokens:
            raise ValueError(
                f"max_new_tokens={params.max_new_tokens} cannot hold the prefix, the longest choice and the suffix "
                f"({self.reserve} tokens); raise max_new_tokens.")
        self._allowed: dict[tuple[str, int], int | torch.Tensor] = {}
        self._allowed_ids: dict[tuple[str, int], tuple[int, ...]] = {}
        self._banned: dict[int, torch.Tensor] = {}

    def _canonical_ids(self, tokenizer: Any, choice: str) -> list[int]:
        """The choice's tokens as the tokenizer writes them right after the prefix."""
        before = tokenizer.encode(self.prefix, add_special_tokens=False) if self.prefix else []
        joined = tokenizer.encode(self.prefix + choice, add_special_tokens=False)
        ids = joined[len(before):] if joined[:len(before)] == before else tokenizer.encode(
            choice, add_special_tokens=False)
        if "".join(self.strings[t] for t in ids) != choice:  # a merge across the boundary: spell it alone
            ids = tokenizer.encode(choice, add_special_tokens=False)
        return ids

    def cost(self, text: str) -> float:
        """Fewest tokens that spell ``text`` exactly (inf when impossible); memoised."""
        if self.canonical is not None and text in self.canonical:
            return float(len(self.canonical[text][0]))
        if text not in self._costs:
            self._costs[text] = min((1 + self.cost(text[n:]) for n in range(1, min(len(text), self._longest) + 1)
                                     if text[:n] in self.by_text), default=float("inf"))
        return self._costs[text]

    def consistent(self, text: str) -> bool:
        """Whether a row can continue the constrained part from ``text`` (the text after the prefix).

        In ``any`` mode that is any beginning of a choice; in ``canonical`` mode only a full choice or the text
        of one of its canonical token-prefixes, so a free token that runs past the prefix into the middle of a
        canonical token (which would leave no allowed next token) is banned instead.
        """
        if self.canonical is None:
            return any(c.startswith(text) for c in self.choices)
        return text in self.canonical or any(text in spelled for _, spelled in self.canonical.values())

    def matched(self, tail: str) -> int:
        """How many leading characters of the prefix the text ends with (a proper prefix only)."""
        return next((k for k in range(len(self.prefix) - 1, 0, -1) if tail.endswith(self.prefix[:k])), 0)

    def allowed(self, text: str, budget: int) -> int | torch.Tensor:
        """The forced token, or an additive mask, for the next token of a choice after ``text``.

        ``budget`` is how many tokens the choice may still use; tokens after which no choice can be finished
        in time are excluded (unless that would exclude everything).
        """
        key = (text, min(budget, self.reserve + 1))
        if key not in self._allowed and self.canonical is not None:
            ids = sorted({seq[k] for seq, spelled in self.canonical.values() for k in range(len(seq))
                          if spelled[k] == text})
            self._allowed[key], self._allowed_ids[key] = self._as_constraint(ids), tuple(ids)
        if key not in self._allowed:
            fits, spells = set(), set()
            for choice in (c for c in self.choices if c.startswith(text) and c != text):
                rest = choice[len(text):]
                for n in range(1, min(len(rest), self._longest) + 1):
                    ids = self.by_text.get(rest[:n], ())
                    spells.update(ids)
                    if self.cost(rest[n:]) <= budget - 1:
                        fits.update(ids)
            ids = sorted(fits or spells)
            self._allowed[key], self._allowed_ids[key] = self._as_constraint(ids), tuple(ids)
        return self._allowed[key]

    def allowed_ids(self, text: str, budget: int) -> tuple[int, ...]:
        """The ids ``allowed(text, budget)`` permits (call ``allowed`` first)."""
        return self._allowed_ids[(text, min(budget, self.reserve + 1))]

    def _as_constraint(self, ids: list[int]) -> int | torch.Tensor:
        """A single allowed id is forced; several become an additive mask."""
        if len(ids) == 1:
            return ids[0]
        mask = torch.full((self.vocab,), _NEG_INF, device=self.eos.device)
        mask[torch.tensor(ids, device=mask.device)] = 0.0
        return mask

    def banned(self, matched: int) -> torch.Tensor:
        """Ids banned in the free part when the output ends with ``matched`` characters of the prefix.

        That is EOS, and the tokens that would complete the prefix and run on into text that begins no choice.
        """
        if matched not in self._banned:
            head, ids = self.prefix[:matched], self.eos.tolist()
            for i, text in enumerate(self.strings):
                at = (head + text).find(self.prefix) if text else -1
                if at >= 0 and not self.consistent((head + text)[at + len(self.prefix):]):
                    ids.append(i)
            self._banned[matched] = torch.tensor(sorted(set(ids)), dtype=torch.long, device=self.eos.device)
        return self._banned[matched]


class RowState:
    """One completion being generated: its tokens, statistics, and guided-decoding state."""

    def __init__(self, guide: ChoiceGuide | None, tokenizer: Any) -> None:
        self.guide, self.tokenizer = guide, tokenizer
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.entropies: list[float] = []
        self.finish: str | None = None
        self.choosing = guide is not None and not guide.prefix  # inside the constrained part
        self.text = ""  # the choice text spelled so far
        self.choice: str | None = None
        self.queue: list[int] = []  # forced tokens still to emit (the prefix, or the suffix)
        self.matched = 0  # characters of the prefix the free output ends with
        self.choice_sets: list[tuple[int, ...] | None] = []  # per token: the ids it was drawn from (None: free)
        self._next_set: tuple[int, ...] | None = None

    def add(self, token: int, logprob: float, entropy: float) -> None:
        """Record a chosen token."""
        self.tokens.append(token)
        self.logprobs.append(logprob)
        self.entropies.append(entropy)
        self.choice_sets.append(self._next_set)
        self._next_set = None

    def constraint(self, max_new_tokens: int) -> int | torch.Tensor | None:
        """What guided decoding imposes on the next token: a forced id, banned ids, an additive mask, or None.

        A forced id or a choice mask is also remembered as the set the next token is drawn from (see
        ``Generation.choice_sets``); the free part's banned ids are not (its set is nearly the whole vocabulary).
        """
        guide = self.guide
        if guide is None:
            return None
        remaining = max_new_tokens - len(self.tokens)
        if self.queue:
            self._next_set = (self.queue[0],)
            return self.queue[0]
        if self.choosing:
            budget = remaining - len(guide.suffix_ids)
            rule = guide.allowed(self.text, budget)
            self._next_set = (rule,) if isinstance(rule, int) else guide.allowed_ids(self.text, budget)
            return rule
        if remaining <= guide.reserve:
            self.queue = list(guide.prefix_ids)
            self._next_set = (self.queue[0],)
            return self.queue[0]
        return guide.banned(self.matched)

    def advance(self) -> None:
        """Update the guided state after a token was added."""
        guide = self.guide
        if guide is None:
            return
        token = self.tokens[-1]
        if self.queue:
            self.queue.pop(0)
            if not self.queue:
                self.choosing, self.finish = (True, None) if self.choice is None else (False, "choice")
        elif self.choosing:
            self._spell(self.text + guide.strings[token])
        else:
            tail = self.tokenizer.decode(self.tokens[-(4 * len(guide.prefix) + 1):], skip_special_tokens=False)
            at = tail.rfind(guide.prefix)
            if at >= 0 and guide.consistent(tail[at + len(guide.prefix):]):
                self.choosing = True
                self._spell(tail[at + len(guide.prefix):])
            else:
                self.matched = guide.matched(tail)

    def _spell(self, text: str) -> None:
        self.text = text
        if text in self.guide.choices:
            self.choice, self.choosing, self.queue = text, False, list(self.guide.suffix_ids)
            if not self.queue:
                self.finish = "choice"

    def result(self, tokenizer: Any) -> Generation:
        """The finished completion."""
        return Generation(
            token_ids=self.tokens, logprobs=self.logprobs, entropies=self.entropies,
            text=tokenizer.decode(self.tokens, skip_special_tokens=True), finish_reason=self.finish or "length",
            constrained=self.guide is not None, info={"choice": self.choice} if self.guide is not None else {},
            choice_sets=list(self.choice_sets) if self.guide is not None else None,
        )
