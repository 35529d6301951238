"""ProAct on a tiny model: config checks, MC-GRPO advantages and updates, GLAD SFT, MC-PPO, resume, learning."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import agentgym  # noqa: E402
from agentgym.config import ConfigError, load_config  # noqa: E402
from agentgym.errors import AgentGymError  # noqa: E402
from agentgym.glad import SearchBudget  # noqa: E402
from agentgym.mc_groups import (  # noqa: E402
    chain_agreement,
    contrast_groups,
    pick_states,
    teacher_replies,
)
from agentgym.runs import RunDir  # noqa: E402
from environments.sanity.bandit import BanditEnv  # noqa: E402
from trainers.proact import ProActConfig, ProActTrainer  # noqa: E402
from trainers.turn_rows import play_time_prompt  # noqa: E402

BANDIT = [
    "env.id=bandit",
    "env.max_turns=2",
    "stages=mc_grpo",
    "policy.max_new_tokens=4",
    "eval_every=0",
    "eval_tasks=8",
    "num_envs=16",
    "checkpoint_every=100",
    "mc_rollouts=4",
    "mc_horizon=3",
    "time_budget_minutes=null",
]
SOKOBAN = [
    "env.id=sokoban",
    "env.kwargs={preset: tiny}",
    "env.max_turns=3",
    "policy.max_new_tokens=4",
    "policy.history_turns=0",
    "eval_every=0",
    "eval_tasks=2",
    "checkpoint_every=100",
    "mc_rollouts=4",
    "mc_horizon=5",
    "time_budget_minutes=null",
]


def _trainer(tmp_path, backend, *overrides, base=BANDIT, name="proact"):
    cfg = load_config(ProActConfig, overrides=[*base, *overrides])
    return ProActTrainer(cfg, RunDir(tmp_path / name, tensorboard=False), backend=backend)


def _reply_text(trainer, batch, row):
    ids = [int(i) for i, m in zip(batch.input_ids[row, 1:], batch.loss_mask[row]) if m > 0]
    return trainer.backend.tokenizer.decode(ids)


def _record_minibatches(trainer, monkeypatch):
    """``(reply text, advantage)`` of every row the trainer's minibatches train on, filled as the update runs."""
    seen = []
    original = trainer._minibatch

    def spy(batch, rows, advantages, old_logp, weights):
        assert weights is None  # one-turn rows, each its own episode: no episode weights
        seen.extend((_reply_text(trainer, batch, int(r)), float(advantages[int(r)])) for r in rows)
        return original(batch, rows, advantages, old_logp, weights)

    monkeypatch.setattr(trainer, "_minibatch", spy)
    return seen


# ---------------------------------------------------------------------------------------------------- config
def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="mc_rollouts=0"):
        load_config(ProActConfig, overrides=["mc_rollouts=0"])
    with pytest.raises(ConfigError, match="mc_horizon=-1"):
        load_config(ProActConfig, overrides=["mc_horizon=-1"])
    with pytest.raises(ConfigError, match="stages='ppo'"):
        load_config(ProActConfig, overrides=["stages=ppo"])
    with pytest.raises(ConfigError, match="policy.think=true"):
        load_config(ProActConfig, overrides=["policy.think=false"])
    with pytest.raises(ConfigError, match="lam=0.5"):
        load_config(ProActConfig, overrides=["stages=mc_ppo", "lam=0.5"])
    with pytest.raises(ConfigError, match="mc_value_weight=1.5"):
        load_config(ProActConfig, overrides=["mc_value_weight=1.5"])
    with pytest.raises(ConfigError, match="policy.history_turns=-1"):
        load_config(ProActConfig, overrides=["policy.think=true", "policy.history_turns=-1"])
    with pytest.raises(ConfigError, match="mc_group_size=1 with mc_fallback=false"):
        load_config(ProActConfig, overrides=["mc_group_size=1", "mc_fallback=false"])
    cfg = ProActConfig()
    assert cfg.uses_glad and cfg.rl_stage == "mc_grpo" and cfg.policy.think and cfg.policy.max_new_tokens >= 96
    assert load_config(ProActConfig, overrides=["stages=glad"]).rl_stage is None


def test_an_env_without_state_copies_fails_before_training(tmp_path, tiny_backend):
    class NoCopy(BanditEnv):
        def get_state(self):
            raise NotImplementedError

    try:
        agentgym.spec("test/NoCopyBandit-v0")
    except KeyError:
        agentgym.register(id="test/NoCopyBandit-v0", entry_point=NoCopy)
    with pytest.raises(AgentGymError, match="does not implement get_state.*stages=glad"):
        _trainer(tmp_path, tiny_backend(), "env.id=test/NoCopyBandit-v0")
    with pytest.raises(AgentGymError, match="no GLAD chain writer"):  # the bandit has no search to distil
        _trainer(tmp_path, tiny_backend(), "stages=glad+mc_grpo", "policy.think=true")


