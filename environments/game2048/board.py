"""2048 board mechanics on a bitboard: one Python int, 4 bits (a tile exponent) per cell.

Cell ``(r, c)`` of a ``size`` x ``size`` board lives at bit ``4 * (size * r + c)``; exponent 0 is an empty cell and
exponent ``e`` is the tile ``2**e``. A row is therefore a ``4 * size``-bit integer, small enough (65,536 values for
4x4) to precompute the result of sliding it, so a move is a handful of table lookups instead of a per-cell loop.
Columns are gathered into the row layout with one multiplication (see ``BoardTables.move``).

Exponents are nibbles, so tiles cap at 2**15 = 32768: two 32768 tiles do not merge. On 4x4 that is far beyond what
play reaches in practice (it takes tens of thousands of moves); on smaller boards it is unreachable.
"""

from __future__ import annotations

from functools import cache

import numpy as np

UP, RIGHT, DOWN, LEFT = 0, 1, 2, 3
ACTION_NAMES: tuple[str, ...] = ("Up", "Right", "Down", "Left")
SUPPORTED_SIZES: tuple[int, ...] = (2, 3, 4)
MAX_EXPONENT = 15
#: Exponents 0..15: the one-hot struct view has this many planes.
NUM_PLANES = MAX_EXPONENT + 1
#: Probability that a spawned tile is a 4 (exponent 2) rather than a 2.
FOUR_PROBABILITY = 0.1


def slide_row(cells: list[int]) -> tuple[list[int], int]:
    """Slide one row of exponents towards index 0 and merge; return the new row and the merged tile sum.

    This is the readable reference the tables are built from: tiles compact towards the front, then equal
    neighbours merge front-first, each tile at most once per move (``[1, 1, 1, 1]`` -> ``[2, 2, 0, 0]``).
    """
    tiles = [e for e in cells if e]
    out: list[int] = []
    score = 0
    i = 0
    while i < len(tiles):
        e = tiles[i]
        if i + 1 < len(tiles) and tiles[i + 1] == e and e < MAX_EXPONENT:
            out.append(e + 1)
            score += 1 << (e + 1)
            i += 2
        else:
            out.append(e)
            i += 1
    return out + [0] * (len(cells) - len(out)), score


