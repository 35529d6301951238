"""Text rendering of 2048 boards, in ProAct's row format.

Each row is ``[`` + the cells right-justified to width 5 and joined by spaces + ``]``, with ``.`` for an empty
cell (``[    2    16     .    16]``), followed by a ``Score:`` line. Width 5 fits every tile up to 32768, the
largest one the bitboard holds, so columns always line up.

``render_board`` renders straight from the bitboard and memoises the string of each row value it meets, so the
per-step text view costs a few dict lookups (at most 65,536 rows of 25 characters for 4x4, about 5 MB, and in
practice far fewer since play visits a small share of the rows).
"""

from __future__ import annotations

from environments.game2048.board import ACTION_NAMES

CELL_WIDTH = 5
EMPTY_CELL = "."
#: Every character the text view can contain.
TEXT_CHARSET: frozenset[str] = frozenset("0123456789.[] \nScore:")
#: Longest score line the bound below allows for (the 4x4 score cannot pass 10 digits with tiles <= 32768).
_SCORE_DIGITS = 10


def render_rows(exponents: list[list[int]]) -> str:
    """The board rows, one per line, from a nested list of exponents (0 = empty)."""
    lines = []
    for row in exponents:
        cells = (str(1 << e) if e else EMPTY_CELL for e in row)
        lines.append("[" + " ".join(cell.rjust(CELL_WIDTH) for cell in cells) + "]")
    return "\n".join(lines)


_row_strings: dict[int, dict[int, str]] = {}


def render_board(board: int, size: int, score: int) -> str:
    """The per-step text view of a bitboard (4-bit exponents, row-major): the rows, then ``Score: N``."""
    cache = _row_strings.setdefault(size, {})
    bits = 4 * size
    mask = (1 << bits) - 1
    lines = []
    for r in range(size):
        row = (board >> (bits * r)) & mask
        text = cache.get(row)
        if text is None:
            text = cache[row] = render_rows([[(row >> (4 * c)) & 0xF for c in range(size)]])
        lines.append(text)
    lines.append(f"Score: {score}")
    return "\n".join(lines)


def text_max_length(size: int, moves: bool = False) -> int:
    """An upper bound on the text view's length for a ``size`` x ``size`` board (``moves``: with the moves line)."""
    row = 2 + size * CELL_WIDTH + (size - 1)
    return size * (row + 1) + len("Score: ") + _SCORE_DIGITS + (1 + len(moves_line([True] * 4)) if moves else 0)


NO_MOVES_LINE = "No move changes the board."


def moves_line(legal: list[bool]) -> str:
    """The line of ``text_moves``: which moves change the board, in action order (Up, Right, Down, Left).

    Example: ``Moves that change the board: Up, Left.``; ``No move changes the board.`` when the game is over.
    """
    names = [name for name, ok in zip(ACTION_NAMES, legal) if ok]
    return f"Moves that change the board: {', '.join(names)}." if names else NO_MOVES_LINE


#: Every character the text view with the moves line can contain.
MOVES_CHARSET: frozenset[str] = TEXT_CHARSET | frozenset(moves_line([True] * 4) + NO_MOVES_LINE)
