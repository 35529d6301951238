"""A differentiable inventory-network simulator in torch, batched over many demand traces.

State: per store an inventory vector ``[on hand, arriving in 1 period, ..., arriving in L-1 periods]`` (``[B, n,
L_max]``), and the same for each upstream stage (``[B, m, L_max_up]``; stage 0 is the warehouse, stage ``k`` ships
to stage ``k - 1``, the last stage orders from an unlimited supplier). One period (``step``):

1. Feasibility. Orders are clipped at 0. The warehouse ships the stores' requests when it has them on hand; when
   they exceed its on-hand inventory, every request is scaled by the same factor (proportional rationing) so that
   exactly the on-hand inventory ships. An upstream stage ships ``min(request, on hand)`` to the stage below; the
   top stage's order is always filled.
2. Stores: ``post = on_hand - demand``; cost ``h * max(post, 0) + p * max(-post, 0)``; with lost sales ``post`` is
   clipped at 0, with backlog the negative value carries over.
3. Upstream stages: ``post = on_hand - shipped``; cost ``h_k * post``.
4. Every vector shifts one slot towards on-hand (slot 1 joins ``post`` on hand) and the quantity shipped to a
   node enters slot ``L - 1``, so an order placed in period t is on hand at the start of period t + L.

Every operation is differentiable almost everywhere in the orders, so ``loss.backward()`` through a whole rollout
gives HDPO's pathwise gradient. The env steps the same code with batch 1 in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from environments.supplychain.demand import Scenarios
from environments.supplychain.settings import Setting

#: Node features of ``static_features``, in column order.
STATIC_FEATURES = ("is_store", "is_upstream", "holding_cost", "underage_cost", "lead_time", "demand_mean", "demand_std")


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run a block with ``count`` torch intra-op threads (None: leave the setting alone), then restore it.

    The simulator's tensors are small (thousands of elements per op): on a shared 2-core CPU one thread avoids the
    thread-pool contention that can make a search several times slower than it is on an idle machine.
    """
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if count is not None:
            torch.set_num_threads(previous)


class SimState(NamedTuple):
    """Inventory vectors of a batch: ``store`` ``[B, n, Ls]`` and ``upstream`` ``[B, m, Lu]`` (slot 0 on hand)."""

    store: torch.Tensor
    upstream: torch.Tensor


class StepResult(NamedTuple):
    """One simulated period.

    Attributes:
        state: the state at the start of the next period.
        cost: ``[B]`` total cost of the period over all locations.
        store_cost: ``[B, n]`` holding + underage cost per store.
        upstream_cost: ``[B, m]`` holding cost per upstream stage.
        unmet: ``[B, n]`` demand not met from on-hand stock this period (lost, or added to the backlog).
        shipped: ``[B, n + m]`` quantities actually shipped to each node after the feasibility rules.
    """

    state: SimState
    cost: torch.Tensor
    store_cost: torch.Tensor
    upstream_cost: torch.Tensor
    unmet: torch.Tensor
    shipped: torch.Tensor


#: A policy for ``rollout``: ``policy(state, period) -> orders [B, n + m]``.
SimPolicy = Callable[[SimState, int], torch.Tensor]


@dataclass
class RolloutCost:
    """Costs of a rollout, per trace.

    Attributes:
        total: ``[B]`` summed cost of every period (what HDPO differentiates).
        reported: ``[B]`` average cost per period and per store over the periods after the warm-up.
    """

    total: torch.Tensor
    reported: torch.Tensor


