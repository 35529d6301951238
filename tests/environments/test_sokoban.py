"""Behavioural tests of the Sokoban env: rules, rewards, text actions, XSB files, generator, oracle and state."""

from __future__ import annotations

import heapq
import pickle
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

import agentgym
from agentgym.errors import LevelFormatError, StateError, UnsolvableError
from agentgym.testing import check_env
from environments.sokoban.env import LEVELS_DIR, SokobanEnv
from environments.sokoban.generator import GeneratorConfig, cached_level, generate_level
from environments.sokoban.oracle import solve, solve_moves
from environments.sokoban.xsb import Level, format_xsb, load_xsb, parse_xsb

UP, DOWN, LEFT, RIGHT = range(4)
HANDMADE = LEVELS_DIR / "handmade.xsb"


def level_env(tmp_path: Path, xsb: str, **kwargs) -> SokobanEnv:
    """An env playing the first level of ``xsb``, reset."""
    path = tmp_path / "level.xsb"
    path.write_text(xsb)
    env = SokobanEnv(level_file=path, **kwargs)
    env.reset(seed=0, options={"task": 0})
    return env


ONE_ROW = "#######\n#@$ . #\n#######\n"
TWO_BOXES = "########\n#@$. $.#\n########\n"


# ---------------------------------------------------------------------- rules and rewards


def test_walking_pushing_and_blocking(tmp_path):
    env = level_env(tmp_path, TWO_BOXES)
    _, r, term, trunc, info = env.step(LEFT)  # wall
    assert (r, term, trunc) == (pytest.approx(-0.1), False, False)
    assert info["action_effective"] is False and info["moves"] == 0 and info["steps"] == 1
    _, r, _, _, info = env.step(RIGHT)  # push onto the first target
    assert r == pytest.approx(0.9)
    assert info["pushes"] == 1 and info["moves"] == 1 and info["boxes_on_target"] == 1
    _, r, _, _, info = env.step(RIGHT)  # push it off again
    assert r == pytest.approx(-1.1) and info["boxes_on_target"] == 0
    _, r, _, _, info = env.step(RIGHT)  # box against box: nothing moves
    assert r == pytest.approx(-0.1) and info["action_effective"] is False
    assert (info["moves"], info["pushes"], info["steps"]) == (2, 2, 4)
    assert env.text_observation().splitlines()[1] == "#--+$$.#"


def test_solving_push_gives_gym_bonus_and_terminates(tmp_path):
    env = level_env(tmp_path, ONE_ROW)
    _, r, term, _, info = env.step("right")
    assert r == pytest.approx(-0.1) and not term
    _, r, term, trunc, info = env.step("Right")
    assert r == pytest.approx(10.9) and term and not trunc and info["success"]
    assert env.text_observation().splitlines()[1] == "#--@*-#"


def test_success_only_rewards(tmp_path):
    env = level_env(tmp_path, ONE_ROW, reward_mode="success")
    assert env.step(RIGHT)[1] == 0.0
    assert env.step(RIGHT)[1] == 1.0


def test_distance_shaping_rewards_progress_and_telescopes(tmp_path):
    env = level_env(tmp_path, "########\n#@$  .-#\n########\n", distance_reward=0.5)
    assert env.step(RIGHT)[1] == pytest.approx(-0.1 + 0.5)  # box 3 -> 2 cells from the target
    assert env.step(LEFT)[1] == pytest.approx(-0.1)  # a plain move is not shaped
    total = sum(env.step(a)[1] for a in (RIGHT, RIGHT, RIGHT))  # walk back, push twice: solved
    # Shaping telescopes: over the episode it adds 0.5 * (starting distance 3 - final distance 0).
    assert total == pytest.approx(-0.1 + (-0.1 + 0.5) + (-0.1 + 0.5 + 1 + 10))
    env = level_env(tmp_path, "##########\n#@ $. $.-#\n##########\n", distance_reward=0.5)
    env.step(RIGHT)
    assert env.step(RIGHT)[1] == pytest.approx(-0.1 + 0.5 + 1)
    assert env.step(RIGHT)[1] == pytest.approx(-0.1 - 0.5 - 1)  # pushed off the target, one cell away
    with pytest.raises(ValueError, match="distance_reward=-1"):
        level_env(tmp_path, ONE_ROW, distance_reward=-1)