# ---------------------------------------------------------------------------------------------------- MC-GRPO
def test_mc_grpo_scores_groups_and_uses_the_fallback_for_degenerate_ones(tmp_path, tiny_backend):
    trainer = _trainer(tmp_path, tiny_backend(seed=1), "mc_group_size=3")
    env = agentgym.make("bandit")
    env.reset(seed=0)
    state = env.unwrapped.get_state()
    groups = [["blue", "blue", "blue"], ["red", "green", "red"], ["red", "blue", "green"], ["no idea", "hmm"]]
    scores = trainer.score_replies([state] * 4, groups)
    assert scores.degenerate.tolist() == [True, True, False, True]
    assert scores.invalid.tolist() == [False] * 9 + [True, True]
    adv = scores.advantages().tolist()
    # Q is exact here (one valid step ends the episode): blue 1, other arms 0; all arms: mean 1/4, std sqrt(3)/4.
    assert scores.q[:9].tolist() == [1, 1, 1, 0, 0, 0, 0, 1, 0]
    assert adv[:3] == pytest.approx([3**0.5] * 3, rel=1e-4)  # all-blue group: scored against every arm
    assert adv[3:6] == pytest.approx([-(3**-0.5)] * 3, rel=1e-4)  # one value (0): also the fallback
    assert adv[6:9] == pytest.approx([-(3**-0.5), 2 * 3**-0.5, -(3**-0.5)], rel=1e-4)  # ordinary group z-score
    # The shared update scales returns by reward_scale; the advantages do not change.
    scaled = _trainer(tmp_path, tiny_backend(seed=1), "mc_group_size=3", "reward_scale=0.1", name="scaled")
    scaled._scores = scores
    again = scaled.advantages(torch.as_tensor(scores.q) * 0.1, torch.as_tensor(scores.group)).tolist()
    assert again == pytest.approx(scores.advantages().tolist(), rel=1e-3)
    # Without the fallback, degenerate groups carry no signal.
    plain = _trainer(tmp_path, tiny_backend(seed=1), "mc_group_size=3", "mc_fallback=false", name="plain")
    adv = plain.score_replies([state] * 3, groups[:3]).advantages().tolist()
    assert adv[:6] == [0.0] * 6 and adv[7] > 0


def test_fallback_rewrites_turn_a_degenerate_group_into_one_reply_per_action(tmp_path, tiny_backend):
    trainer = _trainer(tmp_path, tiny_backend(seed=1), "mc_group_size=3", "mc_fallback_rewrites=true")
    env = agentgym.make("bandit")
    env.reset(seed=0)
    state = env.unwrapped.get_state()
    groups = [["blue", "blue", "blue"], ["red", "green", "red"], ["red", "blue", "green"], ["no idea", "hmm"]]
    scores = trainer.score_replies([state] * 4, groups)
    texts, forced, contrasted = contrast_groups(scores, env.unwrapped, groups)
    names = list(env.unwrapped.action_names)
    assert names == ["red", "green", "blue", "yellow"]
    # The all-blue group and the one-value group become the first reply plus its rewrites to the other arms.
    assert texts[0] == ["blue", "red", "green", "yellow"] and forced[0] == [None, 0, 1, 3]
    assert texts[1] == ["red", "green", "blue", "yellow"] and forced[1] == [None, 1, 2, 3]
    assert texts[2] == groups[2] and forced[2] == [None] * 3  # an ordinary group stays as sampled
    assert texts[3] == groups[3] and forced[3] == [None] * 2  # nothing parseable to rewrite
    adv = contrasted.advantages().numpy()
    group = contrasted.group
    # Each rewritten row is scored by its own arm's Q (blue 1, others 0): blue +sqrt(3), the others -1/sqrt(3),
    # so the rows of a contrasted group, which share the same reasoning, sum to zero.
    flat = [t for g in texts[:2] for t in g]
    assert adv[:8] == pytest.approx([3**0.5 if t == "blue" else -(3**-0.5) for t in flat], rel=1e-4)
    assert adv[group == 0].sum() == pytest.approx(0, abs=1e-6) and adv[group == 1].sum() == pytest.approx(0, abs=1e-6)
    assert adv[8:11] == pytest.approx(scores.advantages().numpy()[6:9])  # the ordinary group is unchanged
    assert contrasted.q[:8].tolist() == [float(t == "blue") for t in flat]


def test_fallback_rewrites_need_the_fallback_and_action_names(tmp_path, tiny_backend):
    with pytest.raises(ConfigError, match="mc_fallback_rewrites=true.*mc_fallback=False"):
        _trainer(tmp_path, tiny_backend(), "mc_fallback=false", "mc_fallback_rewrites=true")


