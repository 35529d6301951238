"""Trajectory-level advantage estimators over groups of rollouts, and the helpers that put them on tokens.

A *group* is the set of rollouts of one task and seed (``K`` of them, LOOP's and GRPO's ``K``/``G``). The
estimators take one scalar return per rollout plus an integer group id per rollout and return one advantage per
rollout. Groups may have different sizes and rows need not be sorted: groups are found with ``torch.unique`` and
reduced with ``index_add``, so there is no Python loop over groups.

Conventions shared by every estimator here:

- **Which std.** Group and batch standard deviations are *unbiased* (Bessel-corrected, divide by ``n - 1``) by
  default, which is what ``torch.std`` returns and what verl/TRL use for GRPO, so numbers are comparable with those
  implementations. ``unbiased=False`` gives the population std (divide by ``n``); with ``K = 2`` rewards ``{0, 1}``
  it gives advantages ``±1`` instead of ``±0.707``.
- **Degenerate groups.** A group of one rollout, or a group whose rewards are all equal, carries no learning signal;
  its advantages are exactly ``0`` (not ``1e-17`` from rounding in the mean, and never NaN).
- **Gradients.** Advantages are constants for the policy gradient, so inputs are detached.
- **Dtypes.** Floating inputs keep their dtype (16-bit inputs are computed in float32 and cast back); integer or bool
  rewards give the default float dtype.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from agentgym.ops._checks import (
    OpsInputError,
    as_mask,
    check_group_ids,
    check_ndim,
    check_same_shape,
    out_dtype,
    work_dtype,
)

__all__ = [
    "broadcast",
    "broadcast_turns",
    "group_normalized",
    "leave_one_out",
    "reinforce_pp_baseline",
    "whiten",
]


class _GroupStats(NamedTuple):
    """Per-rollout views of the group statistics (all ``[N]``)."""

    centered: Tensor  # R_k - mean of the rollout's group
    std: Tensor  # std of the rollout's group
    size: Tensor  # K, the size of the rollout's group (float)
    constant: Tensor  # bool: the group has one member or all-equal rewards


def _group_stats(rewards: Tensor, group_ids: Tensor, *, unbiased: bool) -> _GroupStats:
    """Mean-centre ``rewards`` within groups and compute each group's std, vectorised with ``index_add``."""
    # torch.unique must know how many groups there are, so this is a host-device sync point on CUDA.
    uniq, inverse = torch.unique(group_ids, return_inverse=True)
    num_groups = uniq.numel()
    zeros = rewards.new_zeros(num_groups)
    size = zeros.index_add(0, inverse, torch.ones_like(rewards))
    mean = zeros.index_add(0, inverse, rewards) / size
    centered = rewards - mean[inverse]
    dof = (size - 1.0).clamp(min=1.0) if unbiased else size
    std = (zeros.index_add(0, inverse, centered.square()) / dof).sqrt()
    # max == min is an exact test for "all rewards equal", immune to rounding in the mean above.
    high = zeros.scatter_reduce(0, inverse, rewards, reduce="amax", include_self=False)
    low = zeros.scatter_reduce(0, inverse, rewards, reduce="amin", include_self=False)
    return _GroupStats(centered, std[inverse], size[inverse], (high == low)[inverse])


def _prepare(rewards: Tensor, group_ids: Tensor) -> tuple[Tensor, torch.dtype]:
    check_group_ids(rewards, group_ids)
    dtype = out_dtype(rewards.dtype)
    return rewards.detach().to(work_dtype(dtype)), dtype


