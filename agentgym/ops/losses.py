"""One clipped policy-gradient loss for every trainer: PPO, GRPO, DAPO, Dr.GRPO, LOOP (token/turn/trajectory).

The loss works on *units*. A unit is what gets one importance ratio and one clipped surrogate:

- ``ratio_level="token"``: each valid token (``rho_t = exp(logp_t - old_logp_t)``; PPO, GRPO, LOOP-token).
- ``ratio_level="turn"``: each (sequence, turn) span; the ratio is the product of its token ratios (the sum of
  their log-ratios) and the advantage is the mean of its tokens' advantages (they are equal when the advantage was
  broadcast). LOOP-turn.
- ``ratio_level="trajectory"``: each sequence; one ratio over all its valid tokens, times the mean advantage of its
  tokens. LOOP-bandit.

Each unit's loss is PPO's pessimistic ``max(-A * rho, -A * clip(rho, low, high))`` (optionally dual-clipped), and
the aggregation modes treat a unit the way they treat a token: "token-mean" averages over all units of the
batch, "seq-mean-token-mean" averages units within a sequence and then sequences, and so on. So a turn counts once
in the mean over its sequence's turns, however many tokens it has (the spec's [reading] of LOOP-turn). For the
trajectory level every mode except "seq-mean-token-sum-norm" reduces to the mean over sequences (LOOP Eq. 4).

The loss is the same for non-LLM policies: a "sequence" is an episode of ``T`` steps, ``logp`` the log-prob of the
action taken at each step and ``mask`` marks the steps that happened.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor

from agentgym.ops._checks import OpsInputError, check_ndim, check_same_shape, work_dtype

__all__ = ["AggMode", "ClipKind", "RatioLevel", "aggregate", "clip_range", "policy_loss"]

RatioLevel = Literal["token", "turn", "trajectory"]
AggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
ClipKind = Literal["symmetric", "loop"]

_AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
# exp(20) ~ 4.9e8. Summed log-ratios of long trajectories can exceed what exp() can represent; clamping keeps the
# loss finite (a ratio that large is clipped or capped by dual clip anyway) and only zeroes the gradient beyond it.
_LOG_RATIO_LIMIT = 20.0


def clip_range(eps: float, *, kind: ClipKind = "symmetric", eps_high: float | None = None) -> tuple[float, float]:
    """Ratio bounds ``(low, high)`` for :func:`policy_loss`.

    Args:
        eps: Clip width.
        kind: ``"symmetric"``: ``(1 - eps, 1 + eps)`` (PPO/GRPO). ``"loop"``: ``(1/(1+eps), 1+eps)``, symmetric in
            log-ratio, as LOOP's code does with ``eps = 0.1``.
        eps_high: Upper width for ``"symmetric"`` when it differs from the lower one, giving
            ``(1 - eps, 1 + eps_high)`` (DAPO's clip-higher: 0.2 and 0.28).

    Returns:
        ``(low, high)`` with ``0 < low <= 1 <= high``.

    Raises:
        OpsInputError: For a negative width, ``eps >= 1`` with ``"symmetric"``, an unknown kind, or ``eps_high``
            with ``"loop"``.
    """
    if eps < 0 or (eps_high is not None and eps_high < 0):
        raise OpsInputError(f"clip widths must be >= 0, got eps={eps}, eps_high={eps_high}.")
    if kind == "loop":
        if eps_high is not None:
            raise OpsInputError("kind='loop' derives both bounds from eps; pass eps_high only with 'symmetric'.")
        return 1.0 / (1.0 + eps), 1.0 + eps
    if kind == "symmetric":
        if eps >= 1:
            raise OpsInputError(f"kind='symmetric' needs eps < 1 so that 1 - eps > 0, got eps={eps}.")
        return 1.0 - eps, 1.0 + (eps if eps_high is None else eps_high)
    raise OpsInputError(f"kind must be 'symmetric' or 'loop', got {kind!r}.")


def aggregate(
    values: Tensor, mask: Tensor, mode: AggMode, *, divisor: float | None = None, seq_weights: Tensor | None = None
) -> Tensor:
    """Reduce a ``[B, U]`` grid of per-unit losses to a scalar.

    - ``token-mean``: ``sum(m * L) / sum(m)`` (DAPO), every unit in the batch weighs the same.
    - ``seq-mean-token-mean``: ``(1/B) sum_b (sum_u m L / sum_u m)`` (GRPO, LOOP).
    - ``seq-mean-token-sum``: ``(1/B) sum_b sum_u m L``.
    - ``seq-mean-token-sum-norm``: ``sum_b sum_u m L / L_max`` (Dr.GRPO), ``L_max`` defaults to ``U``.

    ``B`` counts only rows with at least one valid unit. ``divisor`` replaces the data-dependent denominator
    (``sum(m)``, ``B`` or ``L_max``) by a constant: LOOP divides by the *configured* minibatch size so that rows
    dropped by its advantage filter shrink the step instead of being renormalised away.

    ``seq_weights`` multiplies each row's term (its mean or sum) before the reduction: with rows that are the turns
    of longer episodes, :func:`episode_weights` makes ``seq-mean-token-mean`` a mean over each *episode's* units.

    Args:
        values: ``[B, U]`` per-unit losses (anything at masked units is ignored, inf/NaN included).
        mask: ``[B, U]`` 1 at valid units.
        mode: One of the four modes above.
        divisor: Optional constant denominator.
        seq_weights: Optional ``[B]`` non-negative weight of each row (constant; 1 by default).

    Returns:
        A 0-dim tensor in the dtype of ``values``; ``0`` for an all-masked batch.

    Raises:
        OpsInputError: On a shape mismatch, an unknown mode or a non-positive divisor.
    """
    check_ndim("values", values, 2, "[B, U]")
    check_same_shape("values", values, mask=mask)
    if mode not in _AGG_MODES:
        raise OpsInputError(f"agg mode must be one of {_AGG_MODES}, got {mode!r}.")
    if divisor is not None and divisor <= 0:
        raise OpsInputError(f"divisor must be positive, got {divisor}.")
    valid = mask > 0
    per_unit = torch.where(valid, values, 0.0)
    if seq_weights is not None:
        check_ndim("seq_weights", seq_weights, 1, "[B]")
        if seq_weights.shape[0] != values.shape[0] or bool((seq_weights < 0).any()):
            raise OpsInputError(
                f"seq_weights needs one non-negative weight per row: shape {tuple(seq_weights.shape)} for "
                f"{values.shape[0]} rows, min {float(seq_weights.min()) if seq_weights.numel() else 0.0}."
            )
        per_unit = per_unit * seq_weights.detach().to(values.dtype)[:, None]
    row_sum = per_unit.sum(dim=1)
    row_count = valid.sum(dim=1).to(values.dtype)
    if mode == "token-mean":
        return row_sum.sum() / (divisor if divisor is not None else row_count.sum().clamp(min=1.0))
    if mode == "seq-mean-token-sum-norm":
        return row_sum.sum() / (divisor if divisor is not None else float(values.shape[1]))
    rows = (row_count > 0).sum().to(values.dtype).clamp(min=1.0)
    per_row = row_sum / row_count.clamp(min=1.0) if mode == "seq-mean-token-mean" else row_sum
    return per_row.sum() / (divisor if divisor is not None else rows)


def episode_weights(episode: Tensor, units: Tensor) -> Tensor:
    """Row weights under which per-row means add up to per-episode means, for episodes split into turn rows.

    When each turn of an episode is trained as its own row (prompts with truncated history), a per-row mean
    (``seq-mean-token-mean``) weighs an episode by its number of turns: a 10-turn failure counts twice as much as a
    5-turn success, and since failures run longer, the update leans towards pushing sampled actions down. LOOP's
    loss is a mean over each rollout's tokens, every rollout weighing the same. Weighting row ``r`` of episode ``e``
    by ``u_r / U_e`` (its share of the episode's units) restores that; the factor ``R / E`` (rows per episode in
    the batch) keeps the weights' mean at 1, so the step size over an epoch of rows is unchanged.

    Args:
        episode: ``[R]`` integer episode of each row.
        units: ``[R]`` loss units of each row (valid tokens, or turns for turn-level ratios); rows with 0 units
            get weight 0.

    Returns:
        ``[R]`` float weights; all 1 when every episode is a single row.

    Raises:
        OpsInputError: On shape mismatches or negative unit counts.
    """
    check_ndim("episode", episode, 1, "[R]")
    check_ndim("units", units, 1, "[R]")
    if episode.shape != units.shape:
        raise OpsInputError(f"episode {tuple(episode.shape)} and units {tuple(units.shape)} need the same shape [R].")
    if bool((units < 0).any()):
        raise OpsInputError(f"units must be >= 0, got min {float(units.min())}.")
    if episode.numel() == 0:
        return torch.zeros(0, dtype=torch.float32)
    ids, index = torch.unique(episode, return_inverse=True)
    u = units.to(torch.float64)
    totals = torch.zeros(len(ids), dtype=torch.float64).index_add_(0, index, u)
    share = torch.where(u > 0, u / totals[index].clamp(min=1e-12), 0.0)
    rows_with_units = float((u > 0).sum())
    episodes_with_units = float((totals > 0).sum())
    return (share * (rows_with_units / max(episodes_with_units, 1.0))).to(torch.float32)


class _Units(NamedTuple):
    """The loss units laid out on a ``[B, U]`` grid."""

    log_ratio: Tensor  # [B, U] summed log-ratio of the unit (differentiable)
    advantage: Tensor  # [B, U] advantage of the unit (constant)
    mask: Tensor  # [B, U] bool, True where the unit exists


def _turn_units(log_ratio: Tensor, advantages: Tensor, valid: Tensor, turn_ids: Tensor) -> _Units:
    """Sum log-ratios and average advantages over each (row, turn) span with ``index_add`` on a ``[B, K]`` grid."""
    ids = torch.where(valid, turn_ids.long(), 0)
    # Two host-device syncs on CUDA: a value check, and K (the grid width) must be known to allocate it.
    if bool((ids < 0).any()):
        raise OpsInputError("turn_ids must be >= 0 at valid tokens (use the turn's index within its sequence).")
    batch = valid.shape[0]
    num_turns = int(ids.max()) + 1 if ids.numel() else 1
    flat = (torch.arange(batch, device=ids.device)[:, None] * num_turns + ids).flatten()
    zeros = log_ratio.new_zeros(batch * num_turns)
    weight = valid.to(log_ratio.dtype).flatten()
    count = zeros.index_add(0, flat, weight)
    span_log_ratio = zeros.index_add(0, flat, log_ratio.flatten())
    span_adv = zeros.index_add(0, flat, advantages.flatten()) / count.clamp(min=1.0)
    shape = (batch, num_turns)
    return _Units(span_log_ratio.view(shape), span_adv.view(shape), (count > 0).view(shape))


def _units(log_ratio: Tensor, advantages: Tensor, valid: Tensor, level: RatioLevel, turn_ids: Tensor | None) -> _Units:
    """Group per-token log-ratios (0 at masked tokens) and advantages into units of the requested level."""
    if level == "token":
        return _Units(log_ratio, advantages, valid)
    if level == "trajectory":
        count = valid.sum(dim=1, keepdim=True)
        adv = advantages.sum(dim=1, keepdim=True) / count.clamp(min=1).to(advantages.dtype)
        return _Units(log_ratio.sum(dim=1, keepdim=True), adv, count > 0)
    if level == "turn":
        if turn_ids is None:
            raise OpsInputError("ratio_level='turn' needs turn_ids: a [B, T] tensor of each token's turn index.")
        check_same_shape("logp", log_ratio, turn_ids=turn_ids)
        return _turn_units(log_ratio, advantages, valid, turn_ids)
    raise OpsInputError(f"ratio_level must be 'token', 'turn' or 'trajectory', got {level!r}.")


def _clipped_surrogate(
    units: _Units, clip: tuple[float, float], dual_clip: float | None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """PPO's pessimistic surrogate per unit; returns ``(loss, ratio, clipped, dual_clipped)`` on the unit grid."""
    low, high = clip
    adv = units.advantage
    ratio = torch.exp(units.log_ratio.clamp(-_LOG_RATIO_LIMIT, _LOG_RATIO_LIMIT))
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(low, high)
    loss = torch.maximum(unclipped, clipped)
    is_clipped = clipped > unclipped
    is_dual = torch.zeros_like(is_clipped)
    if dual_clip is not None:
        # For A < 0 a huge ratio makes -A*rho unbounded; dual clip caps the unit's loss at c*|A| (= -c*A).
        cap = -dual_clip * adv
        is_dual = (adv < 0) & (loss > cap)
        loss = torch.where(adv < 0, torch.minimum(loss, cap), loss)
    return loss, ratio, is_clipped, is_dual


def _check_loss_args(clip: tuple[float, float], dual_clip: float | None, kl: Tensor | None, kl_coef: float) -> None:
    low, high = clip
    if not 0.0 < low <= 1.0 <= high:
        raise OpsInputError(
            f"clip must be ratio bounds (low, high) with 0 < low <= 1 <= high, got {clip}; "
            f"build them with clip_range(0.2) -> (0.8, 1.2) or clip_range(0.1, kind='loop')."
        )
    if dual_clip is not None and dual_clip <= 1.0:
        raise OpsInputError(f"dual_clip must be > 1 (3.0 is usual), got {dual_clip}.")
    if kl is None and kl_coef != 0.0:
        raise OpsInputError(f"kl_coef={kl_coef} but kl is None; pass kl=kl_estimate(logp, ref_logp, 'k3').")


def _loss_stats(
    log_ratio: Tensor, valid: Tensor, units: _Units, surrogate: tuple[Tensor, Tensor, Tensor, Tensor]
) -> dict[str, Tensor]:
    """Detached diagnostics: clip fractions, ratio range and approximate ``KL(old || new)`` (no host sync)."""
    _, ratio, is_clipped, is_dual = surrogate
    with torch.no_grad():
        unit_ok = units.mask
        n_units = unit_ok.sum().clamp(min=1).to(ratio.dtype)
        n_tokens = valid.sum().clamp(min=1).to(ratio.dtype)
        lr = log_ratio.detach()
        lr_safe = lr.clamp(-_LOG_RATIO_LIMIT, _LOG_RATIO_LIMIT)  # only exp() needs the clamp
        rows = valid.any(dim=1)
        return {
            "clip_frac": (is_clipped & unit_ok).sum() / n_units,
            "dual_clip_frac": (is_dual & unit_ok).sum() / n_units,
            "ratio_mean": torch.where(unit_ok, ratio, 0.0).sum() / n_units,
            "ratio_max": torch.where(unit_ok, ratio, 0.0).max(),  # ratios are > 0, so 0 marks "no unit"
            "ratio_min": torch.where(unit_ok, ratio, torch.inf).min(),
            # Samples come from the old policy and rho = p_new / p_old: k1 = -log rho, k3 = rho - 1 - log rho.
            "approx_kl_k1": -lr.sum() / n_tokens,
            "approx_kl_k3": torch.where(valid, lr_safe.exp() - 1.0 - lr_safe, 0.0).sum() / n_tokens,
            "traj_k1": -torch.where(rows, lr.sum(dim=1), 0.0).sum() / rows.sum().clamp(min=1),
            "num_units": unit_ok.sum(),
        }


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    ratio_level: RatioLevel = "token",
    turn_ids: Tensor | None = None,
    clip: tuple[float, float] = (0.8, 1.2),
    dual_clip: float | None = None,
    agg: AggMode = "seq-mean-token-mean",
    agg_divisor: float | None = None,
    seq_weights: Tensor | None = None,
    kl: Tensor | None = None,
    kl_coef: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped policy-gradient loss (to minimise) at token, turn or trajectory ratio level.

    Per unit (see the module docstring) ``L = max(-A * rho, -A * clip(rho, low, high))``; with ``dual_clip=c``,
    units with ``A < 0`` use ``min(L, -c * A)``. Units are reduced with :func:`aggregate`. With ``kl``, the per-token
    KL is reduced with the same mode over tokens and ``kl_coef`` times it is added ("KL in the loss", GRPO).
    ``old_logp`` and ``advantages`` are treated as constants (detached); the math runs in at least float32.

    Args:
        logp: ``[B, T]`` log-probs of the taken actions under the current policy (differentiable). For a non-LLM
            policy, one column per environment step.
        old_logp: ``[B, T]`` log-probs under the behaviour policy that sampled the actions.
        advantages: ``[B, T]`` per-token advantages (e.g. :func:`agentgym.ops.broadcast` of a per-rollout one).
        mask: ``[B, T]`` 1 at action positions; env tokens, prompt and padding are 0 (inf/NaN there is ignored).
        ratio_level: ``"token"``, ``"turn"`` or ``"trajectory"``.
        turn_ids: ``[B, T]`` integer turn index of each token within its sequence (>= 0 at valid tokens; tokens
            with equal ids form one turn, contiguous or not). Required for ``"turn"``, ignored otherwise.
        clip: Ratio bounds ``(low, high)``, e.g. ``clip_range(0.2)`` = ``(0.8, 1.2)`` or LOOP's
            ``clip_range(0.1, kind="loop")`` = ``(1/1.1, 1.1)``.
        dual_clip: Dual-clip constant ``c > 1`` for negative advantages (3.0 is usual), or ``None``.
        agg: Aggregation mode, see :func:`aggregate`.
        agg_divisor: Constant denominator for ``agg`` (LOOP's configured minibatch size, Dr.GRPO's ``L_max``).
        seq_weights: Optional ``[B]`` weight of each row in ``agg`` (:func:`episode_weights` for turn rows); the KL
            term is weighted the same way.
        kl: Optional ``[B, T]`` per-token KL to a reference (:func:`agentgym.ops.kl_estimate`).
        kl_coef: Weight of the KL term; must be 0 when ``kl`` is None.

    Returns:
        ``(loss, stats)``: a 0-dim loss in the dtype of ``logp``, and detached 0-dim tensors ``pg_loss``,
        ``kl_loss`` (when ``kl`` is given), ``clip_frac``, ``dual_clip_frac`` (fractions of units), ``ratio_mean``,
        ``ratio_max``, ``ratio_min`` (over units), ``approx_kl_k1``, ``approx_kl_k3`` (token means of
        ``KL(old || new)``), ``traj_k1`` (LOOP's guard, as :func:`agentgym.ops.k1_divergence`) and ``num_units``.
        Calling ``.item()`` on them is a host-device sync; do it once per logging step.

    Raises:
        OpsInputError: On shape mismatches, bad clip bounds, ``dual_clip <= 1``, an unknown level or mode, a
            missing ``turn_ids`` or a ``kl_coef`` without ``kl``.
    """
    check_ndim("logp", logp, 2, "[B, T]")
    check_same_shape("logp", logp, old_logp=old_logp, advantages=advantages, mask=mask, kl=kl)
    if not logp.dtype.is_floating_point:
        raise OpsInputError(f"logp must be a floating tensor of log-probabilities, got {logp.dtype}.")
    _check_loss_args(clip, dual_clip, kl, kl_coef)
    wdt = work_dtype(logp.dtype)
    valid = mask > 0
    # torch.where (not a multiply by the mask) so that -inf/NaN log-probs at padding cannot leak into the loss.
    log_ratio = torch.where(valid, logp.to(wdt) - old_logp.detach().to(wdt), 0.0)
    adv = torch.where(valid, advantages.detach().to(wdt), 0.0)
    units = _units(log_ratio, adv, valid, ratio_level, turn_ids)
    surrogate = _clipped_surrogate(units, clip, dual_clip)
    pg_loss = aggregate(surrogate[0], units.mask, agg, divisor=agg_divisor, seq_weights=seq_weights)
    stats = _loss_stats(log_ratio, valid, units, surrogate)
    stats["pg_loss"] = pg_loss.detach()
    loss = pg_loss
    if kl is not None:
        kl_loss = aggregate(kl.to(wdt), valid, agg, divisor=agg_divisor, seq_weights=seq_weights)
        stats["kl_loss"] = kl_loss.detach()
        loss = loss + kl_coef * kl_loss
    return loss.to(logp.dtype), stats