def test_fallback_rewrites_reach_the_loss_as_tokens_of_the_rewritten_reply(tmp_path, tiny_backend, monkeypatch):
    trainer = _trainer(
        tmp_path,
        tiny_backend(seed=2),
        "tasks_per_iteration=2",
        "mc_states=2",
        "mc_group_size=1",  # one reply per state: every group is degenerate, so every one is rewritten
        "minibatch_size=8",
        "micro_batch_size=8",
        "mc_fallback_rewrites=true",
    )
    seen = _record_minibatches(trainer, monkeypatch)
    stats = trainer.update(trainer.collect(0))
    names = set(agentgym.make("bandit").unwrapped.action_names)
    rows = [json.loads(line) for line in (tmp_path / "proact" / "samples" / "mc_grpo.jsonl").read_text().splitlines()]
    rewritten = [r for r in rows if "rewritten_to" in r["turns"][0]["info"]]
    assert stats["mc_rewrites"] == len(rewritten) == 6, stats  # 2 states x the 3 arms not sampled
    assert stats["mc_replies"] == len(seen) == 8 and stats["optimizer_steps"] == 1
    assert sorted(text.strip() for text, _ in seen) == sorted([*names, *names])  # each state: one row per arm
    for row in rewritten:  # a rewrite names an arm and is scored as that arm (its tokens: `seen` above)
        turn = row["turns"][0]
        assert turn["action"] in names
        assert (turn["info"]["q_mc"] == 1.0) == (turn["action"] == "blue")
    # Blue pays: every blue row gets a positive advantage, every other one a negative one.
    assert all((adv > 0) == (text.strip() == "blue") for text, adv in seen), seen
    assert any(text.strip() == "blue" for text, _ in seen)


def test_mc_grpo_advantages_reach_the_loss_with_the_right_signs(tmp_path, tiny_backend, monkeypatch):
    trainer = _trainer(
        tmp_path,
        tiny_backend(seed=2),
        "tasks_per_iteration=2",
        "mc_states=2",
        "mc_group_size=6",
        "minibatch_size=12",
        "micro_batch_size=12",
    )
    seen = _record_minibatches(trainer, monkeypatch)
    stats = trainer.update(trainer.collect(0))
    assert stats["mc_states"] == 2 and stats["mc_replies"] == 12 and stats["optimizer_steps"] == 1, stats
    assert len(seen) == 12
    # Blue pays: its replies get positive advantages, all others negative, whether by the group z-score or, in a
    # group without blue (or only blue), by the fallback over every arm.
    assert all((adv > 0) == (text == "blue") for text, adv in seen), seen
    assert {adv > 0 for _, adv in seen} == {True, False}
    assert 0 <= stats["mc_fallback_frac"] <= 1 and stats["mc_critic_s"] >= 0
    assert stats["mc_q_mean"] == pytest.approx(sum(text == "blue" for text, _ in seen) / 12)
    sample = json.loads((tmp_path / "proact" / "samples" / "mc_grpo.jsonl").read_text().splitlines()[0])
    assert "q_mc" in sample["turns"][0]["info"]


def test_every_trainable_parameter_changes_after_one_mc_grpo_update(tmp_path, tiny_backend):
    backend = tiny_backend(seed=3)
    before = {n: p.detach().clone() for n, p in backend.model.named_parameters()}
    trainer = _trainer(
        tmp_path,
        backend,
        "tasks_per_iteration=2",
        "mc_states=2",
        "mc_group_size=4",
        "minibatch_size=8",
        "micro_batch_size=8",
        "lr=1e-2",
    )
    stats = trainer.update(trainer.collect(0))
    assert stats["optimizer_steps"] >= 1, stats
    assert not [n for n, p in backend.model.named_parameters() if torch.equal(before[n], p.detach())]


def test_mc_grpo_learns_the_bandit_within_bounded_iterations(tmp_path, tiny_backend):
    # One arm of four pays 1; Q_MC is exact. The optimum is success 1.0, a uniform policy gets 0.25.
    trainer = _trainer(
        tmp_path,
        tiny_backend(seed=4),
        "tasks_per_iteration=2",
        "mc_states=2",
        "mc_group_size=4",
        "minibatch_size=8",
        "micro_batch_size=8",
        "lr=5e-2",
    )
    q_means = []
    for it in range(10):
        trainer.iteration = it
        q_means.append(trainer.update(trainer.collect(it))["mc_q_mean"])  # the share of sampled replies that pay
        if q_means[-1] >= 0.9:
            break
    assert q_means[-1] >= 0.9 and q_means[0] < 0.9, q_means
    assert trainer.evaluate("test", "final")["eval/test/success_rate"] >= 0.9


def test_resume_continues_exactly(tmp_path, tiny_backend):
    common = [
        "iterations=2",
        "tasks_per_iteration=1",
        "mc_states=1",
        "mc_group_size=4",
        "minibatch_size=4",
        "lr=1e-2",
        "checkpoint_every=1",
        "eval_tasks=1",
    ]
    straight = _trainer(tmp_path / "a", tiny_backend(seed=5), *common)
    straight.fit()
    first = _trainer(tmp_path / "b", tiny_backend(seed=5), *common, "iterations=1")
    first.fit()
    resumed = _trainer(tmp_path / "b", tiny_backend(seed=5), *common)
    resumed.fit(resume=True)
    for (name, p), (_, q) in zip(straight.backend.model.named_parameters(), resumed.backend.model.named_parameters()):
        assert torch.allclose(p, q, atol=1e-6), name
    a = [r for r in straight.run.metrics() if "loss" in r]
    b = [r for r in resumed.run.metrics() if "loss" in r]
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b]) and len(a) == 2
    assert [r["rl_iteration"] for r in b] == [1, 2]