def test_approach_shaping_telescopes_to_the_player_box_distance(tmp_path):
    level = "##########\n#@  $ .--#\n##########\n"
    plain, env = level_env(tmp_path, level), level_env(tmp_path, level, approach_reward=0.25)

    def gap(e: SokobanEnv) -> int:  # one row: the player-to-box distance is the index gap (0 once placed)
        base = e.unwrapped
        return 0 if base._on_target else abs(base._player - base._grid[2 * base.size :].index(1))

    assert env.step(RIGHT)[1] == pytest.approx(-0.1 + 0.25)  # player 3 -> 2 cells from the box
    assert env.step(LEFT)[1] == pytest.approx(-0.1 - 0.25)
    assert env.step(LEFT)[1] == pytest.approx(-0.1)  # into the wall: no move, no shaping
    rng = np.random.default_rng(0)
    for _ in range(20):  # random play: shaped minus plain return is c * (start distance - end distance)
        plain.reset(seed=1)
        env.reset(seed=1)
        extra = sum(env.step(int(a))[1] - plain.step(int(a))[1] for a in rng.integers(0, 4, size=12))
        assert extra == pytest.approx(0.25 * (3 - gap(env)))
    state = env.unwrapped.get_state()
    env.reset(seed=1)
    env.unwrapped.set_state(state)  # the restored board's potential is recomputed, not the reset one's
    plain.unwrapped.set_state(state)
    before = gap(env)
    extra = env.step(LEFT)[1] - plain.step(LEFT)[1]
    assert extra == pytest.approx(0.25 * (before - gap(env)))
    with pytest.raises(ValueError, match="approach_reward=-1"):
        level_env(tmp_path, ONE_ROW, approach_reward=-1)


def test_truncation_counts_every_step(tmp_path):
    env = level_env(tmp_path, ONE_ROW, max_steps=2)
    assert env.step("nonsense")[3] is False
    _, _, term, trunc, _ = env.step(LEFT)
    assert (term, trunc) == (False, True)


@pytest.mark.parametrize("bad", ["go somewhere", 7, -1, 2.5, "not an action ###"])
def test_invalid_actions_are_penalised_noops(tmp_path, bad):
    env = level_env(tmp_path, ONE_ROW, invalid_action_penalty=0.5)
    before = env.state_key()
    _, r, term, trunc, info = env.step(bad)
    assert info["action_valid"] is False and info["action_error"]
    assert r == pytest.approx(-0.6) and not term and not trunc
    assert env.state_key() == before and info["steps"] == 1 and info["moves"] == 0


@pytest.mark.parametrize(("text", "action"), [
    ("up", UP), ("LEFT", LEFT), ("I will move down now", DOWN), ("<answer>Right || Up</answer>", RIGHT),
    ("<answer>down</answer> no wait <answer> left </answer>", LEFT), ("U", UP), (" r ", RIGHT), ("L, U", LEFT),
    ("<answer>West</answer>", LEFT), ("<answer>north", UP),
])
def test_parse_action(text, action):
    assert SokobanEnv().parse_action(text) == action


@pytest.mark.parametrize("text", ["", "not an action ###", "<answer></answer>", "upward", "hello world"])
def test_parse_action_rejects(text):
    assert SokobanEnv().parse_action(text) is None


# ---------------------------------------------------------------------- XSB files


