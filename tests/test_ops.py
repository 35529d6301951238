"""Golden and property tests for agentgym.ops: every number below is worked out by hand in the comments."""

from __future__ import annotations

import math

import pytest
import torch

from agentgym.errors import AgentGymError
from agentgym.ops import (
    OpsInputError,
    aggregate,
    broadcast,
    broadcast_turns,
    clip_range,
    episode_weights,
    gae,
    group_normalized,
    k1_divergence,
    kl_estimate,
    kl_penalized_rewards,
    leave_one_out,
    policy_loss,
    reinforce_pp_baseline,
    reinforce_pp_returns,
    trajectory_log_ratio,
    whiten,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def t(values, dtype=torch.float64, device="cpu") -> torch.Tensor:
    return torch.tensor(values, dtype=dtype, device=device)


def close(actual: torch.Tensor, expected, atol: float = 1e-6) -> None:
    expected_t = torch.as_tensor(expected, dtype=actual.dtype, device=actual.device)
    torch.testing.assert_close(actual, expected_t, atol=atol, rtol=0)


# --------------------------------------------------------------------------------------------------------------------
# Trajectory-level estimators


@pytest.mark.parametrize("device", DEVICES)
def test_leave_one_out_two_groups_of_two(device: str) -> None:
    # Group 0 = {1, 0}: 1 - 0 = 1 and 0 - 1 = -1; group 1 = {0, 1}: -1 and 1.
    adv = leave_one_out(t([1.0, 0.0, 0.0, 1.0], device=device), torch.tensor([0, 0, 1, 1], device=device))
    close(adv, [1.0, -1.0, -1.0, 1.0])


def test_leave_one_out_k3_unsorted_rows_and_arbitrary_ids() -> None:
    # Group 7 = {1, 2, 6} (rows 0, 2, 4), group 2 = {5, 3} (rows 1, 3).
    # Group 7: 1 - (2+6)/2 = -3, 2 - (1+6)/2 = -1.5, 6 - (1+2)/2 = 4.5  (= 3/2 * (R - 3)).
    # Group 2: 5 - 3 = 2, 3 - 5 = -2.
    adv = leave_one_out(t([1.0, 5.0, 2.0, 3.0, 6.0]), torch.tensor([7, 2, 7, 2, 7]))
    close(adv, [-3.0, 2.0, -1.5, -2.0, 4.5])


def test_leave_one_out_std_normalize_unbiased_and_population() -> None:
    # {1, 2, 6}: centred (-2, -1, 3), sum of squares 14; unbiased var 14/2 = 7, population var 14/3.
    rewards, ids = t([1.0, 2.0, 6.0]), torch.tensor([0, 0, 0])
    close(leave_one_out(rewards, ids, std_normalize=True, eps=0.0), [x / math.sqrt(7) for x in (-3, -1.5, 4.5)])
    population = leave_one_out(rewards, ids, std_normalize=True, unbiased=False, eps=0.0)
    close(population, [x / math.sqrt(14 / 3) for x in (-3, -1.5, 4.5)])


@pytest.mark.parametrize("estimator", [leave_one_out, group_normalized, reinforce_pp_baseline])
def test_singleton_and_zero_variance_groups_give_exact_zero(estimator) -> None:
    # Row 0 is alone in group 5; rows 1-3 all scored 0.1 (their float mean is not exactly 0.1); rows 4-5 vary.
    rewards = t([3.0, 0.1, 0.1, 0.1, 1.0, 0.0])
    adv = estimator(rewards, torch.tensor([5, 1, 1, 1, 2, 2]))
    assert torch.isfinite(adv).all()
    assert adv[:4].eq(0.0).all()
    assert adv[4] > 0 > adv[5]


def test_group_normalized_std_on_off() -> None:
    # {1, 2, 6}: mean 3, centred (-2, -1, 3); unbiased std sqrt(7); population std sqrt(14/3).
    rewards, ids = t([1.0, 2.0, 6.0]), torch.tensor([0, 0, 0])
    close(group_normalized(rewards, ids, eps=0.0), [x / math.sqrt(7) for x in (-2, -1, 3)])
    close(group_normalized(rewards, ids, unbiased=False, eps=0.0), [x / math.sqrt(14 / 3) for x in (-2, -1, 3)])
    close(group_normalized(rewards, ids, std_normalize=False), [-2.0, -1.0, 3.0])  # Dr.GRPO mean-only
    # K = 2 {1, 0}: centred ±0.5; unbiased std 0.7071 -> ±0.7071; population std 0.5 -> ±1.
    pair, pair_ids = t([1.0, 0.0]), torch.tensor([0, 0])
    close(group_normalized(pair, pair_ids, eps=0.0), [0.5 / math.sqrt(0.5), -0.5 / math.sqrt(0.5)])
    close(group_normalized(pair, pair_ids, unbiased=False, eps=0.0), [1.0, -1.0])


def test_reinforce_pp_baseline_batch_whitening() -> None:
    # Groups {1, 2, 6}, {5}, {3, 3}, {4, 0} -> centred (-2, -1, 3), (0), (0, 0), (2, -2).
    # Std over the whole batch (N = 8) of the centred values, not per group: sum of squares 4+1+9+4+4 = 22,
    # unbiased var 22/7, std 1.772811.
    rewards = t([1.0, 2.0, 6.0, 5.0, 3.0, 3.0, 4.0, 0.0])
    ids = torch.tensor([0, 0, 0, 1, 2, 2, 3, 3])
    std = math.sqrt(22 / 7)
    close(reinforce_pp_baseline(rewards, ids, eps=0.0), [x / std for x in (-2, -1, 3, 0, 0, 0, 2, -2)])
    # Two groups {1, 0}, {0, 1}: centred ±0.5, sum of squares 1, unbiased var 1/3 -> 0.5 * sqrt(3) = 0.866025.
    adv = reinforce_pp_baseline(t([1.0, 0.0, 0.0, 1.0]), torch.tensor([0, 0, 1, 1]), eps=0.0)
    close(adv, [0.5 * math.sqrt(3), -0.5 * math.sqrt(3), -0.5 * math.sqrt(3), 0.5 * math.sqrt(3)])
    # A batch of one rollout: no NaN (torch.std would give NaN), just 0.
    close(reinforce_pp_baseline(t([2.0]), torch.tensor([0])), [0.0])


def test_loo_sums_to_zero_and_grpo_has_unit_std_per_group() -> None:
    gen = torch.Generator().manual_seed(0)
    sizes = [2, 3, 4, 6, 8]
    ids = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    ids = ids[torch.randperm(ids.numel(), generator=gen)]  # rows need not be sorted by group
    rewards = torch.rand(ids.numel(), generator=gen, dtype=torch.float64)
    loo = leave_one_out(rewards, ids)
    grpo = group_normalized(rewards, ids, eps=0.0)
    grpo_pop = group_normalized(rewards, ids, unbiased=False, eps=0.0)
    for g in range(len(sizes)):
        sel = ids == g
        assert abs(loo[sel].sum().item()) < 1e-12
        # LOO = K/(K-1) times the mean-only GRPO advantage.
        k = sizes[g]
        close(loo[sel], (rewards[sel] - rewards[sel].mean()) * k / (k - 1), atol=1e-12)
        assert abs(grpo[sel].std(unbiased=True).item() - 1.0) < 1e-9
        assert abs(grpo_pop[sel].std(unbiased=False).item() - 1.0) < 1e-9
        assert abs(grpo[sel].mean().item()) < 1e-12


def test_group_estimators_dtypes_and_inputs_untouched() -> None:
    ids = torch.tensor([0, 0, 1, 1])
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        rewards = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=dtype)
        before = rewards.clone()
        for fn in (leave_one_out, group_normalized, reinforce_pp_baseline):
            assert fn(rewards, ids).dtype == dtype
        assert torch.equal(rewards, before)
    # Integer rewards are promoted to the default float dtype.
    assert leave_one_out(torch.tensor([1, 0]), torch.tensor([0, 0])).dtype == torch.get_default_dtype()