def leave_one_out(
    rewards: Tensor, group_ids: Tensor, *, std_normalize: bool = False, unbiased: bool = True, eps: float = 1e-6
) -> Tensor:
    """Leave-one-out advantage (LOOP, RLOO): each return minus the mean return of the *other* rollouts of its group.

    ``A_k = R_k - (1/(K-1)) sum_{j != k} R_j = K/(K-1) * (R_k - mean_j R_j)``. LOOP uses it without std
    normalisation (its "RwNorm" ablation divides by the group std and loses ~9 pp on AppWorld).

    Args:
        rewards: ``[N]`` one return per rollout.
        group_ids: ``[N]`` integer id shared by the rollouts of one task and seed; any values, any order.
        std_normalize: Also divide by the group's std (plus ``eps``).
        unbiased: Use the Bessel-corrected std (see the module docstring).
        eps: Added to the std before dividing.

    Returns:
        ``[N]`` advantages; they sum to zero within each group. Groups of one rollout get ``0`` (there is no
        "other" rollout to compare with), as do groups whose rewards are all equal.

    Raises:
        OpsInputError: If the shapes differ, are not 1-D, or ``group_ids`` is not an integer tensor.
    """
    x, dtype = _prepare(rewards, group_ids)
    stats = _group_stats(x, group_ids, unbiased=unbiased)
    # K/(K-1) is infinite for singletons; their centred reward is 0, so zero the scale instead of making 0*inf.
    scale = torch.where(stats.size > 1, stats.size / (stats.size - 1.0).clamp(min=1.0), 0.0)
    adv = scale * stats.centered
    if std_normalize:
        adv = adv / (stats.std + eps)
    return torch.where(stats.constant, 0.0, adv).to(dtype)


def group_normalized(
    rewards: Tensor, group_ids: Tensor, *, std_normalize: bool = True, unbiased: bool = True, eps: float = 1e-6
) -> Tensor:
    """GRPO's group-normalised advantage ``(R_i - mean_G R) / (std_G R + eps)``.

    ``std_normalize=False`` gives ``R_i - mean_G R`` (Dr.GRPO, GiGPO's default ``mean_norm``).

    Args:
        rewards: ``[N]`` one return per rollout.
        group_ids: ``[N]`` integer group id per rollout; any values, any order.
        std_normalize: Divide by the group's std plus ``eps``.
        unbiased: Use the Bessel-corrected std (the default, as ``torch.std``/verl/TRL); ``False`` for population.
        eps: Added to the std before dividing (verl 1e-6; ProAct's MC-GRPO 1e-5; ProRAG 1e-4).

    Returns:
        ``[N]`` advantages. Singleton and zero-variance groups give exactly ``0``.

    Raises:
        OpsInputError: If the shapes differ, are not 1-D, or ``group_ids`` is not an integer tensor.
    """
    x, dtype = _prepare(rewards, group_ids)
    stats = _group_stats(x, group_ids, unbiased=unbiased)
    adv = stats.centered / (stats.std + eps) if std_normalize else stats.centered
    return torch.where(stats.constant, 0.0, adv).to(dtype)


def reinforce_pp_baseline(rewards: Tensor, group_ids: Tensor, *, eps: float = 1e-6, unbiased: bool = True) -> Tensor:
    """REINFORCE++-baseline: subtract the group mean, then divide by the std over the *whole batch*.

    ``Ã_i = R_i - mean_G R`` and ``A_i = Ã_i / (std_batch(Ã) + eps)``. The batch std is taken over the ``N``
    mean-subtracted returns (one per rollout), as the spec states. verl instead whitens the broadcast token
    advantages (each rollout weighted by its length, and re-centred); reproduce that with
    ``whiten(broadcast(group_normalized(r, g, std_normalize=False), mask), mask)``.

    Args:
        rewards: ``[N]`` one return per rollout.
        group_ids: ``[N]`` integer group id per rollout; any values, any order.
        eps: Added to the batch std before dividing.
        unbiased: Bessel-corrected batch std (default) or population std.

    Returns:
        ``[N]`` advantages; singleton and zero-variance groups give ``0``.

    Raises:
        OpsInputError: If the shapes differ, are not 1-D, or ``group_ids`` is not an integer tensor.
    """
    x, dtype = _prepare(rewards, group_ids)
    stats = _group_stats(x, group_ids, unbiased=unbiased)
    centered = torch.where(stats.constant, 0.0, stats.centered)
    n = centered.numel()
    # Computed by hand rather than with torch.std, which returns NaN (and warns) for a batch of one.
    dof = max(n - 1, 1) if unbiased else max(n, 1)
    batch_std = (centered.square().sum() / dof).sqrt()
    return (centered / (batch_std + eps)).to(dtype)


