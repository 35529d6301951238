from __future__ import annotations

import io
import json
import re

import pytest

from agentgym.cli import main, parse_kwargs
from agentgym.errors import AgentGymError
from agentgym.play import play


def test_parse_kwargs_reads_yaml_values():
    assert parse_kwargs(["level_file=a.xsb", "dim_room=[6, 6]", "num_boxes=2", "p=0.5", "flag=true"]) == {
        "level_file": "a.xsb",
        "dim_room": [6, 6],
        "num_boxes": 2,
        "p": 0.5,
        "flag": True,
    }
    with pytest.raises(AgentGymError, match="KEY=VALUE"):
        parse_kwargs(["novalue"])


def test_envs_lists_every_registered_env(capsys):
    assert main(["envs"]) == 0
    out = capsys.readouterr().out
    assert "agentgym/Sokoban-v0" in out and "agentgym/Game2048-v0" in out


def test_unknown_env_is_a_clean_error_with_suggestion(capsys):
    assert main(["eval", "--env", "sokobn", "--policy", "oracle"]) == 2
    err = capsys.readouterr().err
    assert "sokobn" in err and "Did you mean" in err and "Traceback" not in err


def test_describe_shows_card_arguments_instructions_and_sample(capsys, corridor_id):
    assert main(["describe", corridor_id, "--env-kwargs", "length=7"]) == 0
    out = capsys.readouterr().out
    assert "Action Space" in out and "length" in out and "reach the exit" in out
    assert re.search(r"^[.A]{6}E$", out, re.MULTILINE)  # the sample observation, at the requested length


def test_eval_writes_summary_and_episode_records(tmp_path, corridor_id):
    path = tmp_path / "out.json"
    assert main(["eval", "--env", corridor_id, "--policy", "oracle", "-n", "6", "--json", str(path)]) == 0
    data = json.loads(path.read_text())
    assert data["summary"]["episodes"] == 6 and data["summary"]["success_rate"] == 1.0
    assert data["summary"]["split"] == "test"
    assert len(data["episodes"]) == 6
    for record in data["episodes"]:
        assert record["success"] and record["final_info"]["success"] and record["steps"] >= 1
        assert {"task", "episode_return", "steps", "final_info"} <= set(record)


def test_random_policy_is_worse_than_oracle_on_the_same_tasks(tmp_path, corridor_id):
    out = {}
    for policy in ("random", "oracle"):
        path = tmp_path / f"{policy}.json"
        main(
            [
                "eval",
                "--env",
                corridor_id,
                "--policy",
                policy,
                "-n",
                "20",
                "--json",
                str(path),
                "--env-kwargs",
                "length=8",
            ]
        )
        out[policy] = json.loads(path.read_text())
    tasks = [r["task"] for r in out["oracle"]["episodes"]]
    assert tasks == [r["task"] for r in out["random"]["episodes"]]
    assert out["oracle"]["summary"]["mean_return"] > out["random"]["summary"]["mean_return"]


def test_check_command_reports_pass(capsys, corridor_id):
    assert main(["check", corridor_id]) == 0
    out = capsys.readouterr().out
    assert out.count("│ pass ") == 4


def test_play_reads_typed_actions_undo_and_quit(corridor_cls):
    env = corridor_cls(length=4)
    out = io.StringIO()
    script = io.StringIO("left\nu\nhop\no\nright\nright\nright\nq\n")
    stats = play(env, seed=0, task=5, stream=script, out=out)
    text = out.getvalue()
    assert "(undone)" in text and "invalid:" in text and "oracle suggests: Right" in text
    assert "solved!" in text and stats["successes"] == 1


def test_eval_compares_policies_with_the_env_baselines_on_the_same_tasks(tmp_path, corridor_id, capsys):
    path = tmp_path / "compare.json"
    assert main(["eval", "--env", corridor_id, "-p", "random", "--baselines", "-n", "8", "--json", str(path)]) == 0
    rows = json.loads(path.read_text())
    assert [r["policy"] for r in rows] == ["random", "oracle"]  # the default baselines, without a duplicate
    assert rows[1]["success_rate"] == 1.0 and rows[1]["mean_steps"] < rows[0]["mean_steps"]
    assert all(r["tasks"] == 8 and r["decision_ms"] >= 0 for r in rows)
    assert "every policy plays" in capsys.readouterr().out


def test_train_config_keeps_the_trainer_defaults_it_is_not_told_to_change():
    from agentgym.training import resolve_config
    from trainers.loop import LoopConfig
    from trainers.proact import ProActConfig

    # The README's main job: --env names the default env, which keeps its preset, shaping and turn budget.
    cfg = resolve_config(LoopConfig, env="sokoban")
    assert cfg.env.kwargs == {"preset": "tiny", "distance_reward": 0.5, "approach_reward": 0.2, "text_positions": True}
    assert cfg.env.max_turns == 10 and cfg.policy.lora and cfg.policy.history_turns == 0
    # --env-kwargs and --set env.kwargs.KEY add to the default kwargs; --set policy.X keeps LOOP's policy section.
    cfg = resolve_config(
        LoopConfig,
        env="sokoban",
        env_kwargs={"preset": "easy"},
        overrides=["env.kwargs.distance_reward=0", "policy.temperature=0.7"],
    )
    assert cfg.env.kwargs == {"preset": "easy", "distance_reward": 0, "approach_reward": 0.2, "text_positions": True}
    assert cfg.policy.temperature == 0.7 and cfg.policy.lora and cfg.policy.history_turns == 0
    # Another env starts from no kwargs (Sokoban's preset means nothing to 2048) but keeps the turn budget.
    cfg = resolve_config(LoopConfig, env="game2048", env_kwargs={"size": 3})
    assert cfg.env.kwargs == {"size": 3} and cfg.env.max_turns == 10
    cfg = resolve_config(LoopConfig, overrides=["env.id=bandit"])  # --set env.id counts as --env
    assert cfg.env.kwargs == {}
    # A trainer's own start for another env: ProAct plays 2048 with the changing-moves line and 60 moves.
    cfg = resolve_config(ProActConfig, env="game2048", env_kwargs={"size": 3})
    assert cfg.env.kwargs == {"text_moves": True, "size": 3} and cfg.env.max_turns == 60
    cfg = resolve_config(ProActConfig, env="game2048", env_kwargs={"text_moves": False}, overrides=["env.max_turns=9"])
    assert cfg.env.kwargs == {"text_moves": False} and cfg.env.max_turns == 9
    assert resolve_config(ProActConfig, env="sokoban").env.kwargs["text_neighbors"] is True  # its default env
    cfg = resolve_config(ProActConfig, overrides=["policy.model=somewhere"])
    assert cfg.policy.think and cfg.policy.max_new_tokens == 96 and cfg.policy.model == "somewhere"
    # A resumed run's config is taken as it is.
    cfg = resolve_config(LoopConfig, base={"env": {"id": "sokoban", "kwargs": {}, "max_turns": 8}})
    assert cfg.env.kwargs == {} and cfg.env.max_turns == 8
