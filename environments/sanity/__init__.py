"""Sanity envs with known optima, for trainer learning tests: a text bandit and a one-word memory test.

``register_envs`` is the entry point named in ``pyproject.toml``; it only records specs, so importing agentgym
does not import the env modules.
"""

from __future__ import annotations

import agentgym


def register_envs() -> None:
    """Register the sanity envs with agentgym."""
    agentgym.register(
        id="agentgym/Bandit-v0",
        entry_point="environments.sanity.bandit:BanditEnv",
        kwargs={"num_arms": 4, "paying_arm": 2},
        aliases=("bandit",),
        description="One-step colour bandit; the optimum is return 1 (paying_arm='task': the prompt names the arm).",
        tags=("sanity", "bandit", "single-step", "single-agent"),
        views=("struct", "text"),
        # Episodes are one step, so many of them cost nothing and cover every arm in contextual runs.
        check={"oracle_episodes": 20, "oracle_kwargs": {}, "oracle_min_success": 1.0, "make_kwargs": {}},
    )
    agentgym.register(
        id="agentgym/Memory-v0",
        entry_point="environments.sanity.memory:MemoryEnv",
        kwargs={"num_words": 4, "num_turns": 4},
        aliases=("memory",),
        description="Recall a word shown only on turn 1 when asked on the last turn; the optimum is return 1.",
        tags=("sanity", "memory", "multi-turn", "single-agent"),
        views=("struct", "text"),
        check={"oracle_episodes": 20, "oracle_kwargs": {}, "oracle_min_success": 1.0, "make_kwargs": {}},
    )
