"""Behaviour tests of the 2048 env: moves, rewards, spawns, illegal and invalid input, views, state, oracle."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest

import agentgym
from agentgym.errors import StateError, UnknownNameError
from environments.game2048.board import DOWN, LEFT, RIGHT, UP, slide_row, tables
from environments.game2048.env import Game2048Env


def exps(values: list[list[int]]) -> list[list[int]]:
    """Tile values (0 = empty) -> exponents."""
    return [[v.bit_length() - 1 if v else 0 for v in row] for row in values]


def values(board: np.ndarray) -> list[list[int]]:
    return [[int(v) for v in row] for row in board]


def env_with_board(board_values: list[list[int]], **kwargs: object) -> Game2048Env:
    """A reset env whose board is replaced by ``board_values`` (through set_state, as a user would)."""
    size = len(board_values)
    env = Game2048Env(size=size, obs_mode="struct", **kwargs)  # type: ignore[arg-type]
    env.reset(seed=0)
    packed = tables(size).from_exponents(exps(board_values))
    top = max(max(row) for row in exps(board_values))
    env.set_state(dataclasses.replace(env.get_state(), board=packed, max_exponent=top))
    return env


def naive_move(grid: list[list[int]], action: int) -> tuple[list[list[int]], int]:
    """Move by rotating so the action is 'left' and sliding each row with plain lists (test reference)."""
    n = len(grid)
    turns = {LEFT: 0, UP: 1, RIGHT: 2, DOWN: 3}[action]
    g = [row[:] for row in grid]
    for _ in range(turns):  # rotate counter-clockwise
        g = [[g[c][n - 1 - r] for c in range(n)] for r in range(n)]
    score, out = 0, []
    for row in g:
        tiles = [v for v in row if v]
        merged, i = [], 0
        while i < len(tiles):
            if i + 1 < len(tiles) and tiles[i] == tiles[i + 1]:
                merged.append(2 * tiles[i])
                score += 2 * tiles[i]
                i += 2
            else:
                merged.append(tiles[i])
                i += 1
        out.append(merged + [0] * (n - len(merged)))
    for _ in range((4 - turns) % 4):
        out = [[out[c][n - 1 - r] for c in range(n)] for r in range(n)]
    return out, score


# ---------------------------------------------------------------------- moves and rewards
@pytest.mark.parametrize(
    ("row", "expected", "score"),
    [
        ([2, 2, 2, 2], [4, 4, 0, 0], 8),
        ([2, 2, 4, 0], [4, 4, 0, 0], 4),
        ([4, 0, 4, 4], [8, 4, 0, 0], 8),
        ([4, 4, 8, 0], [8, 8, 0, 0], 8),  # the new 8 does not merge again in the same move
        ([0, 0, 0, 2], [2, 0, 0, 0], 0),
        ([2, 4, 8, 16], [2, 4, 8, 16], 0),
    ],
)
def test_row_slides_left(row: list[int], expected: list[int], score: int) -> None:
    moved, gained = slide_row(exps([row])[0])
    assert [1 << e if e else 0 for e in moved] == expected
    assert gained == score


@pytest.mark.parametrize("size", [3, 4])
def test_moves_match_reference_and_reward_is_merged_sum(size: int) -> None:
    rng = np.random.default_rng(size)
    t = tables(size)
    for _ in range(300):
        grid = [[int(2 ** rng.integers(1, 5)) if rng.random() < 0.7 else 0 for _ in range(size)] for _ in range(size)]
        for action in range(4):
            expected, score = naive_move(grid, action)
            env = env_with_board(grid)
            _, reward, *_ = env.step(action)
            moved, gained = t.move(t.from_exponents(exps(grid)), action)
            assert values(t.to_exponents(moved)) == exps(expected)
            assert gained == score
            if expected != grid:
                assert reward == score
                assert env.score == score


def test_step_reward_and_info_on_a_known_board() -> None:
    env = env_with_board([[2, 2, 4, 4], [0, 0, 0, 0], [0, 0, 0, 0], [8, 8, 8, 0]])
    _, reward, terminated, truncated, info = env.step("left")
    assert reward == 4 + 8 + 16
    assert (info["score"], info["max_tile"], info["action_effective"]) == (28, 16, True)
    assert not terminated and not truncated and not info["success"]
    after_move = np.array([[4, 8, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [16, 8, 0, 0]])
    spawned = env.board - after_move
    assert np.count_nonzero(spawned) == 1 and spawned.max() in (2, 4)
    assert after_move[spawned > 0] == 0


# ---------------------------------------------------------------------- spawns
def test_spawn_distribution_is_two_90_percent_uniform_cells() -> None:
    t = tables(4)
    rng = np.random.default_rng(0)
    n = 40_000
    fours, cells = 0, np.zeros(16)
    for _ in range(n):
        board, exponent, left = t.spawn(0, rng.random())
        assert left == 15
        fours += exponent == 2
        cells[(board.bit_length() - 1) // 4] += 1
    assert abs(fours / n - 0.1) < 0.01  # 4.7 standard deviations
    assert np.all(np.abs(cells / n - 1 / 16) < 0.01)


def test_spawn_only_after_a_board_changing_move() -> None:
    env = env_with_board([[2, 0, 0, 0], [4, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    before = env.board
    env.step(LEFT)  # nothing can move left
    assert np.array_equal(env.board, before)
    env.step(RIGHT)
    after = env.board
    assert np.count_nonzero(after) == 3
    assert sorted(int(v) for v in after[after > 0]) in ([2, 2, 4], [2, 4, 4])


# ---------------------------------------------------------------------- illegal moves and invalid input
def test_illegal_move_penalty_and_stuck_truncation() -> None:
    env = env_with_board([[2, 0, 0, 0], [4, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], max_stuck_steps=5)
    before = env.board
    for i in range(1, 6):
        _, reward, terminated, truncated, info = env.step(LEFT)
        assert reward == -1.0
        assert info["stuck_steps"] == i and info["action_effective"] is False
        assert not terminated
        assert truncated == (i == 5)
    assert np.array_equal(env.board, before)


def test_legal_move_resets_the_stuck_counter() -> None:
    env = env_with_board([[2, 0, 0, 0], [4, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], max_stuck_steps=3)
    env.step(LEFT)
    env.step(LEFT)
    *_, truncated, info = env.step(RIGHT)
    assert info["stuck_steps"] == 0 and not truncated


@pytest.mark.parametrize("bad", ["I think we should wait", "", 7, -1, 2.5, None])
def test_invalid_input_is_a_penalised_no_op(bad: object) -> None:
    env = env_with_board([[2, 0, 0, 0], [4, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    before = env.board
    _, reward, terminated, truncated, info = env.step(bad)
    assert reward == -10.0
    assert info["action_valid"] is False and info["stuck_steps"] == 1
    assert "Up" in info["action_error"] or "0..3" in info["action_error"] or "int" in info["action_error"]
    assert np.array_equal(env.board, before) and not terminated and not truncated


def test_unknown_env_id_and_bad_arguments_name_the_fix() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean"):
        agentgym.make("Game2049")
    with pytest.raises(ValueError, match="size=5"):
        Game2048Env(size=5)
    with pytest.raises(ValueError, match="power of two"):
        Game2048Env(target_tile=1000)
    env = Game2048Env(size=3)
    env.reset(seed=0)
    with pytest.raises(StateError, match="size=4"):
        env.set_state(dataclasses.replace(env.get_state(), size=4))


@pytest.mark.parametrize(
    ("text", "action"),
    [
        ("left", LEFT),
        ("UP", UP),
        ("<answer>Down</answer>", DOWN),
        ("thought: merge them\nmove: right", RIGHT),
        ("action: Left", LEFT),
        ("Move: **up**", UP),
        ("I will go left.", LEFT),
        ("r", RIGHT),
        ("↓", DOWN),
        ("<answer>up</answer> wait, <answer>left</answer>", LEFT),
        ("left or right?", None),
        ("upper", None),
        ("no idea", None),
        ("", None),
    ],
)
def test_parse_action(text: str, action: int | None) -> None:
    assert Game2048Env().parse_action(text) == action


# ---------------------------------------------------------------------- views
@pytest.mark.parametrize("env_id", ["2048", "2048-3x3"])
def test_views_agree_with_the_board_through_an_episode(env_id: str) -> None:
    env = agentgym.make(env_id, obs_mode="dict")
    size = env.unwrapped.size
    obs, _ = env.reset(seed=1)
    assert np.count_nonzero(env.unwrapped.board) == 2
    rng = np.random.default_rng(1)
    for _ in range(400):
        struct = obs["struct"]
        assert struct.shape == (16, size, size) and struct.dtype == np.uint8
        assert obs in env.observation_space
        board = env.unwrapped.board
        logs = np.where(board > 0, np.log2(np.maximum(board, 1)), 0).astype(int)
        assert np.array_equal(struct.argmax(axis=0), logs) and np.all(struct.sum(axis=0) == 1)
        assert len(obs["text"]) <= env.unwrapped.text_max_length
        obs, _, terminated, truncated, _ = env.step(int(rng.integers(4)))
        if terminated:
            assert not env.unwrapped.legal_action_mask().any()
            assert np.count_nonzero(env.unwrapped.board) == size * size
            for after_end in (0, "left", "junk", 9):  # stepping on past the end neither crashes nor revives it
                assert env.step(after_end)[2] is True
        if terminated or truncated:
            obs, _ = env.reset()


def test_golden_text_for_task_0() -> None:
    env = agentgym.make("2048", obs_mode="text")
    obs, _ = env.reset(seed=0, options={"task": 0})
    assert obs == (
        "[    .     .     .     .]\n[    .     .     2     .]\n[    .     .     .     .]\n[    .     .     2     .]\n"
        "Score: 0"
    )
    for move in ("Left", "Up", "Right"):
        obs, *_ = env.step(move)
    assert obs == (
        "[    2     .     4     2]\n[    .     .     .     2]\n[    .     .     .     .]\n[    .     .     .     .]\n"
        "Score: 4"
    )
    small = agentgym.make("2048-3x3", obs_mode="text")
    assert (
        small.reset(seed=0, options={"task": 0})[0]
        == "[    .     .     .]\n[    2     .     .]\n[    .     2     .]\nScore: 0"
    )


def test_text_moves_line_names_the_moves_that_change_the_board() -> None:
    env = env_with_board([[2, 0, 0], [0, 0, 0], [0, 0, 0]], text_moves=True)
    assert env.text_observation().splitlines()[-2:] == ["Score: 0", "Moves that change the board: Right, Down."]
    assert "The last line lists the moves" in env.instructions()
    full = env_with_board([[2, 4, 2], [4, 2, 4], [2, 4, 2]], text_moves=True)
    assert full.text_observation().endswith("Score: 0\nNo move changes the board.")
    plain = env_with_board([[2, 0, 0], [0, 0, 0], [0, 0, 0]])
    assert plain.text_observation().endswith("Score: 0") and "last line" not in plain.instructions()
    with pytest.raises(ValueError, match="text_moves='yes'"):
        Game2048Env(text_moves="yes")  # type: ignore[arg-type]


def test_text_moves_line_agrees_with_the_moves_over_a_random_game() -> None:
    env = agentgym.make("2048-3x3", obs_mode="text", text_moves=True)
    obs, _ = env.reset(seed=3, options={"task": 7})
    rng = np.random.default_rng(0)
    endings = 0
    for _ in range(300):
        assert env.observation_space.contains(obs), obs
        line = obs.splitlines()[-1]
        board = env.unwrapped.board
        for action, name in enumerate(("Up", "Right", "Down", "Left")):
            changes = not np.array_equal(naive_move(values(board), action)[0], values(board))
            assert (name in line.removeprefix("Moves that change the board:")) == changes, (line, board)
        obs, _, terminated, truncated, _ = env.step(int(rng.integers(4)))
        if terminated:  # game over: the last view says so
            assert obs.splitlines()[-1] == "No move changes the board."
            endings += 1
        if terminated or truncated:
            obs, _ = env.reset()
    assert endings >= 2  # random 3x3 games last well under 150 moves


# ---------------------------------------------------------------------- episode end and state
def test_target_tile_success_and_optional_termination() -> None:
    env = env_with_board([[4, 4, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], target_tile=8)
    *_, terminated, _, info = env.step(LEFT)
    assert info["success"] and not terminated
    *_, info = env.step(RIGHT)
    assert info["success"]  # stays True
    env = env_with_board(
        [[4, 4, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], target_tile=8, terminate_on_target=True
    )
    *_, terminated, _, info = env.step(LEFT)
    assert info["success"] and terminated


def test_max_steps_truncates() -> None:
    env = Game2048Env(max_steps=3, obs_mode="struct")
    env.reset(seed=0)
    flags = [env.step(a)[3] for a in (UP, LEFT, DOWN)]
    assert flags == [False, False, True]


def test_get_state_set_state_continues_exactly_including_spawns() -> None:
    env = Game2048Env(obs_mode="dict")
    env.reset(seed=3)
    for a in (UP, LEFT, DOWN, RIGHT, UP):
        env.step(a)
    state = pickle.loads(pickle.dumps(env.get_state()))
    key = env.state_key()
    actions = np.random.default_rng(0).integers(0, 4, 60).tolist()
    original = [env.step(a) for a in actions]
    fresh = Game2048Env(obs_mode="dict")
    fresh.reset(seed=99)
    fresh.set_state(state)
    assert fresh.state_key() == key
    replay = [fresh.step(a) for a in actions]
    for (o1, r1, te1, tr1, i1), (o2, r2, te2, tr2, i2) in zip(original, replay, strict=True):
        assert o1["text"] == o2["text"] and np.array_equal(o1["struct"], o2["struct"])
        assert (r1, te1, tr1, i1) == (r2, te2, tr2, i2)


def test_state_key_ignores_history() -> None:
    a = env_with_board([[2, 4, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    b = env_with_board([[2, 4, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    b.set_state(dataclasses.replace(b.get_state(), score=1000, steps=50))
    assert a.state_key() == b.state_key()


# ---------------------------------------------------------------------- oracle
def _play(env: Game2048Env, policy: object, seed: int, steps: int) -> tuple[int, int]:
    env.reset(seed=seed, options={"task": seed})
    info = {"score": 0, "max_tile": 0}
    for _ in range(steps):
        action = policy()  # type: ignore[operator]
        if action is None:
            break
        *_, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            break
    return info["score"], info["max_tile"]


def test_oracle_reaches_256_and_beats_random_by_far() -> None:
    env = Game2048Env(obs_mode="struct", max_stuck_steps=None)
    rng = np.random.default_rng(0)
    oracle = [_play(env, env.oracle_action, seed, 400) for seed in range(3)]
    random = [_play(env, lambda: int(rng.integers(4)), seed, 400) for seed in range(3)]
    assert all(tile >= 256 for _, tile in oracle)
    assert min(score for score, _ in oracle) > 2 * max(score for score, _ in random)


def test_oracle_move_values_mark_illegal_moves() -> None:
    env = env_with_board([[2, 0, 0, 0], [4, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    move_values = env.oracle_move_values()
    assert move_values.shape == (4,)
    assert move_values[LEFT] == -np.inf and move_values[UP] == -np.inf
    assert np.isfinite(move_values[[RIGHT, DOWN]]).all()
    assert env.oracle_action() == int(np.argmax(move_values))
    full = env_with_board([[2, 4, 2, 4], [4, 2, 4, 2], [2, 4, 2, 4], [4, 2, 4, 2]])
    assert full.oracle_action() is None
