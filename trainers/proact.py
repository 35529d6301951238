"""ProAct: GLAD lookahead distillation, then RL with the Monte-Carlo critic (Yu et al., arXiv 2602.05327; spec 4).

``stages`` picks what one run does, in order, each stage a number of the run's steps (the settings are
``trainers.proact_config.ProActConfig``):

1. **GLAD** (spec 4.2; ``glad_epochs`` steps). ``agentgym.glad`` plays ``glad_tasks`` training tasks with the env's
   oracle, compresses each step's search into a short causal chain and writes the turns as
   ``<think>CHAIN</think><answer>ACTION</answer>`` replies to ``RUN/glad.jsonl`` (reused on resume). The SFT
   trainer's machinery replays the file through the policy's own prompt code (``SFTTrainer.demonstrations``: the
   reply tokens are those the policy would emit), ``token_batch`` lays them out as the SFT trainer does (one row
   per turn with the prompt the policy sees when history is truncated, as by default here), and each step is one
   ``SFTTrainer.epoch`` over them (token cross-entropy, its own AdamW at ``glad_lr``).
2. **MC-GRPO** (spec 4.5; ``iterations`` steps). Play ``tasks_per_iteration`` training tasks with the current
   policy (the shared rollout engine), pick ``mc_states`` of the visited turn states, reach each again by
   replaying the recorded replies from the task's seed (the engine records no states) and sample ``mc_group_size``
   replies there from the policy. Reply ``i`` is scored by ``Q_MC(s, a_i)`` (``agentgym.mc_groups``; a reply the env
   cannot parse gets the invalid action's value) and its advantage is the group z-score of those values, or, for a
   degenerate group (every reply the same action, or every value the same), the z-score of ``Q(s, a_i)`` against
   all of the state's actions (``ops.mc_grpo_advantages`` with ``MCCritic.q_table``; ProAct's
   ``use_abs_adv_only_for_group_with_same_reward``). With ``mc_fallback_rewrites`` a degenerate group instead
   becomes one reply per action: the first sampled reply and its rewrites to every other action (closing clause and
   answer), each scored by its own ``Q(s, a)`` (``mc_groups.contrast_groups``). Not in ProAct: ``mc_fallback_baseline``,
   ``mc_teacher``, ``mc_pick``, ``mc_negatives``, ``mc_loss_span``, ``mc_chain_reward``, ``mc_chain_credit``. The
   update is the shared clipped loss of ``PolicyGradientTrainer.update`` on one turn.
3. **MC-PPO** (spec 4.4; ``iterations`` steps). Turn-level PPO: PPO's value head (``trainers.ppo``) reads each
   turn's last prompt token; the critic used in the advantages is ``(1 - w) V_learned + w V_MC`` (``mc_value_weight``)
   with ``V_MC`` the MC-Critic value of the turn's state; one-step TD advantages (lambda 0) and return targets from
   ``ops.mc_td_advantages``, whitened over the batch; PPO's clipped policy and value losses.

Prompts. Every RL training sequence is one turn: exactly the prompt the policy generated that turn from (rebuilt
from the recorded tokens by the policy's own ``Conversation.prompt_ids``, so history and context budget are the
policy's) followed by the reply; MC-GRPO samples its G replies from that same prompt. ProAct's default policy
section sets ``history_turns=0``, so a prompt is the system prompt and the current observation: the "state
prompt" of the paper (Sokoban and 2048 observations are the whole state), and one-turn sequences cost no more
than whole episodes. GLAD's rows are built the same way, so supervised and RL training see the prompts the
policy sees when it plays.

The MC stages need ``get_state``/``set_state``/``state_key`` (checked before anything is trained); GLAD needs the
env family's chain writer (``agentgym.glad``). The value head is built and checkpointed in every stage (it is
small), so a run's checkpoints have one layout.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from agentgym import ops
from agentgym.config import ConfigError
from agentgym.errors import AgentGymError
from agentgym.glad import GladConfig, SearchBudget, build_dataset, chain_writer
from agentgym.mc_critic import EnvFactory, MCCritic, missing_state_methods
from agentgym.mc_groups import (
    GroupScores,
    check_mc_grpo_env,
    contrast_groups,
    pick_states,
    score_groups,
    teacher_replies,
)
from agentgym.registry import make
from agentgym.runs import RunDir
from agentgym.trajectory import Trajectory, TrajectoryWriter
from policies.llm.base import Generation, SamplingParams
from policies.llm.prompts import guided_choices
from trainers.common import build_policy, is_neural, make_batch
from trainers.ppo import PPOTrainer, turn_grid, turn_sums
from trainers.proact_config import ProActConfig
from trainers.turn_rows import (
    chain_rows,
    clause_rows,
    decision_start,
    one_turn_row,
    play_time_prompt,
    replay_states,
    reply_choice_sets,
    reply_span,
    rewritten_reply_ids,
)


# ---------------------------------------------------------------------------------------------------- trainer
class ProActTrainer(PPOTrainer):
    """ProAct (see the module docstring): GLAD SFT, then MC-GRPO or MC-PPO; checkpoints and evaluation shared."""

    Config: ClassVar[type] = ProActConfig
    name: ClassVar[str] = "proact"
    stage_name: ClassVar[str] = "glad"

    def __init__(self, config: ProActConfig, run: RunDir, *, backend: Any = None) -> None:
        self._check_env(config)  # before the model is loaded: a wrong env fails in a second
        super().__init__(config, run, backend=backend)
        if is_neural(self.backend):
            raise ConfigError(
                "ProAct trains LLM policies (chains and one-turn token sequences); set policy.network=llm."
            )
        self._critic: MCCritic | None = None
        self._replay_env: Any = None
        self._scores: GroupScores | None = None
        self._clauses: torch.Tensor | None = None  # clauses per chain row while an update runs (clause credit)

    # ------------------------------------------------------------------ checks and helpers
    @staticmethod
    def _check_env(cfg: ProActConfig) -> None:
        """Fail early when the env lacks what the stages need (a chain writer, state copies, a Discrete space)."""
        env = make(cfg.env.id, **cfg.env.kwargs)
        base = env.unwrapped
        try:
            if cfg.uses_glad:
                chain_writer(env)  # raises naming the module and function to write
            if cfg.rl_stage is None:
                return
            missing = missing_state_methods(env, seed=cfg.seed)
            if missing:
                raise AgentGymError(
                    f"ProAct's {cfg.rl_stage} stage needs {type(base).__name__} ({cfg.env.id}) to copy its state for "
                    f"the MC-Critic, but it does not implement {', '.join(missing)}. Implement get_state()/"
                    "set_state()/state_key() (the agentgym env contract; by replay where the state cannot be copied "
                    "cheaply), or train with --set stages=glad."
                )
            if cfg.rl_stage == "mc_grpo":
                check_mc_grpo_env(cfg, env)
        finally:
            env.close()

    @property
    def warmup_steps(self) -> int:
        """Steps of the GLAD stage, ProAct's supervised first stage (its SFT epochs; 0 without it)."""
        return self.cfg.glad_epochs if self.cfg.uses_glad else 0

    def total_steps(self) -> int:
        """GLAD epochs, then RL iterations."""
        return self.warmup_steps + (self.cfg.iterations if self.cfg.rl_stage else 0)

    def prepare(self) -> None:
        """Nothing up front: the GLAD data is built (or found in the run directory) by the first GLAD step."""

    @property
    def critic(self) -> MCCritic:
        """The MC-Critic over scratch copies of the training env (struct observations: no text rendering)."""
        if self._critic is None:
            kwargs = {**self.cfg.env.kwargs, "obs_mode": "struct"}
            self._critic = MCCritic(EnvFactory(self.cfg.env.id, kwargs), self.cfg.mc_critic_config)
        return self._critic

    def replay_env(self) -> Any:
        """The env that replays recorded episodes (same settings as the training envs)."""
        if self._replay_env is None:
            self._replay_env = self.make_env()
        return self._replay_env

    def play_policy(self) -> Any:
        """The LLM policy as it plays (prompts, sampling, guided decoding) over the current weights."""
        return build_policy(self.backend, self.cfg.policy)

    def close(self) -> None:
        """Stop the MC-Critic's workers and close scratch envs (rebuilt on demand)."""
        if self._critic is not None:
            self._critic.close()
            self._critic = None
        if self._replay_env is not None:
            self._replay_env.close()
            self._replay_env = None

    def fit(self, *, resume: bool = False, on_iteration: Any = None) -> dict[str, Any]:
        """The shared loop (``PolicyGradientTrainer.fit``) over ``total_steps()`` steps; scratch envs closed after."""
        try:
            return super().fit(resume=resume, on_iteration=on_iteration)
        finally:
            self.close()

    # ------------------------------------------------------------------ steps
    def train_step(self, iteration: int) -> dict[str, float]:
        """A GLAD epoch while ``iteration < warmup_steps``, then one RL iteration (collect, update, samples).

        RL iterations count from the end of GLAD (task draws, sampling seeds and ``critic_warmup``).
        """
        metrics = super().train_step(iteration)
        if iteration >= self.warmup_steps:
            metrics["rl_iteration"] = float(iteration - self.warmup_steps + 1)
        return metrics

    def update(self, trajectories: list[Trajectory]) -> dict[str, float]:
        """The RL stage's update on episodes the current policy played."""
        if self.cfg.rl_stage == "mc_grpo":
            return self.mc_grpo_update(trajectories)
        if self.cfg.rl_stage == "mc_ppo":
            return self.mc_ppo_update(trajectories)
        raise AgentGymError(f"stages={self.cfg.stages!r} has no RL stage to update; use stages=glad+mc_grpo.")

    # ------------------------------------------------------------------ GLAD
    def glad_dataset(self) -> tuple[Path, dict[str, float]]:
        """``RUN/glad.jsonl``: built from the training split, or the one a previous run of this directory wrote."""
        cfg = self.cfg
        path = self.run.path / "glad.jsonl"
        if path.is_file() and path.stat().st_size > 0:
            return path, {"glad_reused": 1.0}
        partial = path.with_name("glad.jsonl.partial")
        glad = GladConfig(
            tasks=cfg.glad_tasks,
            split="train",
            seed=cfg.seed,
            max_turns=cfg.glad_max_turns or cfg.env.max_turns,
            search_seconds=cfg.glad_search_seconds,
            search_nodes=cfg.glad_search_nodes,
            detours=cfg.glad_detours,
        )
        report = build_dataset(cfg.env.id, partial, glad, env_kwargs=cfg.env.kwargs)
        if report.written == 0:
            raise AgentGymError(
                f"GLAD wrote no tasks of {report.requested}: {report.timed_out} search timeouts, {report.dead_ends} "
                "dead ends. Raise glad_search_seconds / glad_search_nodes, or use an easier env preset."
            )
        os.replace(partial, path)  # only a complete file is ever reused
        words = report.chain_words or [0]
        return path, {
            "glad_tasks_written": float(report.written),
            "glad_tasks_skipped": float(report.timed_out + report.dead_ends),
            "glad_turns": float(report.turns),
            "glad_detours": float(report.detours),
            "glad_chain_words_mean": float(np.mean(words)),
            "glad_build_s": report.seconds,
        }

    def warmup_fields(self) -> tuple[dict[str, Any], dict[str, float]]:
        """The GLAD stage's SFT settings (its chain file, ``glad_lr``, ...) and what building the file measured."""
        cfg = self.cfg
        path, built = self.glad_dataset()
        fields = dict(
            data_file=str(path),
            only_successful=False,
            epochs=cfg.glad_epochs,
            lr=cfg.glad_lr,
            minibatch_size=cfg.glad_minibatch_size,
            micro_batch_size=min(cfg.micro_batch_size, cfg.glad_minibatch_size),
        )
        return fields, built

    # ------------------------------------------------------------------ MC-GRPO
    def sample_replies(self, prompts: Sequence[list[int]], policy: Any, seed: int) -> list[list[Generation]]:
        """``mc_group_size`` replies per prompt, sampled as the policy samples at play time, in one batched call."""
        group = self.cfg.mc_group_size
        conf = policy.config
        guided = guided_choices(self.replay_env(), policy.style) if conf.guided else None
        params = SamplingParams(
            max_new_tokens=conf.max_new_tokens,
            temperature=conf.temperature,
            top_p=conf.top_p,
            seed=seed,
            **(guided or {}),
        )
        self.backend.model.eval()
        with torch.no_grad():
            generations = self.backend.generate([p for p in prompts for _ in range(group)], params)
        return [generations[k * group : (k + 1) * group] for k in range(len(prompts))]

    def score_replies(self, states: Sequence[Any], replies: Sequence[Sequence[str]]) -> GroupScores:
        """``Q_MC`` of each reply at its group's state (``mc_groups.score_groups`` with this run's critic and env).

        Args:
            states: one env snapshot (``get_state()``) per group.
            replies: the reply texts sampled at each state.
        """
        base = self.replay_env().unwrapped
        return score_groups(self.critic, base, states, replies, fallback=self.cfg.mc_fallback)

    def advantages(self, returns: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
        """MC-GRPO advantages of the rows ``mc_grpo_update`` passes to the shared update (their returns are Q_MC)."""
        if self._scores is None:
            raise AgentGymError("ProActTrainer.advantages scores MC-GRPO rows only; call update() with episodes.")
        n = len(self._scores.q)  # the rows after the scored replies are their chains (mc_chain_reward)
        adv = self._mc_advantages(self._scores, returns[:n], group_ids[:n])
        chains = self._chain_advantages(returns[n:] / self.cfg.reward_scale, group_ids[n:], self._clauses)
        return torch.cat([adv, chains.to(adv.dtype)])

    def _chain_advantages(self, score: torch.Tensor, group_ids: torch.Tensor,
                          clauses: torch.Tensor | None = None) -> torch.Tensor:
        """``mc_chain_reward`` times each chain row's score minus its state's mean (``mc_negatives`` applies).

        Whole chains (``clauses`` None): the score is the chain's agreement and the mean is over the state's chains.
        Per clause (``clauses``: how many clauses each row covers): the score is 1 for right clauses and 0 for wrong
        ones, and the mean is the share of right clauses over all of the state's chains.
        """
        if clauses is None:
            centred = ops.group_normalized(score, group_ids, std_normalize=False)
        else:
            size = int(group_ids.max()) + 1 if len(group_ids) else 0
            weight = clauses.to(score.dtype)
            right = torch.zeros(size, dtype=score.dtype).index_add_(0, group_ids, score * weight)
            total = torch.zeros(size, dtype=score.dtype).index_add_(0, group_ids, weight)
            centred = score - (right / total.clamp(min=1))[group_ids]
        adv = self.cfg.mc_chain_reward * centred
        return adv if self.cfg.mc_negatives else adv.clamp(min=0)

    def _mc_advantages(self, scores: GroupScores, returns: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
        """``ops.mc_grpo_advantages`` of scaled returns with ``scores``' tables, this run's baseline and negatives."""
        table = torch.as_tensor(scores.table, dtype=torch.float64) * self.cfg.reward_scale  # returns are scaled too
        adv = ops.mc_grpo_advantages(returns, group_ids, torch.as_tensor(scores.actions, dtype=torch.long), table,
                                     baseline=self.cfg.mc_fallback_baseline)
        return adv if self.cfg.mc_negatives else adv.clamp(min=0)

    def mc_grpo_update(self, trajectories: list[Trajectory]) -> dict[str, float]:
        """Pick states among the played turns, sample G replies at each, score them by Q_MC, update the policy."""
        cfg = self.cfg
        policy = self.play_policy()
        candidates = [(i, t) for i, traj in enumerate(trajectories) for t in range(len(traj.turns))
                      if reply_span(traj, t) is not None]
        if not candidates:
            return {"update_skipped_no_signal": 1.0}
        rng = np.random.default_rng([cfg.seed, self.iteration, 2])
        replayed = {i: replay_states(self.replay_env(), trajectories[i]) for i in sorted({i for i, _ in candidates})}
        picked = pick_states(self.critic, self.replay_env().unwrapped, [replayed[i][t] for i, t in candidates],
                             [trajectories[i].turns[t].action for i, t in candidates], cfg.mc_states, rng,
                             errors_first=cfg.mc_pick == "errors")
        picks = [candidates[k] for k in picked]
        states = [replayed[i][t] for i, t in picks]
        prompts = [play_time_prompt(trajectories[i], t, policy) for i, t in picks]
        started = time.perf_counter()
        generations = self.sample_replies(prompts, policy, int(rng.integers(2**31)))
        generate_s = time.perf_counter() - started
        before = dict(self.critic.stats)
        texts = [[g.text for g in group] for group in generations]
        forced: list[list[int | None]] = [[None] * len(group) for group in texts]
        solver: list[tuple[str, int] | None] = [None] * len(states)
        if cfg.mc_teacher or cfg.mc_chain_reward:  # the solver's (GLAD) reply at each state
            budget = SearchBudget(cfg.glad_search_seconds, cfg.glad_search_nodes)
            solver = teacher_replies(self.replay_env(), states, budget)
        for k, found in enumerate(solver if cfg.mc_teacher else ()):  # joins its group as a forced action
            if found is not None:
                texts[k].append(found[0])
                forced[k].append(found[1])
        scores = self.score_replies(states, texts)
        if cfg.mc_fallback and cfg.mc_fallback_rewrites:
            texts, forced, scores = contrast_groups(scores, self.replay_env().unwrapped, texts)
        q = torch.as_tensor(scores.q, dtype=torch.float64) * cfg.reward_scale  # as the shared update scales returns
        adv = self._mc_advantages(scores, q, torch.as_tensor(scores.group, dtype=torch.long))
        rows, n = [], 0
        for k, (i, t) in enumerate(picks):
            for j, (text, action) in enumerate(zip(texts[k], forced[k])):
                gen = generations[k][j if action is None else 0]
                ids, logprobs, sets = gen.token_ids, gen.logprobs, gen.choice_sets
                if action is not None:
                    name = self.replay_env().unwrapped.action_names[action]
                    ids, sets = rewritten_reply_ids(self.backend.tokenizer, gen.choice_sets, text, name,
                                                    guided=policy.config.guided, think=policy.config.think)
                    logprobs = [0.0] * len(ids)  # the update scores every row under the pre-update model
                info = {
                    "q_mc": float(scores.q[n]),
                    "advantage": float(adv[n]),
                    "state_turn": t,
                    "fallback": bool(scores.degenerate[k] and cfg.mc_fallback),
                    **({} if action is None else {"teacher": True} if cfg.mc_teacher else {"rewritten_to": action}),
                }
                rows.append(
                    one_turn_row(
                        trajectories[i],
                        t,
                        prompts[k],
                        ids,
                        logprobs,
                        text=text,
                        reward=float(scores.q[n]),
                        key=[trajectories[i].task, t, k],
                        constrained=gen.constrained,
                        valid=not scores.invalid[n],
                        info=info,
                        choice_sets=sets,
                        loss_from=decision_start(self.backend.tokenizer, ids) if cfg.mc_loss_span == "decision"
                        or (cfg.mc_loss_span == "decision+teacher" and action is None) else 0,
                    )
                )
                n += 1
        chains, self._clauses = [], None
        if cfg.mc_chain_reward:
            answers = [f and f[0] for f in solver]
            if cfg.mc_chain_credit == "clause":
                chains = clause_rows(rows, scores.group, answers, self.backend.tokenizer)
                self._clauses = torch.tensor([c.turns[0].info["clauses"] for c in chains], dtype=torch.long)
            else:
                chains = chain_rows(rows, scores.group, answers)
        chain_adv = self._chain_advantages(torch.tensor([c.episode_return for c in chains], dtype=torch.float64),
                                           torch.tensor([c.turns[0].info["group"] for c in chains], dtype=torch.long),
                                           self._clauses)
        for c, a in zip(chains, chain_adv.tolist()):
            c.turns[0].info["advantage"] = a  # as self.advantages gives it (before any KL-in-reward term)
        per_reply = {c.turns[0].info.get("reply", k): c.turns[0].info["chain_agreement"] for k, c in enumerate(chains)
                     if not c.turns[0].info["teacher"]}  # one per reply (clause credit has up to two rows each)
        sampled = list(per_reply.values())
        self._scores = scores
        try:
            stats = super(PPOTrainer, self).update(rows + chains)  # the shared clipped loss (PolicyGradientTrainer)
        finally:
            self._scores, self._clauses = None, None
        degenerate = float(scores.degenerate.mean())
        stats.update(
            mc_q_mean=float(scores.q.mean()),
            mc_q_std=float(scores.q.std()),
            mc_degenerate_frac=degenerate,
            mc_fallback_frac=degenerate if cfg.mc_fallback else 0.0,
            mc_invalid_frac=float(scores.invalid.mean()),
            mc_critic_s=scores.seconds,
            mc_critic_estimates=float(self.critic.stats["estimates"] - before["estimates"]),
            mc_generate_s=generate_s,
            mc_states=float(len(picks)),
            mc_replies=float(len(rows)),
            **({"mc_chain_agreement": float(np.mean(sampled))} if sampled else {}),
            **{"mc_teacher_replies" if cfg.mc_teacher else "mc_rewrites": float(sum(a is not None for g in forced
                                                                                   for a in g))},
        )
        self._write_rows([*rows[:8], *chains[:8]])
        return stats

    def _write_rows(self, rows: list[Trajectory]) -> None:
        """Keep a few scored replies per iteration (``samples/mc_grpo.jsonl``) for inspection."""
        with TrajectoryWriter(self.run.path / "samples" / "mc_grpo.jsonl") as writer:
            for row in rows:
                row.policy = f"{self.name}@{self.iteration}"
                writer.write(row)

    # ------------------------------------------------------------------ MC-PPO
    def mc_ppo_update(self, trajectories: list[Trajectory]) -> dict[str, float]:
        """Turn-level PPO with the blended critic: one-turn rows, V_MC of every turn's state, one-step TD."""
        cfg = self.cfg
        policy = self.play_policy()
        episodes = [t for t in trajectories if t.token_ids and any(t.loss_mask or ())]
        rows: list[Trajectory] = []
        where: list[tuple[int, int]] = []
        for b, traj in enumerate(episodes):
            for t in range(len(traj.turns)):
                prompt, span = play_time_prompt(traj, t, policy), reply_span(traj, t)
                if prompt is None or span is None:
                    continue
                rows.append(
                    one_turn_row(
                        traj,
                        t,
                        prompt,
                        traj.token_ids[span[0] : span[1]],
                        (traj.logprobs or [])[span[0] : span[1]],
                        text=str(traj.turns[t].action),
                        reward=traj.turns[t].reward,
                        key=[traj.task, t, b],
                        constrained=traj.constrained,
                        choice_sets=reply_choice_sets(traj, span),
                    )
                )
                where.append((b, t))
        if not rows:
            return {"update_skipped_no_signal": 1.0}
        batch = make_batch(self.backend, rows)
        grid = turn_grid(rows)  # one turn per row: value at the row's last prompt token
        old_logp, old_values = self._behaviour(batch, grid.positions)
        lengths = [len(t.turns) for t in episodes]
        width = max(lengths)
        rewards = torch.zeros(len(episodes), width, dtype=torch.float64)
        mask = torch.zeros(len(episodes), width)
        dones = torch.zeros(len(episodes), width)
        v_learned = torch.zeros(len(episodes), width + 1, dtype=torch.float64)
        for b, traj in enumerate(episodes):
            rewards[b, : lengths[b]] = torch.tensor([turn.reward for turn in traj.turns], dtype=torch.float64)
            dones[b, lengths[b] - 1] = float(traj.terminated)
        rewards *= cfg.reward_scale
        b_idx = torch.tensor([b for b, _ in where])
        t_idx = torch.tensor([t for _, t in where])
        mask[b_idx, t_idx] = 1.0
        v_learned[b_idx, t_idx] = old_values[:, 0].double()
        stats: dict[str, float] = {}
        if self.reference is not None and cfg.kl_placement == "reward":
            kl = turn_sums(self._reference_kl(batch, old_logp), batch.turn_ids, batch.loss_mask, 1)[:, 0]
            rewards[b_idx, t_idx] -= cfg.kl_coef * kl
            stats["kl_in_reward"] = float(kl.mean())
        started = time.perf_counter()
        before = dict(self.critic.stats)
        flat, owner = [], []
        for b, traj in enumerate(episodes):
            states = replay_states(self.replay_env(), traj)
            flat += states
            owner += [(b, k) for k in range(len(states))]
        values = self.critic.values(flat) * cfg.reward_scale  # in the units of the scaled rewards
        v_mc = torch.zeros(len(episodes), width + 1, dtype=torch.float64)
        v_mc[torch.tensor([b for b, _ in owner]), torch.tensor([k for _, k in owner])] = torch.from_numpy(values)
        mc_s = time.perf_counter() - started
        blend = ops.blend_values(v_learned, v_mc, cfg.mc_value_weight)
        for b, n in enumerate(lengths):
            # After the last turn there is no prompt, so no learned value: bootstrap a truncated episode with V_MC
            # (or 0 with a learned critic only, as PPO counts the state after the last turn).
            blend[b, n] = v_mc[b, n] if cfg.mc_value_weight > 0 else 0.0
        advantages, returns = ops.mc_td_advantages(
            rewards, blend, dones, mask, gamma=cfg.gamma, normalize=cfg.whiten_advantages
        )
        row_adv = advantages[b_idx, t_idx][:, None].float()
        row_ret = returns[b_idx, t_idx][:, None].float()
        valid = mask > 0
        stats.update(
            returns_mean=float(returns[valid].mean()),
            values_mean=float(old_values.mean()),
            mc_value_mean=float(v_mc[:, :width][valid].mean()),
            mc_critic_s=mc_s,
            mc_critic_estimates=float(self.critic.stats["estimates"] - before["estimates"]),
            critic_only=float(self.iteration < cfg.critic_warmup),
            turns=float(len(rows)),
            train_tokens=float(batch.tokens),
        )
        stats.update(
            self.run_epochs(
                len(rows),
                lambda sel: self._ppo_minibatch(batch, sel, grid, old_logp, old_values, row_adv, row_ret),
                ("loss", "value_loss", "value_clip_frac", "clip_frac"),
            )
        )
        return stats
