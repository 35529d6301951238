"""The 2048 sliding-tile game as an agentgym environment."""

from __future__ import annotations

import re
from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from gymnasium import spaces

from agentgym.env import AgentEnv
from agentgym.errors import StateError
from agentgym.tasks import SeedTasks, TaskSet
from environments.game2048.board import ACTION_NAMES, MAX_EXPONENT, NUM_PLANES, SUPPORTED_SIZES, tables
from environments.game2048.render import MOVES_CHARSET, TEXT_CHARSET, moves_line, render_board, text_max_length

if TYPE_CHECKING:
    from environments.game2048.oracle import Expectimax

_DIRECTIONS = {"up": 0, "right": 1, "down": 2, "left": 3}
_SHORT = {"u": 0, "r": 1, "d": 2, "l": 3, "↑": 0, "→": 1, "↓": 2, "←": 3}
_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
_KEYED_RE = re.compile(r"\b(?:move|action)\s*[:=]\s*[*_`\"']*\s*(up|down|left|right)\b", re.IGNORECASE)
_WORD_RE = re.compile(r"\b(up|down|left|right)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Game2048State:
    """A snapshot of a 2048 episode (see ``Game2048Env.get_state``).

    Attributes:
        size: board side, checked on restore.
        board: the bitboard (4 bits of tile exponent per cell, row-major).
        score: merged tile sum so far.
        steps: steps taken in the episode (every step counts, including unchanged and invalid ones).
        stuck_steps: consecutive steps that left the board unchanged.
        max_exponent: exponent of the largest tile reached.
        success: whether the target tile has been reached.
        task: the task (start seed) of the episode.
        rng: ``np_random.bit_generator.state``, which drives the spawns.
    """

    size: int
    board: int
    score: int
    steps: int
    stuck_steps: int
    max_exponent: int
    success: bool
    task: Hashable
    rng: dict[str, Any]


class Game2048Env(AgentEnv[Game2048State]):
    """2048: slide numbered tiles on a grid, merging equal neighbours, to build a large tile.

    ## Description
    A ``size`` x ``size`` board starts with two tiles. Each move slides every tile as far as it goes in one
    direction; two equal tiles that meet merge into their sum, and a tile merges at most once per move
    (``[2, 2, 2, 2]`` moved left gives ``[4, 4, ., .]``). After every move that changes the board a new tile
    appears on a uniformly random empty cell: a 2 with probability 0.9, a 4 with probability 0.1. A move that
    changes nothing is an *illegal move*: no tile spawns and it costs ``illegal_move_penalty``.

    ## Action Space
    ``Discrete(4)``: 0 Up, 1 Right, 2 Down, 3 Left (the order of gymnasium-2048 and Jumanji). Text is accepted
    too: ``up``/``down``/``left``/``right`` in any case, inside ``<answer>...</answer>``, as ProAct's
    ``move: left`` or ``action: left``, or a single letter ``u``/``r``/``d``/``l`` (see ``parse_action``).

    ## Observation Space
    Set by ``obs_mode``:
    - ``"struct"``: ``Box(0, 1, (16, size, size), uint8)``, one-hot planes of the tile exponents: plane ``k`` marks
      the cells holding ``2**k`` and plane 0 the empty cells (exponents fit in 4 bits, so 16 planes always suffice).
    - ``"text"``: ProAct's rendering, one row per line with cells right-justified to width 5 and ``.`` for
      empty, then ``Score: N``; for example ``[    2     .     .     4]``.
    - ``"dict"``: ``{"text": ..., "struct": ...}``.

    ## Rewards
    The sum of the tiles created by merges in the step (the game-score increment; a 4+4 and a 2+2 merge give
    12). An illegal move gives ``-illegal_move_penalty``. Input that is not an action (unparseable text, an
    out-of-range index) is a no-op step with ``-invalid_action_penalty`` and ``info["action_valid"] = False``.

    ## Starting State
    The task is an int seed that places the two starting tiles (through its own splitmix64 stream), so a task fixes
    the start board; the spawns during play come from ``self.np_random``, which ``reset(seed=...)`` seeds.
    Train/dev/test split the seeds by hash; note that there are only a few hundred distinct start boards, so
    held-out episodes differ mainly in their spawn sequences.

    ## Episode End
    - Terminated: no move can change the board (game over), or ``terminate_on_target`` and the target tile was
      just reached.
    - Truncated: ``max_stuck_steps`` consecutive steps left the board unchanged (illegal moves and invalid
      input both count, as in ProAct), or ``max_steps`` steps were taken. These are budget limits: the board
      itself is still playable, so value learning should bootstrap through them.
    ``info["success"]`` turns True on the step a ``target_tile`` tile first appears and stays True; without
    ``terminate_on_target`` play goes on until the game ends, like the original game after its "win" screen.
    ``info`` also carries ``score``, ``max_tile``, ``action_effective`` (the board changed) and ``stuck_steps``.

    ## Arguments
    - ``size``: board side, 2, 3 or 4 (default 4; ProAct's variants use 3 and 4).
    - ``target_tile``: the tile that counts as success, a power of two from 8 to 32768 (default 2048).
    - ``max_steps``: truncate after this many steps; None (default) never truncates on time, which is safe
      because every legal move adds a tile and the board is finite, so games always end.
    - ``illegal_move_penalty``: magnitude subtracted for a move that changes nothing (default 1.0, ProAct's -1).
    - ``max_stuck_steps``: consecutive unchanged steps that truncate the episode (default 10, ProAct's rule);
      None disables the rule.
    - ``terminate_on_target``: end the episode when the target tile appears (default False).
    - ``text_moves``: add a line under the score naming the moves that change the board
      (``Moves that change the board: Up, Left.``). Off by default (ProAct's prompt shows the board only); it
      spares a small model reading columns off the grid, as Sokoban's ``text_neighbors`` does for walls.
    - ``obs_mode``, ``invalid_action_penalty`` (default 10.0, ProAct's -10 for unparseable replies),
      ``render_mode`` (``"ansi"`` or ``"human"``): see ``AgentEnv``.

    ## Limits
    Tile exponents are 4-bit, so tiles stop at 32768: two 32768 tiles do not merge.

    ## Version History
    - v0: initial version.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi", "human"], "render_fps": 4}
    action_names: ClassVar[tuple[str, ...]] = ACTION_NAMES
    tags: ClassVar[tuple[str, ...]] = ("puzzle", "stochastic", "planning", "single-agent")
    views: ClassVar[tuple[str, ...]] = ("struct", "text")
    text_charset: frozenset[str] = TEXT_CHARSET

    def __init__(
        self,
        *,
        size: int = 4,
        target_tile: int = 2048,
        max_steps: int | None = None,
        illegal_move_penalty: float = 1.0,
        max_stuck_steps: int | None = 10,
        terminate_on_target: bool = False,
        text_moves: bool = False,
        obs_mode: str = "dict",
        invalid_action_penalty: float = 10.0,
        render_mode: str | None = None,
    ) -> None:
        super().__init__(obs_mode=obs_mode, invalid_action_penalty=invalid_action_penalty, render_mode=render_mode)
        _validate(size, target_tile, max_steps, illegal_move_penalty, max_stuck_steps)
        if not isinstance(text_moves, bool):
            raise ValueError(f"text_moves={text_moves!r} must be true or false.")
        self.size = size
        self.target_tile = target_tile
        self.max_steps = max_steps
        self.illegal_move_penalty = float(illegal_move_penalty)
        self.max_stuck_steps = max_stuck_steps
        self.terminate_on_target = terminate_on_target
        self.text_moves = text_moves
        self.text_max_length = text_max_length(size, text_moves)
        self.text_charset = MOVES_CHARSET if text_moves else TEXT_CHARSET
        self._tables = tables(size)
        self._target_exponent = target_tile.bit_length() - 1
        self._tasks = SeedTasks(namespace=f"game2048/{size}")
        self.action_space = spaces.Discrete(4)
        self._build_observation_space(spaces.Box(0, 1, (NUM_PLANES, size, size), dtype=np.uint8))
        self._board = 0
        self._score = 0
        self._steps = 0
        self._stuck = 0
        self._max_exp = 0
        self._success = False

    # ------------------------------------------------------------------ episode
    @property
    def task_set(self) -> TaskSet:
        """Int seeds, split by hash under the namespace ``game2048/<size>``."""
        return self._tasks

    @property
    def board(self) -> np.ndarray:
        """The ``(size, size)`` array of tile values (0 for empty)."""
        exps = self._tables.to_exponents(self._board)
        return np.where(exps > 0, 1 << exps, 0)

    @property
    def score(self) -> int:
        """The merged tile sum so far."""
        return self._score

    def _reset_task(self, task: Hashable) -> dict[str, Any]:
        self._board = self._tables.start_board(int(task))  # type: ignore[arg-type]
        self._score = 0
        self._steps = 0
        self._stuck = 0
        self._max_exp = self._tables.max_exponent(self._board)
        self._success = False
        return {"score": 0, "max_tile": 1 << self._max_exp, "stuck_steps": 0}

    def _step(self, action: int | None) -> tuple[float, bool, bool, dict[str, Any]]:
        t = self._tables
        board = self._board
        new, gained = (board, 0) if action is None else t.move(board, action)
        self._steps += 1
        terminated = False
        if new != board:
            self._stuck = 0
            reached = False
            if gained:  # only merges create a bigger tile (a spawned 4 is handled below)
                top = t.max_exponent(new)
                if top > self._max_exp:
                    self._max_exp = top
                    reached = top >= self._target_exponent and not self._success
            new, spawned, empty_left = t.spawn(new, self.np_random.random())
            if spawned > self._max_exp:
                self._max_exp = spawned
            self._board = new
            self._score += gained
            reward = float(gained)
            if reached:
                self._success = True
                terminated = self.terminate_on_target
            # A board with an empty cell always has a legal move, so the full check runs only on full boards.
            if not empty_left and t.is_game_over(new):
                terminated = True
        else:
            self._stuck += 1
            reward = 0.0 if action is None else -self.illegal_move_penalty
            # Stepping on after game over (undefined in gymnasium) keeps reporting the end instead of playing on.
            terminated = not t.empty_mask(board) and t.is_game_over(board)
        truncated = (self.max_stuck_steps is not None and self._stuck >= self.max_stuck_steps) or (
            self.max_steps is not None and self._steps >= self.max_steps
        )
        info = {
            "success": self._success,
            "score": self._score,
            "max_tile": 1 << self._max_exp,
            "action_effective": new != board,
            "stuck_steps": self._stuck,
        }
        return reward, terminated, truncated, info

    # ------------------------------------------------------------------ views
    def _struct_obs(self) -> np.ndarray:
        return self._tables.onehot_planes(self._board)

    def text_observation(self) -> str:
        """The board in ProAct's row format, then the score (and with ``text_moves``, the moves that change it)."""
        text = render_board(self._board, self.size, self._score)
        if self.text_moves:
            text += "\n" + moves_line(self._tables.legal_actions(self._board))
        return text

    def instructions(self) -> str:
        """The rules and the answer format."""
        return (
            f"You are playing 2048 on a {self.size}x{self.size} board. Each move slides all tiles as far as "
            "possible in one direction; two equal tiles that meet merge into their sum (each tile merges at most "
            "once per move), and the merged values are added to your score. After every move that changes the "
            "board, a new tile (2 with probability 0.9, 4 with probability 0.1) appears on a random empty cell. "
            f"A move that changes nothing is penalised by {self.illegal_move_penalty:g}. The game ends when no move "
            f"can change the board. Goal: build a {self.target_tile} tile and score as high as possible. "
            "Empty cells are shown as '.'."
            + (" The last line lists the moves that change the board." if self.text_moves else "")
            + "\n"
            "Answer with exactly one move: Up, Down, Left or Right, for example <answer>Left</answer>."
        )

    def action_format(self) -> str:
        """One line telling how to write a move."""
        return "answer with one of Up, Down, Left, Right, for example <answer>Left</answer>"

    def parse_action(self, text: str) -> int | None:
        """Read a move from model text; None when there is none or the text names several different moves.

        Looks, in order, at the last ``<answer>...</answer>`` (when present, only its content counts), at the
        last ``move: X`` / ``action: X``, at the direction words in the text (all must agree), and at a lone
        letter or arrow (``u``/``r``/``d``/``l``, ``↑→↓←``). Matching ignores case.
        """
        answers = _ANSWER_RE.findall(text)
        if answers:
            text = answers[-1]
        keyed = _KEYED_RE.findall(text)
        if keyed:
            return _DIRECTIONS[keyed[-1].lower()]
        words = {w.lower() for w in _WORD_RE.findall(text)}
        if len(words) == 1:
            return _DIRECTIONS[words.pop()]
        if not words:
            return _SHORT.get(text.strip().strip(".*`'\"").lower())
        return None

    # ------------------------------------------------------------------ state
    def get_state(self) -> Game2048State:
        """A picklable snapshot (board, counters, RNG); ``set_state`` continues exactly from it."""
        return Game2048State(
            size=self.size,
            board=self._board,
            score=self._score,
            steps=self._steps,
            stuck_steps=self._stuck,
            max_exponent=self._max_exp,
            success=self._success,
            task=self.task,
            rng=self._rng_state(),
        )

    def set_state(self, state: Game2048State) -> None:
        """Restore a snapshot of an env with the same ``size``."""
        if not isinstance(state, Game2048State):
            raise StateError(f"set_state got a {type(state).__name__}; pass a Game2048State from get_state().")
        if state.size != self.size:
            raise StateError(
                f"The state is of a {state.size}x{state.size} board but this env is {self.size}x{self.size}; "
                f"restore it into an env made with size={state.size}."
            )
        self._board, self._score, self._steps = state.board, state.score, state.steps
        self._stuck, self._max_exp, self._success = state.stuck_steps, state.max_exponent, state.success
        self.task = state.task
        self._restore_rng(state.rng)

    def state_key(self) -> bytes:
        """The board's 8 bytes: equal boards give equal keys, whatever the score or step count."""
        return self._board.to_bytes(8, "little")

    # ------------------------------------------------------------------ expert
    def legal_action_mask(self) -> np.ndarray:
        """Bool array over actions: True where the move changes the board."""
        return np.array(self._tables.legal_actions(self._board), dtype=bool)

    def oracle_action(self) -> int | None:
        """The expectimax move for the current board, or None at game over."""
        return self._expectimax().best_action(self._board)

    def oracle_move_values(self, depth: int | None = None) -> np.ndarray:
        """Expectimax value of every action (Up, Right, Down, Left); ``-inf`` marks moves that change nothing.

        Values are expected heuristic scores of the position ``depth`` spawns ahead (see ``oracle.py``), not game
        points: compare them across the moves of one board (argmax, softmax targets), not across boards.
        """
        return self._expectimax().move_values(self._board, depth)

    def _expectimax(self) -> Expectimax:
        # Imported on first use: numba and the heuristic tables cost about a second, which plain play never pays.
        from environments.game2048.oracle import expectimax

        return expectimax(self.size)


def _validate(
    size: int, target_tile: int, max_steps: int | None, illegal_move_penalty: float, max_stuck_steps: int | None
) -> None:
    if size not in SUPPORTED_SIZES:
        raise ValueError(f"size={size!r} is not supported; the bitboard handles boards of side {SUPPORTED_SIZES}.")
    if (
        not isinstance(target_tile, int)
        or target_tile < 8
        or target_tile > 1 << MAX_EXPONENT
        or (target_tile & (target_tile - 1))
    ):
        raise ValueError(
            f"target_tile={target_tile!r} must be a power of two from 8 to {1 << MAX_EXPONENT} (a tile that can "
            "appear and that a start board never holds); for example 2048."
        )
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps={max_steps!r} must be a positive int, or None for no step limit.")
    if max_stuck_steps is not None and max_stuck_steps < 1:
        raise ValueError(f"max_stuck_steps={max_stuck_steps!r} must be a positive int, or None to disable the rule.")
    if not np.isfinite(illegal_move_penalty) or illegal_move_penalty < 0:
        raise ValueError(
            f"illegal_move_penalty={illegal_move_penalty!r} must be a finite magnitude >= 0; it is subtracted "
            "from the reward of a move that changes nothing."
        )
