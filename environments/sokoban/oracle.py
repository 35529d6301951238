"""Optimal Sokoban solvers: push-optimal A* (ties broken by moves) and move-optimal BFS for small levels.

The A* searches over box configurations; a successor is one push, and the player's walk before it is the BFS
distance inside its current region. Pruning is sound (it never discards a solvable state):

* dead squares: cells from which a box can never reach any target, even on an otherwise empty board;
* freeze deadlocks: a pushed box that can move along neither axis (walls, dead squares on both sides, or other
  frozen boxes) while some box of that frozen group is off target;
* an admissible heuristic: the minimum-cost matching of boxes to targets by push distance (Hungarian algorithm),
  which also detects configurations where no assignment is possible.

Costs are lexicographic (pushes first, then moves), so the returned plan has the fewest pushes and, among those,
the fewest moves. With ``tie_break_moves=False`` the player is normalised to its region (fewer states, still
push-optimal). Plans are lists of actions 0 Up, 1 Down, 2 Left, 3 Right.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Sequence
from dataclasses import dataclass

from environments.sokoban.xsb import Level

INF = 1 << 30
#: Weight of one push in the lexicographic cost; larger than any possible move count.
PUSH_WEIGHT = 1 << 24


@dataclass(frozen=True)
class SolveResult:
    """What a solver found.

    Attributes:
        status: "solved", "unsolvable" (the search space was exhausted, or the start is a deadlock) or "limit"
            (``max_nodes`` or ``time_limit`` was reached first; nothing is proven).
        plan: the actions of an optimal solution when solved, else None.
        pushes: pushes in the plan (None unless solved).
        moves: moves (player steps, pushes included) in the plan (None unless solved).
        nodes: states expanded.
        seconds: wall time of the search.
        reason: a sentence explaining an unsolvable or limit result.
    """

    status: str
    plan: list[int] | None
    pushes: int | None
    moves: int | None
    nodes: int
    seconds: float
    reason: str = ""

    @property
    def solved(self) -> bool:
        """True when a plan was found."""
        return self.status == "solved"


class Board:
    """The static part of a level (walls, targets) with the tables the solvers need, computed once."""

    def __init__(self, level: Level) -> None:
        self.width = level.width
        self.size = level.height * level.width
        self.walls = bytes(level.walls)
        self.targets = tuple(level.targets)
        self.is_target = bytearray(self.size)
        for t in self.targets:
            self.is_target[t] = 1
        # Action order: Up, Down, Left, Right.
        self.deltas = (-self.width, self.width, -1, 1)
        self.push_dist = [self._pull_distances(t) for t in self.targets]
        self.dead = bytearray(
            0 if self.walls[c] or self.is_target[c] else int(min(d[c] for d in self.push_dist) >= INF)
            for c in range(self.size)
        )

    def _pull_distances(self, target: int) -> list[int]:
        """Pushes needed to bring a box from each cell to ``target`` on an empty board (walls only)."""
        dist = [INF] * self.size
        dist[target] = 0
        frontier = [target]
        walls = self.walls
        while frontier:
            nxt = []
            for x in frontier:
                for d in self.deltas:
                    # The box came from p = x - d, pushed by a player standing at p - d.
                    p = x - d
                    if 0 <= p - d < self.size and not walls[p] and not walls[p - d] and dist[p] == INF:
                        dist[p] = dist[x] + 1
                        nxt.append(p)
            frontier = nxt
        return dist

    def reach(self, player: int, blocked: bytearray) -> tuple[list[int], list[int]]:
        """BFS from ``player``: walking distance to every cell (-1 where unreachable) and the cells reached."""
        dist = [-1] * self.size
        dist[player] = 0
        queue = [player]
        deltas = self.deltas
        for i in queue:  # the list grows while iterating: a BFS queue without deque overhead
            nd = dist[i] + 1
            for d in deltas:
                j = i + d
                if not blocked[j] and dist[j] < 0:
                    dist[j] = nd
                    queue.append(j)
        return dist, queue

    def walk(self, start: int, goal: int, blocked: bytearray) -> list[int]:
        """A shortest list of move actions from ``start`` to ``goal`` (which must be reachable)."""
        came: dict[int, tuple[int, int]] = {start: (-1, -1)}
        queue = [start]
        for i in queue:
            if i == goal:
                break
            for action, d in enumerate(self.deltas):
                j = i + d
                if not blocked[j] and j not in came:
                    came[j] = (i, action)
                    queue.append(j)
        actions = []
        while goal != start:
            goal, action = came[goal]
            actions.append(action)
        return actions[::-1]

    def blocked_by(self, boxes: Sequence[int]) -> bytearray:
        """A per-cell occupancy map: walls and boxes."""
        blocked = bytearray(self.walls)
        for b in boxes:
            blocked[b] = 1
        return blocked

    def deadlock_reason(self, boxes: Sequence[int]) -> str:
        """Why this box configuration can never be solved, by the cheap tests ('' when none applies)."""
        box_set = set(boxes)
        for b in boxes:
            r, c = divmod(b, self.width)
            if self.dead[b]:
                return (f"the box at row {r + 1}, column {c + 1} is on a dead square: no sequence of pushes can "
                        "bring it to any target")
            if not self.is_target[b] and self.frozen_deadlock(b, box_set):
                return f"the box at row {r + 1}, column {c + 1} is frozen off target (it can never move again)"
        if self.lower_bound(boxes) >= INF:
            return "the boxes cannot all be brought to distinct targets"
        return ""

    def lower_bound(self, boxes: Sequence[int]) -> int:
        """Minimum total pushes over all box-to-target assignments (INF when no assignment exists)."""
        if len(boxes) == 1:
            return min(d[boxes[0]] for d in self.push_dist)
        cost = [[d[b] for d in self.push_dist] for b in boxes]
        return _min_assignment(cost)

    def frozen_deadlock(self, box: int, box_set: set[int]) -> bool:
        """True when ``box`` is frozen together with a group that has a box off target."""
        group: list[int] = []
        if not self._frozen(box, box_set, frozenset(), group):
            return False
        return any(not self.is_target[b] for b in group)

    def _frozen(self, box: int, box_set: set[int], held: frozenset[int], group: list[int]) -> bool:
        # Boxes already under examination count as walls, which is sound because we only conclude "frozen"
        # when the whole cycle is frozen.
        held = held | {box}
        local: list[int] = [box]
        for axis in (1, self.width):
            if not self._axis_blocked(box, axis, box_set, held, local):
                return False
        group.extend(local)
        return True

    def _axis_blocked(self, box: int, axis: int, box_set: set[int], held: frozenset[int], local: list[int]) -> bool:
        a, b = box - axis, box + axis
        walls, dead = self.walls, self.dead
        if walls[a] or walls[b] or a in held or b in held:
            return True
        if dead[a] and dead[b]:
            return True
        for n in (a, b):
            if n in box_set:
                sub: list[int] = []
                if self._frozen(n, box_set, held, sub):
                    local.extend(sub)
                    return True
        return False


def _min_assignment(cost: list[list[int]]) -> int:
    """Hungarian algorithm (potentials form, O(n^3)) for a square cost matrix; INF when infeasible."""
    n = len(cost)
    big = INF * 4
    u, v, match, way = [0] * (n + 1), [0] * (n + 1), [0] * (n + 1), [0] * (n + 1)
    for i in range(1, n + 1):
        match[0] = i
        j0 = 0
        minv = [big] * (n + 1)
        used = [False] * (n + 1)
        while True:
            used[j0] = True
            i0, delta, j1 = match[j0], big, 0
            row = cost[i0 - 1]
            for j in range(1, n + 1):
                if not used[j]:
                    cur = row[j - 1] - u[i0] - v[j]
                    if cur < minv[j]:
                        minv[j], way[j] = cur, j0
                    if minv[j] < delta:
                        delta, j1 = minv[j], j
            for j in range(n + 1):
                if used[j]:
                    u[match[j]] += delta
                    v[j] -= delta
                else:
                    minv[j] -= delta
            j0 = j1
            if match[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            match[j0] = match[j1]
            j0 = j1
    total = sum(cost[match[j] - 1][j - 1] for j in range(1, n + 1))
    return total if total < INF else INF


def solve(level: Level, *, boxes: Sequence[int] | None = None, player: int | None = None,
          tie_break_moves: bool = True, max_nodes: int = 1_000_000, time_limit: float | None = None,
          board: Board | None = None) -> SolveResult:
    """Find a push-optimal plan (ties broken by moves) by A*.

    Args:
        level: the level (its walls and targets; its boxes and player unless overridden).
        boxes: start from these box cells instead of the level's.
        player: start from this player cell instead of the level's.
        tie_break_moves: when True the plan has the fewest moves among push-optimal plans (the player's exact
            cell is part of the state); when False the player is normalised to its region (faster).
        max_nodes: give up (status "limit") after expanding this many states.
        time_limit: give up after this many seconds (None: no limit).
        board: a precomputed ``Board`` of ``level`` (saves recomputing the tables).

    Returns:
        A ``SolveResult``; "unsolvable" is a proof (exhausted search or a start deadlock), "limit" is not.
    """
    t0 = time.perf_counter()
    board = board or Board(level)
    start = tuple(sorted(level.boxes if boxes is None else boxes))
    player = level.player if player is None else player
    reason = board.deadlock_reason(start)
    if reason:
        return SolveResult("unsolvable", None, None, None, 0, time.perf_counter() - t0, reason)
    weight = PUSH_WEIGHT
    h_cache = {start: board.lower_bound(start)}
    start_key = (start, player)
    g_of = {start_key: 0}
    parent: dict[tuple, tuple | None] = {start_key: None}
    heap = [(h_cache[start] * weight, 0, 0, start_key)]
    closed: set[tuple] = set()
    nodes = counter = 0
    dead, deltas, goal = board.dead, board.deltas, board.targets
    while heap:
        _, neg_g, _, key = heapq.heappop(heap)
        boxes_now, pos = key
        g = -neg_g
        if g > g_of[key]:
            continue
        if boxes_now == goal:
            return _finish(board, start, player, parent, key, nodes, t0)
        blocked = board.blocked_by(boxes_now)
        dist, region = board.reach(pos, blocked)
        closed_key = key if tie_break_moves else (boxes_now, min(region))
        if closed_key in closed:
            continue
        closed.add(closed_key)
        nodes += 1
        if nodes > max_nodes or (time_limit is not None and nodes % 512 == 0 and time.perf_counter() - t0 > time_limit):
            what = f"{max_nodes} states" if nodes > max_nodes else f"{time_limit} s"
            return SolveResult("limit", None, None, None, nodes, time.perf_counter() - t0,
                               f"the search stopped at its limit of {what}; raise max_nodes/time_limit")
        box_set = set(boxes_now)
        for k, b in enumerate(boxes_now):
            for action, d in enumerate(deltas):
                walk = dist[b - d]
                ahead = b + d
                if walk < 0 or blocked[ahead] or dead[ahead]:
                    continue
                box_set.discard(b)
                box_set.add(ahead)
                frozen = not board.is_target[ahead] or len(boxes_now) > 1
                frozen = frozen and board.frozen_deadlock(ahead, box_set)
                box_set.discard(ahead)
                box_set.add(b)
                if frozen:
                    continue
                nb = tuple(sorted(boxes_now[:k] + (ahead,) + boxes_now[k + 1:]))
                h = h_cache.get(nb)
                if h is None:
                    h = h_cache[nb] = board.lower_bound(nb)
                if h >= INF:
                    continue
                ng = g + weight + (walk + 1 if tie_break_moves else 0)
                nkey = (nb, b)
                if ng < g_of.get(nkey, INF * weight):
                    g_of[nkey] = ng
                    parent[nkey] = (key, b, action)
                    counter += 1
                    heapq.heappush(heap, (ng + h * weight, -ng, counter, nkey))
    return SolveResult("unsolvable", None, None, None, nodes, time.perf_counter() - t0,
                       f"every reachable box configuration ({nodes} states) was searched without reaching the goal")


def _finish(board: Board, start: tuple[int, ...], player: int, parent: dict, key: tuple, nodes: int,
            t0: float) -> SolveResult:
    """Rebuild the action plan from the chain of pushes leading to ``key``."""
    pushes = []
    while parent[key] is not None:
        key, b, action = parent[key]
        pushes.append((b, action))
    pushes.reverse()
    plan: list[int] = []
    boxes = list(start)
    pos = player
    for b, action in pushes:
        d = board.deltas[action]
        plan += board.walk(pos, b - d, board.blocked_by(boxes))
        plan.append(action)
        boxes[boxes.index(b)] = b + d
        pos = b
    return SolveResult("solved", plan, len(pushes), len(plan), nodes, time.perf_counter() - t0)


def solve_moves(level: Level, *, boxes: Sequence[int] | None = None, player: int | None = None,
                max_nodes: int = 300_000, time_limit: float | None = None,
                board: Board | None = None) -> SolveResult:
    """Find a move-optimal plan by breadth-first search over (player, boxes); for small levels.

    Arguments are as for ``solve``. Dead-square pruning keeps the search exact: a box on a dead square can
    never be part of a solution.
    """
    t0 = time.perf_counter()
    board = board or Board(level)
    start = (level.player if player is None else player, tuple(sorted(level.boxes if boxes is None else boxes)))
    reason = board.deadlock_reason(start[1])
    if reason:
        return SolveResult("unsolvable", None, None, None, 0, time.perf_counter() - t0, reason)
    parent: dict[tuple, tuple | None] = {start: None}
    walls, dead, goal = board.walls, board.dead, board.targets
    frontier, nodes = [start], 0
    if start[1] == goal:
        return SolveResult("solved", [], 0, 0, 0, time.perf_counter() - t0)
    while frontier:
        nxt = []
        for state in frontier:
            nodes += 1
            if nodes > max_nodes or (time_limit is not None and nodes % 1024 == 0
                                     and time.perf_counter() - t0 > time_limit):
                return SolveResult("limit", None, None, None, nodes, time.perf_counter() - t0,
                                   "the move-optimal search stopped at its limit; raise max_nodes/time_limit, or "
                                   "use solve() (push-optimal A*) for larger levels")
            pos, boxes = state
            for action, d in enumerate(board.deltas):
                n = pos + d
                if walls[n]:
                    continue
                nb = boxes
                if n in boxes:
                    beyond = n + d
                    if walls[beyond] or beyond in boxes or dead[beyond]:
                        continue
                    nb = tuple(sorted(beyond if x == n else x for x in boxes))
                child = (n, nb)
                if child in parent:
                    continue
                parent[child] = (state, action)
                if nb == goal:
                    return _finish_moves(parent, child, nodes, t0)
                nxt.append(child)
        frontier = nxt
    return SolveResult("unsolvable", None, None, None, nodes, time.perf_counter() - t0,
                       f"every reachable state ({nodes}) was searched without reaching the goal")


def _finish_moves(parent: dict, state: tuple, nodes: int, t0: float) -> SolveResult:
    plan, pushes = [], 0
    while parent[state] is not None:
        prev, action = parent[state]
        pushes += prev[1] != state[1]
        plan.append(action)
        state = prev
    plan.reverse()
    return SolveResult("solved", plan, pushes, len(plan), nodes, time.perf_counter() - t0)