def test_xsb_parses_every_symbol_titles_and_outside():
    text = (
        "; a collection header\n\n"
        "; First\n"
        "  #####\n"
        "###   #\n"
        "#.@$  #\n"
        "### $.#\n"
        "#*#   #\n"
        "#-_$ .#\n"
        "#######\n\n"
        "#####\n#+$ #\n#####\n"
        "Title: Second\n"
    )
    first, second = parse_xsb(text, source="mem.xsb")
    assert (first.title, second.title) == ("First", "Second")
    w = first.width
    assert (first.height, w) == (7, 7)
    assert first.player == 2 * w + 2
    assert set(first.boxes) == {2 * w + 3, 3 * w + 4, 4 * w + 1, 5 * w + 3}
    assert set(first.targets) == {2 * w + 1, 3 * w + 5, 4 * w + 1, 5 * w + 5}
    assert first.outside[0] == 1 and first.walls[0] == 1  # blank outside the room is wall, drawn as blank
    assert first.walls[5 * w + 1] == 0 and first.walls[5 * w + 2] == 0  # '-' and '_' are floor
    assert second.player in second.targets
    again = parse_xsb(format_xsb([first, second]))
    assert [lv.key() for lv in again] == [first.key(), second.key()]
    assert [lv.title for lv in again] == ["First", "Second"]


@pytest.mark.parametrize(("xsb", "needles"), [
    ("#####\n#@$.#\n# ###\n", ["not closed", "line 9", "Surround"]),
    ("#####\n# $.#\n#####\n", ["no player", "'@'"]),
    ("######\n#@$.@#\n######\n", ["2 players", "line 8, column 2", "exactly one"]),
    ("######\n#@$$.#\n######\n", ["2 box(es) but 1 target", "'*'"]),
    ("######\n#@$x.#\n######\n", ["unknown symbol 'x'", "line 8, column 4", "';'"]),
    ("#####\n#@  #\n#####\n", ["no box", "'$'"]),
    ("#####\n#@$.#\n#####\n  $.\n", ["outside the room", "line 10"]),
])
def test_xsb_errors_name_file_level_line_and_fix(tmp_path, xsb, needles):
    path = tmp_path / "bad.xsb"
    path.write_text("; Good one\n#####\n#@$.#\n#####\n\n; Broken one\n" + xsb)
    with pytest.raises(LevelFormatError) as err:
        load_xsb(path)
    message = str(err.value)
    assert str(path) in message and "level 2 ('Broken one')" in message
    for needle in needles:
        assert needle in message


def test_xsb_without_levels_is_explained():
    with pytest.raises(LevelFormatError, match="no level found"):
        parse_xsb("; only comments\n\n", source="empty.xsb")


def test_missing_level_file_is_named():
    with pytest.raises(LevelFormatError, match="does not exist"):
        SokobanEnv(level_file="/nonexistent/levels.xsb")


def test_statically_unsolvable_level_is_rejected_on_load(tmp_path):
    path = tmp_path / "dead.xsb"
    path.write_text("; Cornered\n######\n#$  .#\n#   @#\n######\n")
    with pytest.raises(UnsolvableError) as err:
        SokobanEnv(level_file=path)
    assert "Cornered" in str(err.value) and "dead square" in str(err.value) and "remove it" in str(err.value)


def test_searched_unsolvable_level_raises_from_optimal_plan(tmp_path):
    env = level_env(tmp_path, " ########\n #  #   #\n## $ $  #\n#  $##  #\n# .. . @#\n#########\n")
    with pytest.raises(UnsolvableError, match="cannot be solved"):
        env.optimal_plan()
    assert env.oracle_action() is None
    assert env.step(LEFT)[4]["action_valid"] is True  # the episode itself carries on


# ---------------------------------------------------------------------- generator and tasks


def test_generator_is_deterministic_and_independent_of_env_rng():
    config = GeneratorConfig(7, 7, 2)
    assert generate_level(config, 123) == generate_level(config, 123)
    assert generate_level(config, 123) != generate_level(config, 124)
    a, b = SokobanEnv(preset="small"), SokobanEnv(preset="small")
    a.reset(seed=1, options={"task": 42})
    b.reset(seed=999, options={"task": 42})
    assert a.state_key() == b.state_key() and a.text_observation() == b.text_observation()


