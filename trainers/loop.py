"""LOOP: leave-one-out PPO (Chen et al., arXiv 2502.01600).

K rollouts per task; each rollout's advantage is its return minus the mean of the other K-1 returns, with no std
normalisation; rollouts with |A| < 0.01 are dropped; per-token PPO ratios clipped to LOOP's asymmetric range
[1/(1+eps), 1+eps] with eps = 0.1; per-rollout token-mean losses summed and divided by the configured minibatch
size; two epochs per iteration; no value network and no reference model, so exactly one copy of the model is in
memory. LoRA (r=16, alpha=32 on every linear layer) is the paper's setting and the default here.

With prompts that keep only recent turns (``policy.history_turns``, 0 by default here), each turn of a rollout is
trained as its own row with exactly the prompt it was sampled from; the rows are weighted by their share of the
rollout's tokens (``ops.episode_weights``), so each rollout still counts once, as in the paper's per-rollout mean.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch

from agentgym import ops
from trainers.common import EnvSection, PolicySection, default_env
from trainers.policy_gradient import PolicyGradientConfig, PolicyGradientTrainer


@dataclass(frozen=True)
class LoopConfig(PolicyGradientConfig):
    """LOOP's settings (spec: LOOP section 1.5), scaled to a CPU budget where the paper's sizes do not fit."""

    env: EnvSection = field(default_factory=lambda: default_env(oracle_starts=0.5))
    """The trainers' default env (Sokoban tiny, shaping, the offsets line, 10 turns), and half of the training
    episodes start at a random state on the oracle's solution (``oracle_starts=0.5``): from a task's start the
    default model solves 2-3% of tiny boards, too few successes to learn from, while a uniformly random policy
    succeeds in about one episode in seven with this mix. Held-out evaluation starts at the task's start."""
    policy: PolicySection = field(default_factory=lambda: PolicySection(lora=True, history_turns=0))
    """The policy being trained (LoRA r=16, alpha=32 on all linear layers, as in the paper). Prompts show only the
    current observation (history_turns=0: the small default model otherwise copies its previous answer turn
    after turn, so the K rollouts of a task collapse to one; Sokoban and 2048 boards are fully observed), and
    each reply is then trained with exactly that prompt."""
    group_size: int = 6
    """K rollouts per task (the paper's 6)."""
    tasks_per_iteration: int = 3
    """Tasks per iteration (the paper's 40 on 16 GPUs; 3 suits a 2-core CPU)."""
    minibatch_size: int = 6
    """Rollouts per optimizer step (the paper's 32; scaled with the batch)."""
    micro_batch_size: int = 6
    """Rollouts (turn rows, with the default one-turn prompts) per forward/backward: the whole minibatch, which
    shares one pass over the system prompt; lower it for long multi-turn rows (gradient accumulation, same step)."""
    epochs: int = 2
    """Passes over each iteration's rollouts (LOOP's default 2)."""
    clip_eps: float = 0.1
    """LOOP's epsilon: ratios are clipped to [1/1.1, 1.1]."""
    clip_kind: Literal["symmetric", "loop"] = "loop"
    """LOOP's asymmetric clip range, symmetric in log-ratio."""
    adv_threshold: float = 0.01
    """Rollouts with |A| < 0.01 are dropped (they carry no gradient)."""
    agg_divisor_minibatch: bool = True
    """Per-rollout losses are divided by the configured minibatch size, so dropped rollouts shrink the step."""
    lr: float = 1e-4
    """AdamW learning rate (the paper's 5e-5 is for a 32B model; a 135M LoRA needs more)."""
    kl_coef: float = 0.0
    """No KL penalty and no reference model (one model copy in memory)."""
    warmup_demos: int = 120
    """A supervised warm start on the oracle's demonstrations of 120 training tasks (2 epochs, about 7 minutes on
    a 2-core CPU) before the first iteration: zero-shot, the default model solves 0-3% of held-out tiny boards and
    LOOP alone did not raise that in CPU-sized runs; after the warm start it solves 68% (3 seeds,
    benchmarks/RESULTS.md). Held-out success is evaluated before, after the warm start and at the end. 0: LOOP from
    the model as it is."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.group_size < 2:
            from agentgym.config import ConfigError

            raise ConfigError(f"group_size={self.group_size}: leave-one-out needs at least 2 rollouts per task.")


class LoopTrainer(PolicyGradientTrainer):
    """LOOP (see the module docstring)."""

    Config: ClassVar[type] = LoopConfig
    name: ClassVar[str] = "loop"

    def advantages(self, returns: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
        """Leave-one-out baseline, no std normalisation."""
        return ops.leave_one_out(returns, group_ids, std_normalize=False)
