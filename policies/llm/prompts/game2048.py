"""2048 prompt parts."""

from __future__ import annotations

HINTS = (
    "Keep the largest tile in a corner and the row next to it ordered; prefer moves that merge tiles and keep "
    "empty cells. A move that changes nothing is wasted."
)


def frame_observation(observation_text: str, turn: int) -> str:
    """The board, with the move number after the first turn."""
    return observation_text if turn == 0 else f"Move {turn + 1}.\n{observation_text}"
