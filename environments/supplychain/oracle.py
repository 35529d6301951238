"""Reference policies for the inventory networks: optimal or best-known level policies and the just-in-time bound.

All of them are *level policies* (``LevelPolicy``): store ``i`` orders ``clip(S_i - IP_i, 0, cap_i)`` where
``IP_i`` is its inventory position (on hand + pipeline, backlog counting negative), and upstream stage ``k``
orders ``max(E_k - EIP_k, 0)`` where ``EIP_k`` is its echelon inventory position (its own position plus every
position below it). The simulator then makes the orders feasible (proportional rationing at the warehouse,
shipments truncated by upstream on-hand stock). Special cases:

- **base-stock** (no caps, no upstream): optimal for a backlogged store. ``newsvendor_level`` gives the level in
  closed form: the ``p / (p + h)`` quantile of demand over ``L + 1`` periods (an order placed now is on hand for
  the demand ``L`` periods later, so the position after ordering covers ``L + 1`` periods of demand).
- **capped base-stock**: near-optimal under lost sales; ``(S, cap)`` found by a grid search on simulated traces.
- **echelon base-stock** (serial chain): optimal for a backlogged serial system (Clark and Scarf); levels found
  by coordinate search.
- **warehouse heuristic** (one warehouse, many stores): capped base-stock stores with levels
  ``(L_i + 1) mu_i + z sigma_i sqrt(L_i + 1)`` and caps ``c mu_i``, an echelon level ``sum_i S_i + y mu_total`` at
  the warehouse; ``(z, c, y)`` found by coordinate search.

Searches use common random numbers (every candidate sees the same train-split scenarios), run batched (all
candidates of a grid in one simulation) and are cached per setting and budget. ``just_in_time_cost`` simulates a
clairvoyant policy that sees future demand: a lower bound for reports, not an admissible policy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import torch

from environments.supplychain.demand import DemandModel, Scenarios, task_set_for
from environments.supplychain.settings import Setting
from environments.supplychain.simulator import InventorySimulator, SimPolicy, SimState, torch_threads


@dataclass(frozen=True)
class SearchBudget:
    """How much simulation a search may use.

    Attributes:
        traces: train-split scenarios every candidate is evaluated on (common random numbers).
        periods: horizon of each scenario.
        warmup: leading periods excluded from the cost.
        rounds: refinement rounds (each halves the grid spacing around the incumbent).
        grid: candidates per coordinate in each round.
        threads: torch threads while searching (None: the process setting; see ``torch_threads``).
    """

    traces: int = 192
    periods: int = 300
    warmup: int = 100
    rounds: int = 4
    grid: int = 13
    threads: int | None = 1


#: The env's budget: a few seconds on a 2-core CPU; the benchmark passes a larger one.
QUICK = SearchBudget()


@dataclass(frozen=True)
class LevelPolicy:
    """Order-up-to levels (see the module docstring); ``inf`` caps mean uncapped.

    Attributes:
        store_levels: ``S_i`` per store.
        store_caps: ``cap_i`` per store.
        echelon_levels: ``E_k`` per upstream stage, warehouse first.
    """

    store_levels: tuple[float, ...]
    store_caps: tuple[float, ...]
    echelon_levels: tuple[float, ...] = ()

    def tensors(self, sim: InventorySimulator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The levels as ``[n]``, ``[n]``, ``[m]`` tensors of the simulator's dtype."""
        as_t = lambda v: torch.as_tensor(np.asarray(v, dtype=np.float64), dtype=sim.dtype)  # noqa: E731
        return as_t(self.store_levels), as_t(self.store_caps), as_t(self.echelon_levels).reshape(sim.m)

    def sim_policy(self, sim: InventorySimulator) -> SimPolicy:
        """This policy as a ``rollout`` policy."""
        levels, caps, echelon = self.tensors(sim)
        return lambda state, t: level_orders(state, levels, caps, echelon)


@dataclass(frozen=True)
class OracleSolution:
    """The reference policy of a setting and how it was found.

    Attributes:
        policy: the level policy.
        method: "closed form" or the search that found it.
        search_cost: its average cost per period and store on the search scenarios (None for closed forms).
    """

    policy: LevelPolicy
    method: str
    search_cost: float | None = None


