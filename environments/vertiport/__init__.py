"""Urban-air-mobility fleet scheduling: electric aircraft dispatched between vertiports over one day.

A UAM-like reconstruction of the setting of CapTAIN (Paul, Witter, Chowdhury, arXiv 2401.04851): time-varying
demand and fares, vertiport pad capacity, battery and reserve, route concurrency limits, take-off delays, weather
route closures and aircraft downtime. Offered as

- ``agentgym/Vertiport-v0`` (alias ``vertiport``): a centralised single-agent env (``env.VertiportEnv``) whose
  action is a destination per aircraft, with struct, text and graph (``HeteroData``) views;
- ``parallel_env(**kwargs)``: a PettingZoo ``ParallelEnv`` with one agent per aircraft (``parallel.py``).

Modules: ``scenario`` (data, JSON files), ``generator`` (seeded scenarios, presets), ``fleet`` (the vectorised
simulation), ``observation`` / ``render`` / ``graph`` (views), ``oracle`` (random and greedy dispatch), ``ga``
(the genetic-algorithm planner) and ``baselines`` (those as rollout policies).

``register_envs`` is the entry point named in ``pyproject.toml``; importing this package imports nothing heavy.
"""

from __future__ import annotations

from typing import Any

import agentgym


def register_envs() -> None:
    """Register ``agentgym/Vertiport-v0`` (alias ``vertiport``)."""
    agentgym.register(
        id="agentgym/Vertiport-v0",
        entry_point="environments.vertiport.env:VertiportEnv",
        kwargs={"preset": "default"},
        aliases=("vertiport", "uam"),
        description="eVTOL fleet dispatch across vertiports over a day (UAM-like, CapTAIN setting); greedy oracle.",
        tags=("scheduling", "multi-agent", "graph", "stochastic", "fleet"),
        views=("struct", "text", "graph"),
        policy="policies.gnn.vertiport:VertiportGNNPolicy",
        # vertiport_greedy is the oracle; vertiport_ga plans by simulation (about 30 s per default day on 1 CPU core).
        baselines=("vertiport_random", "vertiport_greedy", "vertiport_ga"),
        # The contract check runs on the tiny preset (3 vertiports, 4 aircraft, an 18-tick day) so that it takes
        # about a second and its episodes end (exercising unseeded resets); the oracle's success is a profitable day.
        check={"oracle_episodes": 3, "oracle_min_success": 1.0, "make_kwargs": {"preset": "tiny"}},
    )


def parallel_env(**kwargs: Any) -> Any:
    """A PettingZoo ``ParallelEnv`` (one agent per aircraft); ``kwargs`` as for ``VertiportEnv``."""
    from environments.vertiport.parallel import VertiportParallelEnv

    return VertiportParallelEnv(**kwargs)
