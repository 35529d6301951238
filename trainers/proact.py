"""ProAct: GLAD lookahead distillation, then RL with the Monte-Carlo critic (Yu et al., arXiv 2602.05327; spec 4).

``stages`` picks what one run does, in order, each stage a number of the run's steps:

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
   ``mc_teacher``, ``mc_pick``, ``mc_negatives``, ``mc_loss_span``, ``mc_chain_reward``. The update is the shared
   clipped loss of ``PolicyGradientTrainer.update`` on one turn.
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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from agentgym import ops
from agentgym.config import ConfigError
from agentgym.errors import AgentGymError
from agentgym.glad import GladConfig, SearchBudget, build_dataset, chain_writer
from agentgym.mc_critic import EnvFactory, MCCritic, MCCriticConfig, missing_state_methods
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
from trainers.common import Aggregation, EnvSection, PolicySection, build_policy, default_env, is_neural, make_batch
from trainers.ppo import PPOConfig, PPOTrainer, turn_grid, turn_sums
from trainers.turn_rows import (
    chain_rows,
    decision_start,
    one_turn_row,
    play_time_prompt,
    replay_states,
    reply_choice_sets,
    reply_span,
    rewritten_reply_ids,
)

Stages = Literal["glad+mc_grpo", "glad", "mc_grpo", "mc_ppo", "glad+mc_ppo"]


@dataclass(frozen=True)
class ProActConfig(PPOConfig):
    """ProAct's settings (spec 4), sized so that the CPU default finishes in about 10 minutes on 2 cores."""

    oracle_starts_supported: ClassVar[bool] = False
    """ProAct replays recorded episodes from their task's start, so every episode starts there."""
    env_defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "agentgym/Game2048-v0": {"kwargs": {"text_moves": True}, "max_turns": 60},
        "agentgym/Game2048Small-v0": {"kwargs": {"text_moves": True}, "max_turns": 60},
    }
    """``--env game2048`` starts with the line naming the moves that change the board (``text_moves``) and a
    60-move budget (the default env's 10 would end every game in its opening). Measured on 3x3 over 3 seeds:
    without the line the GLAD-trained 135M model kept choosing moves that change nothing (8 points after GLAD);
    with it, 272, against 160 for random moves (benchmarks/RESULTS.md). ``--env-kwargs text_moves=false`` and
    ``--set env.max_turns=N`` change them."""

    stages: Stages = "glad+mc_grpo"
    """What the run does, in order: 'glad' (SFT on search chains), 'mc_grpo' or 'mc_ppo' (RL with the MC-Critic),
    or GLAD then one of them ('glad+mc_grpo', 'glad+mc_ppo')."""
    policy: PolicySection = field(default_factory=lambda: PolicySection(think=True, max_new_tokens=96, history_turns=0))
    """The policy: <think> chains then the answer (GLAD's reply format; chains take 35-80 SmolLM2 tokens, hence
    96 new tokens), prompted with the current state only (history_turns=0, ProAct's state prompt)."""
    env: EnvSection = field(
        default_factory=lambda: replace(default_env(), kwargs={**default_env().kwargs, "text_neighbors": True})
    )
    """The trainers' default Sokoban (tiny, shaped, the offsets line) with the ``Around you`` line too: which moves
    hit a wall or a blocked box, on one line. Without it a GLAD-trained 135M model judged walls right 47% of the
    time and blocked boxes 15% (it reads grid columns badly); with it, 100% (benchmarks/RESULTS.md)."""
    # ------------------------------------------------------------------ RL loop (shared by MC-GRPO and MC-PPO)
    iterations: int = 20
    """RL iterations (MC-GRPO or MC-PPO) after the GLAD epochs (time_budget_minutes usually ends a CPU run first)."""
    tasks_per_iteration: int = 2
    """Training tasks played per RL iteration (MC-GRPO picks its states among the turns of these episodes)."""
    group_size: int = 1
    """Episodes per task (MC-GRPO groups replies per state, so 1 suffices; MC-PPO needs no groups)."""
    minibatch_size: int = 8
    """One-turn sequences per optimizer step."""
    micro_batch_size: int = 4
    """Sequences per forward/backward (gradient accumulation)."""
    epochs: int = 1
    """Passes over each iteration's sequences."""
    lr: float = 2e-5
    """AdamW learning rate of the RL stages (ProAct: 1e-6 for a 4B model; full fine-tuning of a 135M one here)."""
    clip_eps: float = 0.2
    """PPO ratio clip epsilon (ProAct: 0.4 with AReaL's decoupled loss; 0.2 for this on-policy loss)."""
    agg: Aggregation = "token-mean"
    """Every reply token of the minibatch weighs equally."""
    kl_coef: float = 0.0
    """No KL penalty and no reference copy (ProAct: kl_ctl 0). When > 0, the reference is the model the RL stage
    starts from: after GLAD, the GLAD model (kept in the run's ``reference/``). ``kl_placement=loss`` puts the
    per-token KL in the loss (GRPO's way); the default, ``reward``, subtracts a reply's summed KL from its Q_MC."""
    gamma: float = 0.95
    """MC-PPO's turn discount in the TD advantages (ProAct: 0.95 Sokoban, 0.9 2048)."""
    lam: float = 0.0
    """MC-PPO's GAE lambda: 0 (one-step TD on the blended critic, spec 4.4); other values are refused."""
    value_clip: float | None = 0.5
    """eps_v of the clipped value loss (ProAct: 0.5)."""
    num_envs: int = 8
    """Episodes run concurrently in collection and evaluation."""
    eval_every: int = 0
    """Evaluate on held-out tasks every N steps (0: before and after only; chains make evaluations slow on a CPU)."""
    eval_tasks: int = 4
    """Held-out tasks per evaluation (dev before/after, and test)."""
    eval_temperature: float = 0.0
    """Greedy evaluations: a distilled policy is judged by its best guess."""
    checkpoint_every: int = 2
    """Checkpoint every N steps (GLAD epochs and RL iterations alike), and always at the end."""
    time_budget_minutes: float | None = 5.0
    """Start no new step after this many minutes (the evaluation before training included); the final
    evaluation still runs, so the CPU default ends in about 10 minutes, mostly evaluations and GLAD: RL iterations
    with 96-token chains need a GPU or a larger budget."""
    # ------------------------------------------------------------------ GLAD
    glad_tasks: int = 8
    """Training tasks the oracle plays for the GLAD dataset (ProAct: ~8K samples for Sokoban)."""
    glad_max_turns: int | None = None
    """Turns per GLAD episode (None: env.max_turns, the budget the policy plays with)."""
    glad_search_seconds: float = 10.0
    """Seconds one step's search may take; a task whose step needs more is skipped."""
    glad_search_nodes: int = 1_000_000
    """States one search may expand (the Sokoban solver)."""
    glad_detours: float = 0.0
    """Chance that a GLAD step is an untaught detour (a mistaken move kept in the history; ``GladConfig.detours``),
    so the taught turns also cover recovering from off-path states. Sokoban has a detour writer."""
    glad_epochs: int = 2
    """SFT epochs over the GLAD sequences, one run step each (ProAct: 10)."""
    glad_lr: float = 1e-4
    """AdamW learning rate of the GLAD SFT (its own optimizer; ProAct: 5e-5 for a 4B model)."""
    glad_minibatch_size: int = 4
    """GLAD sequences per optimizer step."""
    # ------------------------------------------------------------------ MC-Critic
    mc_rollouts: int = 1000
    """M: rollouts averaged per MC estimate (ProAct's 1000; 16 tiny-Sokoban estimates take ~0.8 s on a CPU core)."""
    mc_horizon: int = 20
    """H: steps per MC rollout (ProAct: 200 for Sokoban Q, 20 for Sokoban V, 1000 for 2048)."""
    mc_gamma: float = 0.95
    """Discount inside the MC rollouts (ProAct: 0.95 Sokoban, 0.9 2048)."""
    mc_rollout_policy: Literal["random", "oracle"] = "random"
    """Rollout policy of the MC-Critic: uniform random (ProAct's surrogate) or the env's oracle."""
    mc_workers: int = 0
    """Worker processes for the MC rollouts (0: in this process)."""
    # ------------------------------------------------------------------ MC-GRPO
    mc_states: int = 4
    """States picked per iteration among the turns played (uniformly, without replacement)."""
    mc_group_size: int = 4
    """G: replies sampled per state (ProAct: 8)."""
    mc_fallback: bool = True
    """Score degenerate groups (one action, or one value) against all actions of the state (needs a Discrete action
    space); false: they get advantage 0."""
    mc_fallback_rewrites: bool = False
    """True: a degenerate group becomes its first reply and that reply rewritten to every other action
    (``contrast_groups``), each scored by its Q. On 6x6 Sokoban answers stopped following ``Best:`` (RESULTS.md)."""
    mc_fallback_baseline: Literal["mean", "best"] = "mean"
    """Subtract from a degenerate group's Q the mean over all actions (ProAct) or the best action's (optimal: 0)."""
    mc_teacher: bool = False
    """Add the GLAD reply at each picked state to its group, scored by its Q (``teacher_replies``; DAgger-like)."""
    mc_pick: Literal["uniform", "errors"] = "uniform"
    """Pick ``mc_states`` uniformly, or the played turns whose action's Q is below the best first (``pick_states``)."""
    mc_negatives: bool = True
    """False: negative advantages become 0, so only replies better than their group's baseline are trained."""
    mc_loss_span: Literal["reply", "decision", "decision+teacher"] = "reply"
    """MC-GRPO loss span: the reply (ProAct); 'decision', from its last ``Best:`` (else ``<answer>``) on, as Q_MC
    scores the action, not the clauses; 'decision+teacher', that but the teacher's (solver's) reply whole."""
    mc_chain_reward: float = 0.0
    """> 0 (with mc_loss_span=decision): each reply's chain, before its decision, also trains, with advantage this
    times its ``chain_agreement`` with the solver's chain at the state minus its group's mean (off: 0)."""
    # ------------------------------------------------------------------ MC-PPO
    mc_value_weight: float = 1.0
    """w in (1-w) V_learned + w V_MC (ProAct: 1.0 Sokoban, 0.9 2048)."""

    def __post_init__(self) -> None:
        history = self.policy.history_turns
        if history is not None and (isinstance(history, bool) or history < 0):
            raise ConfigError(
                f"policy.history_turns={history!r} must be >= 0 (0: the current observation only) or "
                "null (every turn that fits the context)."
            )
        if history is None:
            super().__post_init__()
        else:
            # PPOConfig refuses truncated history because PPOTrainer scores whole episodes; ProAct trains one-turn
            # sequences with each reply's exact prompt, so every base-class check runs on a copy without it.
            replace(self, policy=replace(self.policy, history_turns=None))

        def need_int(name: str, low: int, example: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name}={value!r} is invalid: it must be an int >= {low}, e.g. {name}={example}.")

        if self.warmup_demos:
            raise ConfigError(
                f"warmup_demos={self.warmup_demos}: ProAct's warm start is GLAD (stages='glad+...', glad_tasks); "
                "set warmup_demos=0."
            )
        need_int("mc_rollouts", 1, "32 (M, the rollouts per Monte-Carlo estimate)")
        need_int("mc_horizon", 0, "20 (H, steps per rollout)")
        need_int("mc_workers", 0, "0 (rollouts in this process)")
        need_int("mc_states", 1, "4")
        need_int("mc_group_size", 1, "4 (G, replies per state)")
        need_int("glad_tasks", 1, "8")
        need_int("glad_epochs", 1, "2")
        need_int("glad_minibatch_size", 1, "4")
        need_int("glad_search_nodes", 1, "1000000")
        if self.glad_max_turns is not None:
            need_int("glad_max_turns", 1, "10, or null for env.max_turns")
        for name in ("mc_gamma", "mc_value_weight"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name}={value!r} must lie in [0, 1], e.g. {name}=0.95.")
        if isinstance(self.glad_detours, bool) or not isinstance(self.glad_detours, (int, float)) \
                or not 0.0 <= self.glad_detours < 1.0:
            raise ConfigError(f"glad_detours={self.glad_detours!r} must be a probability in [0, 1), e.g. 0.25.")
        for name in ("glad_lr", "glad_search_seconds"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be > 0.")
        if self.rl_stage == "mc_ppo" and self.lam != 0:
            raise ConfigError(
                f"lam={self.lam}: MC-PPO uses one-step TD advantages on the blended critic (lambda 0, "
                "spec 4.4); set lam=0."
            )
        if self.mc_group_size == 1 and not self.mc_fallback and self.rl_stage == "mc_grpo":
            raise ConfigError(
                "mc_group_size=1 with mc_fallback=false gives every reply advantage 0; sample more "
                "replies per state (mc_group_size>=2) or set mc_fallback=true."
            )
        if self.uses_glad and not self.policy.think:
            raise ConfigError(
                f"stages={self.stages!r} with policy.think=false: GLAD teaches "
                "<think>CHAIN</think><answer>ACTION</answer> replies, so the policy must be prompted for "
                "them; set policy.think=true (and policy.max_new_tokens near 96), or stages=mc_grpo."
            )

    @property
    def uses_glad(self) -> bool:
        """Whether the run starts with the GLAD stage."""
        return self.stages.startswith("glad")

    @property
    def rl_stage(self) -> str | None:
        """'mc_grpo', 'mc_ppo' or None (GLAD only)."""
        return self.stages.rpartition("+")[2] if self.stages != "glad" else None

    @property
    def mc_critic_config(self) -> MCCriticConfig:
        """The MC-Critic's settings."""
        return MCCriticConfig(
            rollouts=self.mc_rollouts,
            horizon=self.mc_horizon,
            gamma=self.mc_gamma,
            rollout_policy=self.mc_rollout_policy,
            workers=self.mc_workers,
            seed=self.seed,
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
        chains = self._chain_advantages(returns[n:] / self.cfg.reward_scale, group_ids[n:])
        return torch.cat([adv, chains.to(adv.dtype)])

    def _chain_advantages(self, agreement: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
        """``mc_chain_reward`` times each chain row's agreement minus its state's mean (``mc_negatives`` applies)."""
        adv = self.cfg.mc_chain_reward * ops.group_normalized(agreement, group_ids, std_normalize=False)
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
        chains = chain_rows(rows, scores.group, [f and f[0] for f in solver]) if cfg.mc_chain_reward else []
        chain_adv = self._chain_advantages(torch.tensor([c.episode_return for c in chains], dtype=torch.float64),
                                           torch.tensor([c.turns[0].info["group"] for c in chains], dtype=torch.long))
        for c, a in zip(chains, chain_adv.tolist()):
            c.turns[0].info["advantage"] = a  # as self.advantages gives it (before any KL-in-reward term)
        sampled = [c.episode_return for c in chains if not c.turns[0].info["teacher"]]
        self._scores = scores
        try:
            stats = super(PPOTrainer, self).update(rows + chains)  # the shared clipped loss (PolicyGradientTrainer)
        finally:
            self._scores = None
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
