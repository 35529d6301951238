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

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from agentgym.errors import AgentGymError
from environments.vertiport.graph import EDGE_TYPES, feature_sizes, struct_to_heterodata
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
    def collate(self, observations: Sequence[Any]) -> Any:
        """One ``torch_geometric`` ``Batch`` of the observations' graphs, on the policy's device."""
        from torch_geometric.data import Batch

        if len(observations) == 0:
            raise AgentGymError("VertiportGNNPolicy.forward got no observations; pass a non-empty list.")
        structs = [_struct(o) for o in observations]
        widths = [s["vertiports"].shape[0] if isinstance(s, dict) else s["vertiport"].num_nodes for s in structs]
        graphs = []
        for s in structs:
            if isinstance(s, dict):
                if s["demand"].shape[0] != self.window:
                    raise AgentGymError(
                        f"The observation has a {s['demand'].shape[0]}-tick demand window but the policy was built "
                        f"for {self.window}; build it with VertiportGNNPolicy.make(env) or window=... ."
                    )
                graphs.append(struct_to_heterodata(s, num_actions=max(widths)))
            else:
                graphs.append(s)
        return Batch.from_data_list(graphs).to(self.device)

    # ------------------------------------------------------------------ forward
    def forward(self, observations: Sequence[Any]) -> PolicyOutput:
        """Masked destination logits ``[N, S, A]``, deciding aircraft ``[N, S]`` and values ``[N]``."""
        from torch_geometric.nn import global_mean_pool
        from torch_geometric.utils import to_dense_batch

        batch = self.collate(observations)
        b = len(observations)
        v_store, a_store, r_store = batch["vertiport"], batch["aircraft"], batch[_ROUTE]
        h = {"vertiport": self.vertiport_in(v_store.x), "aircraft": self.aircraft_in(a_store.x)}
        window = self.window_encoder(self.window_in(r_store.window) + self.window_pos).mean(1)
        route = torch.relu(self.route_mix(torch.cat([self.route_in(r_store.edge_attr), window], -1)))
        edge_index = {edge: batch[edge].edge_index for edge in EDGE_TYPES}
        for conv, norm in zip(self.convs, self.norms):
            out = conv(h, edge_index, edge_attr_dict={_ROUTE: route})
            h = {k: norm[k](h[k] + torch.relu(out[k])) for k in h}

        v_batch, a_batch = v_store.batch, a_store.batch
        d = self.hidden // self.heads
        q, real = to_dense_batch(self.query(h["aircraft"]), a_batch, batch_size=b)  # [B, S, H]
        k, _ = to_dense_batch(self.key(h["vertiport"]), v_batch, batch_size=b)  # [B, A, H]
        s_max, a_max = q.shape[1], k.shape[1]
        att = torch.einsum("bshd,bahd->bsah", q.view(b, s_max, self.heads, d), k.view(b, a_max, self.heads, d))
        att = att / math.sqrt(d)

        # Route term: a dense [B, A, A, heads] table of per-route scores, read at each aircraft's location row.
        src, dst = r_store.edge_index
        graph_of = v_batch[src]
        offset = v_store.ptr[graph_of]
        table = att.new_zeros(b, a_max, a_max, self.heads)
        table[graph_of, src - offset, dst - offset] = self.route_bias(route)
        location, _ = to_dense_batch(a_store.location, a_batch, fill_value=0, batch_size=b)
        routes = table[torch.arange(b, device=table.device)[:, None], location]  # [B, S, A, heads]
        gate, _ = to_dense_batch(self.gate(h["aircraft"]), a_batch, batch_size=b)
        stay, _ = to_dense_batch(self.stay(h["aircraft"]), a_batch, batch_size=b)
        logits = (att + gate[:, :, None, :] * routes).sum(-1)
        logits = logits + stay * nn.functional.one_hot(location, a_max).to(logits.dtype)

        # What the earlier aircraft's choices leave to each aircraft: waiting passengers per route, free pads.
        waiting_table = att.new_zeros(b, a_max, a_max)
        waiting_table[graph_of, src - offset, dst - offset] = r_store.edge_attr[:, _WAITING]
        waiting = waiting_table[torch.arange(b, device=table.device)[:, None], location]  # [B, S, A] in seats
        v_x, _ = to_dense_batch(v_store.x, v_batch, batch_size=b)
        pads = v_x[..., _PADS] * 10.0
        free_pads = pads * (1.0 - v_x[..., _PADS_USED])  # [B, A] in aircraft
        claim_gate, _ = to_dense_batch(self.claim_gate(h["aircraft"]), a_batch, batch_size=b)
        mask, _ = to_dense_batch(a_store.action_mask, a_batch, fill_value=False, batch_size=b)
        mask = mask[:, :, :a_max]
        deciding, _ = to_dense_batch(a_store.deciding, a_batch, fill_value=False, batch_size=b)
        active = deciding & real
        claims = _Claims(self, logits, waiting, free_pads, location, claim_gate, active)
        pooled = torch.cat(
            [global_mean_pool(h["vertiport"], v_batch, b), global_mean_pool(h["aircraft"], a_batch, b), batch.time], -1
        )
        value = self.value_head(pooled).squeeze(-1)
        no_claims = claims(None)  # each aircraft's scores as if it chose first
        return PolicyOutput(no_claims, mask, active, value, condition=claims, order=claims.order)


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

    def __init__(self, policy: VertiportGNNPolicy, base, waiting, free_pads, location, gate, active) -> None:
        self.policy, self.base, self.waiting, self.free_pads, self.gate = policy, base, waiting, free_pads, gate
        self.active = active.to(base.dtype)
        a_max, s_max = base.shape[-1], base.shape[1]
        self.own = nn.functional.one_hot(location, a_max).to(base.dtype)  # [B, S, A]: staying
        same = (location[:, :, None] == location[:, None, :]).to(base.dtype)  # [B, S, S]
        earlier = torch.ones(s_max, s_max, device=base.device, dtype=base.dtype).tril(-1)  # [i, j]: j < i
        self.order = torch.einsum("bij,bj->bi", same * earlier, self.active).long()  # [B, S] decision round
        self.before = (self.order[:, None, :] < self.order[:, :, None]).to(base.dtype)  # [B, i, j]: j decides first
        self.same = same

    def __call__(self, actions: torch.Tensor | None) -> torch.Tensor:
        """``[B, S, A]`` logits given ``actions`` ``[B, S]`` of the earlier rounds (None: nothing chosen yet)."""
        a_max = self.base.shape[-1]
        if actions is None:
            chosen = torch.zeros_like(self.base)
        else:
            chosen = nn.functional.one_hot(actions.long().clamp(0, a_max - 1), a_max).to(self.base.dtype)
            chosen = chosen * self.active[..., None]
        moving = chosen * (1.0 - self.own)  # a stay takes no new pad
        loads = torch.einsum("bij,bja->bia", self.before * self.same, chosen)
        landing = torch.einsum("bij,bja->bia", self.before, moving)
        left = (self.waiting - loads).clamp(min=0.0)
        pads_left = self.free_pads[:, None, :] - landing
        features = torch.stack(
            [self.waiting.clamp(max=1.0), self.waiting, loads, left.clamp(max=1.0), left, pads_left], dim=-1
        )  # order: _CLAIM_FEATURES
        policy = self.policy
        logits = self.base + (policy.claim_in(features) * self.gate.unsqueeze(-2)).sum(-1)
        return policy.clip * torch.tanh(logits / policy.clip)