# ---------------------------------------------------------------------------------------------------- GLAD
def test_glad_writes_its_data_and_sft_loss_decreases(tmp_path, tiny_backend, monkeypatch):
    glad = [
        "stages=glad",
        "policy.think=true",
        "glad_tasks=2",
        "glad_epochs=2",
        "glad_lr=1e-2",
        "glad_minibatch_size=4",
        "env.max_turns=10",
    ]
    trainer = _trainer(tmp_path, tiny_backend(seed=6), *glad, base=SOKOBAN)
    assert trainer.total_steps() == 2
    first = trainer.train_step(0)
    lines = (tmp_path / "proact" / "glad.jsonl").read_text().splitlines()
    assert first["glad_tasks_written"] == len(lines) == first["glad_demonstrations"] == 2, first
    assert json.loads(lines[0])["turns"][0]["action"].startswith("<think>Box ")
    # One sequence per turn: the play-time prompt (history_turns=0: the current observation only), then the
    # chain-and-answer reply in the loss.
    batch = trainer._warmup_batch
    assert first["glad_sequences"] == first["glad_turns"] == batch.input_ids.shape[0] > 2
    tok = trainer.backend.tokenizer
    for row in range(batch.input_ids.shape[0]):
        n = int(batch.attention_mask[row].sum())
        mask = batch.loss_mask[row, : n - 1]
        start = int(mask.nonzero()[0]) + 1
        reply = tok.decode(batch.input_ids[row, start:n])
        assert reply.startswith("<think>Box ") and reply.endswith("</answer>"), reply
        assert int(mask.sum()) == n - start  # everything after the prompt is the reply
        assert tok.decode(batch.input_ids[row, :start]).count("<|im_start|>user") == 1
    trainer.checkpoint(1)  # mid-GLAD: the GLAD optimizer is saved too
    assert (tmp_path / "proact" / "checkpoints" / "step-000001" / "glad_optimizer.pt").is_file()
    second = trainer.train_step(1)
    assert second["glad_epoch"] == 2 and second["glad_loss"] < first["glad_loss"], (first, second)
    # Resuming reuses the file instead of searching again, and the GLAD optimizer's state.
    monkeypatch.setattr("trainers.proact.build_dataset", lambda *a, **k: pytest.fail("GLAD data rebuilt"))
    again = _trainer(tmp_path, tiny_backend(seed=6), *glad, base=SOKOBAN)
    assert again.restore() == 1 and again._warmup_optimizer_state is not None
    assert again.glad_dataset() == (tmp_path / "proact" / "glad.jsonl", {"glad_reused": 1.0})


def test_pick_states_takes_the_policys_mistakes_first(tmp_path, tiny_backend):
    trainer = _trainer(tmp_path, tiny_backend())
    env = agentgym.make("bandit")
    env.reset(seed=0)
    state = env.unwrapped.get_state()
    played = ["blue", "red", "blue", "no idea", "blue", "green"]  # blue pays 1, every other arm 0
    rng = np.random.default_rng(0)
    picked = pick_states(trainer.critic, env.unwrapped, [state] * 6, played, 3, rng, errors_first=True)
    assert picked == [1, 3, 5]  # the three replies that are not the best arm (one unparseable)
    some = pick_states(trainer.critic, env.unwrapped, [state] * 6, played, 5, rng, errors_first=True)
    assert {1, 3, 5} < set(some) and len(some) == 5
    uniform = [pick_states(trainer.critic, env.unwrapped, [state] * 6, played, 3, rng, errors_first=False)
               for _ in range(40)]
    assert {i for p in uniform for i in p} == set(range(6))


def test_teacher_replies_are_the_glad_chain_of_the_best_move(tmp_path, tiny_backend):
    trainer = _trainer(tmp_path, tiny_backend(), "stages=mc_grpo", "mc_rollout_policy=oracle", "mc_rollouts=1",
                       "mc_horizon=20", base=SOKOBAN)
    env = trainer.replay_env()
    states = []
    for seed in range(3):
        env.reset(seed=seed)
        states.append(env.unwrapped.get_state())
    found = teacher_replies(env, states, SearchBudget())
    table = trainer.critic.q_table(states)
    names = env.unwrapped.action_names
    for (text, action), row in zip(found, table):
        assert text.startswith("<think>") and text.endswith(f"<answer>{names[action]}</answer>"), text
        assert env.unwrapped.parse_action(text) == action
        assert row[action] == pytest.approx(row.max())  # the solver's move is a best one by the oracle's Q


