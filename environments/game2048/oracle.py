"""Expectimax player for 2048, compiled with numba.

The search alternates max nodes (the player picks the best of four moves) and chance nodes (a 2 with probability
0.9 or a 4 with 0.1 lands on a uniformly chosen empty cell). Leaves are scored with a row heuristic summed over
rows and columns: reward empty cells and mergeable neighbours, penalise non-monotone rows and large tiles
scattered away from the edges. Every term depends on one row only, so the heuristic is a table lookup per row,
like the moves themselves. Weights follow the widely used bitboard expectimax (empty 270, merges 700,
monotonicity 47 with exponent power 4, tile sum 11 with power 3.5, a constant 200000 so that "lost" (0) is the
worst value).

Depth is counted in chance layers: depth 0 scores each move by the heuristic of the board it leaves, depth 1
averages over the spawn after it and one more move, and so on. The default adapts the depth to the board (deeper
when few cells are empty, where mistakes are fatal) and prunes branches whose probability falls under
``prob_cutoff``. A direct-mapped transposition cache, cleared for every root call so that results are a pure
function of the board, shares work between move orders that reach the same position.
"""

from __future__ import annotations

from functools import cache

import numba as nb
import numpy as np

from environments.game2048.board import BoardTables, tables

HEUR_LOST = 200_000.0
HEUR_EMPTY = 270.0
HEUR_MERGES = 700.0
HEUR_MONOTONICITY = 47.0
HEUR_MONOTONICITY_POWER = 4.0
HEUR_SUM = 11.0
HEUR_SUM_POWER = 3.5
CACHE_BITS = 16


def heuristic_table(t: BoardTables) -> np.ndarray:
    """Row -> heuristic value for every row of a board size (float64, vectorised over all rows)."""
    n = t.size
    rows = np.arange(1 << t.row_bits)
    exps = ((rows[:, None] >> (4 * np.arange(n))[None, :]) & 0xF).astype(np.float64)
    empty = (exps == 0).sum(axis=1)
    # Merges count equal neighbours once the zeros between them are squeezed out (a stable sort of "is empty").
    order = np.argsort(exps == 0, axis=1, kind="stable")
    packed = np.take_along_axis(exps, order, axis=1)
    merges = ((packed[:, 1:] == packed[:, :-1]) & (packed[:, 1:] > 0)).sum(axis=1)
    power = exps**HEUR_MONOTONICITY_POWER
    drop = power[:, :-1] - power[:, 1:]
    mono_left = np.where(drop > 0, drop, 0.0).sum(axis=1)
    mono_right = np.where(drop < 0, -drop, 0.0).sum(axis=1)
    tile_sum = (exps**HEUR_SUM_POWER).sum(axis=1)
    return (
        HEUR_LOST
        + HEUR_EMPTY * empty
        + HEUR_MERGES * merges
        - HEUR_MONOTONICITY * np.minimum(mono_left, mono_right)
        - HEUR_SUM * tile_sum
    )


@nb.njit(cache=True)
def _column(board: np.uint64, c: int, size: int) -> np.uint64:
    packed = np.uint64(0)
    for r in range(size):
        nibble = (board >> np.uint64(4 * (size * r + c))) & np.uint64(0xF)
        packed |= nibble << np.uint64(4 * r)
    return packed


@nb.njit(cache=True)
def _move(board: np.uint64, action: int, size: int, left: np.ndarray, right: np.ndarray) -> np.uint64:
    rbits = 4 * size
    rmask = np.uint64((1 << rbits) - 1)
    out = np.uint64(0)
    if action == 1 or action == 3:  # right / left: rows are contiguous
        table = left if action == 3 else right
        for r in range(size):
            shift = np.uint64(rbits * r)
            out |= np.uint64(table[(board >> shift) & rmask]) << shift
        return out
    table = left if action == 0 else right  # up / down: a column read top-down is a row read left-right
    for c in range(size):
        moved = np.uint64(table[_column(board, c, size)])
        for r in range(size):
            out |= ((moved >> np.uint64(4 * r)) & np.uint64(0xF)) << np.uint64(4 * (size * r + c))
    return out


@nb.njit(cache=True)
def _heuristic(board: np.uint64, size: int, htab: np.ndarray) -> float:
    rmask = np.uint64((1 << (4 * size)) - 1)
    total = 0.0
    for i in range(size):
        total += htab[(board >> np.uint64(4 * size * i)) & rmask]
        total += htab[_column(board, i, size)]
    return total


