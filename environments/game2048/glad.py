"""GLAD chains for 2048: the expectimax search's move values, with each move's true effect on the board.

The chosen action is the expectimax argmax (exactly what ``Game2048Env.oracle_action`` plays). Moves are listed
best first; each clause states what the move does on the real board (the merge points it scores, whether the
largest tile leaves its corner, or that it changes nothing) and, for the rejected moves, how much lower the
search values it. Example::

    Max 64 top-left, 6 empty. Left: +16, keeps corner, highest value. Up: +8, value -2.0%. Down: loses corner,
    value -9.1%. Right: no change. Best: Left.

Search values are expected heuristic scores a few spawns ahead, so the percentages compare moves of one board.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agentgym.glad import SearchBudget
from environments.game2048.board import ACTION_NAMES, BoardTables, tables


def glad_chain(env: Any, budget: SearchBudget) -> tuple[str, int] | None:
    """The chain and the expectimax action for the env's board; None at game over (no move changes the board).

    ``budget`` is not needed: the adaptive-depth expectimax takes milliseconds per board.
    """
    base = env.unwrapped
    values = np.asarray(base.oracle_move_values(), dtype=np.float64)
    if not np.isfinite(values).any():
        return None
    action = int(np.argmax(values))
    t = tables(base.size)
    board = base.get_state().board
    exps = t.to_exponents(board)
    top = int(exps.max())
    corner = _corner_of(exps, top)
    where = corner or "off the corners"
    clauses = [f"Max {1 << top} {where}, {int((exps == 0).sum())} empty."]
    order = sorted(range(4), key=lambda a: (-values[a], a))
    order.remove(action)
    for a in (action, *order):
        clauses.append(_clause(t, board, a, values, action, corner))
    clauses.append(f"Best: {ACTION_NAMES[action]}.")
    return " ".join(clauses), action


def _corner_of(exps: np.ndarray, exponent: int) -> str | None:
    """The name of a corner holding a tile of ``exponent`` (None when no corner does)."""
    n = exps.shape[0] - 1
    for name, (r, c) in (("top-left", (0, 0)), ("top-right", (0, n)), ("bottom-left", (n, 0)),
                         ("bottom-right", (n, n))):
        if exps[r, c] == exponent:
            return name
    return None


def _clause(t: BoardTables, board: int, action: int, values: np.ndarray, best: int, corner: str | None) -> str:
    """What ``action`` does to the board (merge points, the corner tile), and its search value against the best."""
    name = ACTION_NAMES[action]
    if not np.isfinite(values[action]):
        return f"{name}: no change."
    new, gained = t.move(board, action)
    after = t.to_exponents(new)
    parts = [f"+{gained}"] if gained else []
    in_corner = _corner_of(after, int(after.max())) is not None
    if corner is not None and not in_corner:
        parts.append("loses corner")
    elif corner is not None and action == best:
        parts.append("keeps corner")
    elif corner is None and in_corner:
        parts.append("max to corner")
    if action == best:
        parts.append("highest value")
    else:
        gap = 100.0 * (values[best] - values[action]) / max(abs(values[best]), 1e-9)
        parts.append("tie" if gap < 0.05 else f"value -{gap:.1f}%" if gap < 10 else f"value -{gap:.0f}%")
    return f"{name}: {', '.join(parts)}."
