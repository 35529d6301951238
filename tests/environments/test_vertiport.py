"""The vertiport env: dynamics on a hand-made scenario, masks, uncertainty, views, files, PettingZoo, baselines."""

from __future__ import annotations

import json
import pickle
import warnings

import numpy as np
import pytest

import agentgym
from agentgym.testing import check_env, deep_equal
from environments.vertiport import parallel_env
from environments.vertiport.baselines import VertiportGAPolicy, VertiportGreedyPolicy, VertiportRandomPolicy
from environments.vertiport.env import VertiportEnv
from environments.vertiport.fleet import BOARDED, DOWN, FLYING, IDLE
from environments.vertiport.generator import ScenarioConfig, generate_scenario
from environments.vertiport.graph import feature_sizes
from environments.vertiport.oracle import random_choices
from environments.vertiport.scenario import ScenarioError, load_scenarios, save_scenarios, scenario_from_dict

# Three vertiports on a line: V0 -(20 km)- V1 -(40 km)- V2. At 150 km/h and 10-minute ticks (25 km per tick) the
# flights take 1, 2 and 3 ticks; at 0.01 SoC per km they use 0.2, 0.4 and 0.6 SoC.
TICKS = 12


def line_scenario(**overrides):
    data = {
        "name": "line",
        "coords": [[0, 0], [20, 0], [60, 0]],
        "pads": [2, 2, 2],
        "init_location": [0, 0],
        "init_soc": [1.0, 0.5],
        "demand_base": [[0, 0, 0], [0, 0, 0], [0, 0, 0]],
        "demand_profile": [1.0] * TICKS,
        "fare_base": [[0, 75, 175], [75, 0, 125], [175, 125, 0]],
        "p_delay": 0.0,
        "p_closure": 0.0,
        "p_downtime": 0.0,
    }
    data.update(overrides)
    return data


def line_env(tmp_path, obs_mode="struct", **overrides):
    path = tmp_path / "line.json"
    path.write_text(json.dumps(line_scenario(**overrides)))
    env = VertiportEnv(scenario_file=str(path), obs_mode=obs_mode)
    env.reset(seed=0, options={"task": 0})
    return env


def stay(env):
    return env.sim.dest.copy()


def test_flight_takes_the_route_ticks_and_battery(tmp_path):
    env = line_env(tmp_path)
    action = stay(env)
    action[0] = 2  # A0: V0 -> V2, 3 ticks, 0.6 SoC
    obs, reward, terminated, _, info = env.step(action)
    assert info["departures"] == 1 and info["tick"] == 1
    assert env.sim.status[0] == FLYING and env.sim.soc[0] == pytest.approx(0.4)
    assert obs["deciding"].tolist() == [0, 1]
    assert obs["action_mask"][0].tolist() == [0, 0, 1]  # a flying aircraft may only keep its destination
    for tick in (2, 3):
        *_, info = env.step(stay(env))
        assert info["tick"] == tick
        assert env.sim.status[0] == (FLYING if tick < 3 else IDLE)
    assert env.sim.loc[0] == 2 and env.sim.soc[0] == pytest.approx(0.4)  # no charging in flight
    env.step(stay(env))
    assert env.sim.soc[0] == pytest.approx(0.55)  # an idle tick charges 0.15


def test_fares_are_counted_once_at_boarding(tmp_path):
    env = line_env(tmp_path)
    s = env.scenario
    env.sim.waiting[0, 0, 2] = 3
    action = stay(env)
    action[0] = 2  # 3 ticks to V2
    _, reward, _, _, info = env.step(action)
    revenue = 3 * s.fare[0, 0, 2]
    flight = s.flight_cost + s.cost_per_km * 60 + 3 * s.cost_per_passenger
    charging = 0.15 * s.charge_cost  # A1 (SoC 0.5) charges while it waits
    assert reward == pytest.approx(revenue - flight - charging)
    assert info["revenue"] == pytest.approx(revenue) and info["passengers"] == 3
    assert env.sim.load[0] == 3 and env.sim.waiting.sum() == 0
    for _ in range(2):
        _, reward, _, _, info = env.step(stay(env))
        assert info["revenue"] == pytest.approx(revenue) and info["passengers"] == 3
        assert reward <= 0  # only charging afterwards, no second fare
    assert env.sim.load[0] == 0 and env.sim.loc[0] == 2  # unloaded on arrival


