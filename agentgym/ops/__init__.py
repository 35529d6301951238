"""Shared reinforcement-learning math: advantage estimators, return recursions, KL estimators, the policy loss.

Pure torch functions (no module state, no in-place changes to inputs) that work on CPU and CUDA and keep the
caller's floating dtype. They serve LLM policies (one position per token, ``mask`` marks the model's own tokens)
and non-LLM policies alike (one position per environment step, ``mask`` marks the steps that happened).

- :mod:`agentgym.ops.advantages`: per-rollout group estimators (leave-one-out/RLOO, GRPO, REINFORCE++-baseline),
  :func:`broadcast` to tokens, :func:`broadcast_turns`, masked :func:`whiten`.
- :mod:`agentgym.ops.returns`: masked :func:`gae` and :func:`reinforce_pp_returns`.
- :mod:`agentgym.ops.kl`: :func:`kl_estimate` (k1/k2/k3), :func:`kl_penalized_rewards`, LOOP's
  :func:`k1_divergence` guard.
- :mod:`agentgym.ops.losses`: :func:`policy_loss` (token/turn/trajectory ratios, clip, dual clip, aggregation,
  KL in the loss), :func:`clip_range`, :func:`aggregate`.
"""

from __future__ import annotations

from agentgym.ops._checks import OpsInputError
from agentgym.ops.advantages import (
    broadcast,
    broadcast_turns,
    group_normalized,
    leave_one_out,
    reinforce_pp_baseline,
    whiten,
)
from agentgym.ops.kl import KLKind, k1_divergence, kl_estimate, kl_penalized_rewards, trajectory_log_ratio
from agentgym.ops.losses import AggMode, ClipKind, RatioLevel, aggregate, clip_range, episode_weights, policy_loss
from agentgym.ops.mc import blend_values, mc_grpo_advantages, mc_td_advantages  # noqa: F401 - re-exported
from agentgym.ops.returns import gae, reinforce_pp_returns

__all__ = [
    "AggMode",
    "ClipKind",
    "KLKind",
    "OpsInputError",
    "RatioLevel",
    "aggregate",
    "broadcast",
    "broadcast_turns",
    "clip_range",
    "episode_weights",
    "gae",
    "group_normalized",
    "k1_divergence",
    "kl_estimate",
    "kl_penalized_rewards",
    "leave_one_out",
    "policy_loss",
    "reinforce_pp_baseline",
    "reinforce_pp_returns",
    "trajectory_log_ratio",
    "whiten",
]
