"""2048: the sliding-tile game, on 4x4 (``agentgym/Game2048-v0``) and 3x3 (``agentgym/Game2048Small-v0``) boards.

``register_envs`` is the entry point named in ``pyproject.toml``; it only records specs, so importing agentgym
does not import the env module, its move tables or numba.
"""

from __future__ import annotations

import agentgym

_ENTRY_POINT = "environments.game2048.env:Game2048Env"
_TAGS = ("puzzle", "stochastic", "planning", "single-agent")


def register_envs() -> None:
    """Register the 2048 envs with agentgym."""
    agentgym.register(
        id="agentgym/Game2048-v0",
        entry_point=_ENTRY_POINT,
        kwargs={"size": 4, "target_tile": 2048},
        aliases=("2048", "game2048", "2048-4x4"),
        description="2048 on a 4x4 board; reward = merged tile sum, success = a 2048 tile (ProAct's 2048_4x4).",
        tags=_TAGS,
        views=("struct", "text"),
        # The oracle test stops at a 256 tile so that it takes seconds; the full 2048 rate is in benchmarks/.
        check={
            "oracle_episodes": 5,
            "oracle_kwargs": {"target_tile": 256, "terminate_on_target": True},
            "oracle_min_success": 1.0,
            "make_kwargs": {},
        },
    )
    agentgym.register(
        id="agentgym/Game2048Small-v0",
        entry_point=_ENTRY_POINT,
        kwargs={"size": 3, "target_tile": 256},
        aliases=("2048-3x3", "game2048-3x3"),
        description="2048 on a 3x3 board (ProAct's 2048_3x3); success = a 256 tile.",
        tags=_TAGS,
        views=("struct", "text"),
        check={
            "oracle_episodes": 5,
            "oracle_kwargs": {"target_tile": 128, "terminate_on_target": True},
            "oracle_min_success": 1.0,
            "make_kwargs": {},
        },
    )