def test_two_aircraft_share_the_waiting_passengers(tmp_path):
    env = line_env(tmp_path, init_soc=[1.0, 1.0])
    env.sim.waiting[:, 0, 2] = [1, 2, 3]  # six passengers, the oldest three about to leave
    action = stay(env)
    action[:] = 2
    *_, info = env.step(action)
    assert info["passengers"] == 6 and info["unserved"] == 0
    assert info["ticks"] == 3  # nobody is idle in flight, so the step runs to the arrival
    s = env.scenario
    fixed = s.flight_cost + s.cost_per_km * 60
    margin = s.fare[0, 0, 2] - s.cost_per_passenger
    assert env.sim.aircraft_reward.tolist() == pytest.approx([4 * margin - fixed, 2 * margin - fixed])


def test_unserved_passengers_cost_the_penalty_once(tmp_path):
    env = line_env(tmp_path)
    s = env.scenario
    env.sim.waiting[-1, 1, 2] = 2  # about to leave at V1, where no aircraft is
    _, reward, _, _, info = env.step(stay(env))
    assert info["unserved"] == 2
    assert reward == pytest.approx(-2 * s.unserved_penalty - 0.15 * s.charge_cost)
    _, reward, _, _, info = env.step(stay(env))
    assert info["unserved"] == 2 and reward == pytest.approx(-0.15 * s.charge_cost)


def test_capacity_mask_turns_a_full_destination_into_stay(tmp_path):
    env = line_env(tmp_path, pads=[2, 1, 2], init_location=[0, 1], init_soc=[1.0, 1.0])
    assert env.action_mask()[0].tolist() == [True, False, True]
    action = stay(env)
    action[0] = 1
    _, reward, _, _, info = env.step(action)
    assert info["action_valid"] and info["num_masked"] == 1 and info["departures"] == 0
    assert info["overridden"].tolist() == [True, False]
    assert env.sim.loc[0] == 0 and env.sim.status[0] == IDLE
    assert reward == 0.0  # no flight cost was charged for the refused choice (both batteries are full)


def test_conflict_for_the_last_pad_goes_to_the_lower_aircraft(tmp_path):
    env = line_env(tmp_path, pads=[2, 1, 2], init_soc=[1.0, 1.0])
    action = stay(env)
    action[:] = 1  # both want V1, which has one pad
    *_, info = env.step(action)
    assert info["num_conflicts"] == 1 and info["overridden"].tolist() == [False, True]
    assert info["departures"] == 1 and env.sim.loc.tolist() == [1, 0]


def test_battery_reserve_masks_long_routes(tmp_path):
    env = line_env(tmp_path)
    # A1 has 0.5 SoC: V0->V1 (0.2) leaves 0.3 >= 0.2 reserve; V0->V2 (0.6) is impossible.
    assert env.action_mask()[1].tolist() == [True, True, False]


def test_route_concurrency_limit(tmp_path):
    env = line_env(tmp_path, init_soc=[1.0, 1.0], route_capacity=[[0, 1, 1], [1, 0, 1], [1, 1, 0]])
    action = stay(env)
    action[0] = 2
    env.step(action)
    assert env.action_mask()[1].tolist() == [True, True, False]  # V0->V2 holds its one aircraft


def test_weather_closure_masks_routes(tmp_path):
    env = line_env(tmp_path, obs_mode="dict", p_closure=1.0, closure_ticks=[2, 2])
    obs, *_ = env.step(stay(env))
    assert (env.sim.closure == np.where(env.scenario.route, 2, 0)).all()
    assert obs["struct"]["action_mask"].tolist() == [[1, 0, 0], [1, 0, 0]]
    assert obs["struct"]["routes"][..., 1].sum() == 0  # no route open
    assert "closed: V0-V1 (2 ticks)" in obs["text"]


