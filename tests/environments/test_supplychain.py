"""Supply-chain simulator, settings, demand files, oracles and env: hand-computed dynamics and contracts."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import agentgym  # noqa: E402
from agentgym.config import ConfigError  # noqa: E402
from environments.supplychain import oracle  # noqa: E402
from environments.supplychain.demand import DemandFileError, DemandModel, Scenarios, read_demand_csv  # noqa: E402
from environments.supplychain.settings import make_setting  # noqa: E402
from environments.supplychain.simulator import InventorySimulator, SimState  # noqa: E402


def _state(store, upstream=None, *, m=0, slots=1):
    store = torch.tensor([store], dtype=torch.float64)
    up = torch.zeros(1, m, slots, dtype=torch.float64) if upstream is None else torch.tensor([upstream]).double()
    return SimState(store, up)


def _run(sim, state, orders, demands):
    costs, states = [], []
    for order, demand in zip(orders, demands):
        result = sim.step(state, torch.tensor([order]).double(), torch.tensor([demand]).double())
        state = result.state
        costs.append(float(result.cost[0]))
        states.append(state.store[0].numpy().copy())
    return costs, states


# ---------------------------------------------------------------------- simulator dynamics, by hand
def test_backlog_carries_unmet_demand_and_lost_sales_drop_it():
    # Lead time 2: [on hand, arriving next period]. Start with 3 on hand and 4 arriving; order 2 now, then nothing.
    orders, demands = [[2.0], [0.0], [0.0]], [[5.0], [1.0], [2.0]]
    backlog = InventorySimulator(make_setting("one_store_backlogged", lead_time=2), dtype=torch.float64)
    costs, states = _run(backlog, _state([[3.0, 4.0]]), orders, demands)
    # t0: 3 - 5 = -2 backlogged (cost 9 * 2); on hand becomes -2 + 4 = 2, the order of 2 sits in the pipeline.
    assert costs == [18.0, 1.0, 1.0]
    assert [s.tolist() for s in states] == [[[2.0, 2.0]], [[3.0, 0.0]], [[1.0, 0.0]]]
    lost = InventorySimulator(make_setting("one_store_backlogged", lead_time=2, lost_sales=True), dtype=torch.float64)
    costs, states = _run(lost, _state([[3.0, 4.0]]), orders, demands)
    # t0: the 2 missing units are lost (same cost), so on hand is 0 + 4 = 4 afterwards.
    assert costs == [18.0, 3.0, 3.0]
    assert [s.tolist() for s in states] == [[[4.0, 2.0]], [[5.0, 0.0]], [[3.0, 0.0]]]


@pytest.mark.parametrize("lead", [1, 2, 3, 5])
def test_an_order_placed_at_t_is_on_hand_at_t_plus_lead_time(lead):
    sim = InventorySimulator(
        make_setting("one_store_backlogged", lead_time=lead, holding_cost=0.0), dtype=torch.float64
    )
    state = _state([[0.0] * lead])
    on_hand = []
    for t in range(lead + 2):
        on_hand.append(float(state.store[0, 0, 0]))
        order = 7.0 if t == 0 else 0.0
        state = sim.step(state, torch.tensor([[order]]).double(), torch.zeros(1, 1).double()).state
    assert on_hand == [0.0] * lead + [7.0, 7.0]


def test_warehouse_rations_requests_proportionally_and_charges_holding():
    setting = make_setting("one_warehouse_lost", n_stores=2, lead_time=1, warehouse_lead_time=2)
    sim = InventorySimulator(setting, dtype=torch.float64)
    state = _state([[0.0], [0.0]], [[6.0, 0.0]], m=1)
    result = sim.step(state, torch.tensor([[6.0, 3.0, 5.0]]).double(), torch.zeros(1, 2).double())
    assert result.shipped[0].tolist() == [4.0, 2.0, 5.0]  # 9 requested, 6 on hand: both scaled by 2/3
    assert result.upstream_cost[0].tolist() == [0.0]
    assert result.state.store[0, :, 0].tolist() == [4.0, 2.0]  # lead time 1: on hand next period
    assert result.state.upstream[0, 0].tolist() == [0.0, 5.0]  # the warehouse's own order, 2 periods out
    result = sim.step(state, torch.tensor([[2.0, 1.0, 0.0]]).double(), torch.zeros(1, 2).double())
    assert result.shipped[0].tolist() == [2.0, 1.0, 0.0]
    assert result.upstream_cost[0].tolist() == pytest.approx([0.3 * 3.0])


def test_serial_stages_ship_at_most_their_on_hand_stock():
    sim = InventorySimulator(make_setting("serial"), dtype=torch.float64)
    upstream = torch.zeros(1, 3, 4, dtype=torch.float64)
    upstream[0, :, 0] = torch.tensor([10.0, 2.0, 0.0])  # warehouse 10, echelon 1 has 2, top echelon 0
    state = SimState(torch.zeros(1, 1, 4, dtype=torch.float64), upstream)
    result = sim.step(state, torch.tensor([[4.0, 5.0, 5.0, 9.0]]).double(), torch.zeros(1, 1).double())
    # store gets 4 of 10; warehouse gets min(5, 2) = 2; echelon 1 gets min(5, 0) = 0; the top stage is always filled
    assert result.shipped[0].tolist() == [4.0, 2.0, 0.0, 9.0]
    assert result.upstream_cost[0].tolist() == pytest.approx([0.5 * 6.0, 0.0, 0.0])


def test_negative_orders_are_clipped_inside_the_simulator():
    sim = InventorySimulator(make_setting("one_store_backlogged", lead_time=1), dtype=torch.float64)
    result = sim.step(_state([[5.0]]), torch.tensor([[-3.0]]).double(), torch.tensor([[1.0]]).double())
    assert result.shipped[0].tolist() == [0.0]
    assert result.state.store[0, 0, 0].item() == 4.0


# ---------------------------------------------------------------------- gradients
def test_pathwise_gradient_matches_finite_differences():
    setting = make_setting("one_store_backlogged")
    sim = InventorySimulator(setting, dtype=torch.float64)
    scenarios = DemandModel(setting).scenarios(list(range(64)), 40)

    def cost(level):
        policy = lambda state, t: torch.relu(level - state.store.sum(-1))  # noqa: E731
        return sim.rollout(policy, sim.initial_state(scenarios), sim.demand(scenarios)).total.mean()

    level = torch.tensor([27.0], dtype=torch.float64, requires_grad=True)
    cost(level).backward()
    eps = 1e-5
    numeric = (cost(level.detach() + eps) - cost(level.detach() - eps)) / (2 * eps)
    assert level.grad is not None and torch.isfinite(level.grad).all()
    assert float(level.grad) == pytest.approx(float(numeric), rel=1e-4)
    assert abs(float(level.grad)) > 0


def test_gradients_flow_through_rationing_and_lost_sales_without_nans():
    setting = make_setting("one_warehouse_lost", n_stores=3)
    sim = InventorySimulator(setting, dtype=torch.float32)
    scenarios = DemandModel(setting).scenarios(list(range(32)), 30)
    weights = torch.ones(setting.n_orders, requires_grad=True)

    def policy(state, t):  # a zero order at t = 0 exercises the 0/0 branch of the rationing
        scale = 0.0 if t == 0 else 1.0
        base = torch.tensor([*setting.demand_mean, 3 * sum(setting.demand_mean)])
        return (scale * weights * base).expand(state.store.shape[0], -1)

    result = sim.rollout(policy, sim.initial_state(scenarios), sim.demand(scenarios))
    result.total.mean().backward()
    assert torch.isfinite(weights.grad).all() and weights.grad.abs().sum() > 0


# ---------------------------------------------------------------------- oracles
def test_newsvendor_base_stock_matches_simulation_search():
    setting = make_setting("one_store_backlogged")
    closed = oracle.newsvendor_level(setting)
    z = 1.2815515655446004  # the 0.9 normal quantile: p / (p + h) = 9 / 10
    assert closed == pytest.approx(5 * 5.0 + z * 1.6 * math.sqrt(5))
    budget = oracle.SearchBudget(traces=256, periods=400, warmup=100)
    searched = oracle.best_base_stock(setting, budget)
    assert searched.policy.store_levels[0] == pytest.approx(closed, abs=0.6)
    scenarios = oracle.search_scenarios(setting, budget)
    closed_cost = oracle.policy_costs(setting, oracle.solve(setting).policy, scenarios, warmup=100).mean()
    assert closed_cost <= searched.search_cost * 1.003  # the closed form is at least as good as the search


def test_poisson_closed_form_is_the_discrete_critical_fractile():
    setting = make_setting("one_store_lost", lost_sales=False, lead_time=1)  # backlogged Poisson(5), L = 1
    level = oracle.newsvendor_level(setting)
    lam = 10.0
    cdf = lambda k: sum(math.exp(-lam) * lam**i / math.factorial(i) for i in range(k + 1))  # noqa: E731
    assert cdf(int(level)) >= 0.9 > cdf(int(level) - 1)
    searched = oracle.best_base_stock(setting, oracle.SearchBudget(traces=256, periods=300, warmup=100))
    assert searched.policy.store_levels[0] == pytest.approx(level, abs=1.0)


def test_capped_base_stock_beats_plain_base_stock_under_lost_sales():
    setting = make_setting("one_store_lost")
    budget = oracle.SearchBudget(traces=128, periods=300, warmup=100, rounds=2)
    capped, plain = oracle.best_capped_base_stock(setting, budget), oracle.best_base_stock(setting, budget)
    assert capped.search_cost < plain.search_cost
    assert math.isfinite(capped.policy.store_caps[0])


def test_just_in_time_is_a_lower_bound():
    for preset in ("one_store_lost", "one_warehouse_lost"):
        setting = make_setting(preset, n_stores=3 if preset == "one_warehouse_lost" else None)
        scenarios = DemandModel(setting).scenarios(list(range(32)), 120)
        jit = oracle.just_in_time_cost(setting, scenarios, warmup=40)
        best = oracle.policy_costs(setting, oracle.solve(setting).policy, scenarios, warmup=40)
        assert np.all(jit <= best + 1e-9) and jit.mean() < 0.01


# ---------------------------------------------------------------------- settings and demand
def test_presets_follow_the_papers_table_and_accept_overrides():
    serial = make_setting("serial")
    assert serial.upstream_lead_times == (3, 4, 2) and serial.upstream_holding_costs == (0.5, 0.2, 0.1)
    assert serial.demand_std == (2.0,) and not serial.lost_sales
    wh = make_setting("one_warehouse_lost", n_stores=20)
    assert wh.n_stores == 20 and wh.lost_sales and wh.correlation == 0.5
    assert all(2.5 <= m <= 7.5 for m in wh.demand_mean) and set(wh.lead_times) <= {2, 3}
    lost = make_setting("one_store_lost", lead_time=2, underage_cost=19)
    assert lost.lead_times == (2,) and lost.underage_costs == (19.0,) and lost.demand == "poisson"
    with pytest.raises(ConfigError, match="Did you mean 'lead_time'"):
        make_setting("one_store_lost", lead_times=3)
    with pytest.raises(ConfigError, match="one_store_lost"):
        make_setting("one_store_lots")
    with pytest.raises(ConfigError, match="Lead times must be >= 1"):
        make_setting("one_store_backlogged", lead_time=0)


def test_demand_traces_are_prefix_stable_and_correlated():
    setting = make_setting("one_warehouse_lost", n_stores=3, clip_demand=False)
    model = DemandModel(setting)
    short, long = model.scenarios([7, 8], 20), model.scenarios([7, 8], 60)
    np.testing.assert_array_equal(short.demand, long.demand[:, :20])
    np.testing.assert_array_equal(short.store_inventory, long.store_inventory)
    sample = model.scenarios(list(range(200)), 100).demand.reshape(-1, 3)
    corr = np.corrcoef(sample.T)
    assert corr[0, 1] == pytest.approx(0.5, abs=0.05)
    assert sample.mean(0) == pytest.approx(setting.demand_mean, rel=0.03)


def _csv(tmp_path, text, name="demand.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("week,a\n1,3\n2,x\n3,4\n", r"demand.csv:3, column 'a': 'x' is not a number"),
        ("week,a\n1,3\n2,-1\n3,4\n", r"demand.csv:3, column 'a': -1 is not a finite number >= 0"),
        ("week,a\n1,3\n2,nan\n", r"demand.csv:3, column 'a'"),
        ("week,a\n1,3\n2,4,5\n", r"demand.csv:3: 3 field\(s\) but the header has 2"),
        ("", "the file is empty"),
        ("week,a\n1,3\n", "1 data row"),
        ("a,b\n1,2\n3,4\n", r"2 demand column\(s\) \['a', 'b'\] but the setting has 1 store"),
    ],
)
def test_malformed_demand_csv_errors_name_file_line_and_column(tmp_path, text, message):
    with pytest.raises(DemandFileError, match=message):
        read_demand_csv(_csv(tmp_path, text), n_stores=1)


def test_demand_csv_missing_file_and_unknown_column(tmp_path):
    with pytest.raises(DemandFileError, match="does not exist"):
        read_demand_csv(tmp_path / "nope.csv")
    with pytest.raises(DemandFileError, match="no column 'c'"):
        read_demand_csv(_csv(tmp_path, "a,b\n1,2\n3,4\n"), columns=["c"])


def test_csv_demand_drives_the_env_with_time_split_windows(tmp_path):
    series = np.arange(100, dtype=float) % 7 + 1
    path = _csv(tmp_path, "period,sales\n" + "".join(f"{i},{v}\n" for i, v in enumerate(series)))
    env = agentgym.make("supplychain", demand_csv=str(path), periods=12, warmup_periods=2)
    assert env.unwrapped.setting.demand == "csv"
    model = env.unwrapped.demand_model
    for split in ("train", "dev", "test"):
        task = env.unwrapped.task_set.tasks(split, n=1)[0]
        env.reset(seed=0, options={"task": task})
        trace = env.unwrapped.get_state().scenario.demand[0, :, 0]
        start, stop = model.segment(split)
        windows = [series[i : i + 12] for i in range(start, stop - 11)]
        assert any(np.array_equal(trace, w) for w in windows)  # a window inside its split's periods
    long = agentgym.make("supplychain", demand_csv=str(path), periods=30, warmup_periods=5)
    with pytest.raises(ConfigError, match="'dev' segment .* has 20 periods but a scenario needs 30"):
        long.reset(seed=0, options={"task": long.unwrapped.task_set.tasks("dev", n=1)[0]})


# ---------------------------------------------------------------------- the env
def test_env_trace_and_costs_equal_the_batched_simulator():
    env = agentgym.make("supplychain-lost", periods=30, warmup_periods=10)
    task = env.unwrapped.task_set.tasks("test", n=1)[0]
    env.reset(seed=0, options={"task": task})
    rewards = []
    while True:
        _, reward, terminated, truncated, info = env.step(env.unwrapped.oracle_action())
        rewards.append(reward)
        if terminated or truncated:
            break
    setting = env.unwrapped.setting
    scenarios = DemandModel(setting).scenarios([task], 30, ["test"])
    batched = oracle.policy_costs(setting, env.unwrapped.oracle().policy, scenarios, warmup=10)
    assert info["episode_avg_cost"] == pytest.approx(float(batched[0]), rel=1e-6)
    assert -sum(rewards[10:]) / 20 == pytest.approx(info["episode_avg_cost"], rel=1e-9)
    assert info["success"] and info["cost_ratio"] == pytest.approx(1.0)


def test_bad_actions_are_repaired_and_reported_never_silent():
    env = agentgym.make("supplychain-warehouse", n_stores=2, periods=10, warmup_periods=1)
    twin = agentgym.make("supplychain-warehouse", n_stores=2, periods=10, warmup_periods=1)
    for e in (env, twin):
        e.reset(seed=0, options={"task": 3})
    top = float(env.action_space.high[2, 0])
    _, reward, _, _, info = env.step(np.array([np.nan, -4.0, 1e9]))
    assert info["action_valid"] is False
    assert info["action_repairs"] == {"nan": 1, "negative": 1, "above_max": 1}
    assert "repaired" in info["action_error"]
    _, twin_reward, _, _, twin_info = twin.step(np.array([[0.0], [0.0], [top]], dtype=np.float32))
    assert twin_info["action_valid"] and reward == twin_reward  # the cost is the repaired orders' cost
    _, _, _, _, info = env.step([1.0, 2.0])  # wrong length: nothing is ordered, and it says so
    assert info["action_valid"] is False and "shape" in info["action_error"]
    assert info["shipped"].tolist() == [0.0, 0.0, 0.0]


def test_text_actions_parse_one_number_per_node():
    env = agentgym.make("supplychain-serial", periods=5, warmup_periods=1)
    env.reset(seed=0)
    parse = env.unwrapped.parse_action
    assert parse("<answer>5, 6, 7.5, 8</answer>").tolist() == [5.0, 6.0, 7.5, 8.0]
    assert parse("I think orders: 1 2 3 4").tolist() == [1.0, 2.0, 3.0, 4.0]
    assert parse("order 5") is None and parse("nothing") is None
    _, _, _, _, info = env.step("<answer>1, 1, 1, 1</answer>")
    assert info["action_valid"] and info["shipped"].tolist()[-1] == 1.0
    _, _, _, _, info = env.step("garbage")
    assert info["action_valid"] is False


def test_text_view_is_golden_for_a_fixed_task():
    env = agentgym.make("supplychain", periods=10, warmup_periods=2)
    obs, _ = env.reset(seed=0, options={"task": 0})
    assert obs["text"] == (
        "Period 1 of 10.\n"
        "store: on hand 4.71, arriving in 1..3 periods: 1.58 3.61 0.63 (lead time 4); holding 1, underage 9."
    )
    obs, *_ = env.step([3.0])
    assert obs["text"].endswith("Last period: demand 6.29; shipped 3.00; cost 14.16 (average so far 14.16).")


def test_graph_view_converts_to_torch_geometric():
    pytest.importorskip("torch_geometric")
    env = agentgym.make("supplychain-warehouse", n_stores=4, periods=5, warmup_periods=1)
    env.reset(seed=0)
    data = env.unwrapped.graph_data()
    assert data.num_nodes == 5 and data.edge_index.shape == (2, 8) and data.num_stores == 4
    assert set(data.edge_index[0].tolist()) == {0, 1, 2, 3, 4}
    serial = agentgym.make("supplychain-serial", periods=5, warmup_periods=1)
    serial.reset(seed=0)
    assert serial.unwrapped.graph_observation()["edge_index"].shape == (2, 6)


def test_scenarios_batch_is_a_plain_dataclass():
    setting = make_setting("serial")
    batch = DemandModel(setting).scenarios([1, 2, 3], 10)
    assert isinstance(batch, Scenarios) and len(batch) == 3
    assert batch.upstream_inventory.shape == (3, 3, 4) and batch.store_inventory.shape == (3, 1, 4)