def test_group_estimators_reject_bad_input() -> None:
    with pytest.raises(OpsInputError, match=r"group_ids has shape \(4,\) but rewards has shape \(3,\)"):
        leave_one_out(t([1.0, 0.0, 1.0]), torch.tensor([0, 0, 1, 1]))
    with pytest.raises(OpsInputError, match="integer"):
        group_normalized(t([1.0, 0.0]), t([0.0, 0.0]))
    with pytest.raises(OpsInputError, match=r"\[N\]"):
        reinforce_pp_baseline(t([[1.0, 0.0]]), torch.tensor([[0, 0]]))
    err = OpsInputError("x")
    assert isinstance(err, ValueError) and isinstance(err, AgentGymError)


# --------------------------------------------------------------------------------------------------------------------
# Broadcasting and whitening


def test_broadcast_and_broadcast_turns() -> None:
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    close(broadcast(t([2.0, -1.0]), mask), [[2.0, 2.0, 0.0], [0.0, -1.0, -1.0]])
    # Tokens: turn 0, env token (masked, id -1 is ignored), turn 1, turn 1.
    out = broadcast_turns(t([[10.0, 20.0]]), torch.tensor([[0, -1, 1, 1]]), torch.tensor([[1, 0, 1, 1]]))
    close(out, [[10.0, 0.0, 20.0, 20.0]])
    with pytest.raises(OpsInputError, match="0..1"):
        broadcast_turns(t([[10.0, 20.0]]), torch.tensor([[0, 2]]), torch.tensor([[1, 1]]))
    with pytest.raises(OpsInputError, match="same number of sequences"):
        broadcast(t([1.0, 2.0, 3.0]), mask)


def test_whiten_masked() -> None:
    # Valid values 1, 2, 3, 4, 5 (99 is masked): mean 3, unbiased var (4+1+0+1+4)/4 = 2.5.
    x = t([[1.0, 2.0, 3.0], [4.0, 99.0, 5.0]])
    mask = torch.tensor([[True, True, True], [True, False, True]])
    s = math.sqrt(2.5)
    close(whiten(x, mask, eps=0.0), [[-2 / s, -1 / s, 0.0], [1 / s, 0.0, 2 / s]])
    close(whiten(x, mask, shift_mean=False, eps=0.0), [[1 / s, 2 / s, 3 / s], [4 / s, 0.0, 5 / s]])
    # One valid position: variance taken as 0 instead of NaN, output 0.
    close(whiten(t([[7.0, 1.0]]), torch.tensor([[1, 0]])), [[0.0, 0.0]])