def test_take_off_delay_holds_the_aircraft_on_the_pad(tmp_path):
    env = line_env(tmp_path, p_delay=1.0, max_delay_ticks=3)
    seed = 0
    while env.sim.delay_draw[0] < 2:  # find a day whose first take-off waits at least 2 ticks
        seed += 1
        env.reset(seed=seed, options={"task": 0})
    delay = int(env.sim.delay_draw[0])
    action = stay(env)
    action[0] = 1  # a 1-tick flight
    env.step(action)
    assert env.sim.status[0] == BOARDED and env.sim.timer[0] == delay - 1
    assert env.sim.occupancy().tolist() == [2, 1, 0]  # the origin pad and the destination pad are both held
    while env.sim.status[0] == BOARDED:
        env.step(stay(env))
    assert env.sim.status[0] == FLYING and env.sim.tick == delay
    env.step(stay(env))
    assert env.sim.status[0] == IDLE and env.sim.loc[0] == 1 and env.sim.tick == delay + 1


def test_downtime_keeps_aircraft_out_of_service(tmp_path):
    env = line_env(tmp_path, p_downtime=0.3, downtime_ticks=[2, 4], demand_profile=[1.0] * 60)
    rng = np.random.default_rng(0)
    seen_down = 0
    terminated = False
    while not terminated:
        before = env.get_state()
        obs, _, terminated, _, info = env.step(random_choices(env.sim, rng, env.action_mask()))
        down = env.sim.status == DOWN
        seen_down += int(down.sum())
        assert (obs["deciding"][down] == 0).all()
        for a in np.flatnonzero(down):
            assert obs["action_mask"][a].tolist() == np.eye(3, dtype=int)[env.sim.loc[a]].tolist()
            if before.status[a] == DOWN:
                assert env.sim.soc[a] == before.soc[a]  # no charging while down
    assert seen_down > 0


def test_invalid_actions_are_no_ops_reported_in_info(tmp_path):
    env = line_env(tmp_path)
    for bad in ("no idea", np.array([1, 2, 3]), 10_000, "A7->V1"):
        state = env.get_state()
        _, _, _, _, info = env.step(bad)
        assert info["action_valid"] is False and "action_error" in info
        assert info["departures"] == 0
        env.set_state(state)


def test_non_deciding_choices_are_ignored(tmp_path):
    env = line_env(tmp_path)
    action = stay(env)
    action[0] = 2
    env.step(action)  # A0 flies V0 -> V2 for three ticks
    snapshot = env.get_state()
    _, r1, *_ = env.step(np.array([2, 0]))
    after1 = env.sim.status.copy(), env.sim.loc.copy()
    env.set_state(snapshot)
    _, r2, *_ = env.step(np.array([0, 0]))
    assert r1 == r2 and all((a == b).all() for a, b in zip(after1, (env.sim.status, env.sim.loc)))


def test_text_view_golden(tmp_path):
    env = line_env(tmp_path)
    env.sim.waiting[0, 0, 1] = 3
    action = stay(env)
    action[0] = 2
    env.step(action)
    assert env.text_observation() == (
        "06:10 tick 1/12 | profit -156 | carried 0, left unserved 0\n"
        "V0 pads 1/2 idle 1 in 0 | waiting V1:3\n"
        "V1 pads 0/2 idle 0 in 0 | waiting -\n"
        "V2 pads 1/2 idle 0 in 1 | waiting -\n"
        "decide: A1@V0 soc 65% -> V1\n"
        "others: A0 flying V0->V2 (2)"
    )


def test_text_actions(tmp_path):
    env = line_env(tmp_path)
    assert env.parse_action("<answer>A0->V2, A1 to V1</answer>").tolist() == [2, 1]
    assert env.parse_action("a1 -> v2").tolist() == [0, 2]
    assert env.parse_action("<answer>stay</answer>").tolist() == [0, 0]
    assert env.parse_action("A0->V9") is None and env.parse_action("A0->V1 A0->V2") is None
    assert env.parse_action("fly somewhere") is None
    _, _, _, _, info = env.step("A0->V1")
    assert info["action_valid"] and info["departures"] == 1


