"""RLOO: REINFORCE with a leave-one-out baseline (Ahmadian et al., arXiv 2402.14740).

On-policy: one epoch, one optimizer step per iteration over all rollouts, the sequence-level log-probability
(``ratio_level="trajectory"``; the ratio is 1 on-policy, so the clipped loss is plain REINFORCE), and the KL to
the initial model folded into the return (``kl_placement="reward"``) when ``kl_coef`` > 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from agentgym import ops
from trainers.common import RatioLevel
from trainers.policy_gradient import PolicyGradientConfig, PolicyGradientTrainer


@dataclass(frozen=True)
class RLOOConfig(PolicyGradientConfig):
    """RLOO's settings: on-policy REINFORCE with a leave-one-out baseline."""

    epochs: int = 1
    """One pass: RLOO is on-policy."""
    minibatch_size: int = 24
    """All of an iteration's rollouts in one step (tasks_per_iteration x group_size)."""
    ratio_level: RatioLevel = "trajectory"
    """One sequence-level term per rollout."""
    kl_placement: Literal["loss", "reward"] = "reward"
    """KL to the initial model is a cost in the return (when kl_coef > 0)."""


class RLOOTrainer(PolicyGradientTrainer):
    """RLOO (see the module docstring)."""

    Config: ClassVar[type] = RLOOConfig
    name: ClassVar[str] = "rloo"

    def advantages(self, returns: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
        """Leave-one-out baseline."""
        return ops.leave_one_out(returns, group_ids, std_normalize=False)
