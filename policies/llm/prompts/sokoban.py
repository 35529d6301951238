"""Sokoban prompt parts (the rules themselves come from the env's ``instructions()``)."""

from __future__ import annotations

HINTS = (
    "To push a box you must stand next to it on the opposite side: to push a box Up, stand directly below it and "
    "move Up. First walk to such a cell, then push the box towards a target."
)


def frame_observation(observation_text: str, turn: int) -> str:
    """The board (its legend line dropped: the system prompt has it once), numbered after the first turn."""
    board = "\n".join(line for line in observation_text.splitlines() if not line.startswith("Legend:"))
    return board if turn == 0 else f"Turn {turn + 1}:\n{board}"
