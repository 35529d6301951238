"""ProAct's settings (``ProActConfig``): the stages, the GLAD SFT, the MC-Critic, MC-GRPO and MC-PPO.

The trainer is ``trainers.proact``; its module docstring says what each stage does with these settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal

from agentgym.config import ConfigError
from agentgym.mc_critic import MCCriticConfig
from trainers.common import Aggregation, EnvSection, PolicySection, default_env
from trainers.ppo import PPOConfig

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
    mc_chain_credit: Literal["chain", "clause"] = "chain"
    """How ``mc_chain_reward`` credits a chain: 'chain', one advantage for the whole chain (its agreement minus the
    state's mean); 'clause', each clause's tokens by the solver's verdict on that clause: W x (1 - p) for a clause
    the solver's chain states, W x (0 - p) for one it does not, p the share of right clauses at the state
    (``turn_rows.clause_rows``). A clause the reply leaves out is charged to the clause that takes its place
    (``mc_groups.clause_verdicts``): without that rule, one seed on 6x6 Sokoban learned to drop the hard clauses
    (benchmarks/RESULTS.md, "The chain reward per clause")."""
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
