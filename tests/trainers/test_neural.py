"""Neural (MLP) policies through the same trainers as LLMs: masked joint log-probs, exact re-scoring, learning,
resume and evaluation from a run directory."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from agentgym.config import load_config  # noqa: E402
from agentgym.evaluation import build_policy as build_named_policy  # noqa: E402
from agentgym.registry import make, trainer_spec  # noqa: E402
from agentgym.rollout import RolloutConfig, RolloutEngine  # noqa: E402
from agentgym.runs import RunDir  # noqa: E402
from policies.neural import NeuralActor, PolicyOutput  # noqa: E402
from trainers.common import make_batch, score  # noqa: E402

MLP_BANDIT = [
    "env.id=bandit",
    "warmup_demos=0",  # LOOP's default warm start is for Sokoban; these tests learn from the rewards alone
    "env.kwargs={}",
    "policy.network=mlp",
    "lr=0.01",
    "eval_every=0",
    "eval_tasks=32",
    "num_envs=16",
    "tasks_per_iteration=4",
    "group_size=4",
    "time_budget_minutes=null",
    "checkpoint_every=100",
]


def _trainer(name, tmp_path, *overrides):
    cls = trainer_spec(name).load()
    cfg = load_config(cls.Config, overrides=[*MLP_BANDIT, *overrides])
    return cls(cfg, RunDir(tmp_path / name, tensorboard=False))


def test_policy_output_matches_categorical_over_active_slots():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 2, 4, generator=gen)
    mask = torch.tensor([[[1, 1, 0, 1], [1, 0, 0, 0]]] * 3, dtype=torch.bool)
    active = torch.tensor([[True, True], [True, False], [False, False]])
    out = PolicyOutput(logits, mask, active)
    actions = torch.tensor([[3, 0], [1, 0], [0, 0]])
    expected_logp, expected_ent = torch.zeros(3), torch.zeros(3)
    for n in range(3):
        for s in range(2):
            if active[n, s]:
                dist = torch.distributions.Categorical(logits=logits[n, s].masked_fill(~mask[n, s], -float("inf")))
                expected_logp[n] += dist.log_prob(actions[n, s])
                expected_ent[n] += dist.entropy()
    torch.testing.assert_close(out.log_prob(actions), expected_logp)
    torch.testing.assert_close(out.entropy(), expected_ent)
    # Sampling never picks a masked choice.
    for _ in range(20):
        choice = out.sample(gen)
        assert bool(mask.gather(-1, choice.unsqueeze(-1)).all())


def test_rescoring_reproduces_the_sampled_logprobs_and_jsonl_has_no_observations(tmp_path):
    trainer = _trainer("loop", tmp_path, "iterations=1")
    trajectories = trainer.collect(0)
    assert all(t.observations is not None and len(t.observations) == t.steps for t in trajectories)
    batch = make_batch(trainer.backend, trajectories)
    with torch.no_grad():
        logp, entropy = score(trainer.backend, batch, temperature=1.0)
    mask = batch.loss_mask.bool()
    torch.testing.assert_close(logp[mask], batch.sampled_logp[mask], atol=1e-5, rtol=0)
    assert bool((entropy[mask] > 0).all())
    record = json.loads(trajectories[0].to_json())
    assert "observations" not in record and len(record["logprobs"]) == trajectories[0].steps


def test_every_parameter_of_the_mlp_changes(tmp_path):
    trainer = _trainer("grpo", tmp_path, "iterations=1")
    before = {n: p.detach().clone() for n, p in trainer.backend.model.named_parameters()}
    stats = trainer.update(trainer.collect(0))
    assert stats["optimizer_steps"] >= 1
    # The value head is the one part a policy-gradient loss does not train.
    unchanged = [
        n for n, p in trainer.backend.model.named_parameters() if torch.equal(before[n], p.detach()) and "v." not in n
    ]
    assert not unchanged


@pytest.mark.parametrize("name", ["loop", "grpo", "ppo"])
def test_mlp_learns_the_bandit(name, tmp_path):
    # One arm of four pays 1: uniform play succeeds 25% of the time; the optimum is 100%.
    trainer = _trainer(name, tmp_path, "iterations=12")
    final = trainer.fit()
    metrics = [json.loads(line) for line in (trainer.run.path / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["eval/test/success_rate"] < 0.6
    assert final["eval/test/success_rate"] >= 0.95, final


def test_resume_and_eval_from_the_run_directory(tmp_path):
    straight = _trainer("loop", tmp_path / "a", "iterations=4", "checkpoint_every=2")
    straight.fit()
    first = _trainer("loop", tmp_path / "b", "iterations=2", "checkpoint_every=2")
    first.fit()
    resumed = _trainer("loop", tmp_path / "b", "iterations=4", "checkpoint_every=2")
    resumed.fit(resume=True)
    for (n, p), (_, q) in zip(straight.backend.model.named_parameters(), resumed.backend.model.named_parameters()):
        torch.testing.assert_close(p, q, msg=f"{n} differs after resume")
    agent = build_named_policy(str(straight.run.path), make("bandit"))
    assert isinstance(agent, NeuralActor)
    engine = RolloutEngine(lambda: make("bandit"), agent, RolloutConfig(num_envs=8))
    done = engine.run([(i, i) for i in range(16)], seed=0)
    assert np.mean([t.success for t in done]) >= 0.9


def test_reward_scale_scales_the_advantages_and_is_validated(tmp_path):
    from agentgym.config import ConfigError

    plain = _trainer("grpo", tmp_path / "a", "iterations=1")
    scaled = _trainer("rloo", tmp_path / "b", "iterations=1", "reward_scale=0.001")
    plain_rloo = _trainer("rloo", tmp_path / "c", "iterations=1")
    trajectories = plain.collect(0)
    assert trajectories
    a = plain_rloo.update(trajectories)["adv_mean_abs"]
    b = scaled.update(trajectories)["adv_mean_abs"]
    assert b == pytest.approx(a * 1e-3, rel=1e-4)
    with pytest.raises(ConfigError, match="reward_scale"):
        _trainer("loop", tmp_path / "d", "reward_scale=0")
