"""A graph neural network policy for the vertiport env (CapTAIN-like: graph encoder, time-series encoder, attention).

``VertiportGNNPolicy`` maps a batch of the env's raw observations to a destination distribution per aircraft:

1. **Graph.** Each observation becomes the env's ``HeteroData`` view (``environments.vertiport.graph``): vertiport
   and aircraft nodes, route edges between vertiports, and at/heading-to edges between aircraft and vertiports
   (both directions). The observations of a forward are batched into one ``torch_geometric`` ``Batch``.
2. **Encoders.** MLPs embed vertiport and aircraft features; each route's demand/fare forecast window ``[W, 2]``
   goes through a small Transformer encoder layer (with learned time positions) and is mean-pooled over time,
   then mixed with the route's static features into a route embedding.
3. **Message passing.** ``layers`` rounds of ``HeteroConv``: ``GATv2Conv`` over routes (with the route embedding
   as edge features) and ``SAGEConv`` between aircraft and vertiports, with residual connections and LayerNorm.
4. **Attention decoder.** For aircraft ``a`` at vertiport ``o`` and destination ``u``, the logit is the sum over
   ``heads`` of ``q_h(a) . k_h(u) / sqrt(d)`` plus an aircraft-gated route term ``g_h(a) r_h(o -> u)`` (from the
   route embedding), plus a learned "stay" score on ``u = o``. The decoder is autoregressive over aircraft: the
   aircraft at a vertiport decide one after another (round ``r`` = the ``r``-th deciding aircraft of every
   vertiport, sampled together), and each one's logits also get a gated score of what earlier rounds left it
   (passengers still waiting on ``o -> u`` after the loads they took, pads left at ``u``), so two aircraft need
   not chase the same passengers, as the greedy dispatcher's sequential assignment avoids. Logits are
   soft-clipped to ``[-clip, clip]`` and the env's action mask is applied by ``PolicyOutput``.
5. **Value head.** Mean-pooled vertiport and aircraft embeddings and the time -> MLP -> a scalar state value.

Output (``PolicyOutput``): ``logits`` and ``mask`` ``[N, S, A]`` with ``S`` = aircraft and ``A`` = vertiports (the
largest in the batch; smaller graphs are padded with masked-out entries), ``active`` ``[N, S]`` = the aircraft that
decide at this step, ``value`` ``[N]``, and ``condition``: the logits given the earlier aircraft's choices (what
``sample``, ``log_prob`` and ``entropy`` use; ``logits`` are each aircraft's scores before any other has chosen).
"""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from agentgym.errors import AgentGymError
from environments.vertiport.graph import EDGE_TYPES, feature_sizes, struct_arrays
from policies.neural import NeuralPolicy, PolicyOutput

_ROUTE = ("vertiport", "route", "vertiport")
_WAITING = 7  # route feature: passengers waiting / seats (``observation.StructView``)
_PADS, _PADS_USED = 2, 3  # vertiport features: pads / 10, pads in use or reserved / pads
_CLAIM_FEATURES = ("waiting_capped", "waiting", "claimed", "left_capped", "left", "pads_left")


def _mlp(width_in: int, hidden: int, width_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width_in, hidden), nn.ReLU(), nn.Linear(hidden, width_out))


def _struct(observation: Any) -> Any:
    """The struct dict (or a ready ``HeteroData``) of a raw observation in any of the env's obs modes."""
    if isinstance(observation, dict):
        if "struct" in observation:
            return observation["struct"]
        if "vertiports" in observation:
            return observation
        raise AgentGymError(
            f"VertiportGNNPolicy reads the vertiport env's struct view; this observation has keys "
            f"{sorted(observation)}. Make the env with obs_mode='struct' or 'dict'."
        )
    if hasattr(observation, "node_types"):
        return observation
    raise AgentGymError(
        f"VertiportGNNPolicy got a {type(observation).__name__} observation; pass the env's struct dict, its "
        "dict-mode observation, or graph_observation()."
    )


