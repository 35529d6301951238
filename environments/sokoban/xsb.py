"""Sokoban levels and the standard XSB text format they are stored in.

A ``Level`` is an immutable flat (row-major) grid: wall cells, target cells, box cells and the player cell. Cells
outside the room (floor that the player cannot reach, as XSB writes the space around a level) are walls for play
and are remembered only so that the level can be written back the way it was drawn.

XSB symbols: ``#`` wall, ``@`` player, ``+`` player on target, ``$`` box, ``*`` box on target, ``.`` target and
space for floor (``-`` and ``_`` are accepted as floor too). A file holds several levels separated by blank lines;
lines starting with ``;`` are comments, and a comment (or ``Title: ...`` line) right before or after a level
names it. Every problem raises ``LevelFormatError`` naming the file, the level, the line and the fix.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from agentgym.errors import LevelFormatError

WALL_CHARS = "#"
FLOOR_CHARS = " -_"
BOARD_CHARS = "#@+$*. -_"


@dataclass(frozen=True)
class Level:
    """One Sokoban level on a flat ``height x width`` grid.

    Attributes:
        height: rows, outer walls included.
        width: columns, outer walls included.
        walls: one byte per cell, 1 for a wall (cells outside the room count as walls).
        targets: flat indices of the targets, sorted.
        boxes: flat indices of the boxes, sorted.
        player: flat index of the player.
        outside: one byte per cell, 1 for cells outside the room (all zero for generated levels); used only to
            draw the level as XSB does.
        title: display name (not part of the level's identity).
    """

    height: int
    width: int
    walls: bytes
    targets: tuple[int, ...]
    boxes: tuple[int, ...]
    player: int
    outside: bytes = b""
    title: str = ""

    @property
    def num_boxes(self) -> int:
        """Number of boxes (equal to the number of targets)."""
        return len(self.boxes)

    def key(self) -> bytes:
        """Content bytes identifying the level (title excluded): equal levels give equal keys."""
        header = bytes([self.height, self.width]) + self.player.to_bytes(2, "little")
        cells = bytearray(self.walls)
        for t in self.targets:
            cells[t] |= 2
        for b in self.boxes:
            cells[b] |= 4
        return header + bytes(cells)

    def digest(self) -> bytes:
        """An 8-byte hash of ``key()`` (cheap to put into state keys)."""
        return hashlib.blake2b(self.key(), digest_size=8).digest()

    def with_player(self, player: int) -> Level:
        """A copy with the player moved (used by the generator to place the start)."""
        return Level(self.height, self.width, self.walls, self.targets, self.boxes, player, self.outside, self.title)

    def to_xsb(self) -> str:
        """The level as XSB rows (no title line), trailing spaces removed."""
        targets, boxes = set(self.targets), set(self.boxes)
        outside = self.outside or bytes(len(self.walls))
        rows = []
        for r in range(self.height):
            chars = []
            for i in range(r * self.width, (r + 1) * self.width):
                if outside[i]:
                    chars.append(" ")
                elif self.walls[i]:
                    chars.append("#")
                elif i == self.player:
                    chars.append("+" if i in targets else "@")
                elif i in boxes:
                    chars.append("*" if i in targets else "$")
                else:
                    chars.append("." if i in targets else " ")
            rows.append("".join(chars).rstrip())
        return "\n".join(rows)


def format_xsb(levels: Iterable[Level]) -> str:
    """A whole XSB file: each level preceded by a ``; title`` comment, levels separated by blank lines."""
    parts = []
    for n, level in enumerate(levels, start=1):
        parts.append(f"; {level.title or n}\n\n{level.to_xsb()}\n")
    return "\n".join(parts)


def load_xsb(path: str | Path) -> list[Level]:
    """Read every level of an XSB file (raises ``LevelFormatError`` naming the file on any problem)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LevelFormatError(f"Level file {str(path)!r} does not exist; pass the path of an .xsb file.") from None
    except UnicodeDecodeError as exc:
        raise LevelFormatError(f"Level file {str(path)!r} is not UTF-8 text ({exc}); save it as plain text.") from None
    return parse_xsb(text, source=str(path))


def _is_board_line(line: str) -> bool:
    stripped = line.strip()
    if not stripped or stripped.startswith(";"):
        return False
    # A board row starts with a board symbol; a row that merely contains one (like "Title: A.1") does not.
    return stripped[0] in "#@+$*" or all(ch in BOARD_CHARS for ch in stripped)


def _comment_text(line: str) -> str:
    return line.strip().lstrip(";").strip()


def parse_xsb(text: str, source: str = "<string>") -> list[Level]:
    """Parse every level in XSB ``text``; ``source`` names the file in error messages.

    Raises:
        LevelFormatError: the text holds no level, or a level is malformed (see ``build_level``).
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    levels: list[Level] = []
    pending_title = ""  # the last comment/text line seen since the previous level
    i = 0
    while i < len(lines):
        line = lines[i]
        if not _is_board_line(line):
            stripped = line.strip()
            if stripped.lower().startswith("title:"):
                title = stripped[6:].strip()
                if levels and _title_belongs_to_previous(lines, i):
                    levels[-1] = _retitle(levels[-1], title)
                else:
                    pending_title = title
            elif stripped:
                candidate = _comment_text(stripped)
                if levels and not levels[-1].title and _title_belongs_to_previous(lines, i):
                    levels[-1] = _retitle(levels[-1], candidate)
                elif candidate:
                    pending_title = candidate
            i += 1
            continue
        start = i
        while i < len(lines) and _is_board_line(lines[i]):
            i += 1
        number = len(levels) + 1
        levels.append(build_level(lines[start:i], source=source, number=number, first_line=start + 1,
                                  title=pending_title))
        pending_title = ""
    if not levels:
        raise LevelFormatError(
            f"{source}: no level found. A level is a block of rows drawn with # (wall), @ (player), $ (box), "
            ". (target), * (box on target), + (player on target) and spaces."
        )
    return levels


def _title_belongs_to_previous(lines: list[str], i: int) -> bool:
    """True when line ``i`` directly follows a board block (no blank line between): it is that level's title."""
    j = i - 1
    while j >= 0 and lines[j].strip() and not _is_board_line(lines[j]):
        j -= 1
    return j >= 0 and _is_board_line(lines[j])


def _retitle(level: Level, title: str) -> Level:
    return Level(level.height, level.width, level.walls, level.targets, level.boxes, level.player, level.outside,
                 title)


def build_level(rows: list[str], *, source: str = "<string>", number: int = 1, first_line: int = 1,
                title: str = "") -> Level:
    """Build a ``Level`` from XSB rows, validating it.

    Args:
        rows: the level's rows (ragged rows are padded with floor outside the room).
        source: file name for error messages.
        number: 1-based level number in the file, for error messages.
        first_line: 1-based line number of ``rows[0]`` in the file, for error messages.
        title: the level's title.

    Raises:
        LevelFormatError: unknown symbol, no or several players, boxes != targets, no box, or a room the player
            can walk out of.
    """
    name = f"{source}: level {number}" + (f" ({title!r})" if title else "")
    rows = [row.rstrip() for row in rows]
    height, width = len(rows), max(len(row) for row in rows)
    if height > 255 or width > 255:
        raise LevelFormatError(f"{name} is {height}x{width}; levels up to 255x255 are supported.")
    grid = [row.ljust(width) for row in rows]
    players, boxes, targets, walls = [], [], [], bytearray(height * width)
    for r, row in enumerate(grid):
        for c, ch in enumerate(row):
            i = r * width + c
            if ch not in BOARD_CHARS:
                raise LevelFormatError(
                    f"{name}, line {first_line + r}, column {c + 1}: unknown symbol {ch!r}. Use # wall, @ player, "
                    "+ player on target, $ box, * box on target, . target, space (or - or _) floor; "
                    "start comment lines with ';'."
                )
            walls[i] = ch == "#"
            if ch in "@+":
                players.append(i)
            if ch in "$*":
                boxes.append(i)
            if ch in ".*+":
                targets.append(i)

    def where(i: int) -> str:
        return f"line {first_line + i // width}, column {i % width + 1}"

    if not players:
        raise LevelFormatError(f"{name}: no player. Put '@' on a floor cell (or '+' on a target) inside the room.")
    if len(players) > 1:
        places = "; ".join(where(p) for p in players)
        raise LevelFormatError(f"{name}: {len(players)} players ({places}). Keep exactly one '@' or '+'.")
    if len(boxes) != len(targets):
        raise LevelFormatError(
            f"{name}: {len(boxes)} box(es) but {len(targets)} target(s). Every box needs a target: add or remove "
            "'$' / '.' ('*' is a box already on a target and counts as both)."
        )
    if not boxes:
        raise LevelFormatError(f"{name}: no box. Add at least one '$' and a matching '.' target.")
    inside = _room_region(players[0], walls, height, width, name, where)
    for i in boxes + targets:
        if not inside[i]:
            what = "box" if i in boxes else "target"
            raise LevelFormatError(f"{name}, {where(i)}: this {what} is outside the room the player is in; "
                                   "move it inside the walls or remove it.")
    outside = bytes(0 if inside[i] or walls[i] else 1 for i in range(height * width))
    all_walls = bytes(1 if walls[i] or outside[i] else 0 for i in range(height * width))
    return Level(height, width, all_walls, tuple(sorted(targets)), tuple(sorted(boxes)), players[0], outside, title)


def _room_region(start: int, walls: bytearray, height: int, width: int, name: str, where) -> bytearray:
    """Cells the player could reach if boxes were absent; raises when that region touches the grid border."""
    inside = bytearray(height * width)
    inside[start] = 1
    stack = [start]
    while stack:
        i = stack.pop()
        r, c = divmod(i, width)
        if r in (0, height - 1) or c in (0, width - 1):
            raise LevelFormatError(
                f"{name}: the room is not closed; the player can walk out at {where(i)}. Surround the room with "
                "'#' walls (floor outside the walls must not connect to the inside)."
            )
        for j in (i - width, i + width, i - 1, i + 1):
            if not walls[j] and not inside[j]:
                inside[j] = 1
                stack.append(j)
    return inside
