"""The LLM policy: multi-turn chat over any backend, batched across episodes, with token-exact bookkeeping."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agentgym.env import observation_text
from agentgym.types import ActionBatch
from policies.llm.base import LLMBackend, SamplingParams
from policies.llm.conversation import ContextOverflowError, Conversation
from policies.llm.prompts import PromptStyle, guided_choices, system_prompt, user_message


@dataclass(frozen=True)
class LLMPolicyConfig:
    """Sampling and prompting settings of an LLM policy.

    Attributes:
        temperature: sampling temperature (0: greedy).
        top_p: nucleus mass.
        max_new_tokens: cap on each reply.
        think: ask for ``<think>...</think><answer>...</answer>`` replies instead of a bare action.
        guided: constrain the action part of each reply to the env's action names (guided decoding); the
            recorded log-probs are then those of the constrained sampler and trajectories say so.
        context_tokens: prompt + reply budget; old turns are dropped to fit (None: the model's context).
        history_turns: at most this many past turns in the prompt (None: as many as fit; 0: only the current one).
        hints: include the env family's strategy hints in the system prompt.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 32
    think: bool = False
    guided: bool = False
    context_tokens: int | None = 2048
    history_turns: int | None = None
    hints: bool = True

    def __post_init__(self) -> None:
        SamplingParams(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p)
        if self.history_turns is not None and self.history_turns < 0:
            raise ValueError(f"history_turns={self.history_turns} must be >= 0 or None.")


class LLMPolicy:
    """Plays envs through their text view with a language model.

    ``begin`` opens a conversation per episode (system = env rules + answer format); each ``act`` appends every
    episode's observation as a user turn, makes ONE batched ``generate`` call for all of them, and returns the
    replies as text actions (the env's ``parse_action`` turns them into moves). Per-episode token counts,
    finish reasons and warnings travel in ``ActionBatch.info["episodes"]`` for the rollout engine.
    """

    def __init__(self, backend: LLMBackend, config: LLMPolicyConfig | None = None) -> None:
        self.backend = backend
        self.config = config or LLMPolicyConfig()
        self.style = PromptStyle(think=self.config.think, hints=self.config.hints)
        budget = self.config.context_tokens
        self.budget = min(budget, backend.max_context) if budget else backend.max_context

    def begin(self, env: Any, obs: Any, info: dict[str, Any]) -> EpisodeMemory:
        """Start an episode's conversation."""
        return EpisodeMemory(Conversation(self.backend.tokenizer, system_prompt(env, self.style), self.budget))

    def act(
        self,
        observations: Sequence[Any],
        *,
        envs: Sequence[Any],
        rng: np.random.Generator,
        memories: Sequence[Any] | None = None,
    ) -> ActionBatch:
        """One reply per episode, generated in one batched call per distinct guided-choice set."""
        if memories is None:
            memories = [self.begin(env, obs, {}) for env, obs in zip(envs, observations)]
        cfg = self.config
        prompts: list[list[int] | None] = []
        episodes: list[dict[str, Any]] = []
        for env, obs, memory in zip(envs, observations, memories):
            conv = memory.conversation
            conv.add_user(user_message(env, observation_text(env, obs), conv.turn))
            try:
                prompts.append(conv.prompt_ids(reserve=cfg.max_new_tokens, max_turns=cfg.history_turns))
                episodes.append({"prompt_tokens": len(prompts[-1]), "warnings": []})
            except ContextOverflowError as exc:
                prompts.append(None)
                episodes.append({"prompt_tokens": 0, "stop": True, "warnings": [str(exc)]})
        actions: list[Any] = [None] * len(prompts)
        seed = int(rng.integers(2**31))
        for choice_key, rows in self._group_rows(envs, prompts).items():
            params = SamplingParams(
                max_new_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                seed=seed,
                **(dict(choice_key) if choice_key else {}),
            )
            generations = self.backend.generate([prompts[i] for i in rows], params)
            for i, gen in zip(rows, generations):
                memories[i].conversation.add_assistant(gen)
                memories[i].constrained |= gen.constrained
                actions[i] = gen.text
                episodes[i].update(response_tokens=len(gen.token_ids), finish_reason=gen.finish_reason)
                if gen.finish_reason == "length" and not gen.constrained:
                    episodes[i]["warnings"].append(
                        f"reply hit max_new_tokens={cfg.max_new_tokens} without finishing (turn {memories[i].turns})"
                    )
                memories[i].turns += 1
        return ActionBatch(actions, info={"episodes": episodes})

    def _group_rows(self, envs: Sequence[Any], prompts: Sequence[list[int] | None]) -> dict[Any, list[int]]:
        groups: dict[Any, list[int]] = {}
        for i, (env, prompt) in enumerate(zip(envs, prompts)):
            if prompt is None:
                continue
            guided = guided_choices(env, self.style) if self.config.guided else None
            key = tuple(sorted(guided.items())) if guided else None
            groups.setdefault(key, []).append(i)
        return groups


@dataclass
class EpisodeMemory:
    """What an LLM policy keeps per episode: the conversation, and whether guided decoding shaped it."""

    conversation: Conversation
    constrained: bool = False
    turns: int = 0

    def export(self) -> dict[str, Any]:
        """Token fields for the trajectory: the whole episode as one sequence, its loss mask and log-probs."""
        ids, mask, logprobs = self.conversation.sequence()
        segments, pos = [], 0
        for s in self.conversation.segments:
            segments.append([s.role, pos, pos + len(s.ids), s.turn])
            pos += len(s.ids)
        return {
            "token_ids": ids,
            "loss_mask": mask,
            "logprobs": logprobs,
            "segments": segments,
            "context_dropped_turns": self.conversation.dropped_turns,
            "constrained": self.constrained,
            "choice_sets": self.conversation.choice_sets(),
        }