@nb.njit(cache=True)
def _count_empty(board: np.uint64, size: int) -> int:
    n = 0
    for i in range(size * size):
        if (board >> np.uint64(4 * i)) & np.uint64(0xF) == 0:
            n += 1
    return n


@nb.njit(cache=True)
def _chance_value(board, depth, prob, size, left, right, htab, keys, vals, depths, cutoff):  # noqa: ANN001, ANN202
    """Expected value over the tile spawned on ``board`` (the board right after a move).

    The max node (best of the moves after the spawn; 0, the "lost" value, when none is legal) is inlined rather
    than a second function: numba's on-disk cache crashes on mutually recursive functions.
    """
    if depth <= 0 or prob < cutoff:
        return _heuristic(board, size, htab)
    slot = (board * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(64 - CACHE_BITS)
    if keys[slot] == board and depths[slot] >= depth:
        return vals[slot]
    n_empty = _count_empty(board, size)
    total = 0.0
    for i in range(size * size):
        shift = np.uint64(4 * i)
        if (board >> shift) & np.uint64(0xF) != 0:
            continue
        for tile in range(1, 3):
            p_tile = 0.9 if tile == 1 else 0.1
            child = board | (np.uint64(tile) << shift)
            best = 0.0
            for action in range(4):
                moved = _move(child, action, size, left, right)
                if moved != child:
                    value = _chance_value(
                        moved, depth - 1, prob * p_tile / n_empty, size, left, right, htab, keys, vals, depths, cutoff
                    )
                    best = max(best, value)
            total += p_tile * best
    value = total / n_empty
    keys[slot] = board
    depths[slot] = depth
    vals[slot] = value
    return value


@nb.njit(cache=True)
def _move_values(board, depth, size, left, right, htab, keys, vals, depths, cutoff):  # noqa: ANN001, ANN202
    depths[:] = -1  # clear the cache: results must not depend on earlier searches
    out = np.full(4, -np.inf)
    for action in range(4):
        moved = _move(board, action, size, left, right)
        if moved != board:
            out[action] = _chance_value(moved, depth, 1.0, size, left, right, htab, keys, vals, depths, cutoff)
    return out


class Expectimax:
    """Expectimax search on the boards of one size.

    Args:
        size: board side (2..4).
        depth: chance layers to search; None adapts it to the board (see ``depth_for``).
        prob_cutoff: branches less likely than this are scored by the heuristic instead of searched.
    """

    def __init__(self, size: int = 4, depth: int | None = None, prob_cutoff: float = 1e-4) -> None:
        self.tables = tables(size)
        self.size = size
        self.depth = depth
        self.prob_cutoff = float(prob_cutoff)
        self._htab = heuristic_table(self.tables)
        self._keys = np.zeros(1 << CACHE_BITS, dtype=np.uint64)
        self._vals = np.zeros(1 << CACHE_BITS, dtype=np.float64)
        self._depths = np.full(1 << CACHE_BITS, -1, dtype=np.int64)

    def depth_for(self, board: int) -> int:
        """The search depth used for ``board``: deeper as the board fills up."""
        if self.depth is not None:
            return self.depth
        empty = self.tables.empty_mask(board).bit_count()
        return 1 if empty >= 7 else 2 if empty >= 3 else 3

    def move_values(self, board: int, depth: int | None = None) -> np.ndarray:
        """Expected heuristic value of each action (Up, Right, Down, Left); ``-inf`` for moves that change nothing."""
        d = self.depth_for(board) if depth is None else depth
        t = self.tables
        return _move_values(
            np.uint64(board),
            d,
            self.size,
            t.left_np,
            t.right_np,
            self._htab,
            self._keys,
            self._vals,
            self._depths,
            self.prob_cutoff,
        )

    def best_action(self, board: int, depth: int | None = None) -> int | None:
        """The action with the highest value, or None when no move changes the board (game over)."""
        values = self.move_values(board, depth)
        best = int(np.argmax(values))
        return None if values[best] == -np.inf else best


@cache
def expectimax(size: int) -> Expectimax:
    """A shared adaptive-depth ``Expectimax`` for a board size (the env's ``oracle_action`` uses it)."""
    return Expectimax(size)