def test_mc_teacher_joins_each_group_and_reaches_the_loss(tmp_path, tiny_backend, monkeypatch):
    trainer = _trainer(
        tmp_path,
        tiny_backend(seed=3),
        "stages=mc_grpo",
        "mc_teacher=true",
        "mc_fallback_baseline=best",
        "mc_pick=errors",
        "mc_rollout_policy=oracle",
        "mc_rollouts=1",
        "mc_horizon=20",
        "env.max_turns=6",
        "tasks_per_iteration=2",
        "mc_states=2",
        "mc_group_size=2",
        "minibatch_size=6",
        "micro_batch_size=6",
        "policy.think=true",
        "policy.max_new_tokens=8",
        base=SOKOBAN,
    )
    seen = _record_minibatches(trainer, monkeypatch)
    stats = trainer.update(trainer.collect(0))
    rows = [json.loads(line) for line in (tmp_path / "proact" / "samples" / "mc_grpo.jsonl").read_text().splitlines()]
    teacher = [r["turns"][0] for r in rows if r["turns"][0]["info"].get("teacher")]
    assert stats["mc_teacher_replies"] == len(teacher) == 2 and stats["mc_replies"] == len(rows) == 6, stats
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((json.dumps(r["task"]), r["turns"][0]["info"]["state_turn"]), []).append(r["turns"][0])
    assert len(groups) == 2
    for group in groups.values():
        best = max(turn["info"]["q_mc"] for turn in group)
        for turn in group:  # below the group's best: negative; at it: not negative (0 in a one-value group)
            q, adv = turn["info"]["q_mc"], turn["info"]["advantage"]
            assert (adv < 0) == (q < best - 1e-9) and (adv >= 0) == (q >= best - 1e-9), group
        (taught,) = [turn for turn in group if turn["info"].get("teacher")]
        assert taught["action"].startswith("<think>Box") and taught["info"]["q_mc"] == pytest.approx(best)
    # Rows with advantage 0 carry no gradient and are left out; the teacher's tokens reach the loss as its reply.
    nonzero = sorted((t["action"].strip(), round(t["info"]["advantage"], 4)) for t in teacher if t["info"]["advantage"])
    assert sorted((text.strip(), round(adv, 4)) for text, adv in seen if text.startswith("<think>Box")) == nonzero
    assert len(seen) == sum(bool(r["turns"][0]["info"]["advantage"]) for r in rows)
    assert any(adv > 0 for _, adv in seen)


def test_without_negatives_only_the_better_replies_are_trained(tmp_path, tiny_backend, monkeypatch):
    overrides = ["tasks_per_iteration=2", "mc_states=2", "mc_group_size=6", "minibatch_size=12",
                 "micro_batch_size=12"]
    with_negatives = _trainer(tmp_path, tiny_backend(seed=2), *overrides, name="all")
    seen_all = _record_minibatches(with_negatives, monkeypatch)
    with_negatives.update(with_negatives.collect(0))
    trainer = _trainer(tmp_path, tiny_backend(seed=2), *overrides, "mc_negatives=false", name="positive")
    seen = _record_minibatches(trainer, monkeypatch)
    stats = trainer.update(trainer.collect(0))
    # The same replies (same seeds): the positive ones keep their advantage, the negative ones are left out.
    assert any(adv < 0 for _, adv in seen_all) and seen == [(t, a) for t, a in seen_all if a > 0], (seen_all, seen)
    assert seen and all(text == "blue" for text, _ in seen) and stats["episodes_kept"] == len(seen)
    rows = [json.loads(line) for line in (tmp_path / "positive" / "samples" / "mc_grpo.jsonl").read_text().splitlines()]
    assert min(r["turns"][0]["info"]["advantage"] for r in rows) == 0.0


@pytest.mark.parametrize("span", ["decision", "decision+teacher"])
def test_decision_span_trains_the_best_clause_and_answer_of_each_chain(tmp_path, tiny_backend, monkeypatch, span):
    backend = tiny_backend(seed=3)
    trainer = _trainer(tmp_path, backend, "mc_teacher=true", "mc_fallback_baseline=mean",
                       "mc_rollout_policy=oracle", "mc_rollouts=1", "mc_horizon=20", "env.max_turns=6",
                       "tasks_per_iteration=2", "mc_states=2", "mc_group_size=2", "minibatch_size=6",
                       "micro_batch_size=6", "policy.think=true", "policy.max_new_tokens=8",
                       f"mc_loss_span={span}", base=SOKOBAN)
    before = [p.detach().clone() for p in backend.model.parameters()]
    seen = _record_minibatches(trainer, monkeypatch)
    trainer.update(trainer.collect(0))
    rows = [json.loads(line) for line in (tmp_path / "proact" / "samples" / "mc_grpo.jsonl").read_text().splitlines()]
    trained = [(t["action"], t["info"]["advantage"], bool(t["info"].get("teacher")))
               for r in rows for t in r["turns"] if t["info"]["advantage"]]
    teacher = [t["action"] for r in rows for t in r["turns"] if t["info"].get("teacher")]
    assert teacher and all("Best:" in text and text.startswith("<think>Box") for text in teacher)
    assert any(is_teacher for *_, is_teacher in trained) and any(not is_teacher for *_, is_teacher in trained)
    # A chain trains from its last `Best:` on, a reply without one (the tiny model's) from its guided `<answer>`;
    # with 'decision+teacher' the teacher's chain (the solver's) trains whole.
    expected = [(full if is_teacher and span == "decision+teacher"
                 else full[full.rindex("Best:" if "Best:" in full else "<answer>"):], adv)
                for full, adv, is_teacher in trained]
    assert sorted((t.strip(), round(a, 4)) for t, a in seen) == sorted((t.strip(), round(a, 4)) for t, a in expected)
    assert any(text.strip().startswith("Best:") for text, _ in seen) == (span == "decision")
    assert any(not torch.equal(a, b) for a, b in zip(before, backend.model.parameters()))