def test_determinism_and_state_round_trip():
    env1, env2 = VertiportEnv(preset="small"), VertiportEnv(preset="small")
    env1.reset(seed=3)
    env2.reset(seed=3)
    steps = 0
    for _ in range(20):
        action = env1.action_space.sample()
        assert deep_equal(env1.step(action), env2.step(action))
        steps += 1
    assert steps == 20
    state = pickle.loads(pickle.dumps(env1.get_state()))
    key = env1.state_key()
    actions = [env1.action_space.sample() for _ in range(10)]
    original = [env1.step(a) for a in actions]
    fresh = VertiportEnv(preset="small")
    fresh.reset(seed=99)
    fresh.set_state(state)
    assert fresh.state_key() == key
    assert all(deep_equal(a, b) for a, b in zip(original, (fresh.step(a) for a in actions)))


def test_contract_check_passes_quickly():
    report = check_env("vertiport", steps=60)
    assert report.passed
    assert sum(r.seconds for r in report.results) < 15


def test_struct_observation_fits_the_space_and_views_agree():
    env = agentgym.make("vertiport")
    obs, info = env.reset(seed=0)
    assert obs in env.observation_space and len(obs["text"]) <= env.unwrapped.text_max_length
    s = obs["struct"]
    n, m = env.unwrapped.num_vertiports, env.unwrapped.num_aircraft
    assert (n, m) == (8, 40) and s["action_mask"].shape == (m, n) and s["demand"].shape == (6, n, n)
    assert info["split"] == "train"


def test_graph_observation_shapes():
    env = VertiportEnv(preset="small", obs_mode="struct")
    env.reset(seed=1)
    action = env.oracle_action()
    for _ in range(3):
        obs, *_ = env.step(action)
        action = env.oracle_action()
    g = env.graph_observation()
    n, m = env.num_vertiports, env.num_aircraft
    sizes = feature_sizes(env.demand_window)
    assert g["vertiport"].x.shape == (n, sizes["vertiport"]) and g["aircraft"].x.shape == (m, sizes["aircraft"])
    route = g["vertiport", "route", "vertiport"]
    e = int(env.scenario.route.sum())
    assert route.edge_index.shape == (2, e) and route.edge_attr.shape == (e, sizes["route"])
    assert route.window.shape == (e, env.demand_window, 2)
    status = env.sim.status
    ground = int(((status == IDLE) | (status == BOARDED) | (status == DOWN)).sum())
    moving = int(((status == BOARDED) | (status == FLYING)).sum())
    assert g["aircraft", "at", "vertiport"].edge_index.shape == (2, ground)
    assert g["aircraft", "to", "vertiport"].edge_index.shape == (2, moving)
    at = g["aircraft", "at", "vertiport"].edge_index
    assert (g["vertiport", "rev_at", "aircraft"].edge_index.flip(0) == at).all()
    assert g["aircraft"].action_mask.tolist() == obs["action_mask"].astype(bool).tolist()


def test_pettingzoo_parallel_api_and_reward_split():
    from pettingzoo.test import parallel_api_test

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parallel_api_test(parallel_env(preset="tiny"), num_cycles=100)
    par, central = parallel_env(preset="tiny"), VertiportEnv(preset="tiny", obs_mode="struct")
    obs, _ = par.reset(seed=5)
    central.reset(seed=5)
    rng = np.random.default_rng(0)
    while par.agents:
        actions = {a: int(rng.choice(np.flatnonzero(obs[a]["action_mask"]))) for a in par.agents}
        obs, rewards, terms, _, _ = par.step(actions)
        _, reward, terminated, _, _ = central.step(np.array([actions[a] for a in par.possible_agents]))
        assert sum(rewards.values()) == pytest.approx(reward)
        assert all(t == terminated for t in terms.values())
    assert central.sim.done