class InventorySimulator:
    """The dynamics of one ``Setting`` (see the module docstring); stateless: ``step`` maps a state to the next.

    Args:
        setting: the network, lead times and costs.
        dtype: floating type of every tensor (float32 for training, float64 for the env).
        device: torch device.
    """

    def __init__(self, setting: Setting, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        s = setting
        self.setting = s
        self.n, self.m = s.n_stores, s.n_upstream
        self.dtype, self.device = dtype, torch.device(device)
        self.lost_sales = s.lost_sales

        def tensor(values: object) -> torch.Tensor:
            return torch.as_tensor(np.asarray(values, dtype=np.float64), dtype=dtype, device=self.device)

        self.holding = tensor(s.holding_costs)
        self.underage = tensor(s.underage_costs)
        self.upstream_holding = tensor(s.upstream_holding_costs).reshape(self.m)
        self.store_lead = torch.as_tensor(s.lead_times, device=self.device)
        self.upstream_lead = torch.as_tensor(s.upstream_lead_times, dtype=torch.long, device=self.device)
        # One-hot of the arrival slot L - 1 of every node: shipments enter their node's vector there.
        self.store_arrival = torch.nn.functional.one_hot(self.store_lead - 1, s.store_slots).to(dtype)
        self.upstream_arrival = torch.nn.functional.one_hot(self.upstream_lead - 1, s.upstream_slots).to(dtype)
        self.upstream_arrival = self.upstream_arrival.reshape(self.m, s.upstream_slots)

    # ------------------------------------------------------------------ state
    def initial_state(self, scenarios: Scenarios) -> SimState:
        """The starting state of a batch of scenarios, as tensors of this simulator's dtype."""
        return SimState(self._tensor(scenarios.store_inventory), self._tensor(scenarios.upstream_inventory))

    def demand(self, scenarios: Scenarios) -> torch.Tensor:
        """The ``[B, T, n]`` demand of a batch of scenarios as a tensor."""
        return self._tensor(scenarios.demand)

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(array, dtype=self.dtype, device=self.device)

    @staticmethod
    def inventory_position(state: SimState) -> tuple[torch.Tensor, torch.Tensor]:
        """Local inventory positions (on hand plus pipeline): ``[B, n]`` stores, ``[B, m]`` upstream stages."""
        return state.store.sum(-1), state.upstream.sum(-1)

    # ------------------------------------------------------------------ dynamics
    def feasible_shipments(self, state: SimState, orders: torch.Tensor) -> torch.Tensor:
        """``[B, n + m]`` quantities shipped for ``orders`` (clipped at 0, rationed by upstream on-hand stock)."""
        orders = orders.clamp(min=0.0)
        n, m = self.n, self.m
        if m == 0:
            return orders
        store_req, up_req = orders[:, :n], orders[:, n:]
        on_hand = state.upstream[:, :, 0]
        warehouse = on_hand[:, 0]
        total = store_req.sum(1)
        short = total > warehouse
        # where() with a safe denominator: a 0/0 in the unused branch would still poison the gradient.
        ratio = torch.where(
            short, warehouse / torch.where(short, total, torch.ones_like(total)), torch.ones_like(total)
        )
        store_ship = store_req * ratio.unsqueeze(1)
        if m > 1:
            up_ship = torch.cat([torch.minimum(up_req[:, :-1], on_hand[:, 1:]), up_req[:, -1:]], 1)
        else:
            up_ship = up_req
        return torch.cat([store_ship, up_ship], 1)

    def step(self, state: SimState, orders: torch.Tensor, demand: torch.Tensor) -> StepResult:
        """Simulate one period: ``orders`` ``[B, n + m]`` (stores, then upstream stages), ``demand`` ``[B, n]``."""
        n, m = self.n, self.m
        shipped = self.feasible_shipments(state, orders)
        store_ship = shipped[:, :n]
        post = state.store[:, :, 0] - demand
        unmet = torch.relu(-post)
        store_cost = self.holding * torch.relu(post) + self.underage * unmet
        if self.lost_sales:
            post = torch.relu(post)
        store = self._advance(state.store, post, store_ship, self.store_arrival)
        cost = store_cost.sum(1)
        if m:
            up_ship = shipped[:, n:]
            out = torch.cat([store_ship.sum(1, keepdim=True), up_ship[:, :-1]], 1)
            up_post = (state.upstream[:, :, 0] - out).clamp(min=0.0)  # >= 0 by feasibility; clamp rounding error
            upstream_cost = self.upstream_holding * up_post
            upstream = self._advance(state.upstream, up_post, up_ship, self.upstream_arrival)
            cost = cost + upstream_cost.sum(1)
        else:
            upstream_cost = state.upstream[:, :, 0]  # [B, 0]
            upstream = state.upstream
        return StepResult(SimState(store, upstream), cost, store_cost, upstream_cost, unmet, shipped)

    @staticmethod
    def _advance(inv: torch.Tensor, post: torch.Tensor, ship: torch.Tensor, arrival: torch.Tensor) -> torch.Tensor:
        """Shift the pipeline one slot towards on-hand, set on-hand to ``post`` + arrivals, add ``ship`` at L-1."""
        if inv.shape[-1] == 1:
            base = post.unsqueeze(-1)
        else:
            base = torch.cat([(post + inv[..., 1]).unsqueeze(-1), inv[..., 2:], torch.zeros_like(inv[..., :1])], -1)
        return base + ship.unsqueeze(-1) * arrival

    def rollout(
        self,
        policy: SimPolicy,
        state: SimState,
        demand: torch.Tensor,
        *,
        warmup: int = 0,
        round_orders: bool = False,
    ) -> RolloutCost:
        """Run ``policy`` over every period of ``demand`` ``[B, T, n]`` from ``state``.

        Args:
            policy: ``policy(state, period) -> orders``.
            state: the starting state.
            demand: the demand of every period.
            warmup: periods excluded from ``reported`` (they still count in ``total``).
            round_orders: round orders to integers before they are applied (evaluation, as in the paper).
        """
        periods = demand.shape[1]
        if not 0 <= warmup < periods:
            raise ValueError(f"warmup={warmup} must be in [0, periods={periods}).")
        total = torch.zeros(demand.shape[0], dtype=self.dtype, device=self.device)
        reported = torch.zeros_like(total)
        for t in range(periods):
            orders = policy(state, t)
            if round_orders:
                orders = torch.round(orders)
            result = self.step(state, orders, demand[:, t])
            state = result.state
            total = total + result.cost
            if t >= warmup:
                reported = reported + result.cost
        return RolloutCost(total, reported / ((periods - warmup) * self.n))

    # ------------------------------------------------------------------ static structure (policies, graph view)
    def node_scale(self) -> np.ndarray:
        """``[n + m]`` mean demand flowing through each node (stores, then upstream stages): a natural unit."""
        mean = np.asarray(self.setting.demand_mean, dtype=np.float64)
        return np.concatenate([mean, np.full(self.m, mean.sum())])

    def static_features(self) -> np.ndarray:
        """``[n + m, 7]`` node features (``STATIC_FEATURES``): type, costs, lead time, demand through the node."""
        s = self.setting
        mean = np.asarray(s.demand_mean, dtype=np.float64)
        std = np.asarray(s.demand_std, dtype=np.float64)
        stores = np.stack(
            [np.ones(self.n), np.zeros(self.n), s.holding_costs, s.underage_costs, s.lead_times, mean, std], 1
        )
        pooled_std = float(np.sqrt(np.sum(std**2)))  # independence approximation; a static descriptor only
        upstream = np.array(
            [
                [0.0, 1.0, h, 0.0, lt, mean.sum(), pooled_std]
                for lt, h in zip(s.upstream_lead_times, s.upstream_holding_costs)
            ]
        ).reshape(self.m, len(STATIC_FEATURES))
        return np.concatenate([stores, upstream]).astype(np.float64)

    def edges(self) -> tuple[np.ndarray, np.ndarray]:
        """The supply graph: ``edge_index`` ``[2, E]`` (both directions) and ``edge_attr`` ``[E, 1]``.

        Nodes are the stores (``0..n-1``), then the upstream stages (``n`` is the warehouse). ``edge_attr`` is +1
        on an edge along the flow of goods (supplier to customer) and -1 on its reverse.
        """
        pairs = [(self.n, i) for i in range(self.n)] if self.m else []
        pairs += [(self.n + k + 1, self.n + k) for k in range(self.m - 1)]
        if not pairs:
            return np.zeros((2, 0), dtype=np.int64), np.zeros((0, 1), dtype=np.float32)
        down = np.array(pairs, dtype=np.int64).T
        edge_index = np.concatenate([down, down[::-1]], 1)
        edge_attr = np.concatenate([np.ones(len(pairs)), -np.ones(len(pairs))]).astype(np.float32)[:, None]
        return edge_index, edge_attr
