"""PPO with a learned critic and turn-level GAE: the baseline LOOP's paper ablates against (spec 1.7 and 6.1).

The MDP is turn-level (spec 6.1, multi-turn variant): one action is one assistant reply, its reward the env's
step reward (``Trajectory.turns[i].reward``). A value head (an MLP, hidden -> hidden/2 -> 1 with ReLU) reads the
policy model's last hidden state at the *last prompt token* of each turn, i.e. the state just before the reply;
its inputs are detached, so value gradients never reach the policy (LOOP App. C.5), and it has its own AdamW.
One iteration:

1. collect episodes with the current policy (the shared engine; groups are kept only so runs compare with LOOP);
2. one no-grad pass gives behaviour log-probs and old values V_old; with ``kl_placement="reward"`` the summed
   per-token KL of each turn to the reference model is subtracted from that turn's reward;
3. GAE over turns (``gamma``, ``lam``; a turn without a reply, and the state after the last turn, count 0),
   returns ``G = A + V_old``, advantages whitened over the batch's turns and broadcast to the turn's tokens;
4. ``epochs`` passes of minibatches: the shared symmetric clipped policy loss (plus the k3 KL in the loss when
   ``kl_placement="loss"``) and the clipped value loss ``0.5 * max((V-G)^2, (clip(V, V_old +- eps_v) - G)^2)``,
   both from ONE forward pass (the hidden states are caught on their way to the LM head).

Memory: the policy, a frozen reference copy (when ``kl_coef`` > 0) and the small value head; LOOP keeps one copy.
``critic_warmup`` iterations at the start train the value head only (the LOOP ablation warmed up for 10).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

import torch

from agentgym import ops
from agentgym.config import ConfigError
from agentgym.runs import RunDir
from agentgym.trajectory import Trajectory
from trainers.common import Aggregation, PolicySection, TokenBatch, is_neural, make_batch, score
from trainers.policy_gradient import PolicyGradientConfig, PolicyGradientTrainer


@dataclass(frozen=True)
class PPOConfig(PolicyGradientConfig):
    """PPO's settings: LOOP's rollout sizes (the ablation kept "other hyperparameters as LOOP"), plus a critic."""

    policy: PolicySection = field(default_factory=lambda: PolicySection(lora=True))
    """The policy being trained (LoRA, as LOOP; the value head is trained in full)."""
    group_size: int = 6
    """Episodes per task (LOOP's K; PPO needs no groups, kept so the two runs see the same episodes)."""
    tasks_per_iteration: int = 3
    """Training tasks per iteration (as LOOP on a CPU budget)."""
    minibatch_size: int = 6
    """Episodes per optimizer step."""
    micro_batch_size: int = 3
    """Episodes per forward/backward (gradient accumulation)."""
    epochs: int = 2
    """Passes over each iteration's episodes (as LOOP)."""
    lr: float = 1e-4
    """AdamW learning rate of the policy."""
    agg: Aggregation = "token-mean"
    """Every token of the minibatch weighs equally (PPO-RLHF's usual aggregation)."""
    kl_coef: float = 0.01
    """Weight of the k3 KL to the initial (reference) model; > 0 keeps a frozen copy of the model in memory."""
    kl_placement: Literal["loss", "reward"] = "reward"
    """PPO puts the KL in the reward (spec 6.1): each turn's summed token KL is subtracted from its reward."""
    gamma: float = 1.0
    """Discount per turn (LOOP's ablation: 1)."""
    lam: float = 1.0
    """GAE lambda over turns; 1 gives A = G - V (LOOP's ablation found 0.95-0.999 diverged on long episodes)."""
    whiten_advantages: bool = True
    """Whiten the advantages over the batch's turns (each turn counts once, whatever its length)."""
    value_coef: float = 0.1
    """Weight of the value loss (LOOP's starting value; with its own optimizer it mainly scales against the
    gradient clip)."""
    value_clip: float | None = 0.2
    """eps_v of the clipped value loss, in reward units (None: plain squared error)."""
    value_lr: float = 1e-3
    """AdamW learning rate of the value head (a fresh MLP on detached features, so higher than the policy's)."""
    value_hidden: int | None = None
    """Width of the value head's hidden layer (None: half the model's hidden size)."""
    critic_warmup: int = 0
    """Iterations at the start that train only the value head (the policy stays fixed; LOOP's ablation: 10)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1):
            raise ConfigError(f"gamma={self.gamma} and lam={self.lam} must lie in [0, 1].")
        if self.value_clip is not None and self.value_clip <= 0:
            raise ConfigError(f"value_clip={self.value_clip} must be > 0, or null to disable value clipping.")
        if self.policy.history_turns is not None:
            raise ConfigError(
                f"policy.history_turns={self.policy.history_turns}: PPO reads turn values from whole-episode "
                "sequences; leave policy.history_turns unset (null) for PPO."
            )
        if self.adv_threshold != 0:
            raise ConfigError(
                f"adv_threshold={self.adv_threshold}: PPO keeps every turn (the critic learns from all of them); "
                f"leave adv_threshold at 0."
            )
        if self.value_lr <= 0 or self.value_coef < 0 or self.critic_warmup < 0:
            raise ConfigError(
                f"value_lr={self.value_lr} must be > 0, value_coef={self.value_coef} and critic_warmup="
                f"{self.critic_warmup} >= 0."
            )


# ---------------------------------------------------------------------------------------------------- turn MDP
class TurnGrid(NamedTuple):
    """One row per episode, one column per turn (``[B, K]`` each).

    Attributes:
        rewards: the env reward of each step (0 past the episode's end).
        mask: 1 where the turn has an assistant reply in the token sequence (a value and an advantage).
        positions: index, in the episode's token sequence, of the turn's last prompt token (0 where masked); the
            hidden state there is the state the reply was generated from.
    """

    rewards: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor


def turn_grid(trajectories: Sequence[Trajectory], *, neural: bool = False) -> TurnGrid:
    """Turn rewards, the turns that carry a reply, and where each turn's value is read (see ``TurnGrid``).

    For a neural policy's episodes every step is a decision (``positions`` are unused: values come from the
    critic network on the step's observation).
    """
    if neural:
        width = max([len(t.turns) for t in trajectories] + [1])
        rewards = torch.zeros(len(trajectories), width, dtype=torch.float64)
        mask = torch.zeros(len(trajectories), width)
        for b, t in enumerate(trajectories):
            rewards[b, : len(t.turns)] = torch.tensor([turn.reward for turn in t.turns], dtype=torch.float64)
            mask[b, : len(t.turns)] = 1.0
        return TurnGrid(rewards, mask, torch.zeros(len(trajectories), width, dtype=torch.long))
    replies = [[(s[3], s[1]) for s in t.segments or () if s[0] == "assistant"] for t in trajectories]
    width = max([len(t.turns) for t in trajectories] + [turn + 1 for r in replies for turn, _ in r] + [1])
    rewards = torch.zeros(len(trajectories), width, dtype=torch.float64)
    mask = torch.zeros(len(trajectories), width)
    positions = torch.zeros(len(trajectories), width, dtype=torch.long)
    for b, t in enumerate(trajectories):
        rewards[b, : len(t.turns)] = torch.tensor([turn.reward for turn in t.turns], dtype=torch.float64)
        for turn, start in replies[b]:
            mask[b, turn] = 1.0
            positions[b, turn] = start - 1  # the token before the reply: the prompt's last one
    return TurnGrid(rewards, mask, positions)


def turn_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over the turns of each episode; the state after the last turn is worth 0 (terminal or out of budget).

    A reward of a turn without a reply (mask 0) is credited to the preceding reply, as ``agentgym.ops.gae`` does.

    Returns:
        ``(advantages, returns)``, both ``[B, K]``, 0 where ``mask`` is 0.
    """
    return ops.gae(rewards, values, mask, gamma=gamma, lam=lam)


def turn_sums(token_values: torch.Tensor, turn_ids: torch.Tensor, mask: torch.Tensor, num_turns: int) -> torch.Tensor:
    """Sum ``[B, T]`` per-token values within each turn: ``[B, K]`` (e.g. a turn's KL to the reference)."""
    ids = torch.where(mask > 0, turn_ids, 0).long()
    valued = torch.where(mask > 0, token_values, 0.0).to(torch.float64)
    return torch.zeros(turn_ids.shape[0], num_turns, dtype=torch.float64).scatter_add_(1, ids, valued)


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed ``0.5 * max((V - G)^2, (V_old + clip(V - V_old, -eps, eps) - G)^2)`` over the valid turns.

    Returns:
        ``(loss_sum, clipped)``: the sum over ``mask`` (the caller divides by the minibatch's turn count so that
        micro-batches accumulate to a mean) and how many turns the clipped branch was the larger one.
    """
    target = returns.to(values.dtype)
    unclipped = (values - target).square()
    if clip is None:
        return 0.5 * (unclipped * mask).sum(), values.new_zeros(())
    old = old_values.to(values.dtype)
    clipped = (old + (values - old).clamp(-clip, clip) - target).square()
    return 0.5 * (torch.maximum(unclipped, clipped) * mask).sum(), ((clipped > unclipped).float() * mask).sum()


# ---------------------------------------------------------------------------------------------------- value head
def value_head(hidden_size: int, width: int | None = None) -> torch.nn.Sequential:
    """The critic: hidden -> width (default hidden/2) -> 1, ReLU; kept in float32 whatever the model's dtype."""
    width = width or max(hidden_size // 2, 1)
    return torch.nn.Sequential(torch.nn.Linear(hidden_size, width), torch.nn.ReLU(), torch.nn.Linear(width, 1))


def _decoder(backend: Any) -> torch.nn.Module:
    model = backend.model.get_base_model() if hasattr(backend.model, "get_base_model") else backend.model
    return model.get_decoder()


@contextmanager
def caught_hidden_states(backend: Any) -> Iterator[dict[str, torch.Tensor]]:
    """Catch the decoder's last hidden state ``[B, T, H]`` during a ``score`` call, so values cost no extra pass."""
    box: dict[str, torch.Tensor] = {}
    parts: list[torch.Tensor] = []

    def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
        # Scoring may run the decoder twice (a shared prompt prefix once, then every row's rest): join the parts.
        parts.append(output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0])
        rows = max(p.shape[0] for p in parts)
        box["hidden"] = torch.cat([p.expand(rows, -1, -1) for p in parts], 1)

    handle = _decoder(backend).register_forward_hook(hook)
    try:
        yield box
    finally:
        handle.remove()


class PPOTrainer(PolicyGradientTrainer):
    """PPO with a learned critic and a reference model (see the module docstring)."""

    Config: ClassVar[type] = PPOConfig
    name: ClassVar[str] = "ppo"

    def __init__(self, config: PPOConfig, run: RunDir, *, backend: Any = None) -> None:
        super().__init__(config, run, backend=backend)
        if is_neural(self.backend):
            # A neural policy's critic is a second network of the same class (its value output is used), so
            # value gradients never reach the policy, as with the LLM's detached value head.
            from trainers.neural import NeuralBackend

            critic = NeuralBackend.build(
                self.backend.entry_point, self.make_env(), self.backend.kwargs, device=str(self.backend.device)
            )
            if not critic.model.has_value:
                raise ConfigError(f"{type(critic.model).__name__} has no value head; PPO needs one (has_value).")
            if config.policy.weights is not None:  # a warm-started policy's encoder is a warm start for the critic
                critic.model.load_state_dict(self.backend.model.state_dict())
            self.value_head = critic.model
        else:
            hidden = int(_decoder(self.backend).config.hidden_size)
            self.value_head = value_head(hidden, config.value_hidden).to(self.backend.device)
        self.value_optimizer = torch.optim.AdamW(
            self.value_head.parameters(), lr=config.value_lr, weight_decay=config.weight_decay
        )

    # ------------------------------------------------------------------ scoring
    def _score(
        self, sub: TokenBatch, positions: torch.Tensor, *, policy_grad: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-probs and entropies ``[b, T-1]`` and turn values ``[b, K]`` from one pass.

        Gradients flow under grad; ``policy_grad=False`` builds no graph through the model (the critic's warm-up).
        """
        policy_grad = policy_grad and torch.is_grad_enabled()
        if is_neural(self.backend):
            from trainers.neural import score_steps

            with torch.set_grad_enabled(policy_grad):
                logp, entropy = score_steps(self.backend.model, sub)
            return logp, entropy, score_steps(self.value_head, sub, with_values=True)[2]
        with caught_hidden_states(self.backend) as box, torch.set_grad_enabled(policy_grad):
            logp, entropy = score(self.backend, sub, temperature=self.cfg.policy.temperature)
        hidden = box["hidden"].detach()  # the critic must not move the policy
        index = positions.to(hidden.device)[..., None].expand(-1, -1, hidden.shape[-1])
        values = self.value_head(hidden.gather(1, index).float()).squeeze(-1)
        return logp, entropy, values

    def _behaviour(self, batch: TokenBatch, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Behaviour log-probs ``[B, T-1]`` and old values ``[B, K]`` under the pre-update parameters."""
        self.backend.model.eval()
        logps, values = [], []
        with torch.no_grad():
            for start in range(0, batch.loss_mask.shape[0], self.cfg.micro_batch_size):
                rows = list(range(start, min(start + self.cfg.micro_batch_size, batch.loss_mask.shape[0])))
                logp, _, value = self._score(batch.select(rows), positions[rows])
                logps.append(torch.nn.functional.pad(logp.float().cpu(), (0, batch.loss_mask.shape[1] - logp.shape[1])))
                values.append(value.float().cpu())
        return torch.cat(logps), torch.cat(values)

    # ------------------------------------------------------------------ update
    def update(self, trajectories: list[Trajectory]) -> dict[str, float]:
        """Old log-probs and values, turn GAE, then the minibatch updates of policy and critic."""
        cfg = self.cfg
        neural = is_neural(self.backend)
        keep = [
            i for i, t in enumerate(trajectories) if (t.turns if neural else t.token_ids and any(t.loss_mask or ()))
        ]
        if not keep:
            return {"update_skipped_no_signal": 1.0}
        trajectories = [trajectories[i] for i in keep]
        batch = make_batch(self.backend, trajectories)
        grid = turn_grid(trajectories, neural=neural)
        old_logp, old_values = self._behaviour(batch, grid.positions)
        rewards = grid.rewards * cfg.reward_scale
        stats: dict[str, float] = {}
        if self.reference is not None and cfg.kl_placement == "reward":
            kl = turn_sums(self._reference_kl(batch, old_logp), batch.turn_ids, batch.loss_mask, rewards.shape[1])
            rewards = rewards - cfg.kl_coef * kl
            stats["kl_in_reward"] = float(kl.sum(1).mean())
        advantages, returns = turn_gae(rewards, old_values.double(), grid.mask, gamma=cfg.gamma, lam=cfg.lam)
        if cfg.whiten_advantages:
            advantages = ops.whiten(advantages, grid.mask)
        stats.update(
            returns_mean=float((returns * grid.mask).sum() / grid.mask.sum()),
            values_mean=float((old_values * grid.mask).sum() / grid.mask.sum()),
            critic_only=float(self.iteration < cfg.critic_warmup),
        )
        targets = (grid, old_logp, old_values, advantages.float(), returns.float())
        stats.update(
            self.run_epochs(
                len(trajectories),
                lambda rows: self._ppo_minibatch(batch, rows, *targets),
                ("loss", "value_loss", "value_clip_frac", "clip_frac"),
            )
        )
        stats["train_tokens"] = float(batch.tokens)
        return stats

    def _ppo_minibatch(
        self,
        batch: TokenBatch,
        rows: torch.Tensor,
        grid: TurnGrid,
        old_logp: torch.Tensor,
        old_values: torch.Tensor,
        advantages: torch.Tensor,
        returns: torch.Tensor,
    ) -> dict[str, float] | None:
        """One optimizer step of policy (after the warm-up) and critic over the episodes ``rows``."""
        cfg = self.cfg
        train_policy = self.iteration >= cfg.critic_warmup
        self.optimizer.zero_grad(set_to_none=True)
        self.value_optimizer.zero_grad(set_to_none=True)
        turns = float(grid.mask[rows].sum().clamp(min=1))
        totals = dict.fromkeys(("loss", "value_loss", "value_clip_frac", "clip_frac", "traj_k1"), 0.0)
        for start in range(0, len(rows), cfg.micro_batch_size):
            micro = rows[start : start + cfg.micro_batch_size]
            sub = batch.select(micro)
            logp, _, values = self._score(sub, grid.positions[micro], policy_grad=train_policy)
            device = values.device
            turn_mask = grid.mask[micro].to(device)
            v_sum, v_clipped = clipped_value_loss(
                values, old_values[micro].to(device), returns[micro].to(device), turn_mask, cfg.value_clip
            )
            loss = cfg.value_coef * v_sum / turns
            totals["value_loss"] += float(v_sum.detach()) / turns
            totals["value_clip_frac"] += float(v_clipped) / turns
            if train_policy:
                mask = sub.loss_mask.to(device)
                turn_ids = sub.turn_ids.to(device).clamp(min=0)
                kl = None
                if self.reference is not None and cfg.kl_placement == "loss":
                    kl = ops.kl_estimate(logp, self._reference_logp(sub).to(device), cfg.kl_estimator, mask=mask)
                pg, st = ops.policy_loss(
                    logp,
                    old_logp[micro, : mask.shape[1]].to(device),
                    ops.broadcast_turns(advantages[micro].to(device), turn_ids, mask),
                    mask,
                    ratio_level=cfg.ratio_level,
                    turn_ids=turn_ids,
                    clip=cfg.clip,
                    agg=cfg.agg,
                    kl=kl,
                    kl_coef=cfg.kl_coef if kl is not None else 0.0,
                )
                # Accumulate micro-batch means into the minibatch mean (or LOOP's constant divisor).
                share = len(micro) / (cfg.minibatch_size if cfg.agg_divisor_minibatch else len(rows))
                loss = loss + pg * share
                totals["clip_frac"] += float(st["clip_frac"]) * share
                totals["traj_k1"] += float(st["traj_k1"]) * share
                if kl is not None:
                    totals["ref_kl"] = totals.get("ref_kl", 0.0) + float(st["kl_loss"]) * share
            if not torch.isfinite(loss):
                self.optimizer.zero_grad(set_to_none=True)
                self.value_optimizer.zero_grad(set_to_none=True)
                return None
            loss.backward()
            totals["loss"] += float(loss.detach())
        norms = [torch.nn.utils.clip_grad_norm_(self.value_head.parameters(), cfg.max_grad_norm)]
        if train_policy:
            norms.append(torch.nn.utils.clip_grad_norm_(self.backend.trainable_parameters(), cfg.max_grad_norm))
        if not all(torch.isfinite(n) for n in norms):
            self.optimizer.zero_grad(set_to_none=True)
            self.value_optimizer.zero_grad(set_to_none=True)
            return None
        self.value_optimizer.step()
        if train_policy:
            self.optimizer.step()
        return totals

    # ------------------------------------------------------------------ checkpoints
    def save_state(self, directory: Path, iteration: int) -> None:
        """The shared checkpoint files, plus the value head and its optimizer (``value_head.pt``)."""
        super().save_state(directory, iteration)
        torch.save(
            {"value_head": self.value_head.state_dict(), "optimizer": self.value_optimizer.state_dict()},
            directory / "value_head.pt",
        )

    def restore(self) -> int:
        """Load the latest checkpoint: policy and its optimizer (the shared code), then the value head."""
        done = super().restore()
        path = self.run.latest_checkpoint()
        if path is not None:
            saved = torch.load(path / "value_head.pt", map_location=self.backend.device, weights_only=False)
            self.value_head.load_state_dict(saved["value_head"])
            self.value_optimizer.load_state_dict(saved["optimizer"])
        return done
