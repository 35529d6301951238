"""Graph neural network policies (torch-geometric message passing over an env's graph view).

- ``policies.gnn.vertiport``: ``VertiportGNNPolicy``, a ``NeuralPolicy`` for ``agentgym/Vertiport-v0`` (graph and
  demand-window encoders, attention decoder giving a destination per aircraft, value head); the env's default
  trainable policy (``policy.network=auto``).
- ``policies.gnn.inventory``: store-order policies (MLP and GNN over the supply graph) for the inventory envs.

Names are exported lazily, so importing this package does not import torch-geometric.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "VertiportGNNPolicy": "policies.gnn.vertiport",
    "InventoryGNN": "policies.gnn.inventory",
    "InventoryMLP": "policies.gnn.inventory",
    "InventoryActor": "policies.gnn.inventory",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'policies.gnn' has no attribute {name!r}; it exports {__all__}.")
    return getattr(importlib.import_module(module), name)