def _chain_reward_update(tmp_path, tiny_backend, monkeypatch, negatives, minibatch, *overrides):
    """One MC-GRPO update on tiny Sokoban with the chain reward (W = 0.5) and the teacher in each group of 2 replies.

    Returns the backend, the minibatches' ``(text, advantage)`` rows, the stats, the samples file's rows and the
    parameters before the update.
    """
    backend = tiny_backend(seed=3)
    trainer = _trainer(tmp_path, backend, "mc_teacher=true", "mc_fallback_baseline=mean", "mc_rollout_policy=oracle",
                       "mc_rollouts=1", "mc_horizon=20", "env.max_turns=6", "tasks_per_iteration=2", "mc_states=2",
                       "mc_group_size=2", f"minibatch_size={minibatch}", f"micro_batch_size={minibatch}",
                       "policy.think=true", "policy.max_new_tokens=8", "mc_loss_span=decision", "mc_chain_reward=0.5",
                       f"mc_negatives={str(negatives).lower()}", *overrides, base=SOKOBAN)
    before = [p.detach().clone() for p in backend.model.parameters()]
    seen = _record_minibatches(trainer, monkeypatch)
    stats = trainer.update(trainer.collect(0))
    rows = [json.loads(line) for line in (tmp_path / "proact" / "samples" / "mc_grpo.jsonl").read_text().splitlines()]
    return backend, seen, stats, rows, before


@pytest.mark.parametrize("negatives", [True, False])
def test_clause_credit_trains_right_and_wrong_clauses_against_the_share_right(tmp_path, tiny_backend, monkeypatch,
                                                                             negatives):
    backend, seen, stats, rows, before = _chain_reward_update(tmp_path, tiny_backend, monkeypatch, negatives, 16,
                                                              "mc_chain_credit=clause")
    chains = [r["turns"][0]["info"] for r in rows if "clauses" in r["turns"][0]["info"]]
    assert {c["right"] for c in chains} == {True, False}  # the teacher's clauses are right, the tiny model's not
    groups = {}
    for c in chains:
        right, total = groups.get(c["group"], (0, 0))
        groups[c["group"]] = (right + c["clauses"] * c["right"], total + c["clauses"])
    for c in chains:  # 0.5 x (1 or 0 - the state's share of right clauses), negatives 0 with mc_negatives=false
        right, total = groups[c["group"]]
        expected = 0.5 * (c["right"] - right / total)
        assert c["advantage"] == pytest.approx(expected if negatives else max(expected, 0.0))
        assert c["teacher"] or not c["right"] or c["chain_agreement"] > 0
    sampled = {(c["group"], c["reply"]): c["chain_agreement"] for c in chains if not c["teacher"]}
    assert stats["mc_chain_agreement"] == pytest.approx(np.mean(list(sampled.values())))
    trained = [a for _, a in seen]
    assert any(a > 0 for a in trained) and any(a < 0 for a in trained) == negatives
    assert {round(c["advantage"], 4) for c in chains if c["advantage"]} <= {round(a, 4) for a in trained}
    assert any(not torch.equal(a, b) for a, b in zip(before, backend.model.parameters()))


@pytest.mark.parametrize("negatives", [True, False])
def test_chain_reward_trains_each_chain_by_its_agreement_with_the_solver(tmp_path, tiny_backend, monkeypatch,
                                                                          negatives):
    backend, seen, stats, rows, before = _chain_reward_update(tmp_path, tiny_backend, monkeypatch, negatives, 12)
    replies = [r for r in rows if "chain_agreement" not in r["turns"][0]["info"]]
    chains = [r for r in rows if "chain_agreement" in r["turns"][0]["info"]]
    assert len(chains) == len(replies) == 6  # 2 states x (2 sampled + the teacher's), each a chain before its answer
    teacher = {tuple(r["task"]): r["turns"][0]["action"] for r in replies if r["turns"][0]["info"].get("teacher")}
    by_group = {}
    for r in chains:
        info = r["turns"][0]["info"]
        by_group.setdefault(info["group"], []).append(info["chain_agreement"])
        # The chain row and its reply's decision row split the reply's tokens between them, head then tail.
        reply = next(x for x in replies if x["token_ids"] == r["token_ids"] and x["turns"][0]["action"] ==
                     r["turns"][0]["action"])
        start, end = r["segments"][-1][1:3]
        head, tail = r["loss_mask"][start:end], reply["loss_mask"][start:end]
        assert sum(r["loss_mask"]) == sum(head) > 0 and all(h + t == 1 for h, t in zip(head, tail))
        assert head == sorted(head, reverse=True)  # the head comes first
        assert info["chain_agreement"] == chain_agreement(r["turns"][0]["action"], teacher[tuple(r["task"])])
        assert info["teacher"] == (r["turns"][0]["action"] == teacher[tuple(r["task"])])
    for r in chains:  # advantage: 0.5 x (agreement - the state's mean agreement), negatives 0 with mc_negatives=false
        info = r["turns"][0]["info"]
        expected = 0.5 * (info["chain_agreement"] - np.mean(by_group[info["group"]]))
        assert info["advantage"] == pytest.approx(expected if negatives else max(expected, 0.0))
        if info["teacher"]:
            assert info["chain_agreement"] == 1.0 and info["advantage"] > 0  # the tiny model's chains are other
    sampled = [r["turns"][0]["info"]["chain_agreement"] for r in chains if not r["turns"][0]["info"]["teacher"]]
    assert stats["mc_chain_agreement"] == pytest.approx(np.mean(sampled)) and max(sampled) < 1.0
    # The minibatches train every chain head with its advantage, beside the decision tails with theirs.
    decoded = {(backend.tokenizer.decode([t for t, m in zip(r["token_ids"], r["loss_mask"]) if m]).strip(),
                round(r["turns"][0]["info"]["advantage"], 4)) for r in chains if r["turns"][0]["info"]["advantage"]}
    assert decoded and decoded <= {(text.strip(), round(a, 4)) for text, a in seen}
    assert any(a < 0 for _, a in decoded) == negatives
    assert any(not torch.equal(a, b) for a, b in zip(before, backend.model.parameters()))


