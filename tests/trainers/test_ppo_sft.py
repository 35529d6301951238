"""PPO (critic, turn GAE, reference) and SFT (oracle and file demonstrations) on a tiny model and the bandit."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from agentgym import ops  # noqa: E402
from agentgym.config import load_config  # noqa: E402
from agentgym.runs import RunDir  # noqa: E402
from agentgym.trajectory import Trajectory, Turn  # noqa: E402
from trainers.common import token_batch  # noqa: E402
from trainers.ppo import PPOTrainer, clipped_value_loss, turn_gae, turn_grid  # noqa: E402
from trainers.sft import SFTTrainer  # noqa: E402

BANDIT = [
    "env.id=bandit",
    "env.max_turns=2",
    "policy.lora=false",
    "policy.max_new_tokens=4",
    "eval_every=0",
    "eval_tasks=8",
    "num_envs=16",
    "checkpoint_every=100",
]


def _trainer(cls, tmp_path, backend, *overrides):
    cfg = load_config(cls.Config, overrides=[*BANDIT, *overrides])
    return cls(cfg, RunDir(tmp_path / cls.name, tensorboard=False), backend=backend)


# ---------------------------------------------------------------------------------------------------- PPO math
def _episode(rewards, replies, length):
    """A trajectory whose turns have ``rewards``; ``replies`` are the assistant spans (turn, start, end)."""
    segments, mask = [["system", 0, 4, -1]], [0] * length
    for turn, start, end in replies:
        segments += [["user", start - 3, start, turn], ["assistant", start, end, turn]]
        mask[start:end] = [1] * (end - start)
    turns = [Turn(None, "a", r, True, {}) for r in rewards]
    return Trajectory(
        "x", 0, 0, 0, "train", turns=turns, token_ids=list(range(length)), loss_mask=mask,
        logprobs=[0.0] * length, segments=segments,
    )  # fmt: skip


def test_turn_gae_golden():
    # A: three turns, the reward at the end. B: its third step had no reply (the policy stopped), so that
    # step's reward is credited to the reply before it and its (garbage) value is never read.
    a = _episode([0.0, 0.0, 1.0], [(0, 7, 9), (1, 12, 14), (2, 17, 19)], 20)
    b = _episode([0.5, 0.0, 0.25], [(0, 7, 10), (1, 13, 15)], 16)
    grid = turn_grid([a, b])
    assert grid.mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert grid.positions.tolist() == [[6, 11, 16], [6, 12, 0]]  # the last prompt token before each reply
    assert grid.rewards.tolist() == [[0.0, 0.0, 1.0], [0.5, 0.0, 0.25]]
    values = torch.tensor([[0.2, 0.5, 0.8], [0.1, 0.3, 9.0]], dtype=torch.float64)
    adv, ret = turn_gae(grid.rewards, values, grid.mask, gamma=0.9, lam=0.5)
    # By hand: A_t = delta_t + 0.45 A_{t+1}, delta_t = r_t + 0.9 V_{t+1} - V_t, V after the last turn = 0.
    #   a: d2 = 1 - 0.8 = 0.2; d1 = 0.72 - 0.5 = 0.22 -> 0.31; d0 = 0.45 - 0.2 = 0.25 -> 0.3895
    #   b: d1 = (0 + 0.25) - 0.3 = -0.05; d0 = 0.5 + 0.27 - 0.1 = 0.67 -> 0.67 - 0.0225 = 0.6475
    assert adv.flatten().tolist() == pytest.approx([0.3895, 0.31, 0.2, 0.6475, -0.05, 0.0])
    assert ret.flatten().tolist() == pytest.approx([0.5895, 0.81, 1.0, 0.7475, 0.25, 0.0])
    # Broadcast to tokens: every token of a reply carries its turn's advantage, nothing else does.
    batch = token_batch([a, b], pad_id=0)
    tokens = ops.broadcast_turns(adv, batch.turn_ids.clamp(min=0), batch.loss_mask)
    assert tokens[0, 6:8].tolist() == pytest.approx([0.3895] * 2)  # position t scores token t+1
    assert tokens[0, 16:18].tolist() == pytest.approx([0.2] * 2)
    assert tokens[1, 12:14].tolist() == pytest.approx([-0.05] * 2)
    assert float(tokens.abs().sum()) == pytest.approx(2 * (0.3895 + 0.31 + 0.2) + 3 * 0.6475 + 2 * 0.05)
    # gamma = lambda = 1 (the default): A = G - V, LOOP's "A_t = R - V".
    adv1, _ = turn_gae(grid.rewards, values, grid.mask, gamma=1.0, lam=1.0)
    assert adv1[0].tolist() == pytest.approx([0.8, 0.5, 0.2])


def test_value_loss_clipping_by_hand():
    values = torch.tensor([[0.5, 0.1, 5.0]], requires_grad=True)
    old = torch.tensor([[0.4, 0.6, 0.0]])
    returns = torch.tensor([[0.45, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the third turn does not exist
    loss, clipped = clipped_value_loss(values, old, returns, mask, clip=0.2)
    # turn 0: V moved 0.1 (inside the clip): 0.5 * 0.05^2. turn 1: V moved -0.5, clipped to 0.4, whose error
    # 0.4^2 = 0.16 exceeds the unclipped 0.1^2, so the clipped branch counts and gives no gradient.
    assert float(loss.detach()) == pytest.approx(0.5 * (0.0025 + 0.16))
    assert float(clipped) == 1.0
    loss.backward()
    assert values.grad.flatten().tolist() == pytest.approx([0.05, 0.0, 0.0])
    plain, _ = clipped_value_loss(values.detach(), old, returns, mask, clip=None)
    assert float(plain) == pytest.approx(0.5 * (0.0025 + 0.01))


# ---------------------------------------------------------------------------------------------------- PPO training
def test_ppo_updates_policy_and_value_head_and_checkpoints_them(tmp_path, tiny_backend):
    backend = tiny_backend(seed=1)
    before = {n: p.detach().clone() for n, p in backend.model.named_parameters()}
    overrides = ["tasks_per_iteration=2", "group_size=4", "minibatch_size=8", "micro_batch_size=8", "epochs=1"]
    trainer = _trainer(PPOTrainer, tmp_path, backend, *overrides, "lr=1e-2", "value_lr=1e-2")
    head_before = {n: p.detach().clone() for n, p in trainer.value_head.named_parameters()}
    ref_before = {n: p.detach().clone() for n, p in trainer.reference.model.named_parameters()}
    stats = trainer.update(trainer.collect(0))
    assert stats["optimizer_steps"] == 1 and stats["value_loss"] > 0 and "kl_in_reward" in stats, stats
    assert not [n for n, p in backend.model.named_parameters() if torch.equal(before[n], p.detach())]
    assert not [n for n, p in trainer.value_head.named_parameters() if torch.equal(head_before[n], p.detach())]
    # The reference is a frozen copy of the initial model.
    assert all(torch.equal(ref_before[n], p) for n, p in trainer.reference.model.named_parameters())
    trainer.checkpoint(1)
    again = _trainer(PPOTrainer, tmp_path, tiny_backend(seed=1), *overrides)
    assert again.restore() == 1
    for (name, p), (_, q) in zip(trainer.value_head.named_parameters(), again.value_head.named_parameters()):
        assert torch.equal(p, q), name


def test_ppo_logs_the_kl_to_its_reference_when_it_is_in_the_loss(tmp_path, tiny_backend):
    overrides = ["tasks_per_iteration=1", "group_size=4", "minibatch_size=4", "epochs=2", "kl_coef=0.1",
                 "kl_placement=loss", "lr=1e-2"]  # fmt: skip
    trainer = _trainer(PPOTrainer, tmp_path, tiny_backend(seed=3), *overrides)
    stats = trainer.update(trainer.collect(0))
    # Two steps: the first starts at the reference (KL 0), the second has moved away from it.
    assert stats["optimizer_steps"] == 2 and stats["ref_kl"] > 0 and "kl_in_reward" not in stats, stats


def test_critic_warmup_trains_only_the_value_head(tmp_path, tiny_backend):
    backend = tiny_backend(seed=3)
    before = {n: p.detach().clone() for n, p in backend.model.named_parameters()}
    overrides = ["tasks_per_iteration=1", "group_size=4", "minibatch_size=4", "epochs=1", "critic_warmup=1"]
    trainer = _trainer(PPOTrainer, tmp_path, backend, *overrides, "kl_coef=0", "lr=1e-2")
    head_before = [p.detach().clone() for p in trainer.value_head.parameters()]
    stats = trainer.update(trainer.collect(0))
    assert stats["critic_only"] == 1.0 and trainer.reference is None
    assert all(torch.equal(before[n], p) for n, p in backend.model.named_parameters())
    assert not any(torch.equal(a, b) for a, b in zip(head_before, trainer.value_head.parameters()))


def test_ppo_learns_the_bandit_within_bounded_updates(tmp_path, tiny_backend):
    # One arm of four pays 1: the optimum is success 1.0; a uniform policy gets 0.25.
    trainer = _trainer(
        PPOTrainer,
        tmp_path,
        tiny_backend(seed=2),
        "tasks_per_iteration=3",
        "group_size=4",
        "minibatch_size=12",
        "micro_batch_size=12",
        "epochs=1",
        "lr=5e-2",
        "value_lr=1e-2",
    )
    rates = []
    for it in range(8):
        trainer.iteration = it
        trajectories = trainer.collect(it)
        rates.append(sum(t.success for t in trajectories) / len(trajectories))
        if rates[-1] >= 0.9:
            break
        trainer.update(trajectories)
    assert rates[-1] >= 0.9, rates
    assert trainer.evaluate("test", "final")["eval/test/success_rate"] >= 0.9


# ---------------------------------------------------------------------------------------------------- SFT
def test_demonstrations_are_the_tokens_the_policy_produces(tmp_path, tiny_backend):
    from agentgym.registry import make
    from agentgym.rollout import RolloutConfig, RolloutEngine
    from policies.llm.base import Generation
    from policies.llm.conversation import Conversation
    from policies.llm.prompts import PromptStyle, system_prompt, user_message
    from trainers.common import build_policy
    from trainers.sft import play_demonstration

    backend = tiny_backend(seed=5)
    trainer = _trainer(SFTTrainer, tmp_path, backend)
    tok = backend.tokenizer
    env = make("bandit")
    # Guided decoding: the policy's own rollouts, replayed with the arms they chose, give identical records.
    engine = RolloutEngine(lambda: make("bandit"), build_policy(backend, trainer.cfg.policy), RolloutConfig(num_envs=4))
    with torch.no_grad():
        played = engine.run([(t, 100 + t) for t in range(4)], seed=0)
    for t in played:
        demo = play_demonstration(
            env, trainer.demo_policy(lambda _e, m, t=t: t.turns[m.turns].action), t.task, t.seed, max_turns=2
        )
        assert (demo.token_ids, demo.loss_mask, demo.segments) == (t.token_ids, t.loss_mask, t.segments)
    # The oracle's reply, against a conversation built by hand with the policy's prompts.
    demo = trainer.demonstrations()[0]
    env.reset(seed=0, options={"task": demo.task})
    conv = Conversation(tok, system_prompt(env, PromptStyle(hints=False)))
    conv.add_user(user_message(env, env.unwrapped.text_observation(), 0))
    ids = tok.encode("blue", add_special_tokens=False)
    conv.add_assistant(Generation(ids, [0.0] * len(ids), None, "blue", "choice", constrained=True))
    assert (demo.token_ids, demo.loss_mask) == conv.sequence()[:2]
    assert tok.decode([i for i, m in zip(demo.token_ids, demo.loss_mask) if m]) == "blue"
    # Free decoding with <think>: the reply ends with the end-of-turn token the model must learn to emit.
    think = _trainer(SFTTrainer, tmp_path, backend, "policy.think=true", "policy.guided=false")
    demo = think.demonstrations()[0]
    reply = tok.decode([i for i, m in zip(demo.token_ids, demo.loss_mask) if m])
    assert reply == "<think></think><answer>blue</answer>" + tok.eos_token


def test_sft_on_oracle_demonstrations_learns_the_bandit(tmp_path, tiny_backend):
    trainer = _trainer(
        SFTTrainer,
        tmp_path,
        tiny_backend(seed=6),
        "demo_tasks=8",
        "epochs=3",
        "minibatch_size=4",
        "micro_batch_size=4",
        "lr=3e-2",
        "eval_tasks=8",
    )
    final = trainer.fit()
    assert final["eval/test/success_rate"] >= 0.9, final
    records = RunDir(tmp_path / "sft", tensorboard=False).metrics()
    assert records[0]["eval/test/success_rate"] < 0.9  # it was learned, not there from the start
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses == sorted(losses, reverse=True), losses


def test_sft_from_a_trajectories_file(tmp_path, tiny_backend):
    from agentgym.evaluation import evaluate

    path = tmp_path / "oracle.jsonl"
    evaluate("bandit", "oracle", episodes=4, split="train", trajectories_path=path)
    backend = tiny_backend(seed=7)
    from_env = _trainer(SFTTrainer, tmp_path / "a", backend, "demo_tasks=4").demonstrations()
    from_file = _trainer(SFTTrainer, tmp_path / "b", backend, f"data_file={path}")
    demos = from_file.demonstrations()
    # The oracle eval played the same tasks and seeds: the replayed tokens are the oracle demonstrations.
    assert [d.token_ids for d in demos] == [d.token_ids for d in from_env]
    stats = from_file.epoch(token_batch(demos, backend._pad_id), 0)
    assert stats["optimizer_steps"] == 1 and stats["loss"] > 0
    # Chat records work too; the loss covers the assistant reply and its end-of-turn token only.
    chat = tmp_path / "chat.jsonl"
    messages = [{"role": "system", "content": "Pick."}, {"role": "user", "content": "Go"}]
    chat.write_text(json.dumps({"messages": [*messages, {"role": "assistant", "content": "blue"}]}) + "\n")
    (demo,) = _trainer(SFTTrainer, tmp_path / "c", backend, f"data_file={chat}").demonstrations()
    tok = backend.tokenizer
    assert tok.decode([i for i, m in zip(demo.token_ids, demo.loss_mask) if m]) == "blue" + tok.eos_token


def test_cli_trains_sft(tmp_path, tiny_backend):
    from agentgym.cli import main

    model_dir = tmp_path / "tiny"
    tiny_backend(seed=8).save(model_dir)
    out = tmp_path / "run"
    sets = [f"policy.model={model_dir}", "demo_tasks=4", "epochs=1", "eval_tasks=2", "minibatch_size=4"]
    rc = main(["train", "--env", "bandit", "--trainer", "sft", "--out", str(out), *[f"--set={s}" for s in sets]])
    assert rc == 0
    assert (out / "checkpoints" / "step-000001" / "policy").is_dir()
    assert (out / "report.md").is_file()


def test_an_llm_starts_from_a_saved_lora_adapter(tmp_path, tiny_backend):
    from agentgym.cli import main
    from agentgym.config import ConfigError
    from trainers.common import PolicySection, build_backend

    model_dir = tmp_path / "tiny"
    tiny_backend(seed=9).save(model_dir)
    out = tmp_path / "sft"
    sets = [f"policy.model={model_dir}", "policy.lora=true", "demo_tasks=4", "epochs=1", "eval_tasks=2", "lr=1e-2"]
    assert main(["train", "--env", "bandit", "--trainer", "sft", "--out", str(out), *[f"--set={s}" for s in sets]]) == 0
    saved = build_backend(PolicySection(model=str(model_dir), lora=True))
    saved.load_adapter(out / "checkpoints" / "step-000001" / "policy")
    fresh = build_backend(PolicySection(model=str(model_dir), lora=True))

    def adapter(backend):
        return {k: v for k, v in backend.model.state_dict().items() if "lora_" in k}

    # A run directory, a checkpoint and its policy folder all name the trained adapter; it stays trainable.
    for where in (out, out / "checkpoints" / "step-000001", out / "checkpoints" / "step-000001" / "policy"):
        started = build_backend(PolicySection(model=str(model_dir), lora=True, weights=str(where)))
        got, want = adapter(started), adapter(saved)
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
        assert started.trainable_parameters() and all("lora_" in n for n, p in started.model.named_parameters()
                                                       if p.requires_grad)
    assert any(not torch.equal(adapter(fresh)[k], v) for k, v in adapter(saved).items())  # SFT changed it

    with pytest.raises(ConfigError, match="policy.lora=true"):
        build_backend(PolicySection(model=str(model_dir), lora=False, weights=str(out)))
    with pytest.raises(ConfigError, match="r=16.*policy.lora_r=8"):
        build_backend(PolicySection(model=str(model_dir), lora=True, lora_r=8, weights=str(out)))
    with pytest.raises(ConfigError, match="holds no saved LLM"):
        build_backend(PolicySection(model=str(model_dir), lora=True, weights=str(tmp_path / "nowhere")))
    # A whole saved model is a start too (the same as policy.model).
    whole = build_backend(PolicySection(model="smollm2", weights=str(model_dir)))
    assert whole.model.config.hidden_size == 32
