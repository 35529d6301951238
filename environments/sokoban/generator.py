"""Seeded Sokoban level generation by reverse play, in the manner of gym-sokoban but much cheaper.

1. Topology: a random walk carves small floor shapes into a walled room (the outer ring stays wall).
2. Placement: boxes start on targets (only cells a box can be pulled off of), the player on another floor cell.
3. Reverse play: several random walks of *pulls* (the reverse of pushes). Each pull picks a box the player can
   reach and drags it one cell; with some probability the walk keeps pulling the same box the same way, which
   yields long straight pushes. Every state is scored like gym-sokoban (number of times the pulled box changes
   times the boxes' total Manhattan displacement; zero while any box is on a target), and the best state becomes
   the start, with the player put on a random cell of its region.

Reversing the pulls gives a solution, so every level is solvable. Instead of gym-sokoban's exhaustive
depth-first search over up to 300,000 states, a few hundred pulls are sampled, which is what makes generation
fast. All randomness comes from one ``numpy.random.Generator`` seeded from (seed, room size, boxes): the same
seed always gives the same level, whatever RNG the env holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from environments.sokoban.xsb import Level

#: Floor shapes stamped by the topology walk, as (row, col) offsets from the walker.
_SHAPES = (
    ((0, 0), (0, -1), (0, 1)),
    ((0, 0), (-1, 0), (1, 0)),
    ((0, 0), (0, 1), (1, 0)),
    ((0, 0), (0, -1), (1, 0), (1, -1)),
    ((0, 0), (0, 1), (-1, 0)),
)
_TURN_PROB = 0.35
_KEEP_PULLING_PROB = 0.6


@dataclass(frozen=True)
class GeneratorConfig:
    """Settings of the reverse-play generator.

    Attributes:
        height: rows, outer walls included.
        width: columns, outer walls included.
        num_boxes: boxes (and targets).
        walk_steps: steps of the topology walk (None: ``int(1.7 * (height + width))`` as in gym-sokoban).
        num_walks: independent reverse-play walks per topology.
        pulls_per_walk: pulls per walk (None: ``10 * num_boxes + height + width``).
        min_displacement: the start must have moved the boxes at least this far in total (Manhattan).
        max_tries: topologies tried before giving up.
    """

    height: int
    width: int
    num_boxes: int
    walk_steps: int | None = None
    num_walks: int = 4
    pulls_per_walk: int | None = None
    min_displacement: int = 2
    max_tries: int = 200

    def __post_init__(self) -> None:
        if not (4 <= self.height <= 255 and 4 <= self.width <= 255):
            raise ValueError(f"dim_room=({self.height}, {self.width}) must be between 4x4 and 255x255 "
                             "(the outer ring is wall, so a 4x4 room has a 2x2 interior).")
        interior = (self.height - 2) * (self.width - 2)
        if not 1 <= self.num_boxes <= max(1, interior // 3):
            raise ValueError(
                f"num_boxes={self.num_boxes} does not fit a {self.height}x{self.width} room; use 1.."
                f"{max(1, interior // 3)} boxes (a third of the {interior} interior cells) or a larger dim_room."
            )


class _Stream:
    """Uniform floats drawn from a numpy Generator in blocks (a Python float per draw is ~20x cheaper)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._buf: list[float] = []

    def random(self) -> float:
        if not self._buf:
            self._buf = self._rng.random(512).tolist()[::-1]
        return self._buf.pop()

    def below(self, n: int) -> int:
        return min(int(self.random() * n), n - 1)


def generate_level(config: GeneratorConfig, seed: int) -> Level:
    """Generate the level of ``seed`` for ``config``; deterministic in (config, seed).

    Raises:
        RuntimeError: no acceptable level was found in ``config.max_tries`` topologies (a room far too small
            for its boxes).
    """
    rng = np.random.default_rng([seed, config.height, config.width, config.num_boxes])
    stream = _Stream(rng)
    for _ in range(config.max_tries):
        floor = _topology(config, stream)
        level = _reverse_play(config, floor, stream)
        if level is not None:
            return level
    raise RuntimeError(
        f"No {config.height}x{config.width} level with {config.num_boxes} boxes found for seed {seed} in "
        f"{config.max_tries} tries; use fewer boxes or a larger room."
    )


@lru_cache(maxsize=512)
def cached_level(config: GeneratorConfig, seed: int) -> Level:
    """``generate_level`` with a small LRU cache: the split lookup and the reset that follows share one level."""
    return generate_level(config, seed)


