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


def struct_arrays(struct: dict[str, np.ndarray], *, num_actions: int | None = None) -> dict[str, np.ndarray]:
    """The graph view of one struct observation as numpy arrays, keyed ``"<store>.<attribute>"``.

    Stores are the node types and the edge types' middle names (``"route.edge_attr"``, ``"at.edge_index"``), plus
    ``"time"``; the content is what ``struct_to_heterodata`` puts in its ``HeteroData``.

    Args:
        struct: the env's struct observation.
        num_actions: pad ``action_mask`` with False columns to this width (to batch envs of different ``N``).
    """
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
    at = np.stack([ground, loc[ground]]).astype(np.int64)
    to = np.stack([moving, dest[moving]]).astype(np.int64)
    return {
        "vertiport.x": np.ascontiguousarray(x_v, dtype=np.float32),
        "aircraft.x": np.ascontiguousarray(x_a, dtype=np.float32),
        "aircraft.location": loc.astype(np.int64),
        "aircraft.action_mask": mask,
        "aircraft.deciding": struct["deciding"].astype(bool),
        "route.edge_index": np.stack([o, d]).astype(np.int64),
        "route.edge_attr": np.ascontiguousarray(routes[o, d], dtype=np.float32),
        "route.window": np.ascontiguousarray(window, dtype=np.float32),
        "at.edge_index": at,
        "to.edge_index": to,
        "rev_at.edge_index": at[::-1].copy(),
        "rev_to.edge_index": to[::-1].copy(),
        "time": np.asarray(struct["time"], dtype=np.float32).reshape(1, TIME_FEATURES),
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

    arrays = struct_arrays(struct, num_actions=num_actions)
    data = HeteroData()
    edge_of = {edge[1]: edge for edge in EDGE_TYPES}
    for key, value in arrays.items():
        store, _, attr = key.partition(".")
        if not attr:
            setattr(data, store, torch.from_numpy(value))
        else:
            setattr(data[edge_of.get(store, store)], attr, torch.from_numpy(value))
    return data
