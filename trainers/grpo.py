"""GRPO: group-normalised advantages (Shao et al., DeepSeekMath, arXiv 2402.03300).

A_i = (R_i - mean_G R) / (std_G R + eps) broadcast to every token of the rollout (``std_normalize=False`` gives
Dr.GRPO's mean-only variant); symmetric PPO clip 0.2; a k3 KL penalty to the initial model in the loss with
beta = 0.04 (set kl_coef=0 for "GRPO without KL", which also frees the reference copy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from agentgym import ops
from trainers.policy_gradient import PolicyGradientConfig, PolicyGradientTrainer


@dataclass(frozen=True)
class GRPOConfig(PolicyGradientConfig):
    """GRPO's settings."""

    std_normalize: bool = True
    """Divide by the group's std (False: Dr.GRPO, mean-only)."""
    kl_coef: float = 0.04
    """k3 KL to the initial model, added to the loss (DeepSeekMath's beta)."""


class GRPOTrainer(PolicyGradientTrainer):
    """GRPO (see the module docstring)."""

    Config: ClassVar[type] = GRPOConfig
    name: ClassVar[str] = "grpo"

    def advantages(self, returns: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
        """Group-normalised returns."""
        return ops.group_normalized(returns, group_ids, std_normalize=self.cfg.std_normalize)