def broadcast(advantages: Tensor, mask: Tensor) -> Tensor:
    """Put one advantage per sequence on every valid position of that sequence.

    Args:
        advantages: ``[B]`` one value per sequence.
        mask: ``[B, T]`` 1 (or True) where the position is an action (an LLM token, or a valid step of a
            non-LLM policy), 0 elsewhere.

    Returns:
        ``[B, T]`` with ``advantages[b]`` at valid positions and ``0`` elsewhere, in the dtype of ``advantages``.

    Raises:
        OpsInputError: If ``advantages`` is not ``[B]`` or ``mask`` is not ``[B, T]`` with the same ``B``.
    """
    check_ndim("advantages", advantages, 1, "[B]")
    check_ndim("mask", mask, 2, "[B, T]")
    if mask.shape[0] != advantages.shape[0]:
        raise OpsInputError(
            f"advantages has shape {tuple(advantages.shape)} but mask has shape {tuple(mask.shape)}; "
            f"they need the same number of sequences B."
        )
    dtype = out_dtype(advantages.dtype)
    return torch.where(mask > 0, advantages.to(dtype)[:, None], 0.0).to(dtype)


def broadcast_turns(turn_values: Tensor, turn_ids: Tensor, mask: Tensor) -> Tensor:
    """Put one value per (sequence, turn) on every valid token of that turn (turn-level MDPs such as MC-PPO).

    Args:
        turn_values: ``[B, K]`` one value per turn, e.g. the output of :func:`agentgym.ops.gae` run on a
            ``[B, K]`` grid of turn rewards and turn values.
        turn_ids: ``[B, T]`` integer turn index ``0..K-1`` of each token within its sequence; ignored where
            ``mask`` is 0.
        mask: ``[B, T]`` 1 at action tokens.

    Returns:
        ``[B, T]`` with ``turn_values[b, turn_ids[b, t]]`` at valid tokens and ``0`` elsewhere.

    Raises:
        OpsInputError: On shape mismatch, or a valid token whose turn id is outside ``0..K-1`` (this value check
            is a host-device sync point on CUDA).
    """
    check_ndim("turn_values", turn_values, 2, "[B, K]")
    check_ndim("turn_ids", turn_ids, 2, "[B, T]")
    check_same_shape("turn_ids", turn_ids, mask=mask)
    if turn_values.shape[0] != turn_ids.shape[0]:
        raise OpsInputError(
            f"turn_values has shape {tuple(turn_values.shape)} but turn_ids has shape {tuple(turn_ids.shape)}; "
            f"they need the same number of sequences B."
        )
    valid = mask > 0
    ids = torch.where(valid, turn_ids.long(), 0)
    num_turns = turn_values.shape[1]
    if bool(((ids < 0) | (ids >= num_turns)).any()):
        raise OpsInputError(f"turn_ids at valid tokens must lie in 0..{num_turns - 1} (turn_values has K={num_turns}).")
    return torch.where(valid, turn_values.gather(1, ids), 0.0)


def whiten(values: Tensor, mask: Tensor, *, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Masked whitening over every valid position of the batch: ``(x - mean) / sqrt(var + eps)``.

    Mean and variance are taken over the positions where ``mask`` is 1 only; the variance is Bessel-corrected
    (``n - 1``), as the group estimators above. With fewer than two valid positions the variance is taken as 0
    rather than NaN, so the output is 0 (``shift_mean=True``) and the call never fails inside a training loop.

    Args:
        values: Any shape, e.g. ``[B, T]`` returns.
        mask: Same shape, 1 at positions that count.
        shift_mean: Subtract the mean. ``False`` only divides by the std (the mean's sign and size survive);
            a constant input then has zero variance and is scaled by ``1/sqrt(eps)``, so keep the default there.
        eps: Added to the variance.

    Returns:
        Same shape and dtype as ``values``; ``0`` at masked positions.

    Raises:
        OpsInputError: If the shapes differ.
    """
    check_same_shape("values", values, mask=mask)
    dtype = out_dtype(values.dtype)
    valid = mask > 0
    x = torch.where(valid, values.detach().to(work_dtype(dtype)), 0.0)
    m = as_mask(valid, x.dtype)
    n = m.sum()
    mean = x.sum() / n.clamp(min=1.0)
    var = (torch.where(valid, x - mean, 0.0).square().sum()) / (n - 1.0).clamp(min=1.0)
    out = (x - mean if shift_mean else x) * torch.rsqrt(var + eps)
    return torch.where(valid, out, 0.0).to(dtype)
