"""Advantage math of ProAct's MC-Critic trainers (spec sections 4.4 and 4.5).

- :func:`mc_grpo_advantages`: MC-GRPO's step-level group z-score of Monte-Carlo action values, with the
  all-actions fallback for groups whose responses all chose the same action.
- :func:`blend_values`: MC-PPO's critic ``(1 - w) V_learned + w V_MC``.
- :func:`mc_td_advantages`: MC-PPO's turn-level one-step TD advantages (GAE with ``lambda = 0``) on the blended
  critic, with their return targets and optional batch normalisation.

Pure torch functions: inputs are detached and never modified, floating dtypes are kept (16-bit inputs are
computed in float32 and cast back).
"""

from __future__ import annotations

import torch
from torch import Tensor

from agentgym.ops._checks import OpsInputError, check_ndim, check_same_shape, out_dtype, work_dtype
from agentgym.ops.advantages import whiten

__all__ = ["blend_values", "mc_grpo_advantages", "mc_td_advantages"]


def mc_grpo_advantages(
    q: Tensor,
    group_ids: Tensor,
    actions: Tensor,
    q_table: Tensor,
    *,
    action_mask: Tensor | None = None,
    eps: float = 1e-5,
    baseline: str = "mean",
) -> Tensor:
    """MC-GRPO advantage of each sampled response at a shared state.

    A group is the ``G`` responses sampled at one state. Normally ``A_i = (Q_i - mean_G Q) / (std_G Q + eps)`` with
    the Bessel-corrected group std (``torch.std``, as ProAct). When every response of a group chose the same action
    (a group of one included), that z-score is 0 and carries no signal, so the response is instead scored against
    the state's whole action set: ``A_i = (Q_i - mean_a Q(s, a)) / (std_a Q(s, a) + eps)`` with the population std
    over the actions ``action_mask`` allows (ProAct's ``use_abs_adv_only_for_group_with_same_reward``).
    With ``baseline="best"`` the fallback subtracts the best allowed action's value instead of the mean,
    ``A_i = (Q_i - max_a Q(s, a)) / (std_a Q(s, a) + eps)``: 0 for an optimal action and negative for a worse one,
    so a policy that already agrees with itself on the best action gets no push (the mean baseline gives such a
    reply a positive advantage even though its expected policy gradient is zero).

    Args:
        q: ``[N]`` the Monte-Carlo value ``Q(s, a_i)`` of each response's action (an unparseable reply has the
            value of the env's invalid action, which is its own MC-Critic cache key).
        group_ids: ``[N]`` integer id of each response's state; any values, any order.
        actions: ``[N]`` integer canonical action of each response (use one reserved value, e.g. ``-1``, for
            every invalid reply, so that a group of invalid replies counts as "same action").
        q_table: ``[N, A]`` ``Q(s, a)`` of every action at each response's state (rows of a group are equal).
        action_mask: ``[N, A]`` which actions enter the fallback mean and std (default: all).
        eps: added to the std before dividing (ProAct: 1e-5).
        baseline: what the fallback subtracts, ``"mean"`` (ProAct) or ``"best"`` of the allowed actions' values.

    Returns:
        ``[N]`` advantages in the dtype of ``q``; 0 where the whole action set has one value.

    Raises:
        OpsInputError: on shape or dtype mismatches, a row whose ``action_mask`` allows no action, or an unknown
            ``baseline``.
    """
    if baseline not in ("mean", "best"):
        raise OpsInputError(f"baseline={baseline!r} is not a fallback baseline; use 'mean' (ProAct) or 'best'.")
    check_ndim("q", q, 1, "[N]")
    check_same_shape("q", q, group_ids=group_ids, actions=actions)
    check_ndim("q_table", q_table, 2, "[N, A]")
    if q_table.shape[0] != q.shape[0]:
        raise OpsInputError(f"q_table has shape {tuple(q_table.shape)} but q has shape {tuple(q.shape)}; give one "
                            f"row of action values per response.")
    for name, ids in (("group_ids", group_ids), ("actions", actions)):
        if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
            raise OpsInputError(f"{name} must be an integer tensor (torch.long), got {ids.dtype}.")
    dtype = out_dtype(q.dtype)
    wdt = work_dtype(dtype)
    x, table = q.detach().to(wdt), q_table.detach().to(wdt)
    mask = torch.ones_like(table, dtype=torch.bool) if action_mask is None else action_mask > 0
    check_same_shape("q_table", q_table, action_mask=mask)
    count = mask.sum(dim=1).to(wdt)
    if bool((count == 0).any()):  # a host-device sync point on CUDA
        raise OpsInputError("action_mask allows no action in some row; allow at least one action per state.")

    uniq, inverse = torch.unique(group_ids, return_inverse=True)
    zeros = x.new_zeros(uniq.numel())
    size = zeros.index_add(0, inverse, torch.ones_like(x))
    mean = zeros.index_add(0, inverse, x) / size
    centered = x - mean[inverse]
    var = zeros.index_add(0, inverse, centered.square()) / (size - 1.0).clamp(min=1.0)
    group_z = centered / (var.sqrt()[inverse] + eps)
    a = actions.to(torch.long)
    high = a.new_full((uniq.numel(),), torch.iinfo(torch.long).min).scatter_reduce(0, inverse, a, "amax")
    low = a.new_full((uniq.numel(),), torch.iinfo(torch.long).max).scatter_reduce(0, inverse, a, "amin")
    same = (high == low)[inverse]

    masked = torch.where(mask, table, 0.0)
    all_mean = masked.sum(dim=1) / count
    all_std = (torch.where(mask, table - all_mean[:, None], 0.0).square().sum(dim=1) / count).sqrt()
    if baseline == "best":
        base = torch.where(mask, table, torch.finfo(wdt).min).amax(dim=1)
    else:
        base = all_mean
    fallback = (x - base) / (all_std + eps)
    return torch.where(same, fallback, group_z).to(dtype)