# --------------------------------------------------------------------------------------------------------------------
# GAE and REINFORCE++ returns

# The 3-step example used below: r = (0, 0, 1), V = (0.5, 0.6, 0.7), gamma = 0.9, lambda = 0.8 (gamma*lambda = 0.72),
# terminal (bootstrap 0):
#   delta_2 = 1 + 0.9*0   - 0.7 = 0.3      A_2 = 0.3
#   delta_1 = 0 + 0.9*0.7 - 0.6 = 0.03     A_1 = 0.03 + 0.72*0.3   = 0.246
#   delta_0 = 0 + 0.9*0.6 - 0.5 = 0.04     A_0 = 0.04 + 0.72*0.246 = 0.21712
#   returns = A + V = (0.71712, 0.846, 1.0)
GAE_ADV = [0.21712, 0.246, 0.3]
GAE_RET = [0.71712, 0.846, 1.0]


@pytest.mark.parametrize("device", DEVICES)
def test_gae_three_steps_by_hand(device: str) -> None:
    rewards, values = t([[0.0, 0.0, 1.0]], device=device), t([[0.5, 0.6, 0.7]], device=device)
    adv, ret = gae(rewards, values, torch.ones(1, 3, device=device), gamma=0.9, lam=0.8)
    close(adv, [GAE_ADV])
    close(ret, [GAE_RET])


def test_gae_bootstrap_column() -> None:
    # Truncated episode, V(s_3) = 0.4: delta_2 = 1 + 0.9*0.4 - 0.7 = 0.66, A_2 = 0.66,
    # A_1 = 0.03 + 0.72*0.66 = 0.5052, A_0 = 0.04 + 0.72*0.5052 = 0.403744.
    adv, ret = gae(t([[0.0, 0.0, 1.0]]), t([[0.5, 0.6, 0.7, 0.4]]), torch.ones(1, 3), gamma=0.9, lam=0.8)
    close(adv, [[0.403744, 0.5052, 0.66]])
    close(ret, [[0.903744, 1.1052, 1.36]])


def test_gae_skips_masked_gaps() -> None:
    # Actions at positions 0, 2, 3 (1 is an env token, 4 padding); values there are garbage and must not matter.
    # Linking consecutive valid positions gives exactly the 3-step example at positions 0, 2, 3.
    mask = torch.tensor([[1, 0, 1, 1, 0]])
    values = t([[0.5, 99.0, 0.6, 0.7, -99.0]])
    adv, ret = gae(t([[0.0, 0.0, 0.0, 1.0, 0.0]]), values, mask, gamma=0.9, lam=0.8)
    close(adv, [[GAE_ADV[0], 0.0, GAE_ADV[1], GAE_ADV[2], 0.0]])
    close(ret, [[GAE_RET[0], 0.0, GAE_RET[1], GAE_RET[2], 0.0]])
    # The outcome sitting on the padding after the last action is credited to that action: same result.
    adv_late, _ = gae(t([[0.0, 0.0, 0.0, 0.0, 1.0]]), values, mask, gamma=0.9, lam=0.8)
    close(adv_late, adv)
    # A reward of 0.5 on the env token after action 0 is credited to action 0, undiscounted:
    # delta_0 = 0.5 + 0.04 = 0.54, A_0 = 0.54 + 0.72*0.246 = 0.71712; later positions unchanged.
    adv_env, _ = gae(t([[0.0, 0.5, 0.0, 1.0, 0.0]]), values, mask, gamma=0.9, lam=0.8)
    close(adv_env, [[0.71712, 0.0, GAE_ADV[1], GAE_ADV[2], 0.0]])


def test_gae_rows_are_independent_and_padding_is_free() -> None:
    # Row 1 is the 3-step example right-padded to T = 5; row 0 is a 1-step episode: A = 2 - 0.5 = 1.5.
    rewards = t([[2.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0, 0.0]])
    values = t([[0.5, 0.0, 0.0, 0.0, 0.0], [0.5, 0.6, 0.7, 0.0, 0.0]])
    mask = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 1, 0, 0]])
    adv, _ = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    close(adv, [[1.5, 0, 0, 0, 0], GAE_ADV + [0.0, 0.0]])
    # lambda = 0 is one-step TD: A_t = delta_t = (0.04, 0.03, 0.3).
    adv_td, _ = gae(rewards[1:, :3], values[1:, :3], mask[1:, :3], gamma=0.9, lam=0.0)
    close(adv_td, [[0.04, 0.03, 0.3]])


def test_gae_rejects_bad_value_shape() -> None:
    with pytest.raises(OpsInputError, match=r"\[B, T\+1\]"):
        gae(t([[0.0, 1.0]]), t([[0.0, 1.0, 2.0, 3.0]]), torch.ones(1, 2), gamma=1.0, lam=1.0)


