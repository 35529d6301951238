"""An example agentgym plugin. Installing this package makes ``agentgym.make("corridor")`` work."""

from __future__ import annotations


def register_envs() -> None:
    """Register the plugin's envs; called by agentgym on first registry lookup."""
    import agentgym

    agentgym.register(
        id="corridor/Corridor-v0",
        entry_point="agentgym_corridor.env:CorridorEnv",
        kwargs={"length": 5},
        aliases=("corridor",),
        description="Walk right to the exit of a 1-D corridor (example plugin).",
        tags=("example", "sanity"),
        views=("struct", "text"),
    )
