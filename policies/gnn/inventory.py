"""Store-order policies for inventory networks: a vanilla MLP and a GNN over the supply graph.

Both map the inventory vectors of a batch of networks to non-negative orders, deterministically:

    forward(store_inventory [B, n, Ls], upstream_inventory [B, m, Lu]) -> orders [B, n + m]

(stores first, then the warehouse and the echelons above it, as the simulator and the env take them). Inputs are
divided by each node's mean demand (its natural unit) and outputs are ``softplus(.) x`` that unit, initialised to
order about one period's mean demand. Store orders that exceed the warehouse's on-hand stock are scaled down
proportionally, so every output is a feasible allocation (the simulator applies the same rule, so this is
idempotent there).

- ``InventoryMLP``: the flattened vectors through an MLP (the paper's vanilla network).
- ``InventoryGNN``: node features (inventory vector, static costs and lead time) -> encoder -> ``layers`` rounds of
  torch-geometric message passing over the supply graph (both directions, edge sign = direction), with a global
  mean-pooled context -> one *shared* store head and one shared upstream head. The same weights serve any number of
  stores, and many graphs are batched by offsetting the edge index.

``InventoryActor`` wraps either as a rollout ``Policy`` (env observations in, rounded orders out) for
``agentgym eval``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch_geometric.nn import MessagePassing

from agentgym.errors import AgentGymError
from agentgym.types import ActionBatch

_INV_SOFTPLUS_ONE = math.log(math.e - 1.0)  # softplus(x) = 1 at this x: initial orders = one mean demand


@dataclass(frozen=True)
class NetworkSpec:
    """What a policy needs to know about a network, fixed for its lifetime.

    Attributes:
        n_stores: number of stores.
        n_upstream: number of upstream stages (warehouse first).
        store_slots: length of a store's inventory vector.
        upstream_slots: length of an upstream stage's vector.
        static: ``[n + m, F]`` static node features (costs, lead time, demand statistics, type flags).
        scale: ``[n + m]`` mean demand through each node (inputs are divided by it, outputs multiplied).
        edge_index: ``[2, E]`` supply edges in both directions.
        edge_attr: ``[E, 1]`` +1 along the flow of goods, -1 against it.
    """

    n_stores: int
    n_upstream: int
    store_slots: int
    upstream_slots: int
    static: np.ndarray
    scale: np.ndarray
    edge_index: np.ndarray
    edge_attr: np.ndarray

    @classmethod
    def from_simulator(cls, sim: Any) -> NetworkSpec:
        """The spec of an ``environments.supplychain.simulator.InventorySimulator``."""
        edge_index, edge_attr = sim.edges()
        return cls(
            n_stores=sim.n,
            n_upstream=sim.m,
            store_slots=sim.setting.store_slots,
            upstream_slots=sim.setting.upstream_slots,
            static=sim.static_features(),
            scale=sim.node_scale(),
            edge_index=edge_index,
            edge_attr=edge_attr,
        )

    @property
    def n_nodes(self) -> int:
        """Stores plus upstream stages."""
        return self.n_stores + self.n_upstream


def proportional_allocation(requests: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
    """Scale ``requests`` ``[B, n]`` by one factor per row so that their sum never exceeds ``available`` ``[B]``."""
    total = requests.sum(1)
    short = total > available
    safe = torch.where(short, total, torch.ones_like(total))  # no 0/0 in the unused branch (NaN gradients)
    ratio = torch.where(short, available.clamp(min=0.0) / safe, torch.ones_like(total))
    return requests * ratio.unsqueeze(1)


class InventoryPolicy(nn.Module):
    """Shared input scaling, output head and feasibility of the inventory policies.

    Args:
        spec: the network the policy serves.
    """

    kind = "base"

    def __init__(self, spec: NetworkSpec) -> None:
        super().__init__()
        self.spec = spec
        scale = torch.as_tensor(spec.scale, dtype=torch.float32)
        self.register_buffer("store_scale", scale[: spec.n_stores].clone())
        self.register_buffer("upstream_scale", scale[spec.n_stores :].clone())
        static = torch.as_tensor(spec.static, dtype=torch.float32)
        norm = static.abs().amax(0).clamp(min=1e-6)
        self.register_buffer("static", static / norm)

    def forward(self, store_inventory: torch.Tensor, upstream_inventory: torch.Tensor) -> torch.Tensor:
        """Orders ``[B, n + m]`` for inventory vectors ``[B, n, Ls]`` and ``[B, m, Lu]``."""
        self._check(store_inventory, upstream_inventory)
        store_x = store_inventory / self.store_scale[:, None]
        up_x = upstream_inventory / self.upstream_scale[:, None]
        raw = self.raw_orders(store_x, up_x)
        scale = torch.cat([self.store_scale, self.upstream_scale])
        orders = nn.functional.softplus(raw + _INV_SOFTPLUS_ONE) * scale
        if self.spec.n_upstream == 0:
            return orders
        stores = proportional_allocation(orders[:, : self.spec.n_stores], upstream_inventory[:, 0, 0])
        return torch.cat([stores, orders[:, self.spec.n_stores :]], 1)

    def raw_orders(self, store_x: torch.Tensor, up_x: torch.Tensor) -> torch.Tensor:
        """Pre-activation orders ``[B, n + m]`` from scaled inventories (subclasses implement)."""
        raise NotImplementedError

    def _check(self, store: torch.Tensor, upstream: torch.Tensor) -> None:
        s = self.spec
        if tuple(store.shape[1:]) != (s.n_stores, s.store_slots) or tuple(upstream.shape[1:]) != (
            s.n_upstream,
            s.upstream_slots,
        ):
            raise AgentGymError(
                f"Inventory shapes {tuple(store.shape[1:])} / {tuple(upstream.shape[1:])} do not match the network "
                f"this policy was built for ({s.n_stores} stores x {s.store_slots} slots, {s.n_upstream} upstream "
                f"x {s.upstream_slots}); use the env settings the policy was trained on."
            )

    def sim_policy(self) -> Any:
        """This policy as a simulator ``rollout`` policy: ``(state, period) -> orders``."""
        return lambda state, t: self(state.store, state.upstream)

    def settings(self) -> dict[str, Any]:
        """Constructor arguments besides the spec (saved with checkpoints)."""
        return {}


class InventoryMLP(InventoryPolicy):
    """The vanilla network: flattened scaled inventory vectors -> ``layers`` x ``hidden`` (ELU) -> ``n + m`` orders.

    Args:
        spec: the network.
        hidden: width of the hidden layers.
        layers: number of hidden layers.
    """

    kind = "mlp"

    def __init__(self, spec: NetworkSpec, *, hidden: int = 64, layers: int = 2) -> None:
        super().__init__(spec)
        if hidden < 1 or layers < 1:
            raise ValueError(f"hidden={hidden}, layers={layers}: both must be >= 1.")
        self.hidden, self.layers = hidden, layers
        width = spec.n_stores * spec.store_slots + spec.n_upstream * spec.upstream_slots
        blocks: list[nn.Module] = []
        for i in range(layers):
            blocks += [nn.Linear(width if i == 0 else hidden, hidden), nn.ELU()]
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(hidden, spec.n_nodes)
        nn.init.zeros_(self.head.bias)
        self.head.weight.data.mul_(0.1)  # start near "order one mean demand", whatever the state

    def raw_orders(self, store_x: torch.Tensor, up_x: torch.Tensor) -> torch.Tensor:
        """The MLP over the concatenated vectors."""
        x = torch.cat([store_x.flatten(1), up_x.flatten(1)], 1)
        return self.head(self.body(x))

    def settings(self) -> dict[str, Any]:
        """Width and depth."""
        return {"hidden": self.hidden, "layers": self.layers}


class SupplyConv(MessagePassing):
    """One round of message passing: ``m_ij = ELU(A h_i + B h_j + c e_ij)``, mean-aggregated, residual update.

    ``A h`` and ``B h`` are computed once per node and gathered per edge, which is the same as a linear layer on
    ``[h_i, h_j, e_ij]`` but costs node-sized rather than edge-sized matrix products.

    Args:
        dim: node embedding width.
    """

    def __init__(self, dim: int) -> None:
        super().__init__(aggr="mean")
        self.target = nn.Linear(dim, dim)
        self.source = nn.Linear(dim, dim, bias=False)
        self.edge = nn.Linear(1, dim, bias=False)
        self.update_net = nn.Sequential(nn.Linear(2 * dim, dim), nn.ELU())

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor) -> torch.Tensor:
        """New node embeddings ``[N, dim]``."""
        n = x.shape[0]
        aggregated = self.propagate(
            edge_index, a=self.target(x), b=self.source(x), edge_attr=self.edge(edge_attr), size=(n, n)
        )
        return x + self.update_net(torch.cat([x, aggregated], 1))

    def message(self, a_i: torch.Tensor, b_j: torch.Tensor, edge_attr: torch.Tensor) -> torch.Tensor:
        """The message from node j to node i along one edge."""
        return nn.functional.elu(a_i + b_j + edge_attr)


class InventoryGNN(InventoryPolicy):
    """Message passing over the supply graph with shared per-store and per-stage heads (module docstring).

    Args:
        spec: the network.
        hidden: node embedding width.
        layers: message-passing rounds.
    """

    kind = "gnn"

    def __init__(self, spec: NetworkSpec, *, hidden: int = 64, layers: int = 2) -> None:
        super().__init__(spec)
        if hidden < 1 or layers < 0:
            raise ValueError(f"hidden={hidden} must be >= 1 and layers={layers} >= 0.")
        self.hidden, self.layers = hidden, layers
        self.slots = max(spec.store_slots, spec.upstream_slots)
        self.encoder = nn.Sequential(nn.Linear(self.slots + spec.static.shape[1], hidden), nn.ELU())
        self.convs = nn.ModuleList(SupplyConv(hidden) for _ in range(layers))
        self.store_head = _head(2 * hidden, hidden)
        self.upstream_head = _head(2 * hidden, hidden)
        self.register_buffer("edge_index", torch.as_tensor(spec.edge_index, dtype=torch.long))
        self.register_buffer("edge_attr", torch.as_tensor(spec.edge_attr, dtype=torch.float32))
        self._batched: tuple[int, torch.Tensor, torch.Tensor] | None = None

    def _batch_edges(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The edge index of ``batch`` copies of the graph (node ids offset per copy), cached per batch size."""
        if self._batched is None or self._batched[0] != batch or self._batched[1].device != self.edge_index.device:
            offsets = torch.arange(batch, device=self.edge_index.device) * self.spec.n_nodes
            index = (self.edge_index[:, None, :] + offsets[None, :, None]).reshape(2, -1)
            attr = self.edge_attr.repeat(batch, 1)
            self._batched = (batch, index, attr)
        return self._batched[1], self._batched[2]

    def raw_orders(self, store_x: torch.Tensor, up_x: torch.Tensor) -> torch.Tensor:
        """Encode nodes, pass messages, apply the shared heads with a global context."""
        batch, n, nodes = store_x.shape[0], self.spec.n_stores, self.spec.n_nodes
        inv = torch.cat(
            [
                nn.functional.pad(store_x, (0, self.slots - store_x.shape[2])),
                nn.functional.pad(up_x, (0, self.slots - up_x.shape[2])),
            ],
            1,
        )
        x = torch.cat([inv, self.static.expand(batch, -1, -1)], 2)
        h = self.encoder(x).reshape(batch * nodes, self.hidden)
        edge_index, edge_attr = self._batch_edges(batch)
        for conv in self.convs:
            h = conv(h, edge_index, edge_attr)
        h = h.reshape(batch, nodes, self.hidden)
        context = h.mean(1, keepdim=True).expand(-1, nodes, -1)
        z = torch.cat([h, context], 2)
        stores = self.store_head(z[:, :n]).squeeze(-1)
        upstream = self.upstream_head(z[:, n:]).squeeze(-1)
        return torch.cat([stores, upstream], 1)

    def settings(self) -> dict[str, Any]:
        """Width and rounds."""
        return {"hidden": self.hidden, "layers": self.layers}


