"""Sokoban prompt parts."""

from __future__ import annotations

HINTS = (
    "Plan before you push: a box pushed into a corner, or against a wall with no target along it, can never be "
    "moved back. You can push a box but never pull it."
)


def frame_observation(observation_text: str, turn: int) -> str:
    """The board, with the turn number after the first turn."""
    return observation_text if turn == 0 else f"Turn {turn + 1}. The board now:\n{observation_text}"