def test_scenario_file_round_trip(tmp_path):
    scenarios = [generate_scenario(s, ScenarioConfig.from_options("tiny")) for s in (1, 2)]
    path = tmp_path / "two.json"
    save_scenarios(scenarios, path)
    loaded = load_scenarios(path)
    assert [s.fingerprint() for s in loaded] == [s.fingerprint() for s in scenarios]
    env = VertiportEnv(scenario_file=str(path))
    assert env.task_set.tasks("all") == [0, 1]
    env.reset(seed=0, options={"task": 1})
    assert env.scenario.fingerprint() == scenarios[1].fingerprint()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"pads": [1, 2, 2]}, "infeasible capacity: 2 aircraft start at vertiport 0"),
        ({"pads": [2, 2]}, "'pads' has shape"),
        ({"init_soc": [1.0, 0.1]}, "'init_soc' of aircraft 1"),
        ({"init_location": [0, 5]}, "'init_location' names vertiport 5"),
        ({"seats": 0}, "'seats' = 0"),
        ({"coords": "here"}, "field 'coords' is not a rectangular array"),
        ({"energy_per_km": 0.02}, "route 0->2 needs 1.200 SoC"),
        ({"colour": "red"}, "unknown field(s) ['colour']"),
        ({"closure_ticks": [5, 2]}, "'closure_ticks'"),
    ],
)
def test_scenario_file_errors_name_the_field(tmp_path, change, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(line_scenario(**change)))
    with pytest.raises(ScenarioError) as err:
        VertiportEnv(scenario_file=str(path))
    assert message in str(err.value)


def test_scenario_file_errors_for_missing_fields_and_bad_json(tmp_path):
    data = line_scenario()
    del data["pads"]
    with pytest.raises(ScenarioError, match="required field 'pads' is missing"):
        scenario_from_dict(data)
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(ScenarioError, match="not valid JSON"):
        load_scenarios(path)
    with pytest.raises(ScenarioError, match="does not exist"):
        load_scenarios(tmp_path / "missing.json")
    with pytest.raises(ScenarioError, match="Unknown scenario setting"):
        VertiportEnv(scenario={"num_planes": 3})
    with pytest.raises(ScenarioError, match="num_aircraft=501"):
        VertiportEnv(num_aircraft=501)


def test_generator_is_seeded_and_scales():
    cfg = ScenarioConfig.from_options("default")
    assert generate_scenario(7, cfg).fingerprint() == generate_scenario(7, cfg).fingerprint()
    assert generate_scenario(7, cfg).fingerprint() != generate_scenario(8, cfg).fingerprint()
    large = generate_scenario(0, ScenarioConfig.from_options("large"))
    assert (large.num_vertiports, large.num_aircraft, large.num_ticks) == (50, 500, 108)
    hours = large.start_minute / 60 + np.arange(large.num_ticks) / 6
    profile = large.demand_rate.sum((1, 2))
    assert profile[np.abs(hours - 8).argmin()] > 2 * profile[np.abs(hours - 12.5).argmin()]  # a morning peak


def run_day(env, policy, task, seed):
    obs, _ = env.reset(seed=seed, options={"task": task})
    rng = np.random.default_rng(seed)
    done = False
    while not done:
        action = policy.act([obs], envs=[env], rng=rng).actions[0]
        obs, _, terminated, truncated, info = env.step(action)
        assert info["num_masked"] == 0  # every baseline picks allowed destinations
        done = terminated or truncated
    return info["profit"]


def test_baselines_rank_random_below_greedy_and_ga():
    env = VertiportEnv(preset="small", obs_mode="struct")
    tasks = env.task_set.tasks("test", 2)
    ga = VertiportGAPolicy(seed=0, population=6, generations=3, futures=1, horizon_ticks=12, replan_ticks=12)
    profit = {name: 0.0 for name in ("random", "greedy", "ga")}
    for i, task in enumerate(tasks):
        profit["random"] += run_day(env, VertiportRandomPolicy(), task, i)
        profit["greedy"] += run_day(env, VertiportGreedyPolicy(), task, i)
        profit["ga"] += run_day(env, ga, task, i)
    assert profit["greedy"] > profit["random"] and profit["ga"] > profit["random"]
    assert ga.plan_seconds > 0 and ga.decisions > 0