class BoardTables:
    """Precomputed move tables and helpers for one board size.

    Build through ``tables(size)`` (cached): the 4x4 tables take a fraction of a second and some megabytes, so
    every env of a size shares one instance.

    Attributes:
        size: board side.
        row_mask: mask of one row (``4 * size`` bits).
        left, right: row -> row after sliding left/right.
        up, down: packed column -> that column after sliding up/down, spread back into column 0 of the board.
        score: row -> merged tile sum of sliding it (the same in both directions).
        row_max: row -> largest exponent in it.
        onehot: ``(NUM_PLANES, rows, size)`` uint8; ``onehot[:, row]`` is the one-hot planes of that row.
    """

    def __init__(self, size: int) -> None:
        if size not in SUPPORTED_SIZES:
            raise ValueError(f"size={size!r} is not supported; choose one of {SUPPORTED_SIZES} (the board side).")
        self.size = size
        self.num_cells = size * size
        self.row_bits = 4 * size
        self.row_mask = (1 << self.row_bits) - 1
        self.row_shifts: tuple[int, ...] = tuple(self.row_bits * r for r in range(size))
        self.col_shifts: tuple[int, ...] = tuple(4 * c for c in range(size))
        # Bit 0 of every nibble of the board: the zero-nibble test in ``empty_mask`` lands its flags here.
        self.nibble_lsb = sum(1 << (4 * i) for i in range(self.num_cells))
        # Gathering a column: nibble r sits at bit row_bits*r; multiplying by the sum of 2**(k - (row_bits-4)*j)
        # moves it to bit k + 4r, and the products for j != r land outside [k, k + row_bits) without overlapping.
        self.col_mask = sum(0xF << s for s in self.row_shifts)
        self.col_shift = (self.row_bits - 4) * (size - 1)
        self.col_magic = sum(1 << (self.col_shift - (self.row_bits - 4) * j) for j in range(size))
        self._build_tables()

    def _build_tables(self) -> None:
        n_rows = 1 << self.row_bits
        size = self.size
        left, right, score, row_max = [0] * n_rows, [0] * n_rows, [0] * n_rows, [0] * n_rows
        for row in range(n_rows):
            cells = [(row >> (4 * c)) & 0xF for c in range(size)]
            moved, gained = slide_row(cells)
            moved_r, _ = slide_row(cells[::-1])
            left[row] = sum(e << (4 * c) for c, e in enumerate(moved))
            right[row] = sum(e << (4 * c) for c, e in enumerate(moved_r[::-1]))
            score[row] = gained
            row_max[row] = max(cells)
        self.left, self.right, self.score, self.row_max = left, right, score, row_max
        self.up = [self.spread_column(r) for r in left]
        self.down = [self.spread_column(r) for r in right]
        exps = (np.arange(n_rows)[:, None] >> (4 * np.arange(size))[None, :]) & 0xF  # (rows, size)
        self.onehot = np.ascontiguousarray((exps[None, :, :] == np.arange(NUM_PLANES)[:, None, None]).astype(np.uint8))
        self.left_np = np.asarray(left, dtype=np.uint16)
        self.right_np = np.asarray(right, dtype=np.uint16)
        self.score_np = np.asarray(score, dtype=np.float64)

    def spread_column(self, packed: int) -> int:
        """Place a row-layout value (cell i at bit 4i) into column 0 of the board (cell i at row i)."""
        return sum(((packed >> (4 * i)) & 0xF) << s for i, s in enumerate(self.row_shifts))

    # ------------------------------------------------------------------ hot path
    def move(self, board: int, action: int) -> tuple[int, int]:
        """Slide ``board`` in direction ``action``; return the new board and the merged tile sum."""
        new = 0
        score = 0
        score_t = self.score
        mask = self.row_mask
        if action == LEFT or action == RIGHT:
            table = self.left if action == LEFT else self.right
            for shift in self.row_shifts:
                row = (board >> shift) & mask
                new |= table[row] << shift
                score += score_t[row]
            return new, score
        table = self.up if action == UP else self.down
        cmask, magic, cshift = self.col_mask, self.col_magic, self.col_shift
        for shift in self.col_shifts:
            col = ((((board >> shift) & cmask) * magic) >> cshift) & mask
            new |= table[col] << shift
            score += score_t[col]
        return new, score

    def empty_mask(self, board: int) -> int:
        """Bit 4i is set when cell i is empty."""
        nonzero = board | (board >> 1) | (board >> 2) | (board >> 3)
        return self.nibble_lsb ^ (nonzero & self.nibble_lsb)

    def spawn(self, board: int, u: float) -> tuple[int, int, int]:
        """Add a tile on an empty cell chosen by ``u`` in [0, 1).

        One uniform draw decides both the cell (its integer part after scaling by the empty count) and the
        value (its fractional part: a 4 below ``FOUR_PROBABILITY``), which keeps the hot path to one RNG call.

        Returns:
            The new board, the spawned exponent (1 or 2; 0 when the board was full and is returned unchanged)
            and the number of empty cells left.
        """
        empty = self.empty_mask(board)
        n = empty.bit_count()
        if n == 0:
            return board, 0, 0
        x = u * n
        k = int(x)
        exponent = 2 if x - k < FOUR_PROBABILITY else 1
        for _ in range(k):
            empty &= empty - 1  # drop the lowest empty cell until the k-th is lowest
        return board | (exponent << ((empty & -empty).bit_length() - 1)), exponent, n - 1

    def max_exponent(self, board: int) -> int:
        """The largest exponent on the board."""
        mask, table = self.row_mask, self.row_max
        top = 0
        for s in self.row_shifts:
            e = table[(board >> s) & mask]
            if e > top:
                top = e
        return top

    def rows(self, board: int) -> list[int]:
        """The row integers of ``board``, top to bottom."""
        mask = self.row_mask
        return [(board >> s) & mask for s in self.row_shifts]

    def onehot_planes(self, board: int) -> np.ndarray:
        """A fresh ``(NUM_PLANES, size, size)`` uint8 one-hot of the exponents."""
        # take(mode="clip") skips the bounds check that makes fancy indexing twice as slow; rows are in range.
        if self.size == 4:  # 16-bit rows: the little-endian bytes of the board are the rows themselves
            return self.onehot.take(np.frombuffer(board.to_bytes(8, "little"), dtype=np.uint16), axis=1, mode="clip")
        return self.onehot.take(self.rows(board), axis=1, mode="clip")

    # ------------------------------------------------------------------ helpers off the hot path
    def legal_actions(self, board: int) -> list[bool]:
        """For each action, whether it changes the board."""
        return [self.move(board, a)[0] != board for a in range(4)]

    def is_game_over(self, board: int) -> bool:
        """True when no move changes the board."""
        return not any(self.legal_actions(board))

    def to_exponents(self, board: int) -> np.ndarray:
        """The ``(size, size)`` int array of exponents."""
        flat = [(board >> (4 * i)) & 0xF for i in range(self.num_cells)]
        return np.asarray(flat, dtype=np.int64).reshape(self.size, self.size)

    def from_exponents(self, exponents: np.ndarray | list[list[int]]) -> int:
        """Pack a ``(size, size)`` array of exponents (0..15) into a board."""
        arr = np.asarray(exponents, dtype=np.int64)
        if arr.shape != (self.size, self.size) or arr.min() < 0 or arr.max() > MAX_EXPONENT:
            raise ValueError(
                f"exponents must be a {self.size}x{self.size} array of values in 0..{MAX_EXPONENT}; got shape "
                f"{arr.shape} with range {arr.min()}..{arr.max()}."
            )
        return sum(int(e) << (4 * i) for i, e in enumerate(arr.ravel()))

    def start_board(self, seed: int) -> int:
        """The start of a new game for a task seed: two tiles, placed like ordinary spawns.

        The two uniforms come from splitmix64 seeded with ``seed`` rather than a numpy Generator, whose
        construction would cost more than the rest of ``reset``.
        """
        u0, u1 = splitmix64_uniforms(seed, 2)
        board, _, _ = self.spawn(0, u0)
        board, _, _ = self.spawn(board, u1)
        return board


def splitmix64_uniforms(seed: int, n: int) -> list[float]:
    """``n`` uniforms in [0, 1) from the splitmix64 sequence seeded with ``seed`` (a standard 64-bit mixer)."""
    mask = (1 << 64) - 1
    state = seed & mask
    out = []
    for _ in range(n):
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        z ^= z >> 31
        out.append((z >> 11) * 2.0**-53)
    return out


@cache
def tables(size: int) -> BoardTables:
    """The shared ``BoardTables`` of a board size."""
    return BoardTables(size)
