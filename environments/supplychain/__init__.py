"""Inventory networks (HDPO's settings): single stores, serial chains and one warehouse feeding many stores.

The package holds the differentiable simulator (``simulator.py``) that both the env and the HDPO trainer step, the
settings and their presets (``settings.py``), demand traces (``demand.py``), the reference policies and the
just-in-time bound (``oracle.py``), the text views (``render.py``) and the env (``env.py``).

``register_envs`` is the entry point named in ``pyproject.toml``; it only records specs, so importing agentgym
imports neither torch nor the simulator.
"""

from __future__ import annotations

import agentgym

_ENTRY_POINT = "environments.supplychain.env:SupplyChainEnv"
_TAGS = ("inventory", "continuous-control", "differentiable", "single-agent")
_VIEWS = ("struct", "text", "graph")
_REQUIRES = ("torch",)
#: Short episodes keep the contract check fast; the oracle's levels are searched once per process and setting.
_CHECK = {"oracle_episodes": 5, "oracle_min_success": 1.0, "make_kwargs": {"periods": 20, "warmup_periods": 5}}

#: (id, preset, aliases, description)
_ENVS = (
    (
        "agentgym/SupplyChain-v0",
        "one_store_backlogged",
        ("supplychain", "supplychain-backlogged", "inventory"),
        "One store, normal demand, backlog, lead time 4; the newsvendor base-stock oracle is optimal.",
    ),
    (
        "agentgym/SupplyChainLost-v0",
        "one_store_lost",
        ("supplychain-lost",),
        "One store, Poisson demand, lost sales, lead time 4; oracle: the best capped base-stock (searched).",
    ),
    (
        "agentgym/SupplyChainSerial-v0",
        "serial",
        ("supplychain-serial",),
        "Store <- warehouse <- 2 echelons, backlogged; oracle: the best echelon base-stock (Clark-Scarf).",
    ),
    (
        "agentgym/SupplyChainWarehouse-v0",
        "one_warehouse_lost",
        ("supplychain-warehouse",),
        "One warehouse feeding n_stores (default 5) stores, correlated demand, lost sales; oracle: a searched "
        "echelon/capped base-stock heuristic.",
    ),
)


def register_envs() -> None:
    """Register the supply-chain envs with agentgym (one id per preset; every id takes every setting override)."""
    for env_id, preset, aliases, description in _ENVS:
        agentgym.register(
            id=env_id,
            entry_point=_ENTRY_POINT,
            kwargs={"preset": preset},
            aliases=aliases,
            description=description,
            tags=_TAGS,
            views=_VIEWS,
            extra="graph",
            requires=_REQUIRES,
            check=_CHECK,
        )
