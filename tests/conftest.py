"""Shared fixtures: the example corridor plugin (examples/corridor_plugin) importable in-process."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "examples" / "corridor_plugin"


@pytest.fixture(scope="session")
def corridor_cls():
    """The example plugin's env class, imported from the source tree (no install needed)."""
    sys.path.insert(0, str(PLUGIN))
    from agentgym_corridor.env import CorridorEnv

    return CorridorEnv


@pytest.fixture(scope="session")
def corridor_id(corridor_cls) -> str:
    """Register the corridor in this process, exactly as its plugin entry point does, and return its id."""
    import agentgym
    from agentgym_corridor import register_envs

    try:
        return agentgym.spec("corridor/Corridor-v0").id
    except KeyError:
        register_envs()
        return "corridor/Corridor-v0"
