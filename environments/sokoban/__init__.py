"""Sokoban: generated (reverse-play) or XSB levels, text/struct/RGB views and a push-optimal oracle.

``register_envs`` is the entry point named in pyproject; it only registers a string entry point, so importing
agentgym never imports the env module.
"""

from __future__ import annotations

import agentgym


def register_envs() -> None:
    """Register ``agentgym/Sokoban-v0`` (alias ``sokoban``)."""
    agentgym.register(
        id="agentgym/Sokoban-v0",
        entry_point="environments.sokoban.env:SokobanEnv",
        kwargs={"preset": "easy"},
        aliases=("sokoban",),
        description="Push boxes onto targets; generated or XSB levels, push-optimal A* oracle.",
        tags=("puzzle", "planning", "grid", "single-agent"),
        views=("struct", "text", "rgb"),
        check={"oracle_episodes": 5, "make_kwargs": {"preset": "easy"}},
    )
