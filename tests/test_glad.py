"""GLAD data: chain writers for Sokoban and 2048, the dataset builder, the CLI, and replay by the SFT trainer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import agentgym
from agentgym import glad
from agentgym.cli import main
from agentgym.config import ConfigError
from agentgym.errors import AgentGymError
from agentgym.glad import GladConfig, SearchBudget, SearchTimeout, build_dataset, chain_writer, glad_reply
from agentgym.trajectory import read_trajectories

BUDGET = SearchBudget(seconds=10.0)


def chain_of(reply: str) -> str:
    return reply.partition("<think>")[2].partition("</think>")[0]


def check_oracle_play(env: Any, task: int, steps: int, max_words: int, tokenizer: Any | None) -> tuple[int, bool]:
    """Play the chains' actions, checking each against the env's oracle; returns (turns played, success)."""
    env.reset(seed=0, options={"task": task})
    writer = chain_writer(env)
    names = env.unwrapped.action_names
    for turn in range(steps):
        found = writer(env, BUDGET)
        if found is None:
            return turn, False
        chain, action = found
        assert action == env.unwrapped.oracle_action()
        assert chain.endswith(f"Best: {names[action]}.")
        assert len(chain.split()) <= max_words, chain
        if tokenizer is not None:
            assert len(tokenizer.encode(chain)) <= 90, chain
        _, _, terminated, truncated, info = env.step(glad_reply(chain, names[action]))
        assert info["action_valid"]
        if terminated or truncated:
            return turn + 1, info["success"]
    return steps, info["success"]


@pytest.fixture(scope="module")
def tokenizer(request: pytest.FixtureRequest) -> Any:
    try:
        return request.getfixturevalue("smol_tokenizer")
    except pytest.skip.Exception:
        return None


def test_sokoban_chains_are_short_factual_and_choose_the_oracle_action(tokenizer: Any) -> None:
    env = agentgym.make("sokoban", preset="easy")
    for task in env.unwrapped.task_set.tasks("train", 4):
        turns, success = check_oracle_play(env, task, 60, max_words=55, tokenizer=tokenizer)
        assert turns > 0 and success  # the chosen actions solve the level
    env.reset(seed=0, options={"task": 2})
    chain, _ = chain_writer(env)(env, BUDGET)
    assert chain.startswith(env.unwrapped.positions_line())  # the offsets line, whether or not the view shows it
    assert chain.startswith("Box ") and {"Up:", "Down:", "Left:", "Right:"} <= set(chain.split())


def test_sokoban_chain_names_walls_and_deadlocks() -> None:
    env = agentgym.make("sokoban", preset="tiny")
    seen = set()
    for task in env.unwrapped.task_set.tasks("train", 12):
        env.reset(seed=0, options={"task": task})
        chain, _ = chain_writer(env)(env, BUDGET)
        seen |= {word for word in ("wall.", "deadlock.", "moves.", "blocked.", "shortest.") if word in chain}
    assert {"wall.", "moves.", "shortest."} <= seen


def test_2048_chains_are_short_and_choose_the_oracle_action(tokenizer: Any) -> None:
    env = agentgym.make("2048")
    assert check_oracle_play(env, 5, 25, max_words=45, tokenizer=tokenizer)[0] == 25
    env.reset(seed=0, options={"task": 5})
    for a in (0, 3, 0, 3, 1):
        env.step(a)
    chain, action = chain_writer(env)(env, BUDGET)
    assert chain.startswith("Max ") and "empty" in chain
    assert f"Best: {env.unwrapped.action_names[action]}." in chain


def test_dataset_is_trajectory_jsonl_with_think_replies(tmp_path: Path) -> None:
    out = tmp_path / "glad.jsonl"
    report = build_dataset("sokoban", out, GladConfig(tasks=3), env_kwargs={"preset": "tiny"})
    assert (report.requested, report.written, report.timed_out) == (3, 3, 0)
    trajectories = list(read_trajectories(out))
    assert len(trajectories) == 3 and all(t.success and t.policy == "glad" for t in trajectories)
    env = agentgym.make("sokoban", preset="tiny")
    for t in trajectories:
        env.reset(seed=t.seed, options={"task": t.task})
        for turn in t.turns:
            assert turn.observation == env.unwrapped.text_observation()
            assert turn.action.startswith("<think>") and "</think><answer>" in turn.action
            assert turn.action.endswith("</answer>")
            env.step(turn.action)
    assert report.turns == sum(t.steps for t in trajectories)


def test_cli_writes_the_requested_tasks(tmp_path: Path) -> None:
    out = tmp_path / "cli.jsonl"
    code = main(["glad", "--env", "sokoban", "--tasks", "2", "--out", str(out), "--env-kwargs", "preset=tiny"])
    assert code == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    # The env as a ProAct run builds it, --env-kwargs on top: the tiny preset, with ProAct's Around-you line.
    assert len(records) == 2 and all("\nAround you: " in t["observation"] for r in records for t in r["turns"])
    assert all(r["turns"][0]["observation"].splitlines()[0] == "#####" for r in records)  # tiny: a 5x5 board
    code = main(["glad", "--env", "2048", "--tasks", "2", "--out", str(out), "--max-turns", "5"])
    assert code == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]  # overwritten, not appended
    assert len(records) == 2 and all(len(r["turns"]) == 5 and r["truncated"] for r in records)
    assert all("Moves that change the board: " in t["observation"] for r in records for t in r["turns"])
    code = main(["glad", "--env", "2048", "--tasks", "1", "--out", str(out), "--max-turns", "2",
                 "--env-kwargs", "text_moves=false"])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert code == 0 and not any("Moves that change" in t["observation"] for t in records[0]["turns"])


def test_search_timeouts_skip_and_count_tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report = build_dataset("sokoban", tmp_path / "a.jsonl", GladConfig(tasks=3, search_nodes=1),
                           env_kwargs={"preset": "easy"})
    assert (report.written, report.timed_out) == (0, 3)
    real = chain_writer(agentgym.make("sokoban"))
    calls = {"n": 0}

    def flaky(env: Any, budget: SearchBudget) -> Any:
        calls["n"] += 1
        if env.unwrapped.task == env.unwrapped.task_set.tasks("train", 2)[1]:
            raise SearchTimeout("too hard")
        return real(env, budget)

    monkeypatch.setitem(glad.CHAIN_WRITERS, "environments.sokoban", flaky)
    report = build_dataset("sokoban", tmp_path / "b.jsonl", GladConfig(tasks=3), env_kwargs={"preset": "tiny"})
    assert (report.requested, report.written, report.timed_out, report.dead_ends) == (3, 2, 1, 0)
    assert len(list(read_trajectories(tmp_path / "b.jsonl"))) == 2 and calls["n"] > 3
    assert "skipped 1 (search timeout)" in report.summary()


def test_env_without_a_chain_writer_is_a_clear_error() -> None:
    with pytest.raises(AgentGymError, match="glad_chain"):
        chain_writer(agentgym.make("bandit"))


def test_sft_replay_keeps_the_chain_in_the_trained_tokens(tmp_path: Path, smol_tokenizer: Any) -> None:
    from policies.llm.policy import LLMPolicyConfig
    from trainers.sft import DemonstrationPolicy, play_demonstration

    out = tmp_path / "glad.jsonl"
    build_dataset("sokoban", out, GladConfig(tasks=1), env_kwargs={"preset": "tiny"})
    record = next(read_trajectories(out))
    env = agentgym.make("sokoban", preset="tiny")
    actions = [t.action for t in record.turns]
    for guided in (False, True):
        policy = DemonstrationPolicy(smol_tokenizer, LLMPolicyConfig(think=True, guided=guided),
                                     lambda _e, memory: actions[memory.turns])
        demo = play_demonstration(env, policy, record.task, record.seed, max_turns=len(actions),
                                  expected=record.turns)
        trained = smol_tokenizer.decode([i for i, m in zip(demo.token_ids, demo.loss_mask) if m])
        assert demo.success
        assert chain_of(actions[0]) in trained and trained.count("<think>") == len(actions)


def test_sokoban_chain_golden(tmp_path: Path) -> None:
    """Hand-checked chains: the offsets, each move's consequence against the plan, and the choice."""
    levels = tmp_path / "two.xsb"
    levels.write_text("; 1\n######\n# $@.#\n#    #\n######\n\n; 2\n#####\n#@$.#\n#   #\n#####\n")
    env = agentgym.make("sokoban", level_file=str(levels), text_positions=True)
    writer = chain_writer(env)
    env.reset(seed=0, options={"task": 0})
    # Pushing left puts the box in a corner; going right means walking round the long way (8 moves vs 6).
    # The plan walks Down, Left, Left, Up to the cell left of the box, then pushes it Right twice.
    assert writer(env, BUDGET) == ("Box 1 left of you, target 2 right of it. Next: push it Right, standing left of "
                                   "it: 2 left of you. Up: wall. Down: shortest. Left: pushes box into a corner, "
                                   "deadlock. Right: 2 more moves. Best: Down.", 1)
    env.reset(seed=0, options={"task": 1})
    assert writer(env, BUDGET) == ("Box 1 right of you, target 1 right of it. Next: push it Right, standing left of "
                                   "it: here. Up: wall. Down: 2 more moves. Left: wall. Right: pushes box, solves it. "
                                   "Best: Right.", 3)
    assert env.unwrapped.text_observation().splitlines()[-2] == "Box 1 right of you, target 1 right of it."