@pytest.mark.parametrize("preset", ["tiny", "easy", "small", "medium"])
def test_generated_levels_are_solvable_and_nontrivial(preset):
    env = SokobanEnv(preset=preset)
    for seed in range(15):
        level = env.level_for(seed)
        assert not set(level.boxes) & set(level.targets)
        result = solve(level)
        assert result.solved and result.pushes >= 1
        assert result.moves <= env.max_steps


def test_splits_follow_level_content_not_seed():
    env = SokobanEnv(preset="tiny")
    by_level = defaultdict(set)
    for seed in range(300):
        by_level[cached_level(env._config, seed).key()].add(env.task_set.split_of(seed))
    assert any(len(seeds) > 1 for seeds in by_level.values()) or len(by_level) < 300  # duplicates exist
    assert all(len(splits) == 1 for splits in by_level.values())
    splits = {env.task_set.split_of(t) for t in env.task_set.tasks("test", n=20)}
    assert splits == {"test"}


def test_bad_generator_config_is_explained():
    with pytest.raises(ValueError, match="does not fit"):
        SokobanEnv(dim_room=(5, 5), num_boxes=6)
    with pytest.raises(ValueError, match="preset"):
        SokobanEnv(preset="huge")


# ---------------------------------------------------------------------- oracle


def brute_force(level: Level) -> tuple[int, int]:
    """Fewest (pushes, moves) by plain Dijkstra over (player, boxes); independent of the solver's pruning."""
    w = level.width
    deltas = (-w, w, -1, 1)
    goal = tuple(sorted(level.targets))
    start = (level.player, tuple(sorted(level.boxes)))
    best = {start: (0, 0)}
    heap = [(0, 0, start)]
    while heap:
        pushes, moves, state = heapq.heappop(heap)
        if best[state] < (pushes, moves):
            continue
        player, boxes = state
        if boxes == goal:
            return pushes, moves
        for d in deltas:
            n = player + d
            if level.walls[n]:
                continue
            cost, nb = (pushes, moves + 1), boxes
            if n in boxes:
                if level.walls[n + d] or n + d in boxes:
                    continue
                cost, nb = (pushes + 1, moves + 1), tuple(sorted(n + d if b == n else b for b in boxes))
            child = (n, nb)
            if cost < best.get(child, (1 << 30, 0)):
                best[child] = cost
                heapq.heappush(heap, (*cost, child))
    raise AssertionError("unsolvable")


def replay(level: Level, plan: list[int]) -> bool:
    """Play ``plan`` with the env's rules; True when it solves ``level``."""
    w = level.width
    player, boxes = level.player, set(level.boxes)
    for a in plan:
        d = (-w, w, -1, 1)[a]
        n = player + d
        assert not level.walls[n]
        if n in boxes:
            assert not level.walls[n + d] and n + d not in boxes
            boxes.remove(n)
            boxes.add(n + d)
        player = n
    return boxes == set(level.targets)


def small_levels() -> list[Level]:
    handmade = load_xsb(HANDMADE)[:10]
    generated = [generate_level(GeneratorConfig(6, 6, 1), s) for s in range(5)]
    generated += [generate_level(GeneratorConfig(6, 7, 2), s) for s in range(5)]
    return handmade + generated


@pytest.mark.parametrize("index", range(20))
def test_solver_is_push_then_move_optimal(index):
    level = small_levels()[index]
    result = solve(level)
    assert result.solved and replay(level, result.plan)
    assert (result.pushes, result.moves) == brute_force(level)
    fast = solve(level, tie_break_moves=False)
    assert fast.pushes == result.pushes and replay(level, fast.plan)


@pytest.mark.parametrize("index", range(10))
def test_move_optimal_bfs(index):
    level = small_levels()[index]
    result = solve_moves(level)
    assert result.solved and replay(level, result.plan)
    assert result.moves <= solve(level).moves