def level_orders(state: SimState, levels: torch.Tensor, caps: torch.Tensor, echelon: torch.Tensor) -> torch.Tensor:
    """Orders of a level policy; parameters broadcast against ``[B, n]`` / ``[B, m]`` (one row per candidate)."""
    ip_store, ip_up = InventorySimulator.inventory_position(state)
    store = torch.minimum(torch.relu(levels - ip_store), caps)
    if ip_up.shape[1] == 0:
        return store
    echelon_position = ip_store.sum(1, keepdim=True) + torch.cumsum(ip_up, 1)
    return torch.cat([store, torch.relu(echelon - echelon_position)], 1)


# ---------------------------------------------------------------------- closed form
def newsvendor_level(setting: Setting, store: int = 0) -> float | None:
    """The optimal base-stock level of a backlogged store facing i.i.d. demand, or None when there is no closed form.

    The critical fractile ``p / (p + h)`` of demand over ``L + 1`` periods: exact for Poisson; for normal demand
    exact up to the clipping at 0, so it is only returned when clipping has probability below 1e-3.
    """
    s = setting
    if s.lost_sales or s.n_upstream or s.demand == "csv":
        return None
    h, p, lead = s.holding_costs[store], s.underage_costs[store], s.lead_times[store]
    ratio = p / (p + h)
    mean, std = s.demand_mean[store], s.demand_std[store]
    if s.demand == "poisson":
        return float(_poisson_quantile((lead + 1) * mean, ratio))
    if s.clip_demand and std > 0 and NormalDist().cdf(-mean / std) > 1e-3:
        return None
    return (lead + 1) * mean + NormalDist().inv_cdf(ratio) * std * math.sqrt(lead + 1)


def _poisson_quantile(lam: float, q: float) -> int:
    """The smallest k with P(Poisson(lam) <= k) >= q (log-space pmf: no underflow for large lam)."""
    cdf, k = 0.0, 0
    while True:
        cdf += math.exp(-lam + k * math.log(lam) - math.lgamma(k + 1)) if lam > 0 else float(k == 0)
        if cdf >= q - 1e-12:
            return k
        k += 1


# ---------------------------------------------------------------------- evaluation
def search_scenarios(setting: Setting, budget: SearchBudget = QUICK) -> Scenarios:
    """The first ``budget.traces`` train-split scenarios (searches never see dev or test traces)."""
    seeds = task_set_for(setting).tasks("train", n=budget.traces)
    return DemandModel(setting).scenarios(seeds, budget.periods, ["train"] * len(seeds))