def test_sokoban_next_push_names_the_box_and_the_cell_to_push_from(tmp_path: Path) -> None:
    """With several boxes the next push names its box by its offset; the cell to push from is relative to you."""
    level = tmp_path / "two-boxes.xsb"
    level.write_text("; 1\n#######\n#   . #\n#  $  #\n#@ $ .#\n#######\n")
    env = agentgym.make("sokoban", level_file=str(level), text_positions=True)
    env.reset(seed=0, options={"task": 0})
    chain, action = chain_writer(env)(env, BUDGET)
    # Step Right next to the lower box, push it Right twice onto its target; the upper box goes after.
    assert action == 3 and ("Next: push the box 2 right of you Right, standing left of it: 1 right of you. "
                            "Up: also shortest. Down: wall. Left: wall. Right: shortest. Best: Right.") in chain
    env.step(action)
    chain, action = chain_writer(env)(env, BUDGET)
    assert action == 3 and "Next: push the box 1 right of you Right, standing left of it: here." in chain


def test_detours_are_untaught_worse_moves_that_keep_the_level_solvable(tmp_path: Path) -> None:
    kwargs = {"preset": "easy", "text_positions": True}
    out = tmp_path / "detours.jsonl"
    report = build_dataset("sokoban", out, GladConfig(tasks=8, detours=0.3, max_turns=12), env_kwargs=kwargs)
    build_dataset("sokoban", tmp_path / "again.jsonl", GladConfig(tasks=8, detours=0.3, max_turns=12),
                  env_kwargs=kwargs)
    trajectories = list(read_trajectories(out))
    replies = [[t.action for t in tr.turns] for tr in trajectories]
    assert replies == [[t.action for t in tr.turns] for tr in read_trajectories(tmp_path / "again.jsonl")]
    assert report.detours == sum(not t.info.get("teach", True) for tr in trajectories for t in tr.turns) > 0
    assert report.turns == sum(t.info.get("teach", True) for tr in trajectories for t in tr.turns)
    assert "untaught detours" in report.summary()
    env = agentgym.make("sokoban", **kwargs)
    writer = chain_writer(env)
    names = env.unwrapped.action_names
    for tr in trajectories:
        env.reset(seed=tr.seed, options={"task": tr.task})
        flags = [t.info.get("teach", True) for t in tr.turns]
        assert all(a or b for a, b in zip(flags, flags[1:]))  # never two detours in a row
        assert sum(flags) <= 12
        for turn, teach in zip(tr.turns, flags):
            true_chain, best = writer(env, BUDGET)
            played = env.unwrapped.parse_action(turn.action)
            if teach:
                assert chain_of(turn.action) == true_chain and played == best
            else:
                clause = next(c for c in true_chain.split(". ") if c.startswith(f"{names[played]}:"))
                assert played != best and not any(w in clause for w in ("shortest", "deadlock", "solves"))
                assert chain_of(turn.action).endswith(f"Best: {names[played]}.")
                assert f"{names[played]}:" in chain_of(turn.action) and "shortest" in chain_of(turn.action)
            env.step(turn.action)


def test_detours_need_a_detour_writer_and_a_probability(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="detours=1.0"):
        GladConfig(detours=1.0)
    with pytest.raises(ConfigError, match="glad_detour"):
        build_dataset("2048", tmp_path / "d.jsonl", GladConfig(tasks=1, detours=0.2, max_turns=3))
