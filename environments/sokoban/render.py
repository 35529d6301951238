"""Text and RGB views of a Sokoban state held as four flat planes (wall, target, box, player).

Text styles:

* ``"xsb"`` (default): standard XSB symbols with ``-`` for floor so that every cell is visible, followed by a
  legend; cells outside the room of a level file are blank, as in the file. The grid is itself valid XSB.
* ``"ragen"``: the symbol grid of RAGEN's text Sokoban (``#`` wall, ``_`` floor, ``O`` target, ``X`` box, ``√`` box on
  target, ``P`` player, ``S`` player on target), unpadded, with the same kind of legend.

``positions_line`` adds, on request, where things are, in direction words: each box's offset from the player and
its nearest free target's offset from the box ("Box 1 up of you, target 2 left of it"). RAGEN's text Sokoban has
a coordinate format too; offsets spare a small model reading vertical relations off a grid, in few tokens.

The RGB view draws 16-pixel tiles with numpy (no pygame): one lookup of precomputed tiles per cell.
"""

from __future__ import annotations

import numpy as np

#: Cell symbols per style, indexed by cell code: 0 wall, 1 floor, 2 target, 3 box on target, 4 box,
#: 5 player, 6 player on target, 7 outside the room.
# RAGEN draws no outside region: everything beyond the room is wall there.
SYMBOLS: dict[str, str] = {"xsb": "#-.*$@+ ", "ragen": "#_O√XPS#"}
LEGENDS: dict[str, str] = {
    "xsb": "Legend: # wall, - floor, . target, $ box, * box on target, @ player, + player on target",
    "ragen": "Legend: # wall, _ floor, O target, X box, √ box on target, P player, S player on target",
}
TEXT_STYLES = tuple(SYMBOLS)
TILE = 16


def text_grid(grid: bytearray | bytes, size: int, width: int, rows: int, cols: int, outside: bytes,
              style: str) -> str:
    """The symbol grid of the top-left ``rows x cols`` cells of a state held in planes.

    Args:
        grid: the four planes back to back (wall, target, box, player), each ``size`` cells, row-major.
        size: cells per plane.
        width: cells per row of the planes.
        rows: rows to draw (the level's own height).
        cols: columns to draw (the level's own width).
        outside: per-cell 1 for cells outside the room (may be empty).
        style: "xsb" or "ragen".
    """
    symbols = SYMBOLS[style]
    lines = []
    for r in range(rows):
        chars = []
        for i in range(r * width, r * width + cols):
            if grid[i]:
                code = 7 if outside and outside[i] else 0
            elif grid[3 * size + i]:
                code = 5 + grid[size + i]
            elif grid[2 * size + i]:
                code = 4 - grid[size + i]
            else:
                code = 1 + grid[size + i]
            chars.append(symbols[code])
        lines.append("".join(chars).rstrip() if style == "xsb" else "".join(chars))
    return "\n".join(lines)


def neighbors_line(grid: bytearray | bytes, size: int, width: int, rows: int, cols: int) -> str:
    """What is next to the player in each direction, and behind a box there (where a push would send it).

    Example: ``Around you: up wall, down floor, left box then wall, right target.`` A cell is ``wall``,
    ``floor``, ``target``, ``box`` or ``box on target``; a box is followed by what lies beyond it (``then wall``,
    ``then box``...: the push is blocked unless that is floor or a target). Cells past the drawn grid read wall.
    """
    cells = [(r, c) for r in range(rows) for c in range(cols)]
    pr, pc = next((r, c) for r, c in cells if grid[3 * size + r * width + c])

    def kind(r: int, c: int, *, beyond: bool = False) -> str:
        if not (0 <= r < rows and 0 <= c < cols) or grid[r * width + c]:
            return "wall"
        i = r * width + c
        if grid[2 * size + i]:
            return "box on target" if grid[size + i] and not beyond else "box"
        return "target" if grid[size + i] else "floor"

    parts = []
    for name, (dr, dc) in (("up", (-1, 0)), ("down", (1, 0)), ("left", (0, -1)), ("right", (0, 1))):
        here = kind(pr + dr, pc + dc)
        if here.startswith("box"):
            here += f" then {kind(pr + 2 * dr, pc + 2 * dc, beyond=True)}"
        parts.append(f"{name} {here}")
    return "Around you: " + ", ".join(parts) + "."


