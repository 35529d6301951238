"""Small protocols shared by the rollout code, policies and trainers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass
class ActionBatch:
    """What a policy returns for a batch of observations.

    Attributes:
        actions: one action per observation (an index, an array, or text for LLM policies).
        logprobs: log-probability of each sampled action under the policy (None for policies without one).
        info: extra per-batch data a trainer may use (values, entropies, token ids).
    """

    actions: list[Any]
    logprobs: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Policy(Protocol):
    """Maps a batch of observations to actions.

    ``envs`` are the envs the observations came from; only privileged policies (the oracle) look at them, and
    learned policies must not.
    """

    def act(
        self,
        observations: Sequence[Any],
        *,
        envs: Sequence[Any],
        rng: np.random.Generator,
        memories: Sequence[Any] | None = None,
    ) -> ActionBatch:
        """Choose one action per observation.

        ``memories`` are the per-episode objects returned by the policy's optional ``begin(env, obs, info)``
        (an LLM policy's conversations); policies without ``begin`` receive None.
        """
        ...