def test_mc_teacher_needs_a_chain_writer_and_no_rewrites(tmp_path, tiny_backend):
    with pytest.raises(AgentGymError, match="glad_chain"):
        _trainer(tmp_path, tiny_backend(), "mc_teacher=true")
    with pytest.raises(ConfigError, match="mc_teacher=true with mc_fallback_rewrites=true"):
        _trainer(tmp_path, tiny_backend(), "stages=mc_grpo", "mc_teacher=true", "mc_fallback_rewrites=true",
                 base=SOKOBAN)
    with pytest.raises(ConfigError, match="mc_fallback_baseline"):
        _trainer(tmp_path, tiny_backend(), "mc_fallback_baseline=max")
    with pytest.raises(ConfigError, match="mc_loss_span=decision\\+teacher .* needs mc_teacher=true"):
        _trainer(tmp_path, tiny_backend(), "stages=mc_grpo", "mc_loss_span=decision+teacher", base=SOKOBAN)
    with pytest.raises(ConfigError, match="mc_chain_reward=0.5 with mc_loss_span=reply .* mc_loss_span=decision"):
        _trainer(tmp_path, tiny_backend(), "stages=mc_grpo", "mc_chain_reward=0.5", base=SOKOBAN)
    with pytest.raises(ConfigError, match="mc_chain_reward=-1.* must be > 0"):
        _trainer(tmp_path, tiny_backend(), "stages=mc_grpo", "mc_chain_reward=-1", "mc_loss_span=decision",
                 base=SOKOBAN)
    with pytest.raises(AgentGymError, match="glad_chain"):
        _trainer(tmp_path, tiny_backend(), "mc_chain_reward=0.5", "mc_loss_span=decision")  # the bandit has none
    with pytest.raises(ConfigError, match="mc_chain_credit=clause .* off \\(mc_chain_reward=0\\)"):
        _trainer(tmp_path, tiny_backend(), "stages=mc_grpo", "mc_chain_credit=clause", base=SOKOBAN)


def test_a_kl_penalty_after_glad_is_to_the_glad_model(tmp_path, tiny_backend):
    # With GLAD in the run the reference is copied when the RL stage begins (and kept in the run directory for a
    # resume), not when the trainer is built: the penalty keeps MC-GRPO near the GLAD model.
    sets = ["env.id=game2048", "env.max_turns=3", "stages=glad+mc_grpo", "policy.think=true",
            "policy.max_new_tokens=12", "policy.history_turns=0", "glad_tasks=1", "glad_epochs=1", "iterations=2",
            "tasks_per_iteration=1", "mc_states=2", "mc_group_size=3", "mc_rollouts=4", "mc_horizon=5", "lr=1e-2",
            "kl_coef=0.1", "kl_placement=loss", "eval_tasks=1", "eval_every=0", "eval_start=false",
            "checkpoint_every=100", "time_budget_minutes=null"]  # fmt: skip
    trainer = _trainer(tmp_path, tiny_backend(seed=8), *sets, base=[])
    assert trainer.reference is None
    after_glad = {}

    def watch(done, _metrics):
        if done == 1:
            after_glad.update({n: p.detach().clone() for n, p in trainer.backend.model.named_parameters()})

    trainer.fit(on_iteration=watch)
    ref = dict(trainer.reference.model.named_parameters())
    assert after_glad and all(torch.equal(ref[n], p) for n, p in after_glad.items())
    moved = [n for n, p in trainer.backend.model.named_parameters() if not torch.equal(p, ref[n])]
    assert moved  # the RL iterations trained away from it
    assert (tmp_path / "proact" / "reference" / "policy").is_dir()
    records = RunDir(tmp_path / "proact", tensorboard=False).metrics()
    assert [r["step"] for r in records if "ref_kl" in r] == [2, 3]
    trainer = _trainer(tmp_path / "alone", tiny_backend(), "stages=mc_grpo", "kl_coef=0.1", base=SOKOBAN)
    assert trainer.reference is not None  # RL alone (e.g. from policy.weights=GLAD_RUN_DIR): the starting model


