"""MC-Critic (agentgym.mc_critic) and the MC-GRPO / MC-PPO advantage math (agentgym.ops.mc)."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from gymnasium import spaces

from agentgym import AgentEnv, SeedTasks
from agentgym.config import ConfigError
from agentgym.errors import AgentGymError
from agentgym.mc_critic import EnvFactory, MCCritic, MCCriticConfig, exact_random_value, snapshot
from agentgym.ops import OpsInputError, blend_values, mc_grpo_advantages, mc_td_advantages


# ---------------------------------------------------------------------------------------------- a toy chain
@dataclass(frozen=True)
class ChainState:
    position: int
    rng: dict[str, Any]


class ChainEnv(AgentEnv[ChainState]):
    """Positions 0 -> 1 -> 2 -> end; every action advances. Reward at position p is p + 1, plus 10 for action 1 at
    position 0 only: so V(1) and every Q(0, a) are deterministic whatever the random policy does."""

    action_names = ("Left", "Right")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.action_space = spaces.Discrete(2)
        self._build_observation_space(spaces.Box(0, 3, (1,), np.int64))
        self._tasks = SeedTasks(namespace="chain")
        self.position = 0

    @property
    def task_set(self) -> SeedTasks:
        return self._tasks

    def _reset_task(self, task: Hashable) -> dict[str, Any]:
        self.position = 0
        return {}

    def _step(self, action: int | None) -> tuple[float, bool, bool, dict[str, Any]]:
        if action is None:  # an invalid action: no move, no reward (the penalty is the base class's)
            return 0.0, False, False, {"success": False}
        reward = self.position + 1.0 + (10.0 if action == 1 and self.position == 0 else 0.0)
        self.position += 1
        done = self.position == 3
        return reward, done, False, {"success": done}

    def _struct_obs(self) -> np.ndarray:
        return np.array([self.position])

    def text_observation(self) -> str:
        return f"at {self.position}"

    def instructions(self) -> str:
        return "Walk."

    def parse_action(self, text: str) -> int | None:
        word = text.strip().lower()
        return {"left": 0, "right": 1}.get(word)

    def get_state(self) -> ChainState:
        return ChainState(self.position, self._rng_state())

    def set_state(self, state: ChainState) -> None:
        self.position = state.position
        self._restore_rng(state.rng)

    def state_key(self) -> bytes:
        return bytes([self.position])

    def oracle_action(self) -> int:
        return 1


class NoCopyChainEnv(ChainEnv):
    def get_state(self) -> ChainState:
        raise NotImplementedError

    def set_state(self, state: ChainState) -> None:
        raise NotImplementedError


def chain_states() -> tuple[ChainEnv, ChainState, ChainState]:
    env = ChainEnv(invalid_action_penalty=0.5)
    env.reset(seed=0, options={"task": 0})
    s0 = env.get_state()
    env.step(0)
    return env, s0, env.get_state()


def make_chain() -> ChainEnv:
    return ChainEnv(invalid_action_penalty=0.5)


GAMMA = 0.5


def test_value_of_a_deterministic_chain_is_the_hand_computed_return() -> None:
    _, _, s1 = chain_states()
    critic = MCCritic(make_chain, MCCriticConfig(rollouts=8, horizon=10, gamma=GAMMA))
    assert critic.value(s1) == pytest.approx(2.0 + GAMMA * 3.0)  # rewards 2, 3, then the episode ends
    short = MCCritic(make_chain, MCCriticConfig(rollouts=8, horizon=1, gamma=GAMMA))
    assert short.value(s1) == pytest.approx(2.0)
    none = MCCritic(make_chain, MCCriticConfig(rollouts=8, horizon=0, gamma=GAMMA))
    assert none.value(s1) == 0.0


def test_q_fixes_the_first_action() -> None:
    _, s0, _ = chain_states()
    critic = MCCritic(make_chain, MCCriticConfig(rollouts=4, horizon=10, gamma=GAMMA))
    rest = GAMMA * (2.0 + GAMMA * 3.0)
    np.testing.assert_allclose(critic.q_table([s0]), [[1.0 + rest, 11.0 + rest]])
    # Text actions are parsed; horizon 0 still takes the fixed action: Q = r(s, a).
    assert critic.q_values([s0], ["right"])[0] == pytest.approx(11.0 + rest)
    first_only = MCCritic(make_chain, MCCriticConfig(rollouts=4, horizon=0, gamma=GAMMA))
    np.testing.assert_allclose(first_only.q_table([s0]), [[1.0, 11.0]])
    # V(s0) averages the two first actions under the random policy.
    exact = exact_random_value(make_chain, s0, horizon=10, gamma=GAMMA)
    assert exact == pytest.approx(0.5 * (1.0 + rest) + 0.5 * (11.0 + rest))


def test_policy_object_rollouts_match_the_builtin_random_policy() -> None:
    from policies.baselines import RandomPolicy

    _, s0, s1 = chain_states()
    critic = MCCritic(make_chain, MCCriticConfig(rollouts=4, horizon=10, gamma=GAMMA, rollout_policy="policy",
                                                 policy_batch=3), policy=RandomPolicy())
    assert critic.value(s1) == pytest.approx(3.5)
    np.testing.assert_allclose(critic.q_table([s0]), [[2.75, 12.75]])


def test_cache_is_per_state_key_and_canonical_action_with_one_invalid_key() -> None:
    _, s0, s1 = chain_states()
    critic = MCCritic(make_chain, MCCriticConfig(rollouts=4, horizon=5, gamma=GAMMA))
    first = critic.q_values([s0, s0, s1], [1, "right", 1])  # 1 and "right" are the same canonical action
    assert critic.stats["estimates"] == 2 and first[0] == first[1]
    again = critic.q_values([s0], [1])
    assert critic.stats["cache_hits"] == 1 and again[0] == first[0]
    invalid = critic.q_values([s0, s0, s0], ["fly", 7, None])  # unparseable, out of range, wrong type
    assert len(set(invalid.tolist())) == 1 and critic.stats["estimates"] == 3
    assert invalid[0] < 0.5 * 11.0  # the penalty, then a random continuation from s0
    critic.clear_cache()
    critic.q_values([s0], [1])
    assert critic.stats["estimates"] == 4


@pytest.mark.parametrize(
    ("field", "value"),
    [("rollouts", 0), ("rollouts", -3), ("horizon", -1), ("gamma", 1.5), ("gamma", -0.1), ("workers", -1),
     ("rollout_policy", "greedy")],
)
def test_config_validation_names_the_field(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=field):
        MCCriticConfig(**{field: value})


def test_policy_argument_must_match_rollout_policy() -> None:
    with pytest.raises(ConfigError, match="rollout_policy"):
        MCCritic(make_chain, MCCriticConfig(rollout_policy="policy"))
    with pytest.raises(ConfigError, match="picklable"):
        MCCritic(lambda: ChainEnv(), MCCriticConfig(workers=2, parallel="process"))


def test_env_without_state_copying_gives_a_clear_error() -> None:
    env = NoCopyChainEnv()
    env.reset(seed=0, options={"task": 0})
    with pytest.raises(AgentGymError, match="get_state"):
        snapshot(env)
    critic = MCCritic(NoCopyChainEnv, MCCriticConfig(rollouts=2, horizon=2))
    with pytest.raises(AgentGymError, match="set_state"):
        critic.values([ChainState(0, {})])

    class Opaque:
        unwrapped = None
        action_space = spaces.Discrete(2)

    opaque = Opaque()
    opaque.unwrapped = opaque
    with pytest.raises(AgentGymError, match="get_state, set_state, state_key"):
        MCCritic(lambda: opaque)


# ---------------------------------------------------------------------------------------------- Sokoban / 2048
TINY = EnvFactory("sokoban", {"preset": "tiny", "obs_mode": "struct", "max_steps": 10_000})


def tiny_state(task: int = 2) -> Any:
    env = TINY()
    env.reset(seed=0, options={"task": task})
    return snapshot(env)


def test_deterministic_by_seed_and_independent_of_batching_and_workers() -> None:
    states = [tiny_state(2), tiny_state(3)]
    cfg = MCCriticConfig(rollouts=32, horizon=10, seed=7)
    a = MCCritic(TINY, cfg).values(states)
    b = MCCritic(TINY, cfg).values(states[::-1])[::-1]
    threads = MCCritic(TINY, MCCriticConfig(rollouts=32, horizon=10, seed=7, workers=2, parallel="thread"))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, threads.values(states))
    threads.close()
    other = MCCritic(TINY, MCCriticConfig(rollouts=32, horizon=10, seed=8)).values(states)
    assert not np.array_equal(a, other)


def test_worker_processes_give_the_same_estimates() -> None:
    states = [tiny_state(2), tiny_state(3), tiny_state(5)]
    serial = MCCritic(TINY, MCCriticConfig(rollouts=16, horizon=8)).values(states)
    with MCCritic(TINY, MCCriticConfig(rollouts=16, horizon=8, workers=2)) as critic:
        np.testing.assert_array_equal(critic.values(states), serial)


def test_mc_converges_to_the_exact_dp_value_on_tiny_sokoban() -> None:
    state = tiny_state(2)
    exact = exact_random_value(TINY, state, horizon=10, gamma=0.95)
    estimate = MCCritic(TINY, MCCriticConfig(rollouts=4000, horizon=10, gamma=0.95)).value(state)
    # Per-rollout std is about 2.1 here, so the standard error at M=4000 is about 0.033.
    assert abs(estimate - exact) < 0.15


def test_oracle_rollouts_give_the_solver_plan_return() -> None:
    state = tiny_state(3)
    env = TINY()
    env.reset(seed=0, options={"task": 3})
    plan = env.unwrapped.optimal_plan(from_start=False).plan
    expected = sum(0.95**k * env.step(a)[1] for k, a in enumerate(plan))
    critic = MCCritic(TINY, MCCriticConfig(rollouts=2, horizon=50, gamma=0.95, rollout_policy="oracle"))
    assert critic.value(state) == pytest.approx(expected, abs=1e-12)


class EmptyCellsPolicy:
    """A deterministic policy: the number of empty cells modulo 4 (so rollouts differ only through the spawns)."""

    def act(self, observations: Any, *, envs: Any, rng: Any, memories: Any = None) -> Any:
        from agentgym.types import ActionBatch

        return ActionBatch([int(obs[0].sum()) % 4 for obs in observations])


def test_2048_estimates_are_deterministic_and_reseed_spawns() -> None:
    make = EnvFactory("2048", {"obs_mode": "struct"})
    env = make()
    env.reset(seed=0, options={"task": 3})
    for a in (0, 3, 0, 3):
        env.step(a)
    state = snapshot(env)
    cfg = MCCriticConfig(rollouts=8, horizon=30, gamma=0.9)
    q = MCCritic(make, cfg).q_table([state])
    np.testing.assert_array_equal(q, MCCritic(make, cfg).q_table([state]))
    assert q.shape == (1, 4)

    def value(rollouts: int, reseed: bool) -> float:
        config = MCCriticConfig(rollouts=rollouts, horizon=40, gamma=0.9, rollout_policy="policy", reseed_env=reseed)
        return MCCritic(make, config, policy=EmptyCellsPolicy()).value(state)

    # Without reseeding every rollout replays the snapshot's spawn stream, so the mean of 6 equals one rollout.
    assert value(6, reseed=False) == pytest.approx(value(1, reseed=False))
    assert value(6, reseed=True) != pytest.approx(value(1, reseed=True))


# ---------------------------------------------------------------------------------------------- ops golden tests
def test_mc_grpo_group_z_score_and_same_action_fallback() -> None:
    q = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, -2.0])
    groups = torch.tensor([0, 0, 0, 1, 1, 2])
    actions = torch.tensor([0, 1, 2, 3, 3, -1])  # group 1 chose one action twice; group 2 is one invalid reply
    table = torch.tensor([[1.0, 2.0, 3.0, 4.0]] * 3 + [[1.0, 3.0, 3.0, 5.0]] * 2 + [[0.0, 1.0, 2.0, 3.0]])
    adv = mc_grpo_advantages(q, groups, actions, table)
    # Group 0: mean 2, unbiased std 1. Group 1: all-actions mean 3, population std sqrt(2).
    # Group 2: all-actions mean 1.5, population std sqrt(1.25).
    expected = [-1 / (1 + 1e-5), 0.0, 1 / (1 + 1e-5), 2 / (2**0.5 + 1e-5), 2 / (2**0.5 + 1e-5),
                -3.5 / (1.25**0.5 + 1e-5)]
    torch.testing.assert_close(adv, torch.tensor(expected))
    masked = mc_grpo_advantages(q[3:5], groups[3:5], actions[3:5], table[3:5],
                                action_mask=torch.tensor([[0, 1, 1, 1]] * 2, dtype=torch.bool))
    mean, std = 11 / 3, ((1 / 3 * ((3 - 11 / 3) ** 2 * 2 + (5 - 11 / 3) ** 2)) ** 0.5)
    torch.testing.assert_close(masked, torch.full((2,), (5 - mean) / (std + 1e-5)))
    with pytest.raises(OpsInputError, match="q_table"):
        mc_grpo_advantages(q, groups, actions, table[:2])


def test_mc_grpo_fallback_with_the_best_action_as_baseline() -> None:
    q = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 3.0, 3.0, -2.0])
    groups = torch.tensor([0, 0, 0, 1, 1, 2, 2, 3])
    actions = torch.tensor([0, 1, 2, 3, 3, 1, 1, -1])
    table = torch.tensor([[1.0, 2.0, 3.0, 4.0]] * 3 + [[1.0, 3.0, 3.0, 5.0]] * 4 + [[0.0, 1.0, 2.0, 3.0]])
    adv = mc_grpo_advantages(q, groups, actions, table, baseline="best")
    # Group 0 is not degenerate: the group z-score, as with the mean baseline. Group 1 chose the best action
    # (5): 0. Group 2 chose a value-3 action, 2 below the best, std sqrt(2). Group 3: 3 - (-2) = 5 below, std
    # sqrt(1.25).
    expected = [-1 / (1 + 1e-5), 0.0, 1 / (1 + 1e-5), 0.0, 0.0, -2 / (2**0.5 + 1e-5), -2 / (2**0.5 + 1e-5),
                -5 / (1.25**0.5 + 1e-5)]
    torch.testing.assert_close(adv, torch.tensor(expected))
    # A mask leaves the best action out: then the best allowed one is the baseline.
    masked = mc_grpo_advantages(q[5:7], groups[5:7], actions[5:7], table[5:7], baseline="best",
                                action_mask=torch.tensor([[1, 1, 1, 0]] * 2, dtype=torch.bool))
    torch.testing.assert_close(masked, torch.zeros(2))
    with pytest.raises(OpsInputError, match="baseline='max'.*'best'"):
        mc_grpo_advantages(q, groups, actions, table, baseline="max")


def test_blend_and_one_step_td_advantages() -> None:
    v_learned = torch.tensor([[1.0, 2.0, 4.0]])
    v_mc = torch.tensor([[3.0, 0.0, 4.0]])
    blend = blend_values(v_learned, v_mc, 0.9)
    torch.testing.assert_close(blend, torch.tensor([[2.8, 0.2, 4.0]]))
    rewards = torch.tensor([[1.0, 2.0], [0.5, 0.0]])
    values = torch.tensor([[2.8, 0.2, 4.0], [1.0, 2.0, 9.0]])
    dones = torch.tensor([[0, 1], [0, 0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    adv, ret = mc_td_advantages(rewards, values, dones, mask, gamma=0.9, normalize=False)
    # delta = r + 0.9 (1 - done) V' - V: [1 + 0.18 - 2.8, 2 - 0.2], [0.5 + 1.8 - 1.0, masked]
    torch.testing.assert_close(adv, torch.tensor([[-1.62, 1.8], [1.3, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[1.18, 2.0], [2.3, 0.0]]))
    whitened, _ = mc_td_advantages(rewards, values, dones, mask, gamma=0.9)
    raw = torch.tensor([-1.62, 1.8, 1.3])
    expected = (raw - raw.mean()) / raw.std()
    torch.testing.assert_close(whitened[mask > 0], expected, atol=1e-6, rtol=1e-5)
    with pytest.raises(OpsInputError, match="weight"):
        blend_values(v_learned, v_mc, 1.5)
    with pytest.raises(OpsInputError, match="K\\+1"):
        mc_td_advantages(rewards, values[:, :2], dones, gamma=0.9)
