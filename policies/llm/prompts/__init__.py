"""Prompts per env family, composed from shared parts.

The env supplies the rules (``instructions()``) and each step's observation (``text_observation()``); this package
adds what is about the *model*: the answer format (a bare action, or a short ``<think>`` then ``<answer>``), a
family's strategy hints, and the framing of each turn. Chat formatting is the tokenizer's chat template's job
(``policies.llm.conversation``), never the env's.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"


@dataclass(frozen=True)
class PromptStyle:
    """How the model is asked to answer.

    Attributes:
        think: ask for a short reasoning in ``<think>...</think>`` before ``<answer>ACTION</answer>``; otherwise
            the whole reply is the action (compact: the cheapest format for small models and CPU budgets).
        hints: include the env family's strategy hints in the system prompt.
        max_think_words: the reasoning length the prompt asks for (a request, not a cap; the token budget caps).
    """

    think: bool = False
    hints: bool = True
    max_think_words: int = 40


def family_of(env: Any) -> str:
    """The prompt family of an env: its ``prompt_family`` attribute, else its package (``environments.sokoban``)."""
    base = getattr(env, "unwrapped", env)
    family = getattr(base, "prompt_family", None)
    if family:
        return str(family)
    parts = type(base).__module__.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "environments" else parts[0]


def _family_module(env: Any) -> Any | None:
    try:
        return importlib.import_module(f"policies.llm.prompts.{family_of(env)}")
    except ModuleNotFoundError:
        return None


def answer_format(env: Any, style: PromptStyle) -> str:
    """The sentence telling the model how to write its action."""
    names = list(getattr(env.unwrapped, "action_names", ()))
    example = names[0] if names else "ACTION"
    options = f" ACTION is one of: {', '.join(names)}." if names else ""
    if style.think:
        return (
            f"Reply with a short reasoning (at most {style.max_think_words} words) in <think>...</think>, then the "
            f"action in {ANSWER_OPEN}ACTION{ANSWER_CLOSE}.{options} "
            f"Example: <think>...</think>{ANSWER_OPEN}{example}{ANSWER_CLOSE}"
        )
    return f"Reply with the action word only, no other text.{options} Example reply: {example}"


def system_prompt(env: Any, style: PromptStyle) -> str:
    """Rules from the env, the family's hints, then the answer format."""
    parts = [env.unwrapped.instructions().strip()]
    module = _family_module(env)
    if style.hints and module is not None and getattr(module, "HINTS", ""):
        parts.append(module.HINTS.strip())
    parts.append(answer_format(env, style))
    return "\n\n".join(parts)


def user_message(env: Any, observation_text: str, turn: int) -> str:
    """One turn's user message: the observation, framed by the family module when it has a framing."""
    module = _family_module(env)
    frame = getattr(module, "frame_observation", None) if module is not None else None
    if frame is not None:
        return frame(observation_text, turn)
    return observation_text if turn == 0 else f"Turn {turn + 1}.\n{observation_text}"


def guided_choices(env: Any, style: PromptStyle) -> dict[str, Any] | None:
    """Guided-decoding settings for the env's action names (None when the env has no discrete names)."""
    names = tuple(getattr(env.unwrapped, "action_names", ()))
    if not names:
        return None
    if style.think:
        return {"choices": names, "choice_prefix": ANSWER_OPEN, "choice_suffix": ANSWER_CLOSE}
    return {"choices": names, "choice_prefix": "", "choice_suffix": ""}