# ---------------------------------------------------------------------------------------------------- MC-PPO
def test_mc_ppo_update_trains_policy_and_value_head_on_blended_targets(tmp_path, tiny_backend):
    backend = tiny_backend(seed=7)
    before = {n: p.detach().clone() for n, p in backend.model.named_parameters()}
    trainer = _trainer(
        tmp_path,
        backend,
        "stages=mc_ppo",
        "tasks_per_iteration=2",
        "minibatch_size=8",
        "micro_batch_size=4",
        "lr=1e-2",
        "value_lr=1e-2",
        base=SOKOBAN,
    )
    head = [p.detach().clone() for p in trainer.value_head.parameters()]
    episodes = trainer.collect(0)
    # Prompts are rebuilt token-exactly: the first turn's prompt is the recorded sequence up to its reply.
    policy = trainer.play_policy()
    first = episodes[0]
    start = next(s[1] for s in first.segments if s[0] == "assistant")
    assert play_time_prompt(first, 0, policy) == first.token_ids[:start]
    stats = trainer.update(episodes)
    assert stats["turns"] == sum(len(t.turns) for t in episodes) and stats["optimizer_steps"] >= 1, stats
    assert stats["value_loss"] > 0 and stats["mc_critic_s"] >= 0 and "mc_value_mean" in stats
    assert not any(torch.equal(a, b) for a, b in zip(head, trainer.value_head.parameters()))
    assert not [n for n, p in backend.model.named_parameters() if torch.equal(before[n], p.detach())]


# ---------------------------------------------------------------------------------------------------- end to end
def test_cli_runs_glad_then_mc_grpo_on_2048(tmp_path, tiny_backend):
    from agentgym.cli import main

    model_dir = tmp_path / "tiny"
    tiny_backend(seed=8).save(model_dir)
    out = tmp_path / "run"
    sets = [
        f"policy.model={model_dir}",
        "policy.think=true",
        "policy.max_new_tokens=12",
        "policy.history_turns=0",
        "env.max_turns=2",
        "glad_tasks=1",
        "glad_epochs=1",
        "iterations=1",
        "tasks_per_iteration=1",
        "mc_states=1",
        "mc_group_size=2",
        "mc_rollouts=4",
        "mc_horizon=5",
        "eval_tasks=1",
        "num_envs=2",
    ]
    rc = main(["train", "--env", "game2048", "--trainer", "proact", "--out", str(out), *[f"--set={s}" for s in sets]])
    assert rc == 0
    records = RunDir(out, tensorboard=False).metrics()
    assert any("glad_sequences" in r for r in records) and any("mc_q_mean" in r for r in records)
    # Held-out results at the three stages: zero-shot (step 0), right after GLAD (step 1), at the end (step 2).
    evaluated = [r["step"] for r in records if "eval/test/success_rate" in r]
    assert evaluated == [0, 1, 2]
    assert (out / "glad.jsonl").is_file() and (out / "checkpoints" / "step-000002" / "value_head.pt").is_file()


def test_glad_detours_are_history_not_loss(tmp_path, tiny_backend):
    """A detour reply stays in the episode's sequence but outside its loss mask; the taught replies are all in it."""
    glad = [
        "stages=glad",
        "policy.think=true",
        "policy.history_turns=null",
        "glad_tasks=3",
        "glad_detours=0.5",
        "glad_epochs=2",  # the SFT batch is kept until the last epoch
        "env.max_turns=10",
    ]
    trainer = _trainer(tmp_path, tiny_backend(seed=6), *glad, base=SOKOBAN)
    first = trainer.train_step(0)
    records = [json.loads(line) for line in (tmp_path / "proact" / "glad.jsonl").read_text().splitlines()]
    detours = [[t for t in r["turns"] if t["info"].get("teach") is False] for r in records]
    taught = [[t for t in r["turns"] if t["info"].get("teach", True)] for r in records]
    assert first["glad_detours"] == sum(map(len, detours)) > 0 and first["glad_turns"] == sum(map(len, taught))
    batch = trainer._warmup_batch
    tok = trainer.backend.tokenizer
    assert batch.input_ids.shape[0] == len(records)  # whole episodes: one row each
    for row, (wrong, right) in enumerate(zip(detours, taught)):
        n = int(batch.attention_mask[row].sum())
        ids = batch.input_ids[row, 1:n]
        mask = batch.loss_mask[row, : n - 1]
        trained = tok.decode([int(i) for i, m in zip(ids, mask) if m > 0])
        context = tok.decode([int(i) for i, m in zip(ids, mask) if m == 0])
        assert trained.count("<think>") == len(right) and all(t["action"] in trained for t in right)
        for t in wrong:  # in the prompt the later turns see, never in the loss
            assert t["action"] in context and t["action"] not in trained


def test_default_views_have_the_around_you_line_on_sokoban_and_the_changing_moves_on_2048():
    from agentgym.training import resolve_config

    sokoban = resolve_config(ProActConfig, env="sokoban")
    assert sokoban.env.kwargs["text_neighbors"] is True and sokoban.env.kwargs["text_positions"] is True
    assert agentgym.make("sokoban", **sokoban.env.kwargs).reset(seed=0)[0]["text"].count("Around you:") == 1
    game = resolve_config(ProActConfig, env="2048")
    assert game.env.kwargs == {"text_moves": True} and game.env.max_turns == 60
    text = agentgym.make("2048", **game.env.kwargs).reset(seed=0)[0]["text"]
    assert text.count("Moves that change the board:") == 1 and "Around you" not in text