def offset_words(dr: int, dc: int, whom: str) -> str:
    """``dr, dc`` (never both 0: a box shares no cell with the player or a free target) in direction words."""
    parts = [f"{abs(dr)} {'up' if dr < 0 else 'down'}"] if dr else []
    if dc:
        parts.append(f"{abs(dc)} {'left' if dc < 0 else 'right'}")
    return " and ".join(parts) + f" of {whom}"


def positions_line(grid: bytearray | bytes, size: int, width: int, rows: int, cols: int) -> str:
    """Where each box is from the player, and where the nearest free target is from each unplaced box.

    Example: ``Box 1 up and 1 right of you, target 2 left of it.`` The first offset says where to walk, the
    second which way to push. A box on a target reads ``box on target 1 left of you``. The nearest target is by
    Manhattan distance, ties to the first in row-major order.
    """
    cells = [(r, c, r * width + c) for r in range(rows) for c in range(cols)]
    pr, pc = next((r, c) for r, c, i in cells if grid[3 * size + i])
    free = [(r, c) for r, c, i in cells if grid[size + i] and not grid[2 * size + i]]
    items = []
    for r, c, i in cells:
        if not grid[2 * size + i]:
            continue
        if grid[size + i]:
            items.append(f"box on target {offset_words(r - pr, c - pc, 'you')}")
            continue
        item = f"box {offset_words(r - pr, c - pc, 'you')}"
        if free:
            tr, tc = min(free, key=lambda t: abs(t[0] - r) + abs(t[1] - c))
            item += f", target {offset_words(tr - r, tc - c, 'it')}"
        items.append(item)
    return "; ".join(items).capitalize() + "."


def _tiles() -> np.ndarray:
    """The eight 16x16 RGB tiles, indexed by cell code (outside draws like wall)."""
    t = np.zeros((8, TILE, TILE, 3), dtype=np.uint8)
    floor = np.array([40, 40, 46], np.uint8)
    t[:] = floor
    # Wall: bricks, with darker mortar every 4 rows and staggered joints.
    t[0] = (150, 78, 52)
    t[0, ::4, :] = (95, 60, 45)
    for band in range(4):
        t[0, band * 4:(band + 1) * 4, (band % 2) * 8] = (95, 60, 45)
    t[7] = t[0]
    target = np.zeros((TILE, TILE), bool)
    target[5:11, 5:11] = True
    target[7:9, 7:9] = False
    for code in (2, 3, 6):
        t[code][target] = (220, 60, 60)
    # Boxes: a square with a darker border; green when it sits on a target.
    for code, fill, edge in ((4, (205, 150, 60), (120, 80, 30)), (3, (90, 190, 90), (40, 110, 40))):
        t[code, 2:14, 2:14] = edge
        t[code, 4:12, 4:12] = fill
    yy, xx = np.mgrid[0:TILE, 0:TILE]
    disc = (yy - 7.5) ** 2 + (xx - 7.5) ** 2 <= 5.5**2
    for code in (5, 6):
        t[code][disc] = (70, 140, 235)
    return t


_TILES = _tiles()


def rgb_image(planes: np.ndarray) -> np.ndarray:
    """An ``(16*H, 16*W, 3)`` uint8 image of ``(4, H, W)`` planes (wall, target, box, player)."""
    wall, target, box, player = (planes[k].astype(np.intp) for k in range(4))
    code = np.where(box == 1, 4 - target, 1 + target)
    code = np.where(player == 1, 5 + target, code)
    code = np.where(wall == 1, 0, code)
    h, w = code.shape
    return _TILES[code].transpose(0, 2, 1, 3, 4).reshape(h * TILE, w * TILE, 3)
