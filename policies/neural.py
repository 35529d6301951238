"""Trainable neural policies (MLP, GNN) over an env's structured or graph view, and their rollout adapter.

A ``NeuralPolicy`` is a ``torch.nn.Module`` whose ``forward`` maps a list of raw env observations to
``PolicyOutput``: masked logits over ``A`` choices for each of ``S`` decision slots (``S = 1`` for a plain
``Discrete`` env; ``S`` = the aircraft of a fleet, each choosing a destination), which slots decide at this step,
and optionally a state value. The joint log-probability of a step is the sum over its deciding slots, so one env
step is one "action" for the policy-gradient trainers, exactly as one reply is for an LLM.

``NeuralActor`` wraps a policy in the rollout ``Policy`` protocol: it samples (or takes the mode), and returns
the joint log-probs; the rollout engine keeps each step's raw observation in the trajectory (transiently: not in
JSONL) so that a trainer can re-score the stored actions under new parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from agentgym.types import ActionBatch

_NEG = -1e9


@dataclass
class PolicyOutput:
    """What a neural policy computes for a batch of ``N`` observations.

    Attributes:
        logits: ``[N, S, A]`` unnormalised scores of ``A`` choices for ``S`` decision slots. For an autoregressive
            policy (``condition`` set) these are each slot's scores before any other slot has chosen.
        mask: ``[N, S, A]`` bool, True where a choice is allowed (every deciding slot needs at least one).
        active: ``[N, S]`` bool, True for slots that decide at this step (others contribute nothing).
        value: ``[N]`` state values, or None for a policy without a critic.
        condition: for autoregressive policies, ``condition(actions, slots=None)``: the ``[N, S, A]`` scores of
            every slot given the choices ``actions`` ``[N, S]`` of the slots that decide before it (see ``order``;
            the other entries are ignored). With a bool ``slots`` ``[N, S]`` it returns only those slots' rows,
            ``[n, A]`` in ``slots.nonzero()`` order (what sampling one round needs).
        order: ``[N, S]`` decision round of each slot, with ``condition``: slots of round ``r`` decide together,
            each seeing the choices of rounds ``< r``. The joint distribution is ``prod_r prod_{s in r} p(a_s |
            a_{rounds < r})``.
    """

    logits: torch.Tensor
    mask: torch.Tensor
    active: torch.Tensor
    value: torch.Tensor | None = None
    condition: Callable[[torch.Tensor], torch.Tensor] | None = None
    order: torch.Tensor | None = None

    def log_probs(self, actions: torch.Tensor | None = None) -> torch.Tensor:
        """``[N, S, A]`` log-probabilities with disallowed choices at (effectively) minus infinity.

        For an autoregressive policy, pass the ``[N, S]`` choices the slots are conditioned on (teacher forcing);
        without them the slots' unconditioned scores are used.
        """
        logits = self.logits if actions is None or self.condition is None else self.condition(actions)
        return torch.log_softmax(logits.masked_fill(~self.mask, _NEG), dim=-1)

    def sample(self, generator: torch.Generator | None = None, *, greedy: bool = False) -> torch.Tensor:
        """``[N, S]`` choices (argmax with ``greedy``); inactive slots get their first allowed choice.

        An autoregressive policy decides round by round (``order``), each round conditioned on the earlier ones.
        """
        return self.decide(generator, greedy=greedy)[0]

    def decide(
        self, generator: torch.Generator | None = None, *, greedy: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``sample`` and the ``[N]`` joint log-prob of its choices, in one pass.

        Equal to ``(c, log_prob(c))``: a round's log-probs given the earlier rounds are exactly its teacher-forced
        terms, so an autoregressive policy need not be re-scored after sampling.
        """
        logp = self.log_probs()
        if self.condition is None:
            choices = self._draw(logp, generator, greedy)
            return choices, self._joint(logp, choices)
        choices = self._draw(logp, generator, True)  # inactive slots: their only allowed choice
        order = self.order if self.order is not None else torch.zeros_like(choices)
        total = torch.zeros(choices.shape[0], dtype=logp.dtype, device=logp.device)
        rounds = order[self.active]
        for r in range(int(rounds.max()) + 1 if rounds.numel() else 0):
            now = self.active & (order == r)
            rows, slots = now.nonzero(as_tuple=True)
            if rows.numel() == 0:
                continue
            logits = self.condition(choices, now)  # [n, A]
            round_logp = torch.log_softmax(logits.masked_fill(~self.mask[rows, slots], _NEG), dim=-1)
            drawn = self._draw(round_logp, generator, greedy)
            choices = choices.index_put((rows, slots), drawn)
            total = total.index_add(0, rows, round_logp.gather(-1, drawn.unsqueeze(-1)).squeeze(-1))
        return choices, total

    def _joint(self, logp: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        chosen = logp.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
        return (chosen * self.active).sum(-1)

    @staticmethod
    def _draw(logp: torch.Tensor, generator: torch.Generator | None, greedy: bool) -> torch.Tensor:
        if greedy:
            return logp.argmax(-1)
        flat = logp.detach().exp().reshape(-1, logp.shape[-1]).cpu()  # a CPU generator samples on any device
        return torch.multinomial(flat, 1, generator=generator).reshape(logp.shape[:-1]).to(logp.device)

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        """``[N]`` joint log-prob of ``[N, S]`` choices: the sum over active slots."""
        return self._joint(self.log_probs(actions), actions)

    def entropy(self, actions: torch.Tensor | None = None) -> torch.Tensor:
        """``[N]`` joint entropy: the sum of the active slots' entropies.

        For an autoregressive policy, the slots' entropies given the earlier slots' ``actions`` (the per-sample
        chain-rule terms, whose expectation is the joint entropy).
        """
        logp = self.log_probs(actions)
        ent = -(logp.exp() * logp.masked_fill(~self.mask, 0.0)).sum(-1)
        return (ent * self.active).sum(-1)


class NeuralPolicy(torch.nn.Module):
    """Base class of trainable neural policies; subclasses implement ``forward`` (see ``PolicyOutput``).

    ``to_env_action`` turns one observation's ``[S]`` choices into what ``env.step`` takes (an int for
    ``S = 1``, else an int array) and ``from_env_action`` reverses it; override both for other action formats.
    ``make(env, **kwargs)`` builds a policy sized for ``env`` (what trainers call).
    """

    def forward(self, observations: Sequence[Any]) -> PolicyOutput:  # pragma: no cover - abstract
        """Scores for a batch of raw env observations."""
        raise NotImplementedError

    @classmethod
    def make(cls, env: Any, **kwargs: Any) -> NeuralPolicy:
        """A policy sized for ``env`` (subclasses read its spaces)."""
        return cls(**kwargs)

    @property
    def has_value(self) -> bool:
        """Whether ``forward`` returns state values (PPO's critic)."""
        return False

    def compile_inference(self) -> None:
        """Make inference passes faster with ``torch.compile`` (networks that support it override this)."""
        from agentgym.errors import AgentGymError

        raise AgentGymError(f"{type(self).__name__} has no compiled inference path; leave compile off.")

    def to_env_action(self, choices: np.ndarray) -> Any:
        """One observation's ``[S]`` choices as an env action."""
        return int(choices[0]) if choices.shape[0] == 1 else choices.astype(np.int64)

    def from_env_action(self, action: Any) -> np.ndarray:
        """The ``[S]`` choices of a recorded env action (the inverse of ``to_env_action``)."""
        return np.atleast_1d(np.asarray(action, dtype=np.int64))

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return next(self.parameters()).device


class NeuralActor:
    """A ``NeuralPolicy`` as a rollout ``Policy``: samples (or plays greedily) and reports joint log-probs."""

    #: The rollout engine keeps raw observations in trajectories for policies that set this.
    records_observations = True

    def __init__(self, policy: NeuralPolicy, *, greedy: bool = False) -> None:
        self.policy, self.greedy = policy, greedy

    def act(
        self, observations: Sequence[Any], *, envs: Sequence[Any], rng: np.random.Generator, memories: Any = None
    ) -> ActionBatch:
        """Choose one action per observation (no gradients)."""
        del envs, memories  # a learned policy sees only its observations
        gen = torch.Generator().manual_seed(int(rng.integers(2**63)))
        was_training = self.policy.training
        if was_training:  # (toggling walks every submodule: skip it when there is nothing to toggle)
            self.policy.eval()
        try:
            with torch.inference_mode():
                choices, logp = self.policy(list(observations)).decide(gen, greedy=self.greedy)
        finally:
            if was_training:
                self.policy.train()
        rows = choices.cpu().numpy()
        return ActionBatch(
            actions=[self.policy.to_env_action(row) for row in rows],
            logprobs=logp.cpu().numpy().astype(np.float64),
        )
