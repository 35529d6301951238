"""Behaviour cloning of neural policies (the SFT trainer on env steps) and warm starts from saved weights."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch_geometric")

from agentgym.config import ConfigError, load_config  # noqa: E402
from agentgym.errors import AgentGymError  # noqa: E402
from agentgym.registry import make, trainer_spec  # noqa: E402
from agentgym.report import write_training_report  # noqa: E402
from agentgym.rollout import RolloutConfig, RolloutEngine  # noqa: E402
from agentgym.runs import RunDir  # noqa: E402
from policies.baselines import OraclePolicy  # noqa: E402
from trainers.common import make_batch, score  # noqa: E402
from trainers.sft import _Recorded  # noqa: E402

TINY_VERTIPORT = [
    "env.id=vertiport",
    "env.kwargs={preset: tiny}",
    "env.max_turns=null",
    "policy.network_kwargs={hidden: 32, layers: 1, heads: 2}",
    "eval_every=0",
    "eval_tasks=4",
    "num_envs=8",
    "time_budget_minutes=null",
    "checkpoint_every=100",
]


def _trainer(name, path, *overrides):
    cls = trainer_spec(name).load()
    cfg = load_config(cls.Config, overrides=[*TINY_VERTIPORT, *overrides])
    return cls(cfg, RunDir(path, tensorboard=False))


def _oracle_days(split, count, seed=100):
    """Oracle episodes on ``count`` tasks of ``split``, with their observations."""
    env = make("vertiport", preset="tiny")
    tasks = env.unwrapped.task_set.tasks(split, count)[:count]
    engine = RolloutEngine(lambda: make("vertiport", preset="tiny"), _Recorded(OraclePolicy()), RolloutConfig(4))
    days = engine.run([(t, seed + i) for i, t in enumerate(tasks)], seed=0)
    engine.close()
    return days


def _agreement(model, days):
    """Share of the deciding aircraft whose greedy choice (given the oracle's earlier choices) is the oracle's."""
    hits = total = 0
    model.eval()
    with torch.no_grad():
        for day in days:
            out = model(day.observations)
            oracle = torch.as_tensor(np.stack([np.asarray(t.action) for t in day.turns]))
            best = out.log_probs(oracle).argmax(-1)
            hits += int(((best == oracle) & out.active).sum())
            total += int(out.active.sum())
    model.train()
    return hits / total


def test_sft_clones_the_vertiport_oracle(tmp_path):
    trainer = _trainer(
        "sft", tmp_path / "bc", "demo_tasks=12", "epochs=10", "minibatch_size=2", "micro_batch_size=2", "lr=3e-3"
    )
    held_out = _oracle_days("dev", 4)
    before = _agreement(trainer.backend.model, held_out)
    final = trainer.fit()
    after = _agreement(trainer.backend.model, held_out)
    metrics = trainer.run.metrics()
    assert metrics[-2]["loss"] < 0.7 * metrics[1]["loss"] and metrics[1]["demonstrations"] == 12
    # Many idle aircraft have one or two allowed moves, so even the untrained network agrees on some.
    assert after >= 0.7 and after - before >= 0.25, (before, after)
    # The clone earns most of what the oracle earns on held-out days, and more than the untrained network.
    oracle_profit = np.mean([d.episode_return for d in _oracle_days("test", 4, seed=0)])
    start, end = metrics[0]["eval/test/return_mean"], final["eval/test/return_mean"]
    assert end > start and end >= 0.75 * oracle_profit, (start, end, oracle_profit)
    report = write_training_report(trainer.run).read_text()
    assert "the neural network policies.gnn.vertiport:VertiportGNNPolicy" in report
    assert "reply format" not in report


def test_sft_replays_a_file_of_recorded_days(tmp_path):
    days = _oracle_days("train", 3)
    path = tmp_path / "days.jsonl"
    path.write_text("".join(d.to_json() + "\n" for d in days))
    trainer = _trainer("sft", tmp_path / "bc", f"data_file={path}", "epochs=1")
    replayed = trainer.neural_demonstrations()
    assert [len(d.turns) for d in replayed] == [len(d.turns) for d in days]
    for old, new in zip(days, replayed):
        assert [t.action for t in new.turns] == [t.action for t in old.turns]
        assert new.episode_return == pytest.approx(old.episode_return)
        for key in ("action_mask", "aircraft", "routes"):
            np.testing.assert_array_equal(new.observations[5]["struct"][key], old.observations[5]["struct"][key])
    # A file of another env's actions fails on the line that holds them.
    record = json.loads(days[0].to_json())
    record["turns"][0]["action"] = [99] * len(record["turns"][0]["action"])
    path.write_text(days[1].to_json() + "\n" + json.dumps(record) + "\n")
    with pytest.raises(AgentGymError, match=r"days.jsonl:2.*not in the env's action space"):
        _trainer("sft", tmp_path / "bad", f"data_file={path}", "epochs=1").neural_demonstrations()


def test_sft_clones_any_named_demonstrator_and_checks_the_name(tmp_path):
    trainer = _trainer("sft", tmp_path / "bc", "demo_policy=vertiport_greedy", "demo_tasks=2", "epochs=1")
    demos = trainer.neural_demonstrations()
    assert len(demos) == 2 and all(d.observations and len(d.observations) == len(d.turns) for d in demos)
    assert demos[0].policy == "vertiport_greedy"
    with pytest.raises(Exception, match="no_such_policy"):
        _trainer("sft", tmp_path / "x", "demo_policy=no_such_policy", "demo_tasks=1").neural_demonstrations()


def test_llm_sft_rejects_a_neural_only_demonstrator():
    cls = trainer_spec("sft").load()
    cfg = load_config(cls.Config, overrides=["demo_policy=vertiport_ga", "demo_tasks=1"])
    trainer = object.__new__(cls)  # the check runs before any model is needed
    trainer.cfg, trainer.backend = cfg, object()
    with pytest.raises(ConfigError, match="demo_policy applies to neural policies"):
        trainer.demonstrations()


def test_compile_is_for_neural_policies(tmp_path):
    with pytest.raises(ConfigError, match="policy.compile=true compiles a neural policy"):
        _trainer("loop", tmp_path / "llm", "env.id=sokoban", "policy.network=llm", "policy.compile=true")


def test_ppo_starts_from_cloned_weights(tmp_path):
    bc = _trainer("sft", tmp_path / "bc", "demo_tasks=2", "epochs=1")
    bc.fit()
    for where in (tmp_path / "bc", bc.run.latest_checkpoint(), bc.run.latest_checkpoint() / "policy"):
        ppo = _trainer("ppo", tmp_path / "ppo", f"policy.weights={where}", "iterations=1")
        for (name, p), (_, q), (_, v) in zip(
            bc.backend.model.named_parameters(),
            ppo.backend.model.named_parameters(),
            ppo.value_head.named_parameters(),
        ):
            torch.testing.assert_close(p, q, msg=f"{name} was not loaded from {where}")
            torch.testing.assert_close(p, v, msg=f"the critic's {name} did not start from {where}")
    with pytest.raises(ConfigError, match="holds no saved neural policy"):
        _trainer("ppo", tmp_path / "p2", f"policy.weights={tmp_path}", "iterations=1")
    with pytest.raises(ConfigError, match="differ from the saved network"):
        _trainer("ppo", tmp_path / "p3", f"policy.weights={tmp_path / 'bc'}", "policy.network_kwargs={hidden: 64}")
    with pytest.raises(ConfigError, match="is a VertiportGNNPolicy, but this run trains a MLPPolicy"):
        _trainer("ppo", tmp_path / "p4", f"policy.weights={tmp_path / 'bc'}", "policy.network=mlp")


def _can_compile() -> bool:
    import shutil
    import sysconfig
    from pathlib import Path

    return Path(sysconfig.get_paths()["include"], "Python.h").is_file() and bool(shutil.which("g++"))


@pytest.mark.parametrize(
    "name,compiled",
    [
        ("loop", False),
        ("ppo", False),
        pytest.param("loop", True, marks=pytest.mark.skipif(not _can_compile(), reason="needs g++ and Python.h")),
    ],
)
def test_policy_gradient_trainers_run_on_the_vertiport_gnn(name, compiled, tmp_path):
    trainer = _trainer(
        name,
        tmp_path / name,
        "tasks_per_iteration=1",
        "group_size=3",
        "minibatch_size=3",
        "micro_batch_size=3",
        "reward_scale=0.001",
        "iterations=1",
        f"policy.compile={str(compiled).lower()}",
    )
    days = trainer.collect(0)
    # Re-scoring the stored dispatches (teacher-forced through the autoregressive decoder) gives back exactly the
    # log-probs they were sampled with, round by round; with policy.compile, sampled by the compiled network and
    # re-scored by the eager one (a pass with autograd).
    batch = make_batch(trainer.backend, days)
    with torch.enable_grad() if compiled else torch.no_grad():
        logp, _ = score(trainer.backend, batch, temperature=1.0)
        logp = logp.detach()
    mask = batch.loss_mask.bool()
    torch.testing.assert_close(logp[mask], batch.sampled_logp[mask], atol=1e-4, rtol=0)
    before = {n: p.detach().clone() for n, p in trainer.backend.model.named_parameters()}
    stats = trainer.update(days)
    assert stats["optimizer_steps"] >= 1 and np.isfinite(stats["loss"])
    moved = [n for n, p in trainer.backend.model.named_parameters() if not torch.equal(before[n], p.detach())]
    # Every parameter but the policy network's own value head (PPO's critic is a separate network) is trained.
    assert sorted(set(before) - set(moved)) == sorted(n for n in before if n.startswith("value_head."))


def test_untaught_turns_of_a_file_are_stepped_but_not_cloned(tmp_path):
    day = _oracle_days("train", 1)[0]
    record = json.loads(day.to_json())
    record["turns"][2]["info"]["teach"] = False  # e.g. a GLAD detour
    path = tmp_path / "days.jsonl"
    path.write_text(json.dumps(record) + "\n")
    (new,) = _trainer("sft", tmp_path / "bc", f"data_file={path}", "epochs=1").neural_demonstrations()
    assert len(new.turns) == len(new.observations) == len(day.turns) - 1
    assert [t.action for t in new.turns] == [t.action for i, t in enumerate(day.turns) if i != 2]
    # The turn after the skipped one is cloned from the state the skipped action led to.
    np.testing.assert_array_equal(new.observations[2]["struct"]["aircraft"], day.observations[3]["struct"]["aircraft"])