def test_oracle_solves_every_shipped_level():
    env = SokobanEnv(level_file="handmade", obs_mode="struct")
    for task in env.task_set.tasks("all"):
        env.reset(seed=0, options={"task": task})
        plan = env.optimal_plan()
        info = {"success": False}
        for _ in range(env.max_steps):
            action = env.oracle_action()
            if action is None:
                break
            *_, term, _, info = env.step(action)
            if term:
                break
        assert info["success"], env.task_set.names[task]
        assert (info["pushes"], info["moves"]) == (plan.pushes, plan.moves)


def test_oracle_replans_off_plan_and_gives_up_in_deadlock(tmp_path):
    env = level_env(tmp_path, "#######\n#     #\n# $  .#\n#@    #\n#######\n")
    first = env.oracle_action()
    env.step(UP)
    env.step(DOWN)  # back at the start: the cached plan still applies
    assert env.oracle_action() == first
    env.step(RIGHT)
    assert env.oracle_action() is not None  # replanned from here
    _, _, term, _, info = env.step(UP)  # box pushed against the top wall, off target: a deadlock
    assert info["pushes"] == 1 and not term
    assert env.oracle_action() is None


def test_solver_limit_is_reported():
    level = load_xsb(HANDMADE)[-1]
    result = solve(level, max_nodes=10)
    assert result.status == "limit" and "max_nodes" in result.reason and result.plan is None


# ---------------------------------------------------------------------- views and state


def test_golden_text_views():
    xsb = SokobanEnv(obs_mode="text")
    obs, _ = xsb.reset(seed=0, options={"task": 7})
    assert obs == (
        "######\n#-####\n#--###\n#-##-#\n#@$-.#\n######\n"
        "Legend: # wall, - floor, . target, $ box, * box on target, @ player, + player on target"
    )
    ragen = SokobanEnv(obs_mode="text", text_style="ragen")
    obs, _ = ragen.reset(seed=0, options={"task": 7})
    assert obs.splitlines()[:6] == ["######", "#_####", "#__###", "#_##_#", "#PX_O#", "######"]
    ragen.step(RIGHT)
    ragen.step(RIGHT)
    assert ragen.text_observation().splitlines()[4] == "#__P√#"
    assert set(ragen.text_observation()) <= ragen.text_charset


def test_positions_line_gives_box_from_player_and_target_from_box():
    env = SokobanEnv(obs_mode="text", text_positions=True)
    obs, _ = env.reset(seed=0, options={"task": 7})
    lines = obs.splitlines()
    assert lines[4] == "#@$-.#"
    assert lines[6] == "Box 1 right of you, target 2 right of it."
    env.step(UP)
    assert env.text_observation().splitlines()[6] == "Box 1 down and 1 right of you, target 2 right of it."
    env.step(DOWN)
    env.step(RIGHT)
    env.step(RIGHT)  # the box reaches the target: no free target is left to list
    assert env.text_observation().splitlines()[6] == "Box on target 1 right of you."
    assert set(env.text_observation()) <= env.text_charset
    assert len(env.text_observation()) <= env.text_max_length
    # The grid and the legend are unchanged; the default adds no line.
    plain = SokobanEnv(obs_mode="text")
    plain.reset(seed=0, options={"task": 7})
    assert lines[:6] + lines[7:] == plain.text_observation().splitlines()
    # Two boxes: each gets its nearest free target.
    two = SokobanEnv("small", obs_mode="text", text_positions=True)
    assert two.reset(seed=1)[0].splitlines()[7] == (
        "Box 1 up and 2 right of you, target 1 up and 1 left of it; "
        "box 1 up and 3 right of you, target 1 up and 2 left of it.")
    with pytest.raises(ValueError, match="text_positions='yes'"):
        SokobanEnv(text_positions="yes")


