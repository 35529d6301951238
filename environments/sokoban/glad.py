"""GLAD chains for Sokoban: the push-optimal solver's view of the current position, in a few causal clauses.

The chosen action is the first action of the solver's plan from the current position (exactly what
``SokobanEnv.oracle_action`` plays). Each of the four moves is then tried on a copy of the position: a wall, a box
that cannot move, a push that makes the level unsolvable (a corner, a dead square, a frozen box: the solver's own
deadlock tests), or the optimal number of moves left after it (re-solved from the successor). Example::

    Player (3,2), box (3,3), target (4,2). Up: 7 moves left. Down: 5 moves left. Left: wall.
    Right: pushes box to (3,4), corner -> deadlock. Best: Down.

"N moves left" counts the move itself: the length of the shortest solution (among those with the fewest pushes)
that starts with it.

Coordinates are (row, column) counted from 1 at the top-left cell of the grid the text view shows.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from agentgym.glad import SearchBudget, SearchTimeout
from environments.sokoban.oracle import Board, SolveResult, solve
from environments.sokoban.xsb import Level

NAMES = ("Up", "Down", "Left", "Right")
_BOARDS: dict[bytes, Board] = {}


def glad_chain(env: Any, budget: SearchBudget) -> tuple[str, int] | None:
    """The chain and the solver's action for the env's current position; None when the position is unsolvable.

    Raises:
        SearchTimeout: a search ran past ``budget``.
    """
    state = env.unwrapped.get_state()
    level: Level = state.level
    board = _board(level)
    boxes = [i for i, b in enumerate(state.boxes) if b]
    player = state.player
    deadline = time.perf_counter() + budget.seconds
    best = _solve(level, board, boxes, player, budget, deadline)
    if best is None or not best.plan:
        return None
    action = best.plan[0]
    clauses = [_describe(level, board, boxes, player)]
    for a in range(4):
        if a == action:
            push = _push_target(board, boxes, player, a)
            where = f" pushes box to {_pos(level, push)}," if push is not None else ""
            left = "solved" if best.moves == 1 else f"{best.moves} moves left"
            clauses.append(f"{NAMES[a]}:{where} {left}.")
        else:
            clauses.append(_alternative(level, board, boxes, player, a, best, budget, deadline))
    clauses.append(f"Best: {NAMES[action]}.")
    return " ".join(clauses), action


def _board(level: Level) -> Board:
    key = level.key()
    board = _BOARDS.get(key)
    if board is None:
        if len(_BOARDS) > 256:  # many levels in one build: the tables are cheap to rebuild, keep memory flat
            _BOARDS.clear()
        board = _BOARDS[key] = Board(level)
    return board


def _pos(level: Level, cell: int) -> str:
    r, c = divmod(cell, level.width)
    return f"({r + 1},{c + 1})"


def _describe(level: Level, board: Board, boxes: Sequence[int], player: int) -> str:
    """Player, the boxes still off target and the free targets (placed boxes only counted)."""
    on = [b for b in boxes if board.is_target[b]]
    off = [b for b in boxes if not board.is_target[b]]
    free = [t for t in board.targets if t not in boxes]

    def listed(word: str, cells: list[int]) -> str:
        plural = word + ("es" if word.endswith("x") else "s") if len(cells) > 1 else word
        return f"{plural} " + " ".join(_pos(level, c) for c in cells)

    parts = [f"Player {_pos(level, player)}", listed("box", off), listed("target", free)]
    if on:
        parts.append(f"{len(on)} placed")
    return ", ".join(parts) + "."


def _push_target(board: Board, boxes: Sequence[int], player: int, action: int) -> int | None:
    """The cell a box is pushed to by ``action``, or None when the move pushes nothing."""
    d = board.deltas[action]
    return player + 2 * d if player + d in boxes else None


def _solve(level: Level, board: Board, boxes: Sequence[int], player: int, budget: SearchBudget,
           deadline: float) -> SolveResult | None:
    """A push-optimal plan (ties by moves); None when unsolvable; SearchTimeout past the budget."""
    left = deadline - time.perf_counter()
    if left <= 0:
        raise SearchTimeout(f"the Sokoban search ran past its {budget.seconds} s budget")
    result = solve(level, boxes=boxes, player=player, board=board, max_nodes=budget.nodes, time_limit=left)
    if result.status == "limit":
        raise SearchTimeout(f"the Sokoban search stopped at its limit: {result.reason}")
    return result if result.solved else None


def _alternative(level: Level, board: Board, boxes: Sequence[int], player: int, action: int, best: SolveResult,
                 budget: SearchBudget, deadline: float) -> str:
    """One clause: what ``action`` leads to, from the true rules and a re-solve of the successor."""
    name, d = NAMES[action], board.deltas[action]
    ahead = player + d
    if board.walls[ahead]:
        return f"{name}: wall."
    new_boxes, push = list(boxes), None
    if ahead in boxes:
        push = ahead + d
        if board.walls[push] or push in boxes:
            return f"{name}: box blocked."
        new_boxes = sorted(push if b == ahead else b for b in boxes)
        if all(board.is_target[b] for b in new_boxes):
            return f"{name}: pushes box to {_pos(level, push)}, solved."
        if board.deadlock_reason(new_boxes):
            return f"{name}: pushes box to {_pos(level, push)}, {_dead_kind(board, push)} -> deadlock."
    moved = f" pushes box to {_pos(level, push)}," if push is not None else ""
    result = _solve(level, board, new_boxes, ahead, budget, deadline)
    if result is None:
        return f"{name}:{moved} unsolvable -> deadlock."
    moves, pushes = 1 + (result.moves or 0), (push is not None) + (result.pushes or 0)
    extra = f" but {pushes} pushes vs {best.pushes}" if moves < (best.moves or 0) else ""
    return f"{name}:{moved} {moves} moves left{extra}."


def _dead_kind(board: Board, cell: int) -> str:
    """Why a pushed box is lost: a corner, a dead square (no target reachable) or a frozen box."""
    w = board.width
    walls = board.walls
    if not board.is_target[cell] and (walls[cell - w] or walls[cell + w]) and (walls[cell - 1] or walls[cell + 1]):
        return "corner"
    return "dead square" if board.dead[cell] else "stuck"
