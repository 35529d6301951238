"""GLAD chains for Sokoban: the push-optimal solver's view of the current position, in a few causal clauses.

The chosen action is the first action of the solver's plan from the current position (exactly what
``SokobanEnv.oracle_action`` plays). The chain first says where things are, in the words of the env's offsets line
(``SokobanEnv.positions_line``: where each box is from the player, where its nearest free target is from the box),
then the plan's next push: which way the box goes and the cell to push it from, relative to the player. Each of
the four moves is then tried on a copy of the position and judged against the plan: a wall, a box that
cannot move, a push that makes the level unsolvable (a corner, a dead square, a frozen box: the solver's own
deadlock tests), or how much longer the shortest solution gets (re-solved from the successor). Example::

    Box 1 up and 1 right of you, target 2 left of it. Next: push it Left, standing right of it: 1 up and 2 right of
    you. Up: shortest. Down: 2 more moves. Left: wall. Right: pushes box into a corner, deadlock. Best: Up.

Everything is relative: a small model reads offsets far more reliably than it counts grid columns (absolute
coordinates were the first format; SmolLM2 learned the format but not the coordinates), and "shortest" / "N more
moves" make the choice follow from the clauses without comparing step counts. The next-push clause is the
subgoal those verdicts serve: without it a GLAD-trained SmolLM2 walked back and forth when the route to the push
went round the box, calling each step back "shortest" (benchmarks/RESULTS.md). "Shortest" is the solver's order:
fewest pushes, then fewest moves; a move that saves moves at the cost of pushes reads "more pushes".

``glad_detour`` writes GLAD's untaught detours (``GladConfig.detours``): a move judged worse than the plan but not
a deadlock (a wall, a blocked box, a longer route), with the same clauses except that the mistaken move is called
``shortest`` and chosen.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from agentgym.glad import SearchBudget, SearchTimeout
from environments.sokoban.oracle import Board, SolveResult, solve
from environments.sokoban.render import offset_words
from environments.sokoban.xsb import Level

NAMES = ("Up", "Down", "Left", "Right")
_SIDE = ("below", "above", "right", "left")  # where the player stands to push a box Up, Down, Left, Right
_BOARDS: dict[bytes, Board] = {}


def glad_chain(env: Any, budget: SearchBudget) -> tuple[str, int] | None:
    """The chain and the solver's action for the env's current position; None when the position is unsolvable.

    Raises:
        SearchTimeout: a search ran past ``budget``.
    """
    judged = _judge(env, budget)
    if judged is None:
        return None
    clauses, action = judged
    return " ".join([env.unwrapped.positions_line(), *clauses, f"Best: {NAMES[action]}."]), action


def glad_detour(env: Any, budget: SearchBudget, rng: np.random.Generator) -> tuple[str, int] | None:
    """A mistaken move and the chain that would justify it: the history of a GLAD detour (not taught).

    The move is drawn uniformly from those that are worse than the plan but keep the level solvable (a wall, a
    blocked box, a longer or pushier route), so the taught turn after it starts off the solver's path. The chain
    is the true one with the mistaken move's clause claiming ``shortest`` and ``Best`` naming it: the failure the
    model shows at play time (repeating a blocked push it calls shortest). None when no move qualifies.
    """
    judged = _judge(env, budget)
    if judged is None:
        return None
    clauses, action = judged
    not_worse = ("deadlock", "shortest", "solves")  # lost, or as good as the plan
    worse = [a for a in range(4) if a != action and not any(w in clauses[1 + a] for w in not_worse)]
    if not worse:
        return None
    detour = int(rng.choice(worse))
    state = env.unwrapped.get_state()
    boxes = [i for i, b in enumerate(state.boxes) if b]
    push = " pushes box," if _push_target(_board(state.level), boxes, state.player, detour) is not None else ""
    clauses[1 + detour] = f"{NAMES[detour]}:{push} shortest."
    return " ".join([env.unwrapped.positions_line(), *clauses, f"Best: {NAMES[detour]}."]), detour


def _judge(env: Any, budget: SearchBudget) -> tuple[list[str], int] | None:
    """The clauses (the next push, then the four moves in action order) and the solver's action.

    None when the position is unsolvable.
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
    clauses = [_next_push(board, boxes, player, best.plan)]
    for a in range(4):
        if a == action:
            push = " pushes box," if _push_target(board, boxes, player, a) is not None else ""
            clauses.append(f"{NAMES[a]}:{push} {'solves it' if best.moves == 1 else 'shortest'}.")
        else:
            clauses.append(_alternative(level, board, boxes, player, a, best, budget, deadline))
    return clauses, action


def _next_push(board: Board, boxes: Sequence[int], player: int, plan: Sequence[int]) -> str:
    """The plan's first push: which box, which way, and the cell to push it from (relative to the player).

    Example: ``Next: push it Right, standing left of it: 1 up and 2 left of you.`` (``...left of it: here.`` when
    the player stands there). With several boxes the box is named by its offset from the player, as in the offsets
    line. Boxes do not move before the first push, so the box is where it is now.
    """
    w = board.width
    at = player
    for a in plan:
        ahead = at + board.deltas[a]
        if ahead in boxes:
            box = "it" if len(boxes) == 1 else f"the box {offset_words(*_rc(ahead, player, w), 'you')}"
            stand = "here" if at == player else offset_words(*_rc(at, player, w), "you")
            return f"Next: push {box} {NAMES[a]}, standing {_SIDE[a]} of it: {stand}."
        at = ahead
    raise AssertionError("a plan of an unsolved position pushes a box")


def _rc(cell: int, origin: int, width: int) -> tuple[int, int]:
    """Where ``cell`` is from ``origin``, in (rows, columns)."""
    (r, c), (r0, c0) = divmod(cell, width), divmod(origin, width)
    return r - r0, c - c0


def _board(level: Level) -> Board:
    key = level.key()
    board = _BOARDS.get(key)
    if board is None:
        if len(_BOARDS) > 256:  # many levels in one build: the tables are cheap to rebuild, keep memory flat
            _BOARDS.clear()
        board = _BOARDS[key] = Board(level)
    return board


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
            return f"{name}: pushes box, solves it."
        if board.deadlock_reason(new_boxes):
            return f"{name}: pushes box into {_dead_kind(board, push)}, deadlock."
    moved = " pushes box," if push is not None else ""
    result = _solve(level, board, new_boxes, ahead, budget, deadline)
    if result is None:
        return f"{name}:{moved} deadlock."
    moves, pushes = 1 + (result.moves or 0), (push is not None) + (result.pushes or 0)
    best_moves, best_pushes = best.moves or 0, best.pushes or 0
    if pushes > best_pushes and moves <= best_moves:
        verdict = "more pushes"
    elif moves > best_moves:
        extra = moves - best_moves
        verdict = f"{extra} more move{'s' if extra > 1 else ''}"
    else:
        verdict = "also shortest"
    return f"{name}:{moved} {verdict}."


def _dead_kind(board: Board, cell: int) -> str:
    """Why a pushed box is lost: a corner, a dead square (no target reachable) or a frozen box."""
    w = board.width
    walls = board.walls
    if not board.is_target[cell] and (walls[cell - w] or walls[cell + w]) and (walls[cell - 1] or walls[cell + 1]):
        return "a corner"
    return "a dead square" if board.dead[cell] else "a stuck spot"