def _head(width: int, hidden: int) -> nn.Sequential:
    head = nn.Sequential(nn.Linear(width, hidden), nn.ELU(), nn.Linear(hidden, 1))
    nn.init.zeros_(head[-1].bias)
    head[-1].weight.data.mul_(0.1)
    return head


POLICIES: dict[str, type[InventoryPolicy]] = {"mlp": InventoryMLP, "gnn": InventoryGNN}


def build_inventory_policy(kind: str, spec: NetworkSpec, **settings: Any) -> InventoryPolicy:
    """``"mlp"`` or ``"gnn"`` for ``spec`` (``settings``: hidden, layers)."""
    if kind not in POLICIES:
        raise AgentGymError(f"Inventory policy {kind!r} is unknown; choose one of {', '.join(POLICIES)}.")
    return POLICIES[kind](spec, **settings)


class InventoryActor:
    """An inventory policy as a rollout ``Policy``: env observations in, ``[n + m, 1]`` orders out.

    Args:
        policy: the trained network.
        round_orders: round orders to integers (the paper's evaluation protocol).
    """

    def __init__(self, policy: InventoryPolicy, *, round_orders: bool = True) -> None:
        self.policy, self.round_orders = policy, round_orders

    def act(
        self, observations: Sequence[Any], *, envs: Sequence[Any], rng: np.random.Generator, memories: Any = None
    ) -> ActionBatch:
        """Orders for every observation, in one batched forward pass."""
        del envs, rng, memories  # deterministic, and it sees only its observations
        store, upstream = self.tensors(observations)
        self.policy.eval()
        with torch.no_grad():
            orders = self.policy(store, upstream)
            if self.round_orders:
                orders = torch.round(orders)
        return ActionBatch([row[:, None] for row in orders.cpu().numpy().astype(np.float32)])

    def tensors(self, observations: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Stack the struct views of env observations into ``[B, n, Ls]`` and ``[B, m, Lu]`` tensors."""
        spec = self.policy.spec
        structs = []
        for obs in observations:
            if isinstance(obs, dict) and "struct" in obs:
                obs = obs["struct"]
            if not isinstance(obs, dict) or "store_inventory" not in obs:
                raise AgentGymError(
                    "An inventory policy reads the supply-chain env's struct view; make the env with obs_mode='dict' "
                    "or 'struct'."
                )
            structs.append(obs)
        static = structs[0].get("static") if structs else None
        if static is not None and not np.allclose(static, spec.static, rtol=1e-4, atol=1e-4):
            raise AgentGymError(
                "The env's network (costs, lead times, demand; the 'static' observation) differs from the one this "
                "policy was trained on; evaluate with the run's env settings (--env-kwargs from its config.yaml)."
            )
        empty = np.zeros((spec.n_upstream, spec.upstream_slots), dtype=np.float32)
        store = np.stack([o["store_inventory"] for o in structs]).astype(np.float32)
        upstream = np.stack([o.get("upstream_inventory", empty) for o in structs]).astype(np.float32)
        return torch.from_numpy(store), torch.from_numpy(upstream)