def test_neighbors_line_says_what_each_move_runs_into(tmp_path):
    env = SokobanEnv(obs_mode="text", text_positions=True, text_neighbors=True)
    obs, _ = env.reset(seed=0, options={"task": 7})  # "#@$-.#": floor above, walls below and left, box right
    lines = obs.splitlines()
    assert lines[6:8] == ["Box 1 right of you, target 2 right of it.",
                          "Around you: up floor, down wall, left wall, right box then floor."]
    env.step(RIGHT)
    assert env.neighbors_line() == "Around you: up wall, down wall, left floor, right box then target."
    env.step(RIGHT)  # the box is on the target, against the wall
    assert env.neighbors_line() == "Around you: up wall, down wall, left floor, right box on target then wall."
    assert env.text_observation().splitlines()[7] == env.neighbors_line()
    assert set(env.text_observation()) <= env.text_charset
    assert len(env.text_observation()) <= env.text_max_length
    assert "Around you" in env.instructions() and "Around you" not in SokobanEnv().instructions()
    # Alone (without the offsets line) it follows the grid; two boxes in a row block each other.
    alone = SokobanEnv(obs_mode="text", text_neighbors=True)
    alone.reset(seed=0, options={"task": 7})
    assert alone.text_observation().splitlines()[6].startswith("Around you: up floor")
    path = tmp_path / "row.xsb"
    path.write_text("######\n#-..-#\n#@$$-#\n#----#\n######\n")
    row = SokobanEnv(level_file=str(path), obs_mode="text", text_neighbors=True)
    row.reset(seed=0)
    assert row.neighbors_line() == "Around you: up floor, down floor, left wall, right box then box."
    with pytest.raises(ValueError, match="text_neighbors=1"):
        SokobanEnv(text_neighbors=1)


def test_struct_and_rgb_views():
    env = SokobanEnv(preset="small", obs_mode="struct", render_mode="rgb_array")
    obs, info = env.reset(seed=3)
    assert obs.shape == (4, 7, 7) and obs.dtype == np.uint8 and obs in env.observation_space
    assert obs[2].sum() == obs[1].sum() == info["num_boxes"] == 2 and obs[3].sum() == 1
    assert info["level_size"] == (7, 7)
    image = env.render()
    assert image.shape == (112, 112, 3) and image.dtype == np.uint8
    obs[:] = 0  # the returned array is a copy
    assert env.step(0)[0][0].sum() > 0


def test_level_file_padding_keeps_one_observation_shape():
    env = SokobanEnv(level_file="handmade")
    shapes = set()
    for task in (0, 17, 22):
        obs, info = env.reset(options={"task": task})
        shapes.add(obs["struct"].shape)
        assert len(obs["text"].splitlines()) == info["level_size"][0] + 1
    assert shapes == {(4, env.height, env.width)}


def test_state_roundtrip_continues_exactly():
    env = SokobanEnv(preset="small")
    env.reset(seed=5)
    for a in (0, 3, 1, 2):
        env.step(a)
    state = pickle.loads(pickle.dumps(env.get_state()))
    key = env.state_key()
    rng_actions = [int(a) for a in np.random.default_rng(0).integers(0, 4, 20)]
    original = [env.step(a)[1:] for a in rng_actions]
    follow = env.unwrapped.np_random.random()
    fresh = SokobanEnv(preset="small")
    fresh.reset(seed=77)
    fresh.set_state(state)
    assert fresh.state_key() == key
    assert [fresh.step(a)[1:] for a in rng_actions] == original
    assert fresh.np_random.random() == follow
    with pytest.raises(StateError):
        SokobanEnv(preset="boxoban").set_state(state)


def test_state_key_is_history_free(tmp_path):
    env = level_env(tmp_path, "#######\n#     #\n# $  .#\n#@    #\n#######\n")
    start = env.state_key()
    env.step(RIGHT)
    assert env.state_key() != start
    env.step(LEFT)
    assert env.state_key() == start


def test_registered_and_passes_contract():
    env = agentgym.make("sokoban")
    assert isinstance(env, SokobanEnv) and env.max_steps == 30
    assert check_env("sokoban").passed