@torch.no_grad()
def evaluate_candidates(
    sim: InventorySimulator,
    scenarios: Scenarios,
    levels: torch.Tensor,
    caps: torch.Tensor,
    echelon: torch.Tensor,
    warmup: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Average costs of ``K`` level policies on the same scenarios, in one batched simulation.

    Args:
        sim: the simulator.
        scenarios: ``N`` scenarios.
        levels: ``[K, n]`` store levels.
        caps: ``[K, n]`` store caps.
        echelon: ``[K, m]`` echelon levels.
        warmup: periods excluded from the costs.

    Returns:
        ``[K, n]`` cost per period of each store, and ``[K]`` total cost per period and store.
    """
    k, n_traces = levels.shape[0], len(scenarios)
    start = sim.initial_state(scenarios)
    state = SimState(start.store.repeat(k, 1, 1), start.upstream.repeat(k, 1, 1))
    demand = sim.demand(scenarios)
    rows = [x.to(sim.dtype).repeat_interleave(n_traces, 0) for x in (levels, caps, echelon)]
    store_acc = torch.zeros(k * n_traces, sim.n, dtype=sim.dtype)
    total_acc = torch.zeros(k * n_traces, dtype=sim.dtype)
    periods = demand.shape[1]
    for t in range(periods):
        result = sim.step(state, level_orders(state, *rows), demand[:, t].repeat(k, 1))
        state = result.state
        if t >= warmup:
            store_acc += result.store_cost
            total_acc += result.cost
    counted = periods - warmup
    per_store = store_acc.view(k, n_traces, sim.n).mean(1) / counted
    return per_store, total_acc.view(k, n_traces).mean(1) / (counted * sim.n)


@torch.no_grad()
def policy_costs(
    setting: Setting, policy: SimPolicy | LevelPolicy, scenarios: Scenarios, *, warmup: int, round_orders: bool = False
) -> np.ndarray:
    """``[N]`` average cost per period and store of a policy on each scenario (after ``warmup`` periods)."""
    sim = InventorySimulator(setting, dtype=torch.float64)
    fn = policy.sim_policy(sim) if isinstance(policy, LevelPolicy) else policy
    cost = sim.rollout(
        fn, sim.initial_state(scenarios), sim.demand(scenarios), warmup=warmup, round_orders=round_orders
    )
    return cost.reported.numpy()


# ---------------------------------------------------------------------- searches
def best_base_stock(setting: Setting, budget: SearchBudget = QUICK) -> OracleSolution:
    """Uncapped base-stock levels per store found by simulation (no upstream stages)."""
    return _search_stores(setting, budget, capped=False)


def best_capped_base_stock(setting: Setting, budget: SearchBudget = QUICK) -> OracleSolution:
    """Capped base-stock ``(S_i, cap_i)`` per store found by a joint grid search (no upstream stages)."""
    return _search_stores(setting, budget, capped=True)


def _search_stores(setting: Setting, budget: SearchBudget, *, capped: bool) -> OracleSolution:
    """Joint grid over (S, cap) per store, refined around the incumbent.

    Stores are independent, so each picks its own best from the per-store costs of one batched simulation.
    """
    with torch_threads(budget.threads):
        return _grid_search_stores(setting, budget, capped=capped)


def _grid_search_stores(setting: Setting, budget: SearchBudget, *, capped: bool) -> OracleSolution:
    if setting.n_upstream:
        raise ValueError(f"{setting.name} has upstream stages; use best_echelon_levels or best_warehouse_heuristic.")
    sim = InventorySimulator(setting, dtype=torch.float32)
    scenarios = search_scenarios(setting, budget)
    mean = np.asarray(setting.demand_mean)
    std = np.maximum(np.asarray(setting.demand_std), 1e-6)
    lead = np.asarray(setting.lead_times) + 1.0
    integral = setting.demand == "poisson" or (setting.demand == "csv" and np.all(np.mod(scenarios.demand, 1) == 0))
    level = lead * mean
    cap = 2.0 * mean + 2.0 * std if capped else np.full_like(mean, np.inf)
    width_s, width_c = 2.5 * std * np.sqrt(lead) + mean, 1.5 * mean + 2 * std
    best = np.inf
    for _ in range(budget.rounds):
        s_grid = _grid(level, width_s, budget.grid, integral, low=0.0)
        c_grid = _grid(cap, width_c, budget.grid, integral, low=0.0) if capped else cap[None, :]
        cand_s = np.repeat(s_grid, len(c_grid), 0)
        cand_c = np.tile(c_grid, (len(s_grid), 1))
        per_store, _ = evaluate_candidates(
            sim, scenarios, torch.as_tensor(cand_s), torch.as_tensor(cand_c), torch.zeros(len(cand_s), 0), budget.warmup
        )
        pick = per_store.argmin(0).numpy()
        cols = np.arange(setting.n_stores)
        level, cap = cand_s[pick, cols], cand_c[pick, cols]
        best = float(per_store[pick, cols].mean())
        width_s, width_c = width_s / 3.0, width_c / 3.0
    caps = tuple(float(c) for c in cap) if capped else (math.inf,) * setting.n_stores
    method = "grid search (capped base-stock)" if capped else "grid search (base-stock)"
    return OracleSolution(LevelPolicy(tuple(float(x) for x in level), caps), method, best)


def _grid(center: np.ndarray, width: np.ndarray, k: int, integral: bool, low: float) -> np.ndarray:
    """``[K, n]`` candidates ``center +- width``; integer-valued demand gets integer candidates."""
    offsets = np.linspace(-1.0, 1.0, k)[:, None] * width[None, :]
    grid = np.maximum(center[None, :] + offsets, low)
    if integral:
        grid = np.unique(np.round(grid), axis=0) if grid.shape[1] == 1 else np.round(grid)
    return grid


def best_echelon_levels(setting: Setting, budget: SearchBudget = QUICK) -> OracleSolution:
    """Echelon base-stock levels ``(S_store, E_0, E_1, ...)`` of a serial chain, by coordinate search."""
    if setting.n_stores != 1 or setting.n_upstream == 0:
        raise ValueError(f"{setting.name} is not a serial chain (one store with upstream stages).")
    s = setting
    mean, std = s.demand_mean[0], max(s.demand_std[0], 1e-6)
    ratio = s.underage_costs[0] / (s.underage_costs[0] + s.holding_costs[0])
    z = NormalDist().inv_cdf(ratio)
    cover = s.lead_times[0] + 1
    theta = [cover * mean + z * std * math.sqrt(cover)]
    for lead in s.upstream_lead_times:
        cover += lead
        theta.append(cover * mean + z * std * math.sqrt(cover))
    widths = [2.0 * std * math.sqrt(s.lead_times[0] + 1) + mean] * len(theta)
    uncapped = (math.inf,)

    def decode(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return rows[:, :1], np.full((len(rows), 1), uncapped[0]), rows[:, 1:]

    theta, cost = _coordinate_search(s, budget, np.asarray(theta), np.asarray(widths), decode)
    policy = LevelPolicy((float(theta[0]),), uncapped, tuple(float(x) for x in theta[1:]))
    return OracleSolution(policy, "coordinate search (echelon base-stock)", cost)


def best_warehouse_heuristic(setting: Setting, budget: SearchBudget = QUICK) -> OracleSolution:
    """The (z, c, y) warehouse heuristic of the module docstring, by coordinate search (one upstream stage)."""
    s = setting
    if s.n_upstream != 1:
        raise ValueError(f"{s.name} does not have exactly one upstream stage (a warehouse).")
    mean = np.asarray(s.demand_mean)
    std = np.asarray(s.demand_std)
    root = np.sqrt(np.asarray(s.lead_times) + 1.0)
    cover = np.asarray(s.lead_times) + 1.0

    def decode(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        z, c, y = rows[:, :1], rows[:, 1:2], rows[:, 2:3]
        levels = np.maximum(cover * mean + z * std * root, 0.0)
        caps = np.maximum(c * mean, 0.0) if s.lost_sales else np.full_like(levels, np.inf)
        return levels, caps, levels.sum(1, keepdims=True) + y * mean.sum()

    start = np.array([1.0, 2.0, s.upstream_lead_times[0] + 0.5])
    widths = np.array([1.5, 1.5, 1.5])
    theta, cost = _coordinate_search(s, budget, start, widths, decode, frozen=() if s.lost_sales else (1,))
    levels, caps, echelon = (row[0] for row in decode(theta[None, :]))
    policy = LevelPolicy(
        tuple(float(x) for x in levels), tuple(float(x) for x in caps), tuple(float(x) for x in echelon)
    )
    return OracleSolution(policy, "coordinate search (warehouse echelon + capped store base-stock)", cost)


def _coordinate_search(
    setting: Setting,
    budget: SearchBudget,
    theta: np.ndarray,
    widths: np.ndarray,
    decode: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]],
    frozen: tuple[int, ...] = (),
) -> tuple[np.ndarray, float]:
    """Minimise the simulated cost over ``theta`` one coordinate at a time (a batched grid per coordinate)."""
    with torch_threads(budget.threads):
        return _coordinate_descent(setting, budget, theta, widths, decode, frozen)


def _coordinate_descent(
    setting: Setting,
    budget: SearchBudget,
    theta: np.ndarray,
    widths: np.ndarray,
    decode: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]],
    frozen: tuple[int, ...],
) -> tuple[np.ndarray, float]:
    sim = InventorySimulator(setting, dtype=torch.float32)
    scenarios = search_scenarios(setting, budget)
    theta, widths = theta.astype(np.float64), widths.astype(np.float64)
    best = np.inf
    for _ in range(budget.rounds):
        for j in range(len(theta)):
            if j in frozen:
                continue
            rows = np.repeat(theta[None, :], budget.grid, 0)
            rows[:, j] = theta[j] + np.linspace(-1.0, 1.0, budget.grid) * widths[j]
            levels, caps, echelon = (torch.as_tensor(x) for x in decode(rows))
            _, total = evaluate_candidates(sim, scenarios, levels, caps, echelon, budget.warmup)
            pick = int(total.argmin())
            theta, best = rows[pick].copy(), float(total[pick])
        widths = widths / 2.0
    return theta, best


# ---------------------------------------------------------------------- the env's oracle
_CACHE: dict[tuple[str, SearchBudget], OracleSolution] = {}


def solve(setting: Setting, budget: SearchBudget = QUICK) -> OracleSolution:
    """The setting's reference policy (cached per setting and budget).

    Backlogged stores with a closed form: newsvendor base-stock. Stores only: (capped) base-stock search. A serial
    chain: echelon base-stock search. One warehouse: the warehouse heuristic search.
    """
    key = (setting.fingerprint(), budget)
    if key not in _CACHE:
        _CACHE[key] = _solve(setting, budget)
    return _CACHE[key]


def _solve(setting: Setting, budget: SearchBudget) -> OracleSolution:
    if setting.n_upstream == 0:
        closed = [newsvendor_level(setting, i) for i in range(setting.n_stores)]
        if all(level is not None for level in closed):
            policy = LevelPolicy(tuple(float(x) for x in closed), (math.inf,) * setting.n_stores)  # type: ignore[arg-type]
            return OracleSolution(policy, "closed form (newsvendor critical fractile)")
        return best_capped_base_stock(setting, budget) if setting.lost_sales else best_base_stock(setting, budget)
    if setting.n_upstream > 1 or setting.n_stores == 1 and not setting.lost_sales:
        return best_echelon_levels(setting, budget)
    return best_warehouse_heuristic(setting, budget)


# ---------------------------------------------------------------------- the just-in-time bound
def just_in_time_levels(setting: Setting, scenarios: Scenarios) -> tuple[np.ndarray, np.ndarray]:
    """Clairvoyant order-up-to levels: ``[N, T, n]`` for stores and ``[N, T, m]`` echelon levels upstream.

    Store ``i``'s level in period ``t`` is its demand over ``t .. t + L_i`` (seen in advance); upstream stage
    ``k``'s echelon level is the demand of every store over ``t .. t + L_i + L_0 + ... + L_k``. With these levels
    (and feedback on the actual positions) every unit arrives exactly when it is needed once the initial stock has
    been used up, so after the warm-up the cost is that of the start-up transient only.
    """
    demand = scenarios.demand
    leads = np.asarray(setting.lead_times)
    store = _future_sums(demand, leads)
    echelon = np.zeros(demand.shape[:2] + (setting.n_upstream,))
    cover = 0
    for k, lead in enumerate(setting.upstream_lead_times):
        cover += lead
        echelon[:, :, k] = _future_sums(demand, leads + cover).sum(-1)
    return store, echelon


def _future_sums(values: np.ndarray, leads: np.ndarray) -> np.ndarray:
    """``out[:, t, i] = values[:, t : t + leads[i] + 1, i].sum()`` (truncated at the horizon)."""
    cum = np.concatenate([np.zeros_like(values[:, :1]), np.cumsum(values, 1)], 1)
    periods = values.shape[1]
    t = np.arange(periods)
    out = np.empty_like(values)
    for i, lead in enumerate(leads):
        stop = np.minimum(t + lead + 1, periods)
        out[:, :, i] = cum[:, stop, i] - cum[:, t, i]
    return out


def just_in_time_cost(setting: Setting, scenarios: Scenarios, *, warmup: int) -> np.ndarray:
    """``[N]`` cost per period and store of the clairvoyant policy: a lower bound, as it sees future demand."""
    store, echelon = (torch.as_tensor(x) for x in just_in_time_levels(setting, scenarios))
    caps = torch.full((setting.n_stores,), math.inf, dtype=torch.float64)
    return policy_costs(
        setting, lambda state, t: level_orders(state, store[:, t], caps, echelon[:, t]), scenarios, warmup=warmup
    )
