"""Token-level (or turn-level) return recursions: GAE with a value head, and REINFORCE++ returns.

**Masked positions are skipped.** Both functions walk each row from right to left over the positions where
``mask`` is 1 only; a position with mask 0 (a prompt token, an env/tool token between two assistant turns, padding)
is not a time step: the recursion links each valid position to the next *valid* position, with no discount for
the gap. This is what makes the LLM-token MDP of a multi-turn conversation work: the importance weight and the
credit chain run over the model's own tokens, and env tokens in between are part of the transition.

A reward that sits on a masked position (for example a reward attached to an env token after a turn) is not lost:
it is credited, undiscounted, to the nearest *preceding* valid position, i.e. to the action that caused it. A
reward before the first valid position of a row has no action to credit and is dropped.

The same functions serve turn-level MDPs (ProAct MC-PPO, Turn-PPO): pass one column per turn (``[B, K]`` turn
rewards and turn values) and spread the result over tokens with :func:`agentgym.ops.broadcast_turns`.

The recursion is a Python loop over ``T`` columns (about 8 small kernels per column), vectorised over the batch;
outputs carry no gradient because they are regression targets and policy-gradient weights.
"""

from __future__ import annotations

import torch
from torch import Tensor

from agentgym.ops._checks import OpsInputError, check_ndim, check_same_shape, out_dtype, work_dtype
from agentgym.ops.advantages import whiten

__all__ = ["gae", "reinforce_pp_returns"]


def _split_values(values: Tensor, batch: int, horizon: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Return ``(V [B, T], bootstrap [B])`` from ``[B, T+1]`` values, or from ``[B, T]`` with a zero bootstrap."""
    check_ndim("values", values, 2, "[B, T] or [B, T+1]")
    v = values.detach().to(dtype)
    if values.shape == (batch, horizon + 1):
        return v[:, :horizon], v[:, horizon]
    if values.shape == (batch, horizon):
        return v, v.new_zeros(batch)
    raise OpsInputError(
        f"values has shape {tuple(values.shape)} but rewards has shape {(batch, horizon)}; values must be "
        f"[B, T] (terminal: bootstrap value 0) or [B, T+1] (the last column is the bootstrap value)."
    )


def gae(rewards: Tensor, values: Tensor, mask: Tensor, *, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over the valid positions of each row.

    ``delta_t = r_t + gamma * V(next valid) - V_t`` and ``A_t = delta_t + gamma * lam * A(next valid)``, with
    ``V(after the last valid position) = bootstrap``. Returns ``G_t = A_t + V_t``. See the module docstring for how
    masked positions and rewards on them are handled.

    Args:
        rewards: ``[B, T]`` per-position rewards (e.g. ``-beta * KL_t`` plus the outcome at the last token, see
            :func:`agentgym.ops.kl_penalized_rewards`).
        values: ``[B, T+1]`` value predictions whose last column is the value of the state after the row's last
            valid position (0 if the episode terminated, ``V(s_T)`` if it was truncated); or ``[B, T]``, which
            means a bootstrap of 0.
        mask: ``[B, T]`` 1 at action positions.
        gamma: Discount per valid step.
        lam: GAE lambda; ``lam=1`` gives Monte-Carlo returns minus ``V``, ``lam=0`` one-step TD.

    Returns:
        ``(advantages, returns)``, both ``[B, T]``, 0 at masked positions, in the dtype of ``rewards``.

    Raises:
        OpsInputError: If the shapes do not line up.
    """
    check_ndim("rewards", rewards, 2, "[B, T]")
    check_same_shape("rewards", rewards, mask=mask)
    batch, horizon = rewards.shape
    dtype = out_dtype(torch.promote_types(rewards.dtype, values.dtype))
    wdt = work_dtype(dtype)
    v, next_value = _split_values(values, batch, horizon, wdt)
    r = rewards.detach().to(wdt)
    valid = mask > 0
    next_adv = r.new_zeros(batch)
    pending = r.new_zeros(batch)  # rewards seen on masked positions, waiting for the preceding action
    columns: list[Tensor] = []
    for t in range(horizon - 1, -1, -1):
        ok = valid[:, t]
        reward = r[:, t] + pending
        adv = reward + gamma * next_value - v[:, t] + (gamma * lam) * next_adv
        columns.append(torch.where(ok, adv, 0.0))
        next_adv = torch.where(ok, adv, next_adv)
        next_value = torch.where(ok, v[:, t], next_value)
        pending = torch.where(ok, 0.0, reward)
    advantages = torch.stack(columns[::-1], dim=1) if columns else r.new_zeros(batch, 0)
    returns = torch.where(valid, advantages + v, 0.0)
    return advantages.to(dtype), returns.to(dtype)


def reinforce_pp_returns(
    token_rewards: Tensor, mask: Tensor, *, gamma: float = 1.0, eps: float = 1e-8
) -> tuple[Tensor, Tensor]:
    """REINFORCE++: discounted reward-to-go per token, whitened over the whole batch (no critic, no groups).

    ``G_t = sum_{t' >= t} gamma^(t'-t) r_t'`` over valid positions (masked positions skipped as in :func:`gae`),
    then ``A = whiten(G, mask)``.

    Args:
        token_rewards: ``[B, T]`` per-token rewards, typically ``-beta * KL_t`` with the outcome added at the last
            valid token (:func:`agentgym.ops.kl_penalized_rewards`).
        mask: ``[B, T]`` 1 at action tokens.
        gamma: Discount per valid token (REINFORCE++ uses 1).
        eps: Added to the variance when whitening.

    Returns:
        ``(advantages, returns)``, both ``[B, T]``, 0 at masked positions.

    Raises:
        OpsInputError: If the shapes do not line up.
    """
    check_ndim("token_rewards", token_rewards, 2, "[B, T]")
    # GAE with V = 0 and lambda = 1 is exactly the discounted reward-to-go, with the same gap convention.
    _, returns = gae(token_rewards, torch.zeros_like(token_rewards), mask, gamma=gamma, lam=1.0)
    return whiten(returns, mask, eps=eps), returns