def _topology(config: GeneratorConfig, stream: _Stream) -> bytearray:
    """A floor mask (1 = floor) carved by a random walk; the outer ring is always wall."""
    h, w = config.height, config.width
    floor = bytearray(h * w)
    r, c = 1 + stream.below(h - 2), 1 + stream.below(w - 2)
    directions = ((-1, 0), (1, 0), (0, -1), (0, 1))
    dr, dc = directions[stream.below(4)]
    steps = config.walk_steps if config.walk_steps is not None else int(1.7 * (h + w))
    for _ in range(steps):
        if stream.random() < _TURN_PROB:
            dr, dc = directions[stream.below(4)]
        r = min(max(r + dr, 1), h - 2)
        c = min(max(c + dc, 1), w - 2)
        for orow, ocol in _SHAPES[stream.below(len(_SHAPES))]:
            rr, cc = r + orow, c + ocol
            if 0 < rr < h - 1 and 0 < cc < w - 1:
                floor[rr * w + cc] = 1
    return floor


def _reverse_play(config: GeneratorConfig, floor: bytearray, stream: _Stream) -> Level | None:
    """Place targets and player on ``floor`` and pull the boxes away; None when this topology fails."""
    w, n = config.width, config.num_boxes
    deltas = (-w, w, -1, 1)
    cells = [i for i, f in enumerate(floor) if f]
    # A box can leave a target only if the player can stand next to it and step back once more.
    pullable = [i for i in cells if any(floor[i + d] and floor[i + 2 * d] for d in deltas
                                        if 0 <= i + 2 * d < len(floor))]
    if len(pullable) < n or len(cells) < n + 2:
        return None
    targets: list[int] = []
    while len(targets) < n:
        t = pullable[stream.below(len(pullable))]
        if t not in targets:
            targets.append(t)
    free = [i for i in cells if i not in targets]
    start_player = free[stream.below(len(free))]
    walls = bytes(1 - f for f in floor)
    best: tuple[int, list[int], int] | None = None  # (score, boxes, player)
    pulls = config.pulls_per_walk if config.pulls_per_walk is not None else 10 * n + config.height + config.width
    for _ in range(config.num_walks):
        found = _pull_walk(walls, deltas, targets, start_player, pulls, stream)
        if found is not None and (best is None or found[0] > best[0]):
            best = found
    if best is None:
        return None
    score, boxes, player = best
    displacement = sum(abs(b // w - t // w) + abs(b % w - t % w) for b, t in zip(boxes, targets, strict=True))
    if score <= 0 or displacement < config.min_displacement:
        return None
    blocked = bytearray(walls)
    for b in boxes:
        blocked[b] = 1
    region = _region(player, blocked, deltas)
    player = region[stream.below(len(region))]
    return Level(config.height, config.width, walls, tuple(sorted(targets)), tuple(sorted(boxes)), player)


def _pull_walk(walls: bytes, deltas: tuple[int, ...], targets: list[int], player: int, pulls: int,
               stream: _Stream) -> tuple[int, list[int], int] | None:
    """One reverse-play walk; returns the best (score, boxes, player) seen, or None if nothing scored."""
    boxes = list(targets)  # boxes[k] started on targets[k]
    blocked = bytearray(walls)
    for b in boxes:
        blocked[b] = 1
    target_set = set(targets)
    width = deltas[1]
    swaps, last_box, last_delta = 0, -1, 0
    best: tuple[int, list[int], int] | None = None
    for _ in range(pulls):
        region = set(_region(player, blocked, deltas))
        k, d = -1, 0
        if last_box >= 0 and stream.random() < _KEEP_PULLING_PROB:
            b = boxes[last_box]
            if b + last_delta in region and not blocked[b + 2 * last_delta]:
                k, d = last_box, last_delta
        if k < 0:
            options = [(i, dd) for i, b in enumerate(boxes) for dd in deltas
                       if b + dd in region and not blocked[b + 2 * dd]]
            if not options:
                break
            k, d = options[stream.below(len(options))]
        b = boxes[k]
        blocked[b] = 0
        blocked[b + d] = 1
        boxes[k] = b + d
        player = b + 2 * d
        if k != last_box:
            swaps += 1
        last_box, last_delta = k, d
        if any(x in target_set for x in boxes):
            continue
        dist = sum(abs(x // width - t // width) + abs(x % width - t % width)
                   for x, t in zip(boxes, targets, strict=True))
        score = swaps * dist
        if best is None or score > best[0]:
            best = (score, list(boxes), player)
    return best


def _region(start: int, blocked: bytearray, deltas: tuple[int, ...]) -> list[int]:
    """Cells the player reaches from ``start`` without crossing walls or boxes."""
    seen = {start}
    queue = [start]
    for i in queue:
        for d in deltas:
            j = i + d
            if not blocked[j] and j not in seen:
                seen.add(j)
                queue.append(j)
    return queue
