"""LOOP, GRPO and RLOO on a tiny model: parameters move, a bandit with a known optimum is learned, resume is exact."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from agentgym.config import ConfigError, load_config  # noqa: E402
from agentgym.runs import RunDir  # noqa: E402
from trainers.grpo import GRPOTrainer  # noqa: E402
from trainers.loop import LoopTrainer  # noqa: E402
from trainers.rloo import RLOOTrainer  # noqa: E402

BANDIT = [
    "env.id=bandit",
    "warmup_demos=0",  # LOOP's default warm start is for Sokoban; these tests learn from the rewards alone
    "env.max_turns=2",
    "policy.lora=false",
    "policy.max_new_tokens=4",
    "eval_every=0",
    "eval_tasks=8",
    "num_envs=32",
    "checkpoint_every=100",
]


def _trainer(cls, tmp_path, backend, *overrides):
    cfg = load_config(cls.Config, overrides=[*BANDIT, *overrides])
    return cls(cfg, RunDir(tmp_path / cls.name, tensorboard=False), backend=backend)


@pytest.mark.parametrize("cls", [LoopTrainer, GRPOTrainer, RLOOTrainer])
def test_every_trainable_parameter_changes(cls, tmp_path, tiny_backend):
    backend = tiny_backend(seed=1)
    before = {n: p.detach().clone() for n, p in backend.model.named_parameters()}
    trainer = _trainer(
        cls,
        tmp_path,
        backend,
        "iterations=1",
        "tasks_per_iteration=4",
        "group_size=4",
        "minibatch_size=16",
        "micro_batch_size=8",
        "lr=1e-2",
    )
    trainer.collect(0)
    stats = trainer.update(trainer.collect(0))
    assert stats["optimizer_steps"] >= 1, stats
    unchanged = [n for n, p in backend.model.named_parameters() if torch.equal(before[n], p.detach())]
    assert not unchanged


@pytest.mark.parametrize("cls", [LoopTrainer, GRPOTrainer])
def test_bandit_is_learned_within_bounded_updates(cls, tmp_path, tiny_backend):
    # One arm of four pays 1: the optimum is success 1.0; a uniform policy gets 0.25.
    trainer = _trainer(
        cls,
        tmp_path,
        tiny_backend(seed=2),
        "iterations=15",
        "tasks_per_iteration=4",
        "group_size=8",
        "minibatch_size=16",
        "micro_batch_size=16",
        "lr=3e-2",
        "epochs=2",
    )
    rates = []
    for it in range(15):
        trainer.iteration = it
        trajectories = trainer.collect(it)
        rates.append(sum(t.success for t in trajectories) / len(trajectories))
        trainer.update(trajectories)
        if rates[-1] >= 0.9:
            break
    assert rates[-1] >= 0.9, rates
    final = trainer.evaluate("test", "final")
    assert final["eval/test/success_rate"] >= 0.9


def test_resume_continues_exactly(tmp_path, tiny_backend):
    common = [
        "iterations=2",
        "tasks_per_iteration=2",
        "group_size=4",
        "minibatch_size=8",
        "lr=1e-2",
        "checkpoint_every=1",
        "eval_tasks=4",
    ]
    straight = _trainer(LoopTrainer, tmp_path / "a", tiny_backend(seed=3), *common)
    straight.fit()
    cfg = load_config(LoopTrainer.Config, overrides=[*BANDIT, *common, "iterations=1", "checkpoint_every=1"])
    first = LoopTrainer(cfg, RunDir(tmp_path / "b", tensorboard=False), backend=tiny_backend(seed=3))
    first.fit()
    cfg2 = load_config(LoopTrainer.Config, overrides=[*BANDIT, *common])
    resumed = LoopTrainer(cfg2, RunDir(tmp_path / "b", tensorboard=False), backend=tiny_backend(seed=3))
    resumed.restore_backend = True
    resumed.fit(resume=True)
    for (name, p), (_, q) in zip(straight.backend.model.named_parameters(), resumed.backend.model.named_parameters()):
        assert torch.allclose(p, q, atol=1e-6), name
    a = [r for r in RunDir(tmp_path / "a" / "loop", tensorboard=False).metrics() if "loss" in r]
    b = [r for r in RunDir(tmp_path / "b", tensorboard=False).metrics() if "loss" in r]
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b])


def test_zero_signal_batch_is_skipped_and_logged(tmp_path, tiny_backend):
    # Every arm pays the same when the paying arm is unreachable: all advantages are zero.
    trainer = _trainer(
        LoopTrainer,
        tmp_path,
        tiny_backend(seed=4),
        "iterations=1",
        "env.kwargs={num_arms: 2, paying_arm: 0}",
        "tasks_per_iteration=1",
        "group_size=2",
    )
    trajectories = trainer.collect(0)
    for t in trajectories:
        t.episode_return = 0.0
    assert trainer.update(trajectories)["update_skipped_no_signal"] == 1.0


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="group_size=1"):
        load_config(LoopTrainer.Config, overrides=["group_size=1"])
    with pytest.raises(ConfigError, match="lr='fast'"):
        load_config(LoopTrainer.Config, overrides=["lr=fast"])
    with pytest.raises(ConfigError, match="Did you mean 'policy.temperature'"):
        load_config(LoopTrainer.Config, overrides=["policy.temprature=0.5"])


def test_a_run_directory_serves_as_a_policy_for_eval(tmp_path, tiny_backend):
    import json

    from agentgym.cli import main

    trainer = _trainer(LoopTrainer, tmp_path, tiny_backend(seed=8), "iterations=1", "tasks_per_iteration=2",
                       "group_size=2", "minibatch_size=4", "eval_tasks=2")
    trainer.fit()
    run_dir = trainer.run.path
    out = tmp_path / "eval.json"
    assert main(["eval", "--env", "bandit", "--policy", str(run_dir), "-n", "4", "--json", str(out)]) == 0
    summary = json.loads(out.read_text())["summary"]
    assert summary["episodes"] == 4 and summary["policy"] == str(run_dir)


def test_time_budget_stops_starting_iterations_and_says_so(tmp_path, tiny_backend):
    trainer = _trainer(LoopTrainer, tmp_path, tiny_backend(seed=9), "iterations=5", "tasks_per_iteration=2",
                       "group_size=2", "minibatch_size=4", "eval_tasks=2", "time_budget_minutes=0.0")
    trainer.fit()
    records = trainer.run.metrics()
    assert max(r["step"] for r in records) == 1  # one iteration always runs; the budget stops the rest
    assert any("stopped_time_budget_minutes" in r for r in records)
    assert "eval/test/success_rate" in records[-1]  # the final evaluation still ran


def test_eval_start_false_skips_only_the_zero_shot_evaluation(tmp_path, tiny_backend):
    trainer = _trainer(LoopTrainer, tmp_path, tiny_backend(seed=9), "iterations=1", "tasks_per_iteration=2",
                       "group_size=2", "minibatch_size=4", "eval_tasks=2", "eval_start=false")
    trainer.fit()
    samples = sorted(p.name for p in (trainer.run.path / "samples").glob("eval-*.jsonl"))
    assert samples == ["eval-dev-end.jsonl", "eval-test-end.jsonl"]
    records = trainer.run.metrics()
    assert not any("eval/dev/success_rate" in r for r in records[:-1])  # only the final record evaluates
    assert "eval/test/success_rate" in records[-1]


def test_an_evaluation_replaces_the_samples_of_the_same_label(tmp_path, tiny_backend):
    trainer = _trainer(LoopTrainer, tmp_path, tiny_backend(seed=9), "eval_tasks=3")
    path = trainer.run.path / "samples" / "eval-dev-end.jsonl"
    for _ in range(2):  # a resumed run evaluates "end" again
        trainer.evaluate("dev", "end")
        assert len(path.read_text().splitlines()) == 3


@pytest.mark.parametrize("guided", [False, True])
def test_turn_rows_rescore_exactly_what_was_sampled_with_truncated_history(tmp_path, tiny_backend, guided):
    # Memory: 4 turns. With history_turns=1 each prompt holds the system prompt, the previous turn and the new
    # observation; each reply becomes its own row with exactly that prompt, so re-scoring reproduces sampling.
    # Guided replies are re-scored over the choice sets they were drawn from, so they reproduce the constrained
    # sampler's log-probs (forced tokens score exactly 0).
    from trainers.common import make_batch

    trainer = _trainer(
        LoopTrainer,
        tmp_path,
        tiny_backend(seed=3),
        "env.id=memory",
        "env.max_turns=4",
        "policy.history_turns=1",
        f"policy.guided={str(guided).lower()}",
        "tasks_per_iteration=2",
        "group_size=2",
    )
    trajectories = trainer.collect(0)
    assert all(t.steps == 4 and t.context_dropped_turns == 2 for t in trajectories)
    assert all(t.constrained == guided and bool(t.choice_sets) == guided for t in trajectories)
    rows = make_batch(trainer.backend, trajectories, history_turns=1)
    assert (rows.choices is not None) == guided
    assert rows.episode.tolist() == [i for i in range(len(trajectories)) for _ in range(4)]
    assert [int(r.max()) for r in rows.turn_ids] == [0, 1, 2, 3] * len(trajectories)  # one reply per row
    mask = rows.loss_mask.bool()
    torch.testing.assert_close(trainer._behaviour_logprobs(rows)[mask], rows.sampled_logp[mask], atol=2e-4, rtol=0)
    # The whole-episode layout conditions later replies on turns the policy never saw: its scores differ.
    whole = make_batch(trainer.backend, trajectories)
    on = whole.loss_mask.bool()
    assert not torch.allclose(trainer._behaviour_logprobs(whole)[on], whole.sampled_logp[on], atol=2e-4)
    # The loss weighs each episode once, as LOOP's per-rollout token mean: a row's weight is its share of its
    # episode's tokens (times 4 rows per episode, so the weights average 1). Whole-episode rows need none.
    weights, tokens = trainer.row_weights(rows), rows.loss_mask.sum(1).double()
    for episode in range(len(trajectories)):
        own = rows.episode == episode
        torch.testing.assert_close(weights[own].double(), 4 * tokens[own] / tokens[own].sum(), rtol=1e-6, atol=0)
    assert trainer.row_weights(whole) is None
    stats = trainer.update(trajectories)
    assert stats.get("optimizer_steps", 0) >= 1 or stats.get("update_skipped_no_signal") == 1.0


WARMUP = ["warmup_demos=16", "warmup_epochs=3", "warmup_lr=3e-2", "minibatch_size=8", "tasks_per_iteration=2",
          "group_size=4", "lr=1e-2", "eval_tasks=8"]  # fmt: skip


def test_warm_start_on_oracle_demonstrations_then_iterations(tmp_path, tiny_backend):
    trainer = _trainer(LoopTrainer, tmp_path, tiny_backend(seed=6), *WARMUP, "iterations=1")
    assert trainer.total_steps() == 4  # three warm-up epochs, then one iteration
    trainer.fit()
    records = RunDir(tmp_path / "loop", tensorboard=False).metrics()
    by_step = {}
    for r in records:
        by_step.setdefault(r["step"], {}).update(r)
    # Steps 1-3 are supervised epochs on 16 oracle demonstrations, with the loss falling; dev and test follow them.
    assert by_step[1]["warmup_demonstrations"] == 16 and [by_step[s]["warmup_epoch"] for s in (1, 2, 3)] == [1, 2, 3]
    assert by_step[3]["warmup_loss"] < by_step[2]["warmup_loss"] < by_step[1]["warmup_loss"]
    assert "return_mean" not in by_step[3] and "return_mean" in by_step[4]
    assert by_step[0]["eval/test/success_rate"] < 0.9 <= by_step[3]["eval/test/success_rate"]  # the warm start works
    assert (tmp_path / "loop" / "samples" / "eval-test-warmup.jsonl").is_file()
    # A few demonstrations are kept as samples; the iteration after the warm start is iteration 0 (its task draws
    # and sampling seeds).
    samples = [json.loads(line) for line in (tmp_path / "loop" / "samples" / "train.jsonl").read_text().splitlines()]
    assert [s["policy"] for s in samples] == ["loop@warmup"] * 8 + ["loop@0"] * 8
    assert all(s["success"] for s in samples[:8])
    from agentgym.report import write_training_report

    report = write_training_report(RunDir(tmp_path / "loop", tensorboard=False)).read_text()
    assert "| before | after the warm start | after |" in report and "1 iterations after 3 epochs" in report


def test_resume_in_the_middle_of_the_warm_start_continues_exactly(tmp_path, tiny_backend):
    straight = _trainer(LoopTrainer, tmp_path / "a", tiny_backend(seed=4), *WARMUP, "iterations=1")
    straight.fit()

    def stop_after_first_epoch(done, _metrics):
        if done == 1:
            raise KeyboardInterrupt

    first = _trainer(LoopTrainer, tmp_path / "b", tiny_backend(seed=4), *WARMUP, "iterations=1")
    with pytest.raises(KeyboardInterrupt):
        first.fit(on_iteration=stop_after_first_epoch)
    saved = tmp_path / "b" / "loop" / "checkpoints" / "step-000001"
    assert (saved / "warmup_optimizer.pt").is_file()  # the warm start's own AdamW state is kept mid-stage
    resumed = _trainer(LoopTrainer, tmp_path / "b", tiny_backend(seed=4), *WARMUP, "iterations=1")
    resumed.fit(resume=True)
    for (name, p), (_, q) in zip(straight.backend.model.named_parameters(), resumed.backend.model.named_parameters()):
        assert torch.allclose(p, q, atol=1e-6), name
    assert not (tmp_path / "b" / "loop" / "checkpoints" / "step-000004" / "warmup_optimizer.pt").exists()


def _params(backend):
    return {n: p.detach().clone() for n, p in backend.model.named_parameters()}


def _same(a, b):
    return all(torch.equal(a[n], b[n]) for n in a)


KL_RUN = [*WARMUP, "warmup_epochs=1", "warmup_lr=1e-3", "iterations=3", "kl_coef=0.1", "checkpoint_every=1"]
"""One short warm-start epoch (the policy is still unsure, so the groups disagree), then RL with a KL penalty."""


def test_kl_reference_after_a_warm_start_is_the_warm_started_model_and_survives_resume(tmp_path, tiny_backend):
    trainer = _trainer(GRPOTrainer, tmp_path, tiny_backend(seed=6), *KL_RUN)
    assert trainer.reference is None  # not the model before the warm start
    at_end_of_warmup = {}

    def watch(done, _metrics):
        if done == 1:
            at_end_of_warmup.update(_params(trainer.backend))
        if done == 3:
            raise KeyboardInterrupt  # two RL iterations in: interrupted

    with pytest.raises(KeyboardInterrupt):
        trainer.fit(on_iteration=watch)
    reference = _params(trainer.reference)
    assert _same(reference, at_end_of_warmup) and not _same(reference, _params(trainer.backend))
    assert (tmp_path / "grpo" / "reference" / "policy").is_dir()
    records = RunDir(tmp_path / "grpo", tensorboard=False).metrics()
    ref_kl = {r["step"]: r["ref_kl"] for r in records if "ref_kl" in r}
    assert sorted(ref_kl) == [2, 3] and ref_kl[3] > 0  # logged by every RL update; the first starts at the reference
    # Resumed from its step-3 checkpoint, the run penalises the distance to the same warm-started model.
    resumed = _trainer(GRPOTrainer, tmp_path, tiny_backend(seed=1), *KL_RUN)
    resumed.fit(resume=True)
    assert _same(_params(resumed.reference), at_end_of_warmup)


def test_kl_on_resume_when_the_warm_started_model_was_not_kept_is_refused(tmp_path, tiny_backend):
    first = _trainer(GRPOTrainer, tmp_path, tiny_backend(seed=6), *KL_RUN[:-2], "kl_coef=0", "checkpoint_every=1")

    def stop(done, _metrics):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        first.fit(on_iteration=stop)
    again = _trainer(GRPOTrainer, tmp_path, tiny_backend(seed=6), *KL_RUN)
    with pytest.raises(ConfigError, match="kl_coef=0.1.*step 1.*resumed at step 2.*policy.weights=RUN_DIR"):
        again.fit(resume=True)


def test_warm_start_settings_are_checked():
    with pytest.raises(ConfigError, match="warmup_demos=-1"):
        load_config(LoopTrainer.Config, overrides=[*BANDIT, "warmup_demos=-1"])
    from trainers.proact import ProActTrainer

    with pytest.raises(ConfigError, match="GLAD"):
        load_config(ProActTrainer.Config, overrides=["warmup_demos=4"])
    # LOOP's default warm start is Sokoban's; another --env drops it unless asked for.
    from agentgym.training import resolve_config

    assert resolve_config(LoopTrainer.Config, env="sokoban").warmup_demos == 120
    assert resolve_config(LoopTrainer.Config, env="2048").warmup_demos == 0
    assert resolve_config(LoopTrainer.Config, env="2048", overrides=["warmup_demos=16"]).warmup_demos == 16
