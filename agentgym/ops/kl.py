"""Per-token KL estimators, "KL in the reward", and LOOP's trajectory-level k1 divergence guard.

With samples drawn from ``pi_theta`` and ``log r = log pi_theta - log pi_ref`` per token (Schulman, "Approximating
KL divergence"):

- ``k1 = log r``: unbiased for ``KL(pi_theta || pi_ref)``, high variance, can be negative.
- ``k2 = (log r)^2 / 2``: biased, low variance, always >= 0.
- ``k3 = exp(-log r) + log r - 1``: unbiased, low variance, always >= 0 (verl's ``low_var_kl``). The exponent is
  clamped to ``[-20, 20]`` so fp16/bf16 and padding garbage cannot produce ``inf - inf``, and the result is clamped
  to ``[-10, 10]`` as verl does, which also caps its gradient for tokens that have drifted far.

"KL in the loss" (GRPO) passes a :func:`kl_estimate` tensor to :func:`agentgym.ops.policy_loss`; "KL in the
reward" (PPO, RLOO, REINFORCE++) goes through :func:`kl_penalized_rewards`.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from agentgym.ops._checks import OpsInputError, check_ndim, check_same_shape, out_dtype

__all__ = ["KLKind", "k1_divergence", "kl_estimate", "kl_penalized_rewards", "trajectory_log_ratio"]

KLKind = Literal["k1", "k2", "k3"]

_K3_EXP_LIMIT = 20.0  # exp(20) ~ 4.9e8: finite in every float dtype we train in
_K3_CLAMP = 10.0


def kl_estimate(logp: Tensor, ref_logp: Tensor, kind: KLKind = "k3", *, mask: Tensor | None = None) -> Tensor:
    """Per-token estimate of ``KL(pi_theta || pi_ref)`` from log-probs of the sampled tokens.

    Args:
        logp: ``[B, T]`` (any shape) log-probs of the sampled tokens under the current policy.
        ref_logp: Same shape, log-probs under the reference policy.
        kind: ``"k1"``, ``"k2"`` or ``"k3"`` (see the module docstring).
        mask: Optional, same shape; positions with mask 0 get exactly 0 (even if the log-probs there are inf/NaN).

    Returns:
        Same shape and dtype as ``logp``. Differentiable in both inputs; detach ``ref_logp`` yourself if the
        reference shares parameters with the policy.

    Raises:
        OpsInputError: On a shape mismatch or an unknown ``kind``.
    """
    check_same_shape("logp", logp, ref_logp=ref_logp, mask=mask)
    log_r = logp - ref_logp
    if kind == "k1":
        kl = log_r
    elif kind == "k2":
        kl = 0.5 * log_r.square()
    elif kind == "k3":
        neg = (-log_r).clamp(-_K3_EXP_LIMIT, _K3_EXP_LIMIT)
        kl = (torch.exp(neg) - neg - 1.0).clamp(-_K3_CLAMP, _K3_CLAMP)
    else:
        raise OpsInputError(f"kind must be 'k1', 'k2' or 'k3', got {kind!r}.")
    return kl if mask is None else torch.where(mask > 0, kl, 0.0)


def _last_valid_index(mask: Tensor) -> Tensor:
    """``[B]`` index of the last position with mask 1 in each row; raises if a row has none (sync point)."""
    valid = mask > 0
    if not bool(valid.any(dim=1).all()):
        empty = (~valid.any(dim=1)).nonzero().flatten().tolist()
        raise OpsInputError(
            f"rows {empty} of mask have no valid position, so their outcome reward has no token to sit on; "
            f"drop those rows before computing rewards."
        )
    positions = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    return (valid * positions).argmax(dim=1)


def kl_penalized_rewards(rewards_at_end: Tensor, kl_tokens: Tensor, mask: Tensor, beta: float) -> Tensor:
    """Token rewards for "KL in the reward": ``-beta * KL_t`` at every valid token, plus ``R`` at the last one.

    Args:
        rewards_at_end: ``[B]`` outcome return of each sequence.
        kl_tokens: ``[B, T]`` per-token KL estimates (:func:`kl_estimate`); detached, since rewards are data.
        mask: ``[B, T]`` 1 at action tokens; every row needs at least one.
        beta: KL coefficient (``0`` puts the outcome at the last token and nothing else).

    Returns:
        ``[B, T]`` rewards, 0 at masked positions, in the promoted dtype of the two inputs.

    Raises:
        OpsInputError: On shape mismatch or a row without valid tokens (a host-device sync point on CUDA).
    """
    check_ndim("rewards_at_end", rewards_at_end, 1, "[B]")
    check_ndim("kl_tokens", kl_tokens, 2, "[B, T]")
    check_same_shape("kl_tokens", kl_tokens, mask=mask)
    if rewards_at_end.shape[0] != kl_tokens.shape[0]:
        raise OpsInputError(
            f"rewards_at_end has shape {tuple(rewards_at_end.shape)} but kl_tokens has shape "
            f"{tuple(kl_tokens.shape)}; give one outcome per sequence."
        )
    dtype = out_dtype(torch.promote_types(rewards_at_end.dtype, kl_tokens.dtype))
    valid = mask > 0
    rewards = torch.where(valid, -beta * kl_tokens.detach().to(dtype), 0.0)
    last = _last_valid_index(mask)
    outcome = torch.zeros_like(rewards).scatter(1, last[:, None], rewards_at_end.detach().to(dtype)[:, None])
    return rewards + outcome


def trajectory_log_ratio(logp: Tensor, old_logp: Tensor, mask: Tensor) -> Tensor:
    """Log of the trajectory importance weight: ``sum_t mask_t * (logp_t - old_logp_t)`` per sequence.

    Env tokens cancel in the trajectory ratio (they have the same probability under both policies), so only
    the action tokens in ``mask`` count (LOOP Eq. 6/8).

    Args:
        logp: ``[B, T]`` log-probs under the current policy.
        old_logp: ``[B, T]`` log-probs under the behaviour policy.
        mask: ``[B, T]`` 1 at action tokens.

    Returns:
        ``[B]`` log-ratios in the dtype of ``logp``; differentiable in ``logp``.

    Raises:
        OpsInputError: If the shapes are not ``[B, T]`` or differ.
    """
    check_ndim("logp", logp, 2, "[B, T]")
    check_same_shape("logp", logp, old_logp=old_logp, mask=mask)
    return torch.where(mask > 0, logp - old_logp, 0.0).sum(dim=1)


def k1_divergence(logp: Tensor, old_logp: Tensor, mask: Tensor) -> Tensor:
    """LOOP's high-KL guard: ``-mean_b log(prod_t rho_bt)``, the k1 estimate of ``KL(old || new)`` per trajectory.

    LOOP stops an iteration's remaining minibatches when this exceeds its ``high_kl_threshold`` (20). Rows with
    no valid token are left out of the mean.

    Args:
        logp: ``[B, T]`` log-probs under the current policy.
        old_logp: ``[B, T]`` log-probs under the behaviour policy.
        mask: ``[B, T]`` 1 at action tokens.

    Returns:
        A 0-dim tensor (compare with ``.item()``, a sync point, only when the guard is enabled).
    """
    log_ratio = trajectory_log_ratio(logp, old_logp, mask)
    rows = (mask > 0).any(dim=1)
    return -torch.where(rows, log_ratio, 0.0).sum() / rows.sum().clamp(min=1)
