"""The graph view of the vertiport env: a struct observation as a ``torch_geometric.data.HeteroData``.

Node types:

- ``vertiport`` ``x [N, 10 + 2W]``: the vertiport features, then the forecast demand leaving and arriving per
  window tick (each ``[W]``, / seats).
- ``aircraft`` ``x [M, 10]``: the aircraft features and the time (2). Also ``location [M]`` (local vertiport index,
  *not* shifted when graphs are batched: add ``batch["vertiport"].ptr[batch["aircraft"].batch]``),
  ``action_mask [M, N]`` bool and ``deciding [M]`` bool.

Edge types:

- ``(vertiport, route, vertiport)``: one edge per airspace route ``o -> d`` with ``edge_attr [E, 10]`` (the route
  features) and ``window [E, W, 2]`` (forecast demand / seats and fare / 100 per window tick).
- ``(aircraft, at, vertiport)`` for aircraft on the ground (idle, boarded or down) and ``(aircraft, to,
  vertiport)`` for aircraft boarded or flying towards a destination; ``(vertiport, rev_at, aircraft)`` and
  ``(vertiport, rev_to, aircraft)`` are their reverses, so messages flow both ways.

Graph attribute ``time [1, 2]``. torch and torch_geometric are imported on first use.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from environments.vertiport.observation import (
    AIRCRAFT_FEATURES,
    ROUTE_FEATURES,
    STRUCT_KEYS,
    TIME_FEATURES,
    VERTIPORT_FEATURES,
)

NODE_TYPES = ("vertiport", "aircraft")
EDGE_TYPES = (
    ("vertiport", "route", "vertiport"),
    ("aircraft", "at", "vertiport"),
    ("aircraft", "to", "vertiport"),
    ("vertiport", "rev_at", "aircraft"),
    ("vertiport", "rev_to", "aircraft"),
)


def feature_sizes(window: int) -> dict[str, int]:
    """Feature widths of the graph view for a ``window``-tick forecast."""
    return {
        "vertiport": VERTIPORT_FEATURES + 2 * window,
        "aircraft": AIRCRAFT_FEATURES + TIME_FEATURES,
        "route": ROUTE_FEATURES,
        "window": window,
    }


def struct_to_heterodata(struct: dict[str, np.ndarray], *, num_actions: int | None = None) -> Any:
    """Build the ``HeteroData`` of one struct observation (see the module docstring).

    Args:
        struct: the env's struct observation.
        num_actions: pad ``action_mask`` with False columns to this width (to batch envs of different ``N``).
    """
    try:
        import torch
        from torch_geometric.data import HeteroData
    except ImportError as exc:
        from agentgym.errors import MissingExtraError

        raise MissingExtraError("The vertiport graph view", exc.name or "torch_geometric", "graph") from exc

    missing = [k for k in STRUCT_KEYS if k not in struct]
    if missing:
        raise KeyError(
            f"The observation lacks {missing}; pass the vertiport env's struct observation (keys {STRUCT_KEYS})."
        )
    v, a = struct["vertiports"], struct["aircraft"]
    demand, fare = struct["demand"], struct["fare"]
    n, m = v.shape[0], a.shape[0]
    x_v = np.concatenate([v, demand.sum(2).T, demand.sum(1).T], axis=1)
    x_a = np.concatenate([a, np.broadcast_to(struct["time"], (m, TIME_FEATURES))], axis=1)
    routes = struct["routes"]
    o, d = np.nonzero(routes[..., 0] > 0)
    window = np.stack([demand[:, o, d].T, fare[:, o, d].T], axis=-1)
    loc, dest = struct["aircraft_location"], struct["aircraft_destination"]
    status = a[:, 1:5]  # idle, boarded, flying, down
    ground = np.flatnonzero(status[:, 0] + status[:, 1] + status[:, 3] > 0)
    moving = np.flatnonzero(status[:, 1] + status[:, 2] > 0)
    mask = struct["action_mask"].astype(bool)
    if num_actions is not None and num_actions > n:
        mask = np.concatenate([mask, np.zeros((m, num_actions - n), bool)], axis=1)

    data = HeteroData()
    data["vertiport"].x = torch.from_numpy(np.ascontiguousarray(x_v, dtype=np.float32))
    data["aircraft"].x = torch.from_numpy(np.ascontiguousarray(x_a, dtype=np.float32))
    data["aircraft"].location = torch.from_numpy(loc.astype(np.int64))
    data["aircraft"].action_mask = torch.from_numpy(mask)
    data["aircraft"].deciding = torch.from_numpy(struct["deciding"].astype(bool))
    route = data["vertiport", "route", "vertiport"]
    route.edge_index = torch.from_numpy(np.stack([o, d]).astype(np.int64))
    route.edge_attr = torch.from_numpy(np.ascontiguousarray(routes[o, d], dtype=np.float32))
    route.window = torch.from_numpy(np.ascontiguousarray(window, dtype=np.float32))
    at = torch.from_numpy(np.stack([ground, loc[ground]]).astype(np.int64))
    to = torch.from_numpy(np.stack([moving, dest[moving]]).astype(np.int64))
    data["aircraft", "at", "vertiport"].edge_index = at
    data["aircraft", "to", "vertiport"].edge_index = to
    data["vertiport", "rev_at", "aircraft"].edge_index = at.flip(0)
    data["vertiport", "rev_to", "aircraft"].edge_index = to.flip(0)
    data.time = torch.from_numpy(np.asarray(struct["time"], dtype=np.float32)).reshape(1, TIME_FEATURES)
    return data
