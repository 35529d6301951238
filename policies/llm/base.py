"""The generation interface every LLM backend implements (hf, vllm, openai): token ids in, token ids out.

Backends never see chat messages: the caller (``policies.llm.conversation``) renders the chat template once per
new message and keeps the exact token ids it sampled, so a multi-turn episode is never re-templated and the
loss mask always lines up with the tokens that were actually generated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one completion per prompt.

    Attributes:
        max_new_tokens: hard cap on generated tokens per completion.
        temperature: softmax temperature; 0 means greedy (argmax).
        top_p: nucleus sampling mass (1.0 disables it).
        top_k: keep only the k most likely tokens (0 disables it).
        stop: strings that end a completion; the stop string is kept in the output text and tokens, because
            those tokens were sampled and a trainer must see them.
        choices: guided decoding: when set, the completion is constrained so that the text after
            ``choice_prefix`` is exactly one of these strings, followed by ``choice_suffix``; generation ends there.
        choice_prefix: free text is generated until the output ends with this string (for example
            ``"<answer>"``), then the constrained part starts. ``""`` constrains from the first token.
        choice_suffix: forced after the chosen string (for example ``"</answer>"``); may be empty.
        choice_tokenization: ``"canonical"`` allows only each choice's own tokenization (what the model saw in
            training, and the fewest tokens); ``"any"`` allows every token sequence that spells a choice.
        seed: seed of the sampler's random stream for this call (None: non-deterministic).
    """

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    choices: tuple[str, ...] | None = None
    choice_prefix: str = ""
    choice_suffix: str = ""
    choice_tokenization: str = "canonical"
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 1.")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0 (0 is greedy).")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1].")
        if self.choice_tokenization not in ("canonical", "any"):
            raise ValueError(f"choice_tokenization={self.choice_tokenization!r} must be 'canonical' or 'any'.")
        if self.choices is not None and not self.choices:
            raise ValueError("choices=() would allow no completion; pass None to disable guided decoding.")


@dataclass
class Generation:
    """One sampled completion.

    Attributes:
        token_ids: the sampled tokens, in order (an end-of-sequence token is included when one was sampled).
        logprobs: per token, the log-probability under the distribution it was actually sampled from (after
            temperature, top-k/top-p and any guided-decoding mask, renormalised). Forced tokens (a
            ``choice_suffix``, a single-option step) have log-probability 0.
        entropies: per token, the entropy of the temperature-scaled model distribution before truncation or
            masking (what entropy-based methods such as EMPG read); None when the backend cannot compute it.
        text: the decoded completion.
        finish_reason: ``"stop"`` (a stop string), ``"eos"``, ``"length"`` (max_new_tokens) or ``"choice"``
            (guided decoding finished).
        constrained: True when guided decoding shaped this completion (its log-probs are then those of the
            constrained sampler, not of the free model).
        choice_sets: per token, the ids guided decoding let it be drawn from (a single id when it was forced), or
            None where the model chose freely. Trainers score such tokens over that set, as they were sampled.
            None for the whole completion when the backend does not report it (scored over the vocabulary).
    """

    token_ids: list[int]
    logprobs: list[float]
    entropies: list[float] | None
    text: str
    finish_reason: str
    constrained: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    choice_sets: list[tuple[int, ...] | None] | None = None


@runtime_checkable
class LLMBackend(Protocol):
    """A text generator over token ids."""

    #: The tokenizer (a ``transformers`` tokenizer: ``apply_chat_template``, ``decode``, ``eos_token_id``).
    tokenizer: Any
    #: Longest prompt + completion the model accepts, in tokens.
    max_context: int

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[Generation]:
        """Sample one completion per prompt, batched."""
        ...
