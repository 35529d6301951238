"""Inventory networks (HDPO's settings) as an agentgym environment, stepping the differentiable simulator."""

from __future__ import annotations

import re
import struct
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from gymnasium import spaces

from agentgym.env import AgentEnv
from agentgym.errors import MissingExtraError, StateError
from agentgym.tasks import TaskSet
from environments.supplychain import render
from environments.supplychain.demand import DemandModel, Scenarios, task_set_for
from environments.supplychain.oracle import OracleSolution, level_orders, solve
from environments.supplychain.settings import Setting, make_setting
from environments.supplychain.simulator import STATIC_FEATURES, InventorySimulator, SimState

_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
_KEYED_RE = re.compile(r"\border(?:s)?\s*[:=]\s*(.*)", re.IGNORECASE | re.DOTALL)
_NUMBER_RE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan", re.IGNORECASE)
#: Bound of the observation boxes: effectively unbounded, but finite (gymnasium's checker rejects infinite bounds).
OBS_BOUND = 1e9


@dataclass(frozen=True)
class SupplyChainState:
    """A snapshot of an episode (see ``SupplyChainEnv.get_state``).

    Attributes:
        fingerprint: the setting's fingerprint, checked on restore.
        task: the scenario seed.
        period: periods simulated so far.
        store: ``[n, Ls]`` store inventory vectors (float64).
        upstream: ``[m, Lu]`` upstream inventory vectors.
        scenario: the episode's initial vectors and demand trace (``Scenarios`` with one row).
        total_cost: summed cost of every period so far.
        counted_cost: summed cost of the periods after the warm-up.
        last: the last period's demand, shipments, cost and running average (for the text view), or None.
        success: whether the finished episode met the success margin.
        rng: ``np_random.bit_generator.state``.
    """

    fingerprint: str
    task: Hashable
    period: int
    store: np.ndarray
    upstream: np.ndarray
    scenario: Scenarios
    total_cost: float
    counted_cost: float
    last: dict[str, Any] | None
    success: bool
    rng: dict[str, Any]