class VertiportGNNPolicy(NeuralPolicy):
    """Per-aircraft destination choice over the vertiport graph (see the module docstring).

    Args:
        window: ticks of demand/fare forecast in the observations (the env's ``demand_window``).
        hidden: embedding width (divisible by ``heads``).
        layers: message-passing rounds.
        heads: attention heads (GATv2, the window encoder and the decoder).
        clip: logits are soft-clipped to ``[-clip, clip]`` (``clip * tanh(x / clip)``).
    """

    def __init__(self, window: int = 6, hidden: int = 64, layers: int = 2, heads: int = 4, clip: float = 10.0):
        super().__init__()
        from torch_geometric.nn import GATv2Conv, HeteroConv, SAGEConv

        if window < 1 or hidden < 1 or layers < 0 or heads < 1 or hidden % heads:
            raise AgentGymError(
                f"VertiportGNNPolicy(window={window}, hidden={hidden}, layers={layers}, heads={heads}) needs positive "
                "sizes with hidden divisible by heads (e.g. hidden=64, heads=4)."
            )
        if clip <= 0:
            raise AgentGymError(f"clip={clip} must be > 0.")
        sizes = feature_sizes(window)
        self.window, self.hidden, self.heads, self.clip = window, hidden, heads, float(clip)
        self.vertiport_in = _mlp(sizes["vertiport"], hidden, hidden)
        self.aircraft_in = _mlp(sizes["aircraft"], hidden, hidden)
        self.route_in = nn.Linear(sizes["route"], hidden)
        self.window_in = nn.Linear(2, hidden)
        self.window_pos = nn.Parameter(torch.randn(window, hidden) * 0.02)
        self.window_encoder = nn.TransformerEncoderLayer(
            hidden, heads, dim_feedforward=2 * hidden, dropout=0.0, batch_first=True
        )
        self.route_mix = nn.Linear(2 * hidden, hidden)

        def conv() -> HeteroConv:
            sage = {edge: SAGEConv((hidden, hidden), hidden) for edge in EDGE_TYPES if edge != _ROUTE}
            gat = GATv2Conv(hidden, hidden, heads=heads, concat=False, edge_dim=hidden, add_self_loops=False)
            return HeteroConv({_ROUTE: gat, **sage}, aggr="sum")

        self.convs = nn.ModuleList(conv() for _ in range(layers))
        self.norms = nn.ModuleList(
            nn.ModuleDict({"vertiport": nn.LayerNorm(hidden), "aircraft": nn.LayerNorm(hidden)}) for _ in range(layers)
        )
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.route_bias = nn.Linear(hidden, heads)
        self.gate = nn.Linear(hidden, heads)
        self.stay = nn.Linear(hidden, 1)
        self.claim_in = _mlp(len(_CLAIM_FEATURES), hidden, heads)
        self.claim_gate = nn.Linear(hidden, heads)
        self.value_head = _mlp(2 * hidden + 2, hidden, 1)

    @classmethod
    def make(cls, env: Any, **kwargs: Any) -> VertiportGNNPolicy:
        """A policy for ``env``'s forecast window (the network itself works for any number of nodes)."""
        inner = getattr(env, "unwrapped", env)
        window = getattr(inner, "demand_window", None)
        if window is None:
            raise AgentGymError(
                f"VertiportGNNPolicy needs a vertiport env (agentgym/Vertiport-v0); got {type(inner).__name__}."
            )
        kwargs.setdefault("window", int(window))
        return cls(**kwargs)

    @property
    def has_value(self) -> bool:
        """The policy has a value head."""
        return True

    def to_env_action(self, choices: np.ndarray) -> np.ndarray:
        """One observation's ``[S]`` choices as the env's ``MultiDiscrete`` action (always an int64 array)."""
        return np.asarray(choices, dtype=np.int64)

    # ------------------------------------------------------------------ batching
    def collate(self, observations: Sequence[Any]) -> _Graphs:
        """The observations' graphs batched into flat tensors (as ``torch_geometric``'s ``Batch`` would).

        Struct observations are concatenated directly from their arrays; ready ``HeteroData`` graphs go through
        ``Batch.from_data_list``. The tensors are on the policy's device.
        """
        if len(observations) == 0:
            raise AgentGymError("VertiportGNNPolicy.forward got no observations; pass a non-empty list.")
        structs = [_struct(o) for o in observations]
        if all(isinstance(s, dict) for s in structs):
            for s in structs:
                if s["demand"].shape[0] != self.window:
                    raise AgentGymError(
                        f"The observation has a {s['demand'].shape[0]}-tick demand window but the policy was built "
                        f"for {self.window}; build it with VertiportGNNPolicy.make(env) or window=... ."
                    )
            widths = max(s["vertiports"].shape[0] for s in structs)
            graphs = _Graphs.from_arrays([struct_arrays(s, num_actions=widths) for s in structs])
        else:
            from torch_geometric.data import Batch

            from environments.vertiport.graph import struct_to_heterodata

            widths = max(s["vertiports"].shape[0] if isinstance(s, dict) else s["vertiport"].num_nodes for s in structs)
            data = [struct_to_heterodata(s, num_actions=widths) if isinstance(s, dict) else s for s in structs]
            graphs = _Graphs.from_batch(Batch.from_data_list(data))
        return graphs.to(self.device)

    # ------------------------------------------------------------------ forward
    def encode_window(self, window: torch.Tensor) -> torch.Tensor:
        """``[E, W, 2]`` route forecast windows -> ``[E, W, hidden]``: the embedded windows through ``window_encoder``.

        The same function as calling the ``nn.TransformerEncoderLayer`` (post-norm, ReLU, no dropout), written
        out: with ``W`` = 6 tokens of 4 heads, torch's CPU kernels for the layer's bias/rescale step and its
        softmax over 6 entries cost several times the matrix products. The token embedding is folded into the
        query/key/value projection (a ``[2 -> 3 * hidden]`` product instead of ``[hidden -> 3 * hidden]``).
        """
        layer, e, w = self.window_encoder, window.shape[0], window.shape[1]
        hidden, heads = self.hidden, self.heads
        attn = layer.self_attn
        pos = self.window_in.bias + self.window_pos  # [W, hidden]: the embedding's constant part per time step
        x = (window @ self.window_in.weight.t() + pos).reshape(e * w, hidden)
        w_in = attn.in_proj_weight @ self.window_in.weight  # [3 * hidden, 2]
        b_in = pos @ attn.in_proj_weight.t() + attn.in_proj_bias  # [W, 3 * hidden]
        qkv = (window @ w_in.t() + b_in).view(e, w, 3, heads, hidden // heads).permute(2, 0, 3, 1, 4)
        scores = torch.matmul(qkv[0], qkv[1].transpose(-1, -2)) / math.sqrt(hidden // heads)  # [E, heads, W, W]
        scores = (scores - scores.amax(-1, keepdim=True)).exp()
        mixed = torch.matmul(scores / scores.sum(-1, keepdim=True), qkv[2]).transpose(1, 2).reshape(e * w, hidden)
        x = layer.norm1(x + attn.out_proj(mixed))
        x = layer.norm2(x + layer.linear2(torch.relu(layer.linear1(x))))
        return x.view(e, w, hidden)

    def compile_inference(self) -> None:
        """Run inference passes (no autograd) of the network through ``torch.compile``.

        The same function, faster on CPU once compiled (the first call compiles, 15-45 s; node and edge counts
        are dynamic, but a graph where an edge type has 0 or 1 edges compiles once more, as torch specialises
        those sizes). The collation before it and the round-by-round
        decoding after it stay eager, and so do passes with autograd (training updates). Needs a C++ compiler on
        CPU.
        """
        import shutil

        if self.device.type == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
            raise AgentGymError(
                "compile=true needs a C++ compiler for torch.compile on CPU (none of g++, c++, clang++ is on PATH); "
                "install one (apt install g++) or leave compile off."
            )
        _COMPILED.add(self)  # by identity: a deep copy (a trainer's frozen reference) is not compiled

    def forward(self, observations: Sequence[Any]) -> PolicyOutput:
        """Masked destination logits ``[N, S, A]``, deciding aircraft ``[N, S]`` and values ``[N]``."""
        g = self.collate(observations)
        network = self._network
        if self in _COMPILED and not torch.is_grad_enabled():
            network = functools.partial(_compiled_network(), self)
        (no_claims, mask, active, value, *claim_state) = network(
            g.v_x, g.v_batch, g.v_ptr, g.a_x, g.a_batch, g.a_ptr, g.location, g.action_mask, g.deciding,
            g.route_attr, g.route_window, g.time, *(g.edge_index[e] for e in EDGE_TYPES),
            size=g.size, s_max=g.a_max, a_max=g.v_max,
        )  # fmt: skip
        claims = _Claims(self, *claim_state)
        return PolicyOutput(no_claims, mask, active, value, condition=claims, order=claims.order)

    def _network(
        self, v_x, v_batch, v_ptr, a_x, a_batch, a_ptr, location, action_mask, deciding, route_attr, route_window,
        time, *edge_index, size: int, s_max: int, a_max: int,
    ) -> tuple[torch.Tensor, ...]:  # fmt: skip
        """Everything between the batched graph tensors and the decoder's first round (tensors in, tensors out)."""
        b, d = size, self.hidden // self.heads
        h = {"vertiport": self.vertiport_in(v_x), "aircraft": self.aircraft_in(a_x)}
        window = self.encode_window(route_window).mean(1)
        route = torch.relu(self.route_mix(torch.cat([self.route_in(route_attr), window], -1)))
        edges = dict(zip(EDGE_TYPES, edge_index))
        for conv, norm in zip(self.convs, self.norms):
            out = conv(h, edges, edge_attr_dict={_ROUTE: route})
            h = {k: norm[k](h[k] + torch.relu(out[k])) for k in h}

        def aircraft_dense(values: torch.Tensor, fill: Any = 0.0) -> torch.Tensor:
            return _dense(values, a_batch, a_ptr, b, s_max, fill)

        def vertiport_dense(values: torch.Tensor, fill: Any = 0.0) -> torch.Tensor:
            return _dense(values, v_batch, v_ptr, b, a_max, fill)

        heads = (self.query, self.gate, self.stay, self.claim_gate)  # one matmul for the four aircraft heads
        aircraft = nn.functional.linear(
            h["aircraft"], torch.cat([m.weight for m in heads]), torch.cat([m.bias for m in heads])
        )
        q, gate, stay, claim_gate = aircraft_dense(aircraft).split([self.hidden, self.heads, 1, self.heads], -1)
        k = vertiport_dense(self.key(h["vertiport"]))  # [B, A, H]
        att = torch.einsum("bshd,bahd->bsah", q.view(b, s_max, self.heads, d), k.view(b, a_max, self.heads, d))
        att = att / math.sqrt(d)

        # Route term: a dense [B, A, A, heads + 1] table of per-route scores and waiting passengers, read at each
        # aircraft's location row.
        src, dst = edges[_ROUTE]
        graph_of = v_batch[src]
        offset = v_ptr[graph_of]
        table = att.new_zeros(b, a_max, a_max, self.heads + 1)
        table[graph_of, src - offset, dst - offset] = torch.cat(
            [self.route_bias(route), route_attr[:, _WAITING, None]], -1
        )
        location = aircraft_dense(location, fill=0)
        rows = table[torch.arange(b, device=table.device)[:, None], location]  # [B, S, A, heads + 1]
        routes, waiting = rows[..., : self.heads], rows[..., self.heads]  # waiting: [B, S, A] in seats
        logits = (att + gate[:, :, None, :] * routes).sum(-1)
        own = nn.functional.one_hot(location, a_max).to(logits.dtype)
        logits = logits + stay * own

        # What the earlier aircraft's choices leave to each aircraft: waiting passengers per route, free pads.
        vertiport_x = vertiport_dense(v_x)
        free_pads = vertiport_x[..., _PADS] * 10.0 * (1.0 - vertiport_x[..., _PADS_USED])  # [B, A] in aircraft
        mask = aircraft_dense(action_mask, fill=False)[:, :, :a_max]
        real = aircraft_dense(torch.ones_like(a_batch, dtype=torch.bool), fill=False)
        active = aircraft_dense(deciding, fill=False) & real
        order, before, same_before = _decision_order(location, active.to(logits.dtype))
        pooled = [_mean_pool(h["vertiport"], v_batch, v_ptr, b), _mean_pool(h["aircraft"], a_batch, a_ptr, b)]
        value = self.value_head(torch.cat([*pooled, time], -1)).squeeze(-1)
        # Each aircraft's scores as if it chose first: nothing claimed, every free pad left.
        no_claims = _claim_score(self, logits, waiting, torch.zeros_like(logits), free_pads[:, None, :], claim_gate)
        return (
            no_claims, mask, active, value,  # the PolicyOutput
            logits, waiting, free_pads, own, claim_gate, active, order, before, same_before,  # the decoder's state
        )  # fmt: skip


_COMPILED: weakref.WeakSet[VertiportGNNPolicy] = weakref.WeakSet()  # policies whose inference is compiled


@functools.cache
def _compiled_network() -> Any:
    """``VertiportGNNPolicy._network`` through ``torch.compile`` (one compiled function for every policy)."""
    return torch.compile(VertiportGNNPolicy._network, dynamic=True)


def _dense(values: torch.Tensor, batch: torch.Tensor, ptr: torch.Tensor, size: int, width: int, fill: Any) -> Any:
    """``[n_total, ...]`` node values as ``[size, width, ...]`` (node ``i`` of graph ``g`` at ``[g, i]``)."""
    out = values.new_full((size, width, *values.shape[1:]), fill)
    out[batch, torch.arange(values.shape[0], device=values.device) - ptr[batch]] = values
    return out


def _mean_pool(values: torch.Tensor, batch: torch.Tensor, ptr: torch.Tensor, size: int) -> torch.Tensor:
    """``[size, F]`` mean of ``values`` over each graph's nodes (0 for a graph without any)."""
    counts = (ptr[1:] - ptr[:-1]).clamp(min=1).to(values.dtype)[:, None]
    return values.new_zeros(size, values.shape[1]).index_add_(0, batch, values) / counts


def _decision_order(location: torch.Tensor, active: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Decision rounds ``[B, S]`` and ``[B, i, j]`` masks: j decides before i (anywhere, and at i's vertiport).

    See ``_Claims``.
    """
    s_max = location.shape[1]
    same = (location[:, :, None] == location[:, None, :]).to(active.dtype)  # [B, S, S]
    earlier = torch.ones(s_max, s_max, device=active.device, dtype=active.dtype).tril(-1)  # [i, j]: j < i
    order = torch.einsum("bij,bj->bi", same * earlier, active).long()  # [B, S] decision round
    before = (order[:, None, :] < order[:, :, None]).to(active.dtype)  # [B, i, j]: j decides first
    return order, before, before * same


def _claim_score(policy: VertiportGNNPolicy, base, waiting, loads, pads_left, gate) -> torch.Tensor:
    """Soft-clipped ``base`` plus the gated claim score of (waiting, claimed loads, pads left) per destination."""
    left = (waiting - loads).clamp(min=0.0)
    features = torch.stack(
        [waiting.clamp(max=1.0), waiting, loads, left.clamp(max=1.0), left, pads_left.expand_as(waiting)], dim=-1
    )  # order: _CLAIM_FEATURES
    logits = base + (policy.claim_in(features) * gate.unsqueeze(-2)).sum(-1)
    return policy.clip * torch.tanh(logits / policy.clip)


@dataclass
class _Graphs:
    """A batch of vertiport graphs as flat tensors.

    Node features are concatenated over graphs, ``*_batch`` is the graph of each node, ``*_ptr`` ``[B + 1]`` each
    graph's first node, and edge indices are shifted to the batch's numbering. Aircraft ``location`` stays local to
    its graph (as in ``graph.py``).
    """

    size: int
    v_x: torch.Tensor
    v_batch: torch.Tensor
    v_ptr: torch.Tensor
    a_x: torch.Tensor
    a_batch: torch.Tensor
    a_ptr: torch.Tensor
    location: torch.Tensor
    action_mask: torch.Tensor
    deciding: torch.Tensor
    route_attr: torch.Tensor
    route_window: torch.Tensor
    edge_index: dict[tuple[str, str, str], torch.Tensor]
    time: torch.Tensor

    @classmethod
    def from_arrays(cls, graphs: list[dict[str, np.ndarray]]) -> _Graphs:
        """Batch ``struct_arrays`` outputs (same ``action_mask`` width)."""
        counts = {
            "vertiport": np.array([g["vertiport.x"].shape[0] for g in graphs]),
            "aircraft": np.array([g["aircraft.x"].shape[0] for g in graphs]),
        }
        ptr = {k: np.concatenate([[0], np.cumsum(c)]) for k, c in counts.items()}

        def cat(key: str) -> torch.Tensor:
            return torch.from_numpy(np.concatenate([g[key] for g in graphs]))

        edge_index = {}
        for edge in EDGE_TYPES:
            key = f"{edge[1]}.edge_index"
            shift = np.stack([ptr[edge[0]][:-1], ptr[edge[2]][:-1]], axis=1)  # [B, 2]
            edge_index[edge] = torch.from_numpy(
                np.concatenate([g[key] + shift[i][:, None] for i, g in enumerate(graphs)], axis=1)
            )
        batch = {k: torch.from_numpy(np.repeat(np.arange(len(graphs)), c)) for k, c in counts.items()}
        return cls(
            size=len(graphs),
            v_x=cat("vertiport.x"),
            v_batch=batch["vertiport"],
            v_ptr=torch.from_numpy(ptr["vertiport"]),
            a_x=cat("aircraft.x"),
            a_batch=batch["aircraft"],
            a_ptr=torch.from_numpy(ptr["aircraft"]),
            location=cat("aircraft.location"),
            action_mask=cat("aircraft.action_mask"),
            deciding=cat("aircraft.deciding"),
            route_attr=cat("route.edge_attr"),
            route_window=cat("route.window"),
            edge_index=edge_index,
            time=cat("time"),
        )

    @classmethod
    def from_batch(cls, batch: Any) -> _Graphs:
        """From a ``torch_geometric`` ``Batch`` of ``struct_to_heterodata`` graphs."""
        v, a, r = batch["vertiport"], batch["aircraft"], batch[_ROUTE]
        return cls(
            size=batch.num_graphs,
            v_x=v.x,
            v_batch=v.batch,
            v_ptr=v.ptr,
            a_x=a.x,
            a_batch=a.batch,
            a_ptr=a.ptr,
            location=a.location,
            action_mask=a.action_mask,
            deciding=a.deciding,
            route_attr=r.edge_attr,
            route_window=r.window,
            edge_index={edge: batch[edge].edge_index for edge in EDGE_TYPES},
            time=batch.time,
        )

    def to(self, device: torch.device) -> _Graphs:
        """The batch on ``device``."""
        moved = {k: v.to(device) for k, v in vars(self).items() if isinstance(v, torch.Tensor)}
        return _Graphs(size=self.size, edge_index={k: v.to(device) for k, v in self.edge_index.items()}, **moved)

    @property
    def v_max(self) -> int:
        """Most vertiports in one graph."""
        return int((self.v_ptr[1:] - self.v_ptr[:-1]).max())

    @property
    def a_max(self) -> int:
        """Most aircraft in one graph."""
        return int((self.a_ptr[1:] - self.a_ptr[:-1]).max())


class _Claims:
    """The decoder's autoregressive part: each aircraft's logits given the choices of the aircraft before it.

    Order: the deciding aircraft at one vertiport decide one after another (index order), and decision round
    ``r`` holds the ``r``-th deciding aircraft of every vertiport, so a round is sampled in one batched step and
    a day's decision needs as many rounds as the most aircraft waiting at one vertiport. Aircraft ``i`` sees the
    aircraft of earlier rounds.

    Features per (aircraft ``i``, destination ``u``), all in units of one aircraft load or one pad: passengers
    waiting on ``loc(i) -> u`` (capped at one load, and in full), loads already claimed there by earlier aircraft
    at the same vertiport, what is left after them (capped and in full), and pads left at ``u`` after the earlier
    aircraft flying there. An MLP maps them to one score per head, gated per head by the aircraft's embedding, and
    the sum is added to the base logits before the soft clip.
    """

    def __init__(
        self, policy: VertiportGNNPolicy, base, waiting, free_pads, own, gate, active, order, before, same_before
    ) -> None:
        self.policy, self.base, self.waiting, self.free_pads, self.own, self.gate = (
            policy,
            base,
            waiting,
            free_pads,
            own,
            gate,
        )
        self.active = active.to(base.dtype)
        self.order = order  # [B, S] decision round
        self.before, self.same_before = before, same_before  # [B, i, j]: j decides first (at i's vertiport)

    def __call__(self, actions: torch.Tensor | None, slots: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, S, A]`` logits given ``actions`` ``[B, S]`` of the earlier rounds (None: nothing chosen yet).

        With a bool ``slots`` ``[B, S]``, only those slots' rows: ``[n, A]`` in ``slots.nonzero()`` order (all
        that sampling one round needs).
        """
        a_max = self.base.shape[-1]
        if actions is None:
            chosen = torch.zeros_like(self.base)
        else:
            chosen = nn.functional.one_hot(actions.long().clamp(0, a_max - 1), a_max).to(self.base.dtype)
            chosen = chosen * self.active[..., None]
        moving = chosen * (1.0 - self.own)  # a stay takes no new pad
        if slots is None:
            loads = torch.einsum("bij,bja->bia", self.same_before, chosen)
            landing = torch.einsum("bij,bja->bia", self.before, moving)
            return _claim_score(
                self.policy, self.base, self.waiting, loads, self.free_pads[:, None, :] - landing, self.gate
            )
        b_idx, s_idx = slots.nonzero(as_tuple=True)
        loads = torch.bmm(self.same_before[b_idx, s_idx].unsqueeze(1), chosen[b_idx]).squeeze(1)  # [n, A]
        landing = torch.bmm(self.before[b_idx, s_idx].unsqueeze(1), moving[b_idx]).squeeze(1)
        return _claim_score(
            self.policy,
            self.base[b_idx, s_idx],
            self.waiting[b_idx, s_idx],
            loads,
            self.free_pads[b_idx] - landing,
            self.gate[b_idx, s_idx],
        )