def test_reinforce_pp_returns() -> None:
    # gamma = 1: row 0 reward-to-go (0.9, 1, 1); row 1 (2, 2, masked).
    # Valid returns 0.9, 1, 1, 2, 2: mean 1.38, squared deviations .2304+.1444+.1444+.3844+.3844 = 1.288,
    # unbiased var 0.322.
    rewards = t([[-0.1, 0.0, 1.0], [0.0, 2.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv, ret = reinforce_pp_returns(rewards, mask, eps=0.0)
    close(ret, [[0.9, 1.0, 1.0], [2.0, 2.0, 0.0]])
    s = math.sqrt(0.322)
    close(adv, [[-0.48 / s, -0.38 / s, -0.38 / s], [0.62 / s, 0.62 / s, 0.0]])
    # gamma = 0.5: row 0 G_2 = 1, G_1 = 0 + 0.5*1 = 0.5, G_0 = -0.1 + 0.5*0.5 = 0.15; row 1 G_1 = 2, G_0 = 1.
    _, ret_half = reinforce_pp_returns(rewards, mask, gamma=0.5)
    close(ret_half, [[0.15, 0.5, 1.0], [1.0, 2.0, 0.0]])


# --------------------------------------------------------------------------------------------------------------------
# KL


def test_kl_estimators_two_tokens() -> None:
    # p_theta = (0.5, 0.25), p_ref = (0.25, 0.5): log r = (ln 2, -ln 2).
    logp, ref = t([[0.5, 0.25]]).log(), t([[0.25, 0.5]]).log()
    ln2 = math.log(2)
    close(kl_estimate(logp, ref, "k1"), [[ln2, -ln2]])
    close(kl_estimate(logp, ref, "k2"), [[0.5 * ln2**2, 0.5 * ln2**2]])  # 0.240227 each
    # k3 = exp(-log r) + log r - 1: 0.5 + ln2 - 1 = 0.193147 and 2 - ln2 - 1 = 0.306853.
    close(kl_estimate(logp, ref, "k3"), [[0.5 + ln2 - 1, 2 - ln2 - 1]])


def test_kl_k3_is_clamped_and_mask_hides_garbage() -> None:
    # log r = -15: exp(15) - 15 - 1 >> 10 -> 10; ref_logp = -inf (log r = +inf): exponent clamped, result 10.
    kl = kl_estimate(t([[-15.0, 0.0]]), t([[0.0, -math.inf]]), "k3")
    close(kl, [[10.0, 10.0]])
    masked = kl_estimate(t([[0.0, math.nan]]), t([[0.0, 0.0]]), "k1", mask=torch.tensor([[1, 0]]))
    close(masked, [[0.0, 0.0]])
    with pytest.raises(OpsInputError, match="k4"):
        kl_estimate(t([[0.0]]), t([[0.0]]), "k4")  # type: ignore[arg-type]


def test_kl_penalized_rewards() -> None:
    # beta = 0.5. Row 0 (last valid token at 1): (-0.05, -0.1 + 1, 0). Row 1: (-0.2, -0.25, -0.3 + 2).
    kl = t([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    rewards = kl_penalized_rewards(t([1.0, 2.0]), kl, torch.tensor([[1, 1, 0], [1, 1, 1]]), beta=0.5)
    close(rewards, [[-0.05, 0.9, 0.0], [-0.2, -0.25, 1.7]])
    with pytest.raises(OpsInputError, match=r"rows \[1\]"):
        kl_penalized_rewards(t([1.0, 2.0]), kl, torch.tensor([[1, 1, 0], [0, 0, 0]]), beta=0.5)


def test_trajectory_log_ratio_and_k1_guard() -> None:
    # log-ratios row 0 (0.1, 0.2, [masked 5]) -> 0.3; row 1 (-0.3, 0.1, -0.5) -> -0.7; row 2 all masked.
    old = torch.zeros(3, 3, dtype=torch.float64)
    logp = t([[0.1, 0.2, 5.0], [-0.3, 0.1, -0.5], [9.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]])
    close(trajectory_log_ratio(logp, old, mask), [0.3, -0.7, 0.0])
    close(k1_divergence(logp, old, mask), 0.2)  # -(0.3 - 0.7) / 2 rows with tokens


# --------------------------------------------------------------------------------------------------------------------
# Policy loss


def one_token_loss(adv: float, ratio: float, clip: tuple[float, float], dual_clip: float | None = None) -> float:
    logp = t([[math.log(ratio)]])
    loss, _ = policy_loss(logp, t([[0.0]]), t([[adv]]), torch.ones(1, 1), clip=clip, dual_clip=dual_clip)
    return loss.item()


@pytest.mark.parametrize(
    ("adv", "ratio", "expected"),
    [
        (2.0, 1.5, -1.2 * 2.0),  # A > 0 above the range: clipped to 1.2, contributes -1.2*A
        (-2.0, 0.5, 0.8 * 2.0),  # A < 0 below the range: max(0.5*2, 0.8*2) = 0.8*|A|
        (2.0, 1.1, -1.1 * 2.0),  # inside the range: -rho*A
        (2.0, 0.5, -0.5 * 2.0),  # A > 0 below the range: pessimistic max(-1.0, -1.6) keeps the unclipped -1.0
        (-2.0, 1.5, 1.5 * 2.0),  # A < 0 above the range: max(3.0, 2.4) keeps the unclipped 3.0
    ],
)
def test_clipping_per_token(adv: float, ratio: float, expected: float) -> None:
    assert one_token_loss(adv, ratio, (0.8, 1.2)) == pytest.approx(expected, abs=1e-9)


def test_loop_clip_range_and_dual_clip() -> None:
    low, high = clip_range(0.1, kind="loop")
    assert (low, high) == pytest.approx((1 / 1.1, 1.1))
    # A = -1, rho = 0.8 < 1/1.1: max(0.8, 0.909091) = 0.909091.
    assert one_token_loss(-1.0, 0.8, (low, high)) == pytest.approx(1 / 1.1, abs=1e-9)
    # A = -1, rho = 5: the pessimistic loss is 5; dual clip c = 3 caps it at c*|A| = 3.
    assert one_token_loss(-1.0, 5.0, (0.8, 1.2)) == pytest.approx(5.0)
    assert one_token_loss(-1.0, 5.0, (0.8, 1.2), dual_clip=3.0) == pytest.approx(3.0)
    # Dual clip leaves positive advantages alone: max(-5, -1.2) = -1.2.
    assert one_token_loss(1.0, 5.0, (0.8, 1.2), dual_clip=3.0) == pytest.approx(-1.2)
    assert clip_range(0.2) == pytest.approx((0.8, 1.2))
    assert clip_range(0.2, eps_high=0.28) == pytest.approx((0.8, 1.28))  # DAPO clip-higher
    for bad in ({"eps": 1.0}, {"eps": -0.1}, {"eps": 0.1, "kind": "loop", "eps_high": 0.2}, {"eps": 0.1, "kind": "x"}):
        with pytest.raises(OpsInputError):
            clip_range(**bad)  # type: ignore[arg-type]


def aggregation_example() -> tuple[torch.Tensor, ...]:
    """2x3 example with ratio 1 everywhere, so each valid token's loss is -A. Garbage sits at the masked slot."""
    logp = t([[-1.0, -2.0, -math.inf], [-0.5, -0.5, -0.5]])
    old = torch.where(torch.isinf(logp), torch.zeros_like(logp), logp)
    adv = t([[1.0, 2.0, 1000.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    return logp, old, adv, mask


@pytest.mark.parametrize(
    ("agg", "divisor", "expected"),
    [
        ("token-mean", None, -(1 + 2 + 4 + 5 + 6) / 5),  # -3.6: every token weighs the same
        ("seq-mean-token-mean", None, -((1 + 2) / 2 + (4 + 5 + 6) / 3) / 2),  # -(1.5 + 5)/2 = -3.25
        ("seq-mean-token-sum", None, -((1 + 2) + (4 + 5 + 6)) / 2),  # -(3 + 15)/2 = -9
        ("seq-mean-token-sum-norm", None, -18 / 3),  # -6: L_max defaults to T = 3
        ("seq-mean-token-sum-norm", 4.0, -18 / 4),  # Dr.GRPO with a constant L_max = 4
        ("seq-mean-token-mean", 4.0, -(1.5 + 5) / 4),  # LOOP: divide by the configured minibatch size 4
        ("token-mean", 10.0, -18 / 10),
    ],
)
def test_aggregation_modes(agg: str, divisor: float | None, expected: float) -> None:
    loss, stats = policy_loss(*aggregation_example(), agg=agg, agg_divisor=divisor)  # type: ignore[arg-type]
    assert loss.item() == pytest.approx(expected)
    assert stats["clip_frac"].item() == 0.0


def test_aggregation_ignores_empty_rows() -> None:
    # An all-masked row (e.g. a rollout dropped by LOOP's |A| < 0.01 filter) does not count as a sequence.
    values = t([[-1.0, -2.0], [7.0, 7.0]])
    mask = torch.tensor([[1, 1], [0, 0]])
    assert aggregate(values, mask, "seq-mean-token-mean").item() == pytest.approx(-1.5)
    assert aggregate(values, mask, "seq-mean-token-sum").item() == pytest.approx(-3.0)
    assert aggregate(values, torch.zeros(2, 2), "token-mean").item() == 0.0  # empty batch: 0, not NaN


def test_episode_weights_golden() -> None:
    # Episode 0 is split into rows of 1 and 3 tokens, episode 1 is one row of 2 tokens: 3 rows, 2 episodes, so the
    # shares (1/4, 3/4, 1) are scaled by R/E = 1.5 to keep the mean weight at 1.
    w = episode_weights(torch.tensor([0, 0, 1]), torch.tensor([1, 3, 2]))
    assert w.tolist() == pytest.approx([0.375, 1.125, 1.5])
    assert w.mean().item() == pytest.approx(1.0)
    # Whole episodes (one row each) keep weight 1; a row without units gets 0 and does not count.
    assert episode_weights(torch.tensor([4, 7, 9]), torch.tensor([2, 5, 1])).tolist() == [1.0, 1.0, 1.0]
    assert episode_weights(torch.tensor([0, 0, 1]), torch.tensor([2, 0, 3])).tolist() == pytest.approx([1.0, 0.0, 1.0])
    with pytest.raises(OpsInputError, match="units must be >= 0"):
        episode_weights(torch.tensor([0]), torch.tensor([-1]))
    with pytest.raises(OpsInputError, match="same shape"):
        episode_weights(torch.tensor([0, 1]), torch.tensor([1]))


def test_weighted_turn_rows_give_the_per_episode_token_mean() -> None:
    # Two episodes of per-token losses: a long failure [-3, -3, -3, -3] (four one-token turns) and a short success
    # [2, 4] (two turns). LOOP's seq-mean-token-mean over episodes: ((-3) + 3) / 2 = 0.
    whole = aggregate(t([[-3.0, -3.0, -3.0, -3.0], [2.0, 4.0, 0.0, 0.0]]), torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]),
                      "seq-mean-token-mean")  # fmt: skip
    assert whole.item() == pytest.approx(0.0)
    # The same tokens as six one-token turn rows: unweighted, the failure counts four times, the success twice.
    rows, mask = t([[-3.0], [-3.0], [-3.0], [-3.0], [2.0], [4.0]]), torch.ones(6, 1)
    assert aggregate(rows, mask, "seq-mean-token-mean").item() == pytest.approx((-12 + 6) / 6)  # -1: biased down
    weights = episode_weights(torch.tensor([0, 0, 0, 0, 1, 1]), torch.ones(6, dtype=torch.long))
    # Weighted, the rows give the per-episode mean again: the weights' R/E cancels the mean over R rows, not E.
    assert aggregate(rows, mask, "seq-mean-token-mean", seq_weights=weights).item() == pytest.approx(0.0)
    rows2 = t([[-1.0], [-1.0], [-1.0], [-1.0], [2.0], [4.0]])  # episode means -1 and 3: (-1 + 3) / 2 = 1
    assert aggregate(rows2, mask, "seq-mean-token-mean", seq_weights=weights).item() == pytest.approx(1.0)
    with pytest.raises(OpsInputError, match="one non-negative weight per row"):
        aggregate(rows, mask, "seq-mean-token-mean", seq_weights=torch.ones(5))


def ratio_level_example() -> dict[str, torch.Tensor]:
    """One sequence of 4 positions: two tokens of turn 0, an env token, one token of turn 1.

    Token ratios (new/old): 0.4/0.2 = 2 and 0.5/0.5 = 1 in turn 0, 0.3/0.6 = 0.5 in turn 1.
    Advantages +1 on turn 0 and -1 on turn 1. Clip (0.8, 1.2).
    """
    return {
        "logp": t([[0.4, 0.5, 1.0, 0.3]]).log(),
        "old_logp": t([[0.2, 0.5, 0.1, 0.6]]).log(),
        "advantages": t([[1.0, 1.0, 0.0, -1.0]]),
        "mask": torch.tensor([[1, 1, 0, 1]]),
        "turn_ids": torch.tensor([[0, 0, -1, 1]]),
    }


def test_ratio_levels_differ_on_one_example() -> None:
    ex = ratio_level_example()
    # token: (max(-2, -1.2) = -1.2) + (max(-1, -1) = -1) + (max(0.5, 0.8) = 0.8) = -1.4, over 3 tokens.
    token, token_stats = policy_loss(**ex, ratio_level="token")
    assert token.item() == pytest.approx(-1.4 / 3)
    assert token_stats["clip_frac"].item() == pytest.approx(2 / 3)
    # turn: turn 0 ratio 2*1 = 2, A = 1 -> -1.2; turn 1 ratio 0.5, A = -1 -> 0.8; mean over 2 turns = -0.2.
    turn, turn_stats = policy_loss(**ex, ratio_level="turn")
    assert turn.item() == pytest.approx(-0.2)
    assert turn_stats["num_units"].item() == 2 and turn_stats["clip_frac"].item() == pytest.approx(1.0)
    turn_sum, _ = policy_loss(**ex, ratio_level="turn", agg="seq-mean-token-sum")
    assert turn_sum.item() == pytest.approx(-0.4)
    # trajectory: ratio 2*1*0.5 = 1, A = mean(1, 1, -1) = 1/3 -> -1/3 (unclipped).
    traj, traj_stats = policy_loss(**ex, ratio_level="trajectory")
    assert traj.item() == pytest.approx(-1 / 3)
    assert traj_stats["ratio_mean"].item() == pytest.approx(1.0)
    with pytest.raises(OpsInputError, match="turn_ids"):
        policy_loss(ex["logp"], ex["old_logp"], ex["advantages"], ex["mask"], ratio_level="turn")


def test_loss_stats_by_hand() -> None:
    ex = ratio_level_example()
    _, stats = policy_loss(**ex)
    # Token ratios (2, 1, 0.5): k1 = -mean(log rho) = -(ln2 + 0 - ln2)/3 = 0;
    # k3 = mean(rho - 1 - log rho) = ((1 - ln2) + 0 + (-0.5 + ln2))/3 = 0.5/3.
    assert stats["approx_kl_k1"].item() == pytest.approx(0.0, abs=1e-12)
    assert stats["approx_kl_k3"].item() == pytest.approx(0.5 / 3)
    assert stats["ratio_max"].item() == pytest.approx(2.0) and stats["ratio_min"].item() == pytest.approx(0.5)
    assert stats["ratio_mean"].item() == pytest.approx(3.5 / 3)
    assert stats["traj_k1"].item() == pytest.approx(0.0, abs=1e-12)
    assert all(not v.requires_grad for v in stats.values())


def test_gradient_zero_for_clipped_and_minus_a_over_n_for_unclipped() -> None:
    # Ratios (1, 1, 1.5, 0.5), advantages (2, -1, 1, -1), clip (0.8, 1.2), token-mean over n = 4.
    # d/dlogp of -A*rho is -A*rho: tokens 0, 1 (rho = 1) give -A/n = -0.5 and +0.25;
    # token 2 (A > 0, rho above 1.2) and token 3 (A < 0, rho below 0.8) are clipped out: gradient 0.
    old = t([[-1.0, -1.0, -1.0, -1.0]])
    logp = (old + t([[0.0, 0.0, math.log(1.5), math.log(0.5)]])).requires_grad_()
    loss, stats = policy_loss(logp, old, t([[2.0, -1.0, 1.0, -1.0]]), torch.ones(1, 4), agg="token-mean")
    loss.backward()
    close(logp.grad, [[-0.5, 0.25, 0.0, 0.0]])
    assert stats["clip_frac"].item() == pytest.approx(0.5)
    # Dual clip: A = -1, rho = 5 capped at 3 -> gradient 0 too.
    logp = t([[math.log(5.0)]]).requires_grad_()
    loss, stats = policy_loss(logp, t([[0.0]]), t([[-1.0]]), torch.ones(1, 1), dual_clip=3.0)
    loss.backward()
    close(logp.grad, [[0.0]])
    assert stats["dual_clip_frac"].item() == 1.0


def test_kl_in_loss() -> None:
    # Ratio 1 and A = 0, so only the KL term is left: 0.5 * token-mean(0.2, 0.4, [masked 9]) = 0.15.
    zeros = torch.zeros(1, 3, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0]])
    kl = t([[0.2, 0.4, 9.0]])
    loss, stats = policy_loss(zeros, zeros, zeros, mask, kl=kl, kl_coef=0.5, agg="token-mean")
    assert loss.item() == pytest.approx(0.15)
    assert stats["kl_loss"].item() == pytest.approx(0.3)
    # GRPO wiring: the KL gradient reaches logp through kl_estimate (k3 gradient 1 - exp(ref - logp) = 1 - 1/e).
    logp = zeros.clone().requires_grad_()
    ref = zeros - 1.0
    loss, _ = policy_loss(logp, zeros, zeros, mask, kl=kl_estimate(logp, ref, "k3"), kl_coef=1.0, agg="token-mean")
    loss.backward()
    close(logp.grad, [[(1 - math.exp(-1)) / 2, (1 - math.exp(-1)) / 2, 0.0]])


def test_trajectory_ratio_overflow_stays_finite() -> None:
    # A 1000-token trajectory whose log-ratio sums to 100: exp(100) would overflow float32.
    logp = torch.full((1, 1000), 0.1, requires_grad=True)
    adv = torch.full((1, 1000), -1.0)
    loss, _ = policy_loss(logp, torch.zeros(1, 1000), adv, torch.ones(1, 1000), ratio_level="trajectory")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()


def test_policy_loss_dtypes_and_inputs_untouched() -> None:
    ex = ratio_level_example()
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        args = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in ex.items()}
        before = {k: v.clone() for k, v in args.items()}
        loss, _ = policy_loss(**args, ratio_level="turn")
        assert loss.dtype == dtype
        assert loss.item() == pytest.approx(-0.2, abs=1e-2)
        assert all(torch.equal(args[k], before[k]) for k in args)


def test_policy_loss_rejects_bad_input() -> None:
    ex = ratio_level_example()
    with pytest.raises(OpsInputError, match=r"advantages has shape \(1, 3\) but logp has shape \(1, 4\)"):
        policy_loss(ex["logp"], ex["old_logp"], ex["advantages"][:, :3], ex["mask"])
    with pytest.raises(OpsInputError, match="0 < low <= 1 <= high"):
        policy_loss(ex["logp"], ex["old_logp"], ex["advantages"], ex["mask"], clip=(0.2, 0.2))
    with pytest.raises(OpsInputError, match="dual_clip"):
        policy_loss(ex["logp"], ex["old_logp"], ex["advantages"], ex["mask"], dual_clip=0.5)
    with pytest.raises(OpsInputError, match="kl is None"):
        policy_loss(ex["logp"], ex["old_logp"], ex["advantages"], ex["mask"], kl_coef=0.1)
    with pytest.raises(OpsInputError, match="agg mode"):
        policy_loss(ex["logp"], ex["old_logp"], ex["advantages"], ex["mask"], agg="sum")  # type: ignore[arg-type]
    with pytest.raises(OpsInputError, match="ratio_level"):
        policy_loss(ex["logp"], ex["old_logp"], ex["advantages"], ex["mask"], ratio_level="x")  # type: ignore[arg-type]
    with pytest.raises(OpsInputError, match=r"\[B, T\]"):
        policy_loss(ex["logp"][0], ex["old_logp"][0], ex["advantages"][0], ex["mask"][0])


def test_non_llm_policy_end_to_end() -> None:
    """A small MLP over 4 discrete actions: per-step log-probs of 3 episodes (lengths 3, 1, 2), the same loss."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    obs = torch.randn(3, 3, 2)  # [episodes, steps, features]
    actions = torch.tensor([[0, 1, 2], [3, 0, 0], [1, 1, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0]])

    def step_logp() -> torch.Tensor:
        return torch.log_softmax(net(obs), dim=-1).gather(-1, actions[..., None]).squeeze(-1)

    old = step_logp().detach()
    # Episodes 0 and 1 are two rollouts of one task (returns 1, 0), episode 2 is alone: LOO gives (1, -1, 0).
    adv = broadcast(leave_one_out(torch.tensor([1.0, 0.0, 0.5]), torch.tensor([0, 0, 1])), mask)
    loss, stats = policy_loss(step_logp(), old, adv, mask, clip=clip_range(0.2))
    loss.backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    assert stats["num_units"].item() == 6
    with torch.no_grad():
        for p in net.parameters():
            p -= 0.1 * p.grad
    gain = (step_logp().detach() - old) * mask
    # One gradient step makes the positive-advantage episode likelier and the negative one less likely.
    assert gain[0].sum() > 0 > gain[1].sum()


def reference_loss(logp, old, adv, mask, turn_ids, level, clip, dual_clip, agg, divisor) -> float:
    """Plain-Python loops over rows and units: slow and obvious, to cross-check the vectorised loss."""
    low, high = clip
    row_losses: list[list[float]] = []
    for b in range(logp.shape[0]):
        tokens = [i for i in range(logp.shape[1]) if mask[b, i]]
        if level == "token":
            spans = [[i] for i in tokens]
        elif level == "trajectory":
            spans = [tokens] if tokens else []
        else:
            spans = [[i for i in tokens if turn_ids[b, i] == k] for k in sorted({int(turn_ids[b, i]) for i in tokens})]
        losses = []
        for span in spans:
            rho = math.exp(sum(float(logp[b, i] - old[b, i]) for i in span))
            a = sum(float(adv[b, i]) for i in span) / len(span)
            unit = max(-a * rho, -a * min(max(rho, low), high))
            if dual_clip is not None and a < 0:
                unit = min(unit, -dual_clip * a)
            losses.append(unit)
        row_losses.append(losses)
    present = [r for r in row_losses if r]
    if agg == "token-mean":
        return sum(sum(r) for r in present) / (divisor or sum(len(r) for r in present))
    if agg == "seq-mean-token-mean":
        return sum(sum(r) / len(r) for r in present) / (divisor or len(present))
    if agg == "seq-mean-token-sum":
        return sum(sum(r) for r in present) / (divisor or len(present))
    width = {"token": logp.shape[1], "trajectory": 1}.get(level, int(turn_ids[mask.bool()].max()) + 1)
    return sum(sum(r) for r in present) / (divisor or width)


@pytest.mark.parametrize("level", ["token", "turn", "trajectory"])
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"])
@pytest.mark.parametrize(("dual_clip", "divisor"), [(None, None), (3.0, 8.0)])
def test_policy_loss_matches_reference_loops(level: str, agg: str, dual_clip: float | None, divisor) -> None:
    gen = torch.Generator().manual_seed(1)
    batch, horizon = 5, 9
    logp = -torch.rand(batch, horizon, generator=gen, dtype=torch.float64) * 2
    old = logp + 0.4 * torch.randn(batch, horizon, generator=gen, dtype=torch.float64)
    adv = broadcast(torch.randn(batch, generator=gen, dtype=torch.float64), torch.ones(batch, horizon))
    adv = adv + 0.3 * torch.randn(batch, horizon, generator=gen, dtype=torch.float64)  # not constant per turn
    mask = (torch.rand(batch, horizon, generator=gen) < 0.7).long()
    mask[3] = 0  # a dropped rollout
    turn_ids = torch.cumsum(torch.rand(batch, horizon, generator=gen) < 0.3, dim=1)  # non-decreasing turn index
    kwargs = {"clip": clip_range(0.1, kind="loop"), "dual_clip": dual_clip, "agg": agg, "agg_divisor": divisor}
    loss, _ = policy_loss(logp, old, adv, mask, ratio_level=level, turn_ids=turn_ids, **kwargs)  # type: ignore[arg-type]
    expected = reference_loss(logp, old, adv, mask, turn_ids, level, kwargs["clip"], dual_clip, agg, divisor)
    assert loss.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_gae_on_gappy_rows_equals_gae_on_compacted_rows() -> None:
    # Property behind the gap convention: inserting masked positions (with zero reward) anywhere changes nothing.
    gen = torch.Generator().manual_seed(2)
    batch, horizon = 4, 12
    mask = torch.rand(batch, horizon, generator=gen) < 0.6
    rewards = torch.where(mask, torch.randn(batch, horizon, generator=gen, dtype=torch.float64), 0.0)
    values = torch.randn(batch, horizon + 1, generator=gen, dtype=torch.float64)
    adv, ret = gae(rewards, values, mask, gamma=0.95, lam=0.9)
    for b in range(batch):
        keep = mask[b].nonzero().flatten()
        compact_values = torch.cat([values[b, keep], values[b, horizon:]])[None]
        ones = torch.ones(1, keep.numel())
        adv_c, ret_c = gae(rewards[b, keep][None], compact_values, ones, gamma=0.95, lam=0.9)
        close(adv[b, keep][None], adv_c, atol=1e-12)
        close(ret[b, keep][None], ret_c, atol=1e-12)
        assert adv[b, ~mask[b]].eq(0).all()