class SupplyChainEnv(AgentEnv[SupplyChainState]):
    """Order stock for a network of stores (and upstream stages) facing random demand, over a fixed horizon.

    ## Description
    One of the HDPO paper's inventory networks (``environments.supplychain.settings``): a single store with
    backlog or lost sales, a serial chain store <- warehouse <- echelons, or one warehouse feeding ``n_stores``
    stores. Every period the agent orders for every node; the simulator (``simulator.py``, the same code HDPO
    differentiates) makes the orders feasible, serves demand and charges holding and underage costs. An order
    placed in period t is on hand at the start of period t + L.

    ## Action Space
    ``Box(0, max_order, (n_stores + n_upstream, 1), float32)``: ``action[i, 0]`` is the quantity node ``i`` orders
    (the stores, then the warehouse and the echelons above it; the column is the product, and these networks carry
    one). A flat vector of ``n_stores + n_upstream`` quantities is accepted too. (The column shape keeps
    gymnasium's checker, which asks every 1-D Box action space to be normalised to [0, 1], from rejecting plain
    quantities.) Out-of-range input is repaired, never silently: NaN entries order 0, negative
    entries are clipped to 0 and entries above ``max_order`` to ``max_order``; the repaired orders are applied and
    the step reports ``info["action_valid"] = False``, ``info["action_error"]`` and ``info["action_repairs"]``
    (counts per kind). A vector of the wrong length (or text that does not parse) orders nothing. Text: the
    quantities separated by commas or spaces, optionally inside ``<answer>...</answer>`` or after ``orders:``.

    ## Observation Space
    ``struct``: a ``Dict`` with ``store_inventory`` ``[n, Ls]`` (slot 0 on hand, negative when backlogged, then
    arrivals in 1..L-1 periods), ``upstream_inventory`` ``[m, Lu]`` (only with upstream stages), ``static``
    ``[n + m, 7]`` node features (``STATIC_FEATURES``: type flags, costs, lead time, mean and std of demand) and
    ``period``. ``text``: each node's vector and the last period's outcome. The ``graph`` view
    (``graph_observation()``, ``graph_data()``) has one node per store and stage with inventory and static features
    and the supply edges in both directions.

    ## Rewards
    Minus the period's cost: store holding + underage costs plus upstream holding costs (``info["cost"]``).

    ## Starting State
    The task is a scenario seed: it fixes the initial inventory vectors (``U[0, 1] x`` mean demand per pipeline
    slot) and the whole demand trace, identical to the HDPO trainer's trace of the same seed.

    ## Episode End
    Truncated after ``periods`` periods (a time limit: the system itself goes on). ``info["success"]`` is then
    True when the average cost per period and store after ``warmup_periods`` is within ``success_margin`` of the
    oracle's on the same demand trace (``info["oracle_avg_cost"]``, ``info["cost_ratio"]``).

    ## Arguments
    - ``preset``: one_store_backlogged (default), one_store_lost, serial, one_warehouse_lost.
    - Setting overrides (None keeps the preset's): ``n_stores``, ``lost_sales``, ``lead_time``, ``holding_cost``,
      ``underage_cost``, ``warehouse_lead_time``, ``warehouse_holding_cost``, ``echelon_lead_times``,
      ``echelon_holding_costs``, ``demand`` (normal/poisson/csv), ``demand_mean``, ``demand_std``, ``demand_cv``,
      ``correlation``, ``clip_demand``, ``demand_csv``, ``demand_columns``, ``initial_inventory``,
      ``instance_seed`` (see ``settings.make_setting``).
    - ``periods``: horizon (default 100); ``warmup_periods``: periods excluded from the success test (default 30).
    - ``success_margin``: allowed relative excess over the oracle's cost (default 0.05).
    - ``max_order``: upper bound of every order (default: 10 x the node's mean demand x (its cumulative lead time
      + 1)).
    - ``obs_mode``, ``invalid_action_penalty``, ``render_mode``: see ``AgentEnv``.

    ## Version History
    - v0: initial version.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi", "human"], "render_fps": 4}
    tags: ClassVar[tuple[str, ...]] = ("inventory", "continuous-control", "differentiable", "single-agent")
    views: ClassVar[tuple[str, ...]] = ("struct", "text", "graph")

    def __init__(
        self,
        preset: str = "one_store_backlogged",
        *,
        periods: int = 100,
        warmup_periods: int = 30,
        success_margin: float = 0.05,
        max_order: float | None = None,
        obs_mode: str = "dict",
        invalid_action_penalty: float = 0.0,
        render_mode: str | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__(obs_mode=obs_mode, invalid_action_penalty=invalid_action_penalty, render_mode=render_mode)
        if periods < 1 or not 0 <= warmup_periods < periods:
            raise ValueError(
                f"periods={periods}, warmup_periods={warmup_periods}: need periods >= 1 and 0 <= warmup < periods."
            )
        if not np.isfinite(success_margin) or success_margin < 0:
            raise ValueError(f"success_margin={success_margin!r} must be a finite fraction >= 0, e.g. 0.05.")
        self.setting: Setting = make_setting(preset, **overrides)
        self.periods, self.warmup_periods, self.success_margin = int(periods), int(warmup_periods), success_margin
        s = self.setting
        self.simulator = InventorySimulator(s, dtype=torch.float64)
        self.demand_model = DemandModel(s)
        self._tasks = task_set_for(s)
        self._static = self.simulator.static_features()
        self.max_order = self._order_bounds(max_order)
        self.text_max_length = render.text_max_length(s)
        self.action_space = spaces.Box(
            np.zeros((s.n_orders, 1), np.float32), self.max_order[:, None].copy(), dtype=np.float32
        )
        struct_spaces: dict[str, spaces.Space] = {
            "store_inventory": spaces.Box(-OBS_BOUND, OBS_BOUND, (s.n_stores, s.store_slots), np.float32),
            "static": spaces.Box(-OBS_BOUND, OBS_BOUND, (s.n_orders, len(STATIC_FEATURES)), np.float32),
            "period": spaces.Box(0, self.periods, (1,), np.float32),
        }
        if s.n_upstream:
            struct_spaces["upstream_inventory"] = spaces.Box(0, OBS_BOUND, (s.n_upstream, s.upstream_slots), np.float32)
        self._build_observation_space(spaces.Dict(struct_spaces))
        self._scenario: Scenarios | None = None
        self._state: SimState | None = None
        self._t = 0
        self._total = self._counted = 0.0
        self._last: dict[str, Any] | None = None
        self._success = False
        self._repairs: dict[str, int] | None = None
        self._reference: float | None = None

    def _order_bounds(self, max_order: float | None) -> np.ndarray:
        s = self.setting
        if max_order is not None:
            if not np.isfinite(max_order) or max_order <= 0:
                raise ValueError(f"max_order={max_order!r} must be a positive finite number (or None for the default).")
            return np.full(s.n_orders, max_order, dtype=np.float32)
        cover = list(s.lead_times) + list(np.cumsum(s.upstream_lead_times) + max(s.lead_times))
        return np.ceil(10.0 * self.simulator.node_scale() * (np.asarray(cover) + 1.0)).astype(np.float32)

    # ------------------------------------------------------------------ episode
    @property
    def task_set(self) -> TaskSet:
        """Scenario seeds, split by hash under a namespace of the setting's fingerprint."""
        return self._tasks

    def _reset_task(self, task: Hashable) -> dict[str, Any]:
        split = self._tasks.split_of(task)
        self._scenario = self.demand_model.scenarios([int(task)], self.periods, [split])  # type: ignore[arg-type]
        self._state = self.simulator.initial_state(self._scenario)
        self._t, self._total, self._counted = 0, 0.0, 0.0
        self._last, self._success, self._reference = None, False, None
        return {"setting": self.setting.name, "periods": self.periods}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        """Advance one period; ``action`` is an order vector or text (see the class docstring)."""
        self._repairs = None
        return super().step(action)

    def _step(self, action: np.ndarray | None) -> tuple[float, bool, bool, dict[str, Any]]:
        if self._state is None or self._scenario is None:
            raise StateError("step() before reset(); call reset() first.")
        if self._t >= self.periods:
            raise StateError(f"The episode ended after {self.periods} periods; call reset() to start another.")
        orders = np.zeros(self.setting.n_orders) if action is None else np.asarray(action, dtype=np.float64)
        with torch.no_grad():
            demand = torch.from_numpy(self._scenario.demand[:, self._t])
            result = self.simulator.step(self._state, torch.from_numpy(orders)[None], demand)
        self._state = result.state
        cost = float(result.cost[0])
        self._total += cost
        if self._t >= self.warmup_periods:
            self._counted += cost
        self._t += 1
        self._last = {
            "demand": self._scenario.demand[0, self._t - 1].copy(),
            "shipped": result.shipped[0].numpy().copy(),
            "cost": cost,
            "average": self._total / (self._t * self.setting.n_stores),
        }
        truncated = self._t >= self.periods
        info: dict[str, Any] = {
            "cost": cost,
            "store_cost": result.store_cost[0].numpy().copy(),
            "upstream_cost": result.upstream_cost[0].numpy().copy(),
            "unmet_demand": result.unmet[0].numpy().copy(),
            "shipped": self._last["shipped"],
            "period": self._t,
        }
        if self._repairs:
            info["action_repairs"] = dict(self._repairs)
        if truncated:
            info.update(self._episode_summary())
        info["success"] = self._success
        return -cost, False, truncated, info

    def _episode_summary(self) -> dict[str, Any]:
        counted = self.periods - self.warmup_periods
        average = self._counted / (counted * self.setting.n_stores)
        reference = self.oracle_episode_cost()
        self._success = bool(average <= reference * (1.0 + self.success_margin) + 1e-9)
        return {
            "episode_avg_cost": average,
            "oracle_avg_cost": reference,
            "cost_ratio": average / reference if reference > 0 else float("inf") if average > 0 else 1.0,
        }

    def oracle_episode_cost(self) -> float:
        """The oracle's average cost per period and store after the warm-up, on this episode's demand trace."""
        if self._scenario is None:
            raise StateError("oracle_episode_cost() before reset(); call reset() first.")
        if self._reference is None:
            levels, caps, echelon = self.oracle().policy.tensors(self.simulator)
            bound = torch.from_numpy(self.max_order.astype(np.float64))

            def policy(state: SimState, t: int) -> torch.Tensor:
                # The orders oracle_action() hands to step(): clipped at max_order, passed through float32.
                orders = torch.minimum(level_orders(state, levels, caps, echelon), bound)
                return orders.to(torch.float32).to(torch.float64)

            with torch.no_grad():
                cost = self.simulator.rollout(
                    policy,
                    self.simulator.initial_state(self._scenario),
                    self.simulator.demand(self._scenario),
                    warmup=self.warmup_periods,
                )
            self._reference = float(cost.reported[0])
        return self._reference

    # ------------------------------------------------------------------ actions
    def coerce_action(self, action: Any) -> tuple[Any | None, str | None]:
        """Map input to an order vector: parse text, repair NaN/negative/too-large entries (reported), or reject."""
        n = self.setting.n_orders
        if isinstance(action, str):
            parsed = self.parse_action(action)
            if parsed is None:
                shown = action if len(action) <= 60 else action[:57] + "..."
                return None, f"could not parse {n} order quantities from {shown!r}; {self.action_format()}"
            action = parsed
        try:
            orders = np.asarray(action, dtype=np.float64)
        except (TypeError, ValueError):
            return None, f"action {action!r} is not a vector of {n} numbers; {self.action_format()}"
        if orders.dtype == object or isinstance(action, (bool, np.bool_)):
            return None, f"action {action!r} is not a vector of {n} numbers; {self.action_format()}"
        if orders.shape in ((), (n, 1)) and orders.size == n:
            orders = orders.reshape(n)
        if orders.shape != (n,):
            return None, f"action has shape {orders.shape} but this network takes {n} order quantities; ordered nothing"
        nan = np.isnan(orders)
        negative = orders < 0
        high = orders > self.max_order
        repairs = {"nan": int(nan.sum()), "negative": int(negative.sum()), "above_max": int(high.sum())}
        if not any(repairs.values()):
            return orders, None
        orders = np.where(nan | negative, 0.0, np.minimum(orders, self.max_order))
        self._repairs = repairs
        parts = [f"{count} {kind.replace('_', ' ')}" for kind, count in repairs.items() if count]
        return orders, (
            f"repaired order entries ({', '.join(parts)}): NaN and negative orders became 0, orders above max_order "
            "were clipped; the repaired orders were applied"
        )

    def action_format(self) -> str:
        """One line telling how to write the orders as text."""
        names = ", ".join(render.node_names(self.setting))
        return f"answer with {self.setting.n_orders} non-negative numbers ({names}), e.g. <answer>5, 3</answer>"

    def parse_action(self, text: str) -> np.ndarray | None:
        """Read the order vector from text (pure); None unless it holds exactly one number per ordering node.

        Looks at the last ``<answer>`` block, else at what follows ``orders:``, else at the whole text.
        """
        answers = _ANSWER_RE.findall(text)
        if answers:
            text = answers[-1]
        else:
            keyed = _KEYED_RE.findall(text)
            if keyed:
                text = keyed[-1]
        numbers = _NUMBER_RE.findall(text)
        if len(numbers) != self.setting.n_orders:
            return None
        return np.array([float(x) for x in numbers], dtype=np.float64)

    # ------------------------------------------------------------------ views
    def _struct_obs(self) -> dict[str, np.ndarray]:
        state = self._require_state()
        obs = {
            "store_inventory": state.store[0].numpy().astype(np.float32),
            "static": self._static.astype(np.float32),
            "period": np.array([self._t], dtype=np.float32),
        }
        if self.setting.n_upstream:
            obs["upstream_inventory"] = state.upstream[0].numpy().astype(np.float32)
        return obs

    def _require_state(self) -> SimState:
        if self._state is None:
            raise StateError("The env has no state yet; call reset() first.")
        return self._state

    def text_observation(self) -> str:
        """Each node's inventory vector and the last period's outcome."""
        state = self._require_state()
        return render.render_state(
            self.setting, self._t, self.periods, state.store[0].numpy(), state.upstream[0].numpy(), self._last
        )

    def instructions(self) -> str:
        """The rules and the answer format."""
        return render.instructions(self.setting, self.periods, self.warmup_periods, self.success_margin)

    def graph_observation(self) -> dict[str, Any]:
        """The graph view: one node per store and upstream stage, supply edges in both directions.

        Returns ``x`` ``[N, slots + 7]`` (the inventory vector padded with zeros, then the static features),
        ``edge_index`` ``[2, E]``, ``edge_attr`` ``[E, 1]`` (see ``InventorySimulator.edges``) and ``num_stores``.
        """
        state = self._require_state()
        s = self.setting
        slots = max(s.store_slots, s.upstream_slots)
        inv = np.zeros((s.n_orders, slots), dtype=np.float32)
        inv[: s.n_stores, : s.store_slots] = state.store[0].numpy()
        inv[s.n_stores :, : s.upstream_slots] = state.upstream[0].numpy()
        edge_index, edge_attr = self.simulator.edges()
        return {
            "x": np.concatenate([inv, self._static.astype(np.float32)], 1),
            "edge_index": edge_index,
            "edge_attr": edge_attr,
            "num_stores": s.n_stores,
        }

    def graph_data(self) -> Any:
        """The graph view as a ``torch_geometric.data.Data`` (needs the ``graph`` extra)."""
        try:
            from torch_geometric.data import Data
        except ImportError as exc:
            raise MissingExtraError("SupplyChainEnv.graph_data()", "torch_geometric", "graph") from exc
        g = self.graph_observation()
        return Data(
            x=torch.from_numpy(g["x"]),
            edge_index=torch.from_numpy(g["edge_index"]),
            edge_attr=torch.from_numpy(g["edge_attr"]),
            num_stores=g["num_stores"],
        )

    # ------------------------------------------------------------------ state
    def get_state(self) -> SupplyChainState:
        """A picklable snapshot (inventories, trace, running costs, RNG); ``set_state`` continues exactly from it."""
        state = self._require_state()
        assert self._scenario is not None
        return SupplyChainState(
            fingerprint=self.setting.fingerprint(),
            task=self.task,
            period=self._t,
            store=state.store[0].numpy().copy(),
            upstream=state.upstream[0].numpy().copy(),
            scenario=self._scenario,
            total_cost=self._total,
            counted_cost=self._counted,
            last=None if self._last is None else dict(self._last),
            success=self._success,
            rng=self._rng_state(),
        )

    def set_state(self, state: SupplyChainState) -> None:
        """Restore a snapshot of an env with the same setting."""
        if not isinstance(state, SupplyChainState):
            raise StateError(f"set_state got a {type(state).__name__}; pass a SupplyChainState from get_state().")
        if state.fingerprint != self.setting.fingerprint() or state.scenario.demand.shape[1] != self.periods:
            raise StateError(
                "The state belongs to a different supply-chain setting or horizon; restore it into an env made with "
                "the same preset, overrides and periods."
            )
        self._scenario = state.scenario
        self._state = SimState(
            torch.from_numpy(state.store.copy())[None], torch.from_numpy(state.upstream.copy())[None]
        )
        self._t, self._total, self._counted = state.period, state.total_cost, state.counted_cost
        self._last = None if state.last is None else dict(state.last)
        self._success, self._reference = state.success, None
        self.task = state.task
        self._restore_rng(state.rng)

    def state_key(self) -> bytes:
        """Task, period and the inventory vectors (the future demand depends on the task and period only)."""
        state = self._require_state()
        head = struct.pack("<qq", int(self.task), self._t)  # type: ignore[arg-type]
        return head + state.store.numpy().tobytes() + state.upstream.numpy().tobytes()

    # ------------------------------------------------------------------ expert
    def oracle(self) -> OracleSolution:
        """The setting's reference policy (closed form or a cached search; see ``oracle.py``)."""
        return solve(self.setting)

    def oracle_action(self) -> np.ndarray | None:
        """The reference policy's orders (``[n_orders, 1]``) for the current state; None once the episode is over."""
        state = self._require_state()
        if self._t >= self.periods:
            return None
        levels, caps, echelon = self.oracle().policy.tensors(self.simulator)
        with torch.no_grad():
            orders = level_orders(state, levels, caps, echelon)[0].numpy()
        return np.minimum(orders, self.max_order).astype(np.float32)[:, None]