def blend_values(v_learned: Tensor, v_mc: Tensor, weight: float) -> Tensor:
    """MC-PPO's critic ``(1 - w) V_learned + w V_MC`` (ProAct: ``w = 0.9`` for 2048, ``1.0`` for Sokoban).

    Args:
        v_learned: values of the learned critic, any shape.
        v_mc: MC-Critic values of the same states, same shape.
        weight: ``w`` in ``[0, 1]``.

    Returns:
        The blend, detached, in the promoted floating dtype of the inputs.

    Raises:
        OpsInputError: if the shapes differ or ``weight`` is outside ``[0, 1]``.
    """
    check_same_shape("v_learned", v_learned, v_mc=v_mc)
    if not 0.0 <= weight <= 1.0:
        raise OpsInputError(f"weight={weight!r} must lie in [0, 1] (0: learned critic only, 1: MC-Critic only).")
    dtype = out_dtype(torch.promote_types(v_learned.dtype, v_mc.dtype))
    wdt = work_dtype(dtype)
    blend = (1.0 - weight) * v_learned.detach().to(wdt) + weight * v_mc.detach().to(wdt)
    return blend.to(dtype)


def mc_td_advantages(
    rewards: Tensor,
    values: Tensor,
    dones: Tensor,
    mask: Tensor | None = None,
    *,
    gamma: float,
    normalize: bool = True,
    eps: float = 1e-8,
) -> tuple[Tensor, Tensor]:
    """Turn-level one-step TD advantages on a (blended) critic: MC-PPO's GAE with ``lambda = 0``.

    ``delta_t = r_t + gamma (1 - done_t) V(s_{t+1}) - V(s_t)``, ``A_t = delta_t`` and the critic's return target
    ``G_t = A_t + V(s_t)`` (computed before normalisation). With ``normalize`` the advantages are whitened over
    the valid turns of the whole batch (mean and Bessel-corrected std), as ProAct does before broadcasting them to
    the turn's tokens (:func:`agentgym.ops.broadcast_turns`).

    Args:
        rewards: ``[B, K]`` reward of each turn.
        values: ``[B, K+1]`` critic values ``V(s_0..s_K)``, e.g. :func:`blend_values` output; the last column is
            the value of the state after the last turn (used only when that turn is not ``done``).
        dones: ``[B, K]`` 1 where the episode terminated at that turn (no bootstrap after it).
        mask: ``[B, K]`` 1 at turns that happened (default: all); padded turns get 0.
        gamma: turn discount (ProAct: 0.9 for 2048, 0.95 for Sokoban).
        normalize: whiten the advantages over the batch's valid turns.
        eps: added to the variance when whitening.

    Returns:
        ``(advantages, returns)``, both ``[B, K]``, 0 at masked turns.

    Raises:
        OpsInputError: if the shapes do not line up.
    """
    check_ndim("rewards", rewards, 2, "[B, K]")
    check_ndim("values", values, 2, "[B, K+1]")
    check_same_shape("rewards", rewards, dones=dones, mask=mask)
    batch, turns = rewards.shape
    if values.shape != (batch, turns + 1):
        raise OpsInputError(f"values has shape {tuple(values.shape)} but rewards has shape {(batch, turns)}; pass "
                            f"[B, K+1] values whose last column is V of the state after the last turn.")
    dtype = out_dtype(torch.promote_types(rewards.dtype, values.dtype))
    wdt = work_dtype(dtype)
    r, v = rewards.detach().to(wdt), values.detach().to(wdt)
    alive = 1.0 - (dones > 0).to(wdt)
    valid = torch.ones_like(r, dtype=torch.bool) if mask is None else mask > 0
    adv = torch.where(valid, r + gamma * alive * v[:, 1:] - v[:, :-1], 0.0)
    returns = torch.where(valid, adv + v[:, :-1], 0.0)
    if normalize:
        adv = whiten(adv, valid, eps=eps)
    return adv.to(dtype), returns.to(dtype)
