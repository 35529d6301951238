"""The shared policy-gradient trainer: collect groups of episodes, compute advantages, update with one loss.

Named trainers (loop, grpo, rloo) are this trainer with their own ``Config`` defaults and ``advantages``.
One iteration:

1. draw ``tasks_per_iteration`` training tasks and run each ``group_size`` times (same seed) with the current
   policy, in one rollout engine (one batched generate per turn across all live episodes);
2. one scalar advantage per episode from the group's returns (the named trainer's estimator); episodes with
   ``|A| < adv_threshold`` are dropped (they carry no gradient);
3. recompute the behaviour log-probs with the trainer's own model (never trust the sampler's numbers), then
   ``epochs`` passes of minibatches of the shared clipped policy-gradient loss (``agentgym.ops.policy_loss``), with
   gradient accumulation over micro-batches, grad-norm clipping and AdamW.

Every random choice derives from ``(seed, iteration)``, so ``--resume`` continues exactly where a checkpoint was
taken. Ctrl-C saves a checkpoint; a NaN loss or a batch without signal skips the step and logs it.
"""

from __future__ import annotations

import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from agentgym import ops
from agentgym.config import ConfigError, to_dict
from agentgym.registry import make
from agentgym.rollout import RolloutConfig, RolloutEngine
from agentgym.runs import RunDir, load_run
from agentgym.trajectory import Trajectory, TrajectoryWriter
from trainers.common import (
    Aggregation,
    RatioLevel,
    TokenBatch,
    TrainerConfig,
    build_backend,
    build_policy,
    is_neural,
    load_checkpoint_backend,
    load_optimizer,
    make_batch,
    save_policy,
    score,
)


@dataclass(frozen=True)
class PolicyGradientConfig(TrainerConfig):
    """Settings shared by the policy-gradient trainers (defaults suit a 2-core CPU and the default model)."""

    iterations: int = 30
    """Collect-then-update iterations (at most: ``time_budget_minutes`` usually ends a CPU run first)."""
    tasks_per_iteration: int = 6
    """Training tasks drawn per iteration."""
    group_size: int = 4
    """Episodes per task (same seed): K in leave-one-out / group-normalised advantages."""
    epochs: int = 1
    """Passes over each iteration's episodes."""
    clip_eps: float = 0.2
    """PPO ratio clip epsilon."""
    clip_kind: Literal["symmetric", "loop"] = "symmetric"
    """'symmetric': [1-eps, 1+eps]; 'loop': [1/(1+eps), 1+eps]."""
    clip_eps_high: float | None = None
    """Upper epsilon for an asymmetric range (clip-higher); None: same as clip_eps."""
    ratio_level: RatioLevel = "token"
    """Importance ratio per token, per turn, or per trajectory."""
    agg: Aggregation = "seq-mean-token-mean"
    """How per-token losses are averaged."""
    agg_divisor_minibatch: bool = False
    """Divide each minibatch's summed sequence losses by minibatch_size even when rows were dropped (LOOP)."""
    adv_threshold: float = 0.0
    """Drop episodes whose |advantage| is below this (they carry no gradient)."""
    kl_coef: float = 0.0
    """Weight of a KL penalty to the reference model: the one the iterations start from (after a warm start, the
    warm-started model, kept in the run's ``reference/``); 0 keeps no reference copy in memory."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    """KL estimator when kl_coef > 0."""
    kl_placement: Literal["loss", "reward"] = "loss"
    """Add the KL to the loss, or subtract it from the token rewards."""
    reward_scale: float = 1.0
    """Rewards are multiplied by this before advantages and value targets (e.g. 1e-3 for the vertiport env's
    profits in currency units, so a critic's targets are O(10) and its value clip is meaningful)."""
    divergence_stop: float | None = 20.0
    """Stop an iteration's updates when the k1 divergence from the behaviour policy exceeds this (None: never)."""
    warmup_demos: int = 0
    """A supervised warm start before the first iteration: fine-tune on the env oracle's demonstrations of this
    many training tasks (as ``--trainer sft``), ``warmup_epochs`` epochs, then run the iterations from there.
    Held-out dev and test success are evaluated after it too, so a run reports both stages. 0: none."""
    warmup_epochs: int = 2
    """Epochs of the warm start (each is one step of the run, before the iterations)."""
    warmup_lr: float = 5e-4
    """AdamW learning rate of the warm start (its own optimizer; the iterations use ``lr``)."""

    oracle_starts_supported: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("iterations", "tasks_per_iteration", "group_size", "epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1.")
        if not (self.reward_scale > 0 and math.isfinite(self.reward_scale)):
            raise ConfigError(f"reward_scale={self.reward_scale} must be a positive finite number.")
        if not 0 < self.clip_eps < 1:
            raise ConfigError(f"clip_eps={self.clip_eps} must be in (0, 1).")
        if self.warmup_demos < 0 or self.warmup_epochs < 1:
            raise ConfigError(
                f"warmup_demos={self.warmup_demos}, warmup_epochs={self.warmup_epochs}: the demonstrations must be "
                ">= 0 (0: no warm start) and the epochs >= 1."
            )
        if not (self.warmup_lr > 0 and math.isfinite(self.warmup_lr)):
            raise ConfigError(f"warmup_lr={self.warmup_lr} must be a positive number.")

    @property
    def clip(self) -> tuple[float, float]:
        """The ratio clip range."""
        if self.clip_eps_high is not None:
            return (1 - self.clip_eps, 1 + self.clip_eps_high)
        return ops.clip_range(self.clip_eps, kind=self.clip_kind)

    @property
    def episodes_per_iteration(self) -> int:
        """Episodes collected per iteration."""
        return self.tasks_per_iteration * self.group_size


class PolicyGradientTrainer:
    """Trains a policy (an LLM or a neural network) with clipped policy gradients (see the module docstring)."""

    Config: ClassVar[type] = PolicyGradientConfig
    name: ClassVar[str] = "pg"
    stage_name: ClassVar[str] = "warmup"
    """The supervised first stage's name: prefix of its metrics, label of the evaluation after it, checkpoint file."""

    def __init__(self, config: PolicyGradientConfig, run: RunDir, *, backend: Any = None) -> None:
        self.cfg = config
        self.run = run
        torch.manual_seed(config.seed)
        self.backend = backend if backend is not None else build_backend(config.policy, env=config.env)
        self.optimizer = torch.optim.AdamW(
            self.backend.trainable_parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        # The KL reference is the model the RL iterations start from: the initial one, or after a supervised first
        # stage (warm start, GLAD) the model at its end, copied when the first iteration begins (``_ensure_reference``).
        self.reference = self._reference_model() if self.needs_reference() and not self.warmup_steps else None
        self.env_id = make(config.env.id, **config.env.kwargs).spec_id
        if config.env.oracle_starts > 0:
            self.make_training_env()  # an env without an oracle or state copying fails here, not mid-run
        self.iteration = 0
        self._warmup: Any = None  # the first stage's SFT trainer (over this backend) and its sequences, while used
        self._warmup_batch: TokenBatch | None = None
        self._warmup_optimizer_state: dict[str, Any] | None = None

    def needs_reference(self) -> bool:
        """Whether a frozen copy of the initial model is kept (only for a KL penalty)."""
        return self.cfg.kl_coef > 0

    # ------------------------------------------------------------------ hooks for named trainers
    def advantages(self, returns: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
        """One advantage per episode from its group's returns (named trainers override)."""
        return ops.group_normalized(returns, group_ids, std_normalize=True)

    # ------------------------------------------------------------------ collection
    def make_env(self) -> Any:
        """A fresh training env."""
        return make(self.cfg.env.id, **self.cfg.env.kwargs)

    def make_training_env(self) -> Any:
        """A fresh env for collection: ``make_env()``, wrapped in ``OracleStarts`` when ``env.oracle_starts`` > 0."""
        env = self.make_env()
        if self.cfg.env.oracle_starts == 0:
            return env
        from agentgym.curriculum import OracleStarts

        try:
            return OracleStarts(env, self.cfg.env.oracle_starts)
        except ValueError as exc:
            raise ConfigError(f"env.oracle_starts={self.cfg.env.oracle_starts}: {exc}") from None

    def collect(self, iteration: int) -> list[Trajectory]:
        """Run ``tasks_per_iteration`` training tasks ``group_size`` times each with the current policy."""
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, iteration, 1])
        task_set = self.make_env().unwrapped.task_set
        jobs = [(task_set.sample("train", rng), int(rng.integers(2**31))) for _ in range(cfg.tasks_per_iteration)]
        engine = RolloutEngine(
            self.make_training_env,
            build_policy(self.backend, cfg.policy),
            RolloutConfig(num_envs=cfg.num_envs, group_size=cfg.group_size, max_turns=cfg.env.max_turns),
            env_id=self.env_id,
            policy_name=f"{self.name}@{iteration}",
        )
        self.backend.model.eval()
        with torch.no_grad():
            trajectories = engine.run(jobs, seed=int(rng.integers(2**31)))
        engine.close()
        self.last_generate_s = engine.generate_s
        return trajectories

    # ------------------------------------------------------------------ update
    def update(self, trajectories: list[Trajectory]) -> dict[str, float]:
        """Behaviour log-probs, (KL-in-reward), advantages, filtering and the minibatch updates of one iteration."""
        cfg = self.cfg
        keys: dict[tuple[str, int], int] = {}
        group_ids = torch.tensor([keys.setdefault((str(t.task), t.seed), len(keys)) for t in trajectories])
        returns = torch.tensor([t.episode_return for t in trajectories], dtype=torch.float64) * cfg.reward_scale
        batch = make_batch(self.backend, trajectories, history_turns=cfg.policy.history_turns)
        episode = batch.episode  # row -> trajectory (rows are single turns when prompts kept recent history only)
        stats: dict[str, float] = {}
        old_logp = None
        if self.reference is not None and cfg.kl_placement == "reward":
            # RLOO / REINFORCE++ style: the sequence KL to the reference is a cost in the return, so every
            # episode needs its behaviour log-probs before advantages exist.
            old_logp = self._behaviour_logprobs(batch)
            row_kl = (self._reference_kl(batch, old_logp) * batch.loss_mask).sum(1).double()
            seq_kl = torch.zeros(len(trajectories), dtype=torch.float64).index_add_(0, episode, row_kl)
            returns = returns - cfg.kl_coef * seq_kl
            stats["kl_in_reward"] = float(seq_kl.mean())
        adv = self.advantages(returns, group_ids).float()
        keep_eps = {i for i, a in enumerate(adv.tolist()) if abs(a) >= cfg.adv_threshold and a != 0}
        keep = [r for r in range(len(episode)) if int(episode[r]) in keep_eps]
        stats.update(adv_mean_abs=float(adv.abs().mean()), episodes_kept=float(len(keep_eps)))
        if not keep:
            return {**stats, "update_skipped_no_signal": 1.0}
        batch = batch.select(keep)
        # Only kept episodes are scored (dropped ones carry no gradient); the scoring matches the loss's.
        old_logp = self._behaviour_logprobs(batch) if old_logp is None else old_logp[keep, : batch.loss_mask.shape[1]]
        advantages = adv[batch.episode]
        weights = self.row_weights(batch)
        stats.update(
            self.run_epochs(
                len(keep),
                lambda rows: self._minibatch(batch, rows, advantages, old_logp, weights),
                ("loss", "clip_frac", "entropy", "approx_kl"),
            )
        )
        stats["train_tokens"] = float(batch.tokens)
        return stats

    def run_epochs(self, rows: int, minibatch: Any, keys: tuple[str, ...]) -> dict[str, float]:
        """``epochs`` shuffled passes of ``minibatch(row_indices) -> metrics | None`` over ``rows`` episodes.

        None from ``minibatch`` is a skipped (non-finite) step. Stops an epoch when the k1 divergence from the
        behaviour policy exceeds ``divergence_stop``, and forgets cached prompt keys/values after any update.
        """
        cfg = self.cfg
        logs: dict[str, list[float]] = {k: [] for k in keys}
        stats: dict[str, float] = {}
        steps = skipped = 0
        self.backend.model.train()
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.iteration)
        for _ in range(cfg.epochs):
            order = torch.randperm(rows, generator=gen)
            for start in range(0, rows, cfg.minibatch_size):
                result = minibatch(order[start : start + cfg.minibatch_size])
                if result is None:
                    skipped += 1
                    continue
                steps += 1
                for key in logs:
                    logs[key].append(result[key])
                if "ref_kl" in result:  # the KL-in-loss term to the reference, where one is kept
                    logs.setdefault("ref_kl", []).append(result["ref_kl"])
                if cfg.divergence_stop is not None and result["traj_k1"] > cfg.divergence_stop:
                    stats["divergence_stop"] = 1.0
                    break
        if steps:  # cached prompt keys/values belong to the old weights
            self.backend.clear_prefix_cache()
        stats.update({k: float(np.mean(v)) if v else 0.0 for k, v in logs.items()})
        stats.update(optimizer_steps=float(steps), skipped_nonfinite_steps=float(skipped))
        return stats

    def _behaviour_logprobs(self, batch: TokenBatch) -> torch.Tensor:
        """Log-probs of the sampled tokens under the pre-update model, scored exactly like the loss scores them."""
        self.backend.model.eval()
        parts = []
        chunk = 4 * self.cfg.micro_batch_size  # no activations are kept, so larger batches fit
        with torch.no_grad():
            for start in range(0, batch.loss_mask.shape[0], chunk):
                rows = list(range(start, min(start + chunk, batch.loss_mask.shape[0])))
                logp, _ = score(self.backend, batch.select(rows), temperature=self.cfg.policy.temperature)
                parts.append(torch.nn.functional.pad(logp.float().cpu(), (0, batch.loss_mask.shape[1] - logp.shape[1])))
        return torch.cat(parts)

    def row_weights(self, batch: TokenBatch) -> torch.Tensor | None:
        """Weights that make ``seq-mean-token-mean`` a mean per episode when episodes are split into turn rows.

        ``ops.episode_weights`` over the batch's rows (see there why: without them an episode weighs as many times as
        it has turns, and failed episodes run longest). None when rows are whole episodes or the mode has no
        per-sequence mean.
        """
        if self.cfg.agg != "seq-mean-token-mean" or len(torch.unique(batch.episode)) == len(batch.episode):
            return None
        valid = batch.loss_mask > 0
        if self.cfg.ratio_level == "token":
            units = valid.sum(1)
        elif self.cfg.ratio_level == "turn":
            units = torch.tensor([len(torch.unique(batch.turn_ids[r][valid[r]])) for r in range(len(valid))])
        else:  # one trajectory ratio per row
            units = valid.any(1).long()
        return ops.episode_weights(batch.episode, units)

    def _minibatch(
        self,
        batch: TokenBatch,
        rows: torch.Tensor,
        advantages: torch.Tensor,
        old_logp: torch.Tensor,
        weights: torch.Tensor | None = None,
    ) -> dict[str, float] | None:
        cfg = self.cfg
        self.optimizer.zero_grad(set_to_none=True)
        divisor = float(cfg.minibatch_size) if cfg.agg_divisor_minibatch else float(len(rows))
        totals = {"loss": 0.0, "clip_frac": 0.0, "entropy": 0.0, "approx_kl": 0.0, "traj_k1": 0.0}
        for start in range(0, len(rows), cfg.micro_batch_size):
            micro = rows[start : start + cfg.micro_batch_size]
            sub = batch.select(micro)
            width = sub.loss_mask.shape[1]
            logp, entropy = score(self.backend, sub, temperature=cfg.policy.temperature)
            device = logp.device
            mask = sub.loss_mask.to(device)
            adv_tokens = ops.broadcast(advantages[micro].to(device), mask)
            kl = None
            if self.reference is not None and cfg.kl_placement == "loss":
                kl = ops.kl_estimate(logp, self._reference_logp(sub).to(device), cfg.kl_estimator, mask=mask)
            # Each micro-batch's loss is a mean over its sequences; weight it by its share of the minibatch so
            # accumulation gives the minibatch mean (or LOOP's constant divisor).
            loss, st = ops.policy_loss(
                logp,
                old_logp[micro, :width].to(device),
                adv_tokens,
                mask,
                ratio_level=cfg.ratio_level,
                turn_ids=sub.turn_ids.to(device).clamp(min=0),
                clip=cfg.clip,
                agg=cfg.agg,
                seq_weights=None if weights is None else weights[micro].to(device),
                kl=kl,
                kl_coef=cfg.kl_coef,
            )
            scaled = loss * (len(micro) / divisor)
            if not torch.isfinite(scaled):
                self.optimizer.zero_grad(set_to_none=True)
                return None
            scaled.backward()
            share = len(micro) / len(rows)
            totals["loss"] += float(scaled.detach())
            totals["clip_frac"] += float(st["clip_frac"]) * share
            totals["entropy"] += float((entropy.detach() * mask).sum() / mask.sum().clamp(min=1)) * share
            totals["approx_kl"] += float(st["approx_kl_k3"]) * share
            totals["traj_k1"] += float(st["traj_k1"]) * share
            if kl is not None:
                totals["ref_kl"] = totals.get("ref_kl", 0.0) + float(st["kl_loss"]) * share
        norm = torch.nn.utils.clip_grad_norm_(self.backend.trainable_parameters(), cfg.max_grad_norm)
        if not torch.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.optimizer.step()
        return totals

    # ------------------------------------------------------------------ KL to a reference
    def _reference_model(self) -> Any:
        import copy

        return _frozen(copy.deepcopy(self.backend))

    def _ensure_reference(self, step: int) -> None:
        """After a supervised first stage, the KL reference is the model at its end (step ``warmup_steps``).

        The first RL step copies the current model and saves it in the run directory (``reference/policy``), so a
        run resumed later in the RL stage penalises the distance to the same model, not to its latest checkpoint.
        """
        if self.reference is not None or not self.needs_reference():
            return
        directory = self.run.path / "reference"
        if (directory / "policy").is_dir():
            ref = load_checkpoint_backend(self.cfg.policy, directory, self.cfg.env)
        elif step == self.warmup_steps:
            ref = self._reference_model()
            tmp = self.run.path / ".reference.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            ref.save(tmp / "policy")
            tmp.rename(directory)
        else:
            raise ConfigError(
                f"kl_coef={self.cfg.kl_coef}: the KL reference is the model at the end of the "
                f"{self.stage_name} stage (step {self.warmup_steps}), but this run is resumed at step {step} and "
                f"its RL steps ran without kl_coef, so that model was not kept ({directory} is missing). Start a new "
                f"RL run from it with --set policy.weights=RUN_DIR, or resume with kl_coef=0."
            )
        self.reference = _frozen(ref)

    def _reference_logp(self, sub: TokenBatch) -> torch.Tensor:
        with torch.no_grad():
            return score(self.reference, sub, temperature=self.cfg.policy.temperature)[0]

    def _reference_kl(self, batch: TokenBatch, logp: torch.Tensor) -> torch.Tensor:
        """Per-token KL of the behaviour policy to the reference, ``[B, T-1]``, for KL-in-reward."""
        parts = []
        for start in range(0, batch.loss_mask.shape[0], self.cfg.micro_batch_size):
            rows = list(range(start, min(start + self.cfg.micro_batch_size, batch.loss_mask.shape[0])))
            sub = batch.select(rows)
            ref = self._reference_logp(sub).float().cpu()
            width = ref.shape[1]
            kl = ops.kl_estimate(logp[rows, :width], ref, self.cfg.kl_estimator, mask=sub.loss_mask)
            parts.append(torch.nn.functional.pad(kl, (0, batch.loss_mask.shape[1] - width)))
        return torch.cat(parts)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self, iteration: int) -> None:
        """Save policy, optimizer and progress after ``iteration`` steps (mid warm start, its optimizer too)."""
        state = {
            "iteration": iteration,
            "trainer": self.name,
            "python_random": random.getstate()[1][0],
            "torch_rng": torch.get_rng_state().tolist(),
        }
        self.run.save_checkpoint(iteration, lambda directory: self.save_state(directory, iteration), state)

    def save_state(self, directory: Path, iteration: int) -> None:
        """Write the checkpoint's files after ``iteration`` steps; trainers with more state add theirs.

        Policy and optimizer, and mid first stage that stage's optimizer (``warmup_optimizer.pt``, ``glad_...``).
        """
        save_policy(self.backend, self.optimizer, directory)
        if self._warmup is not None and iteration < self.warmup_steps:
            torch.save(self._warmup.optimizer.state_dict(), directory / f"{self.stage_name}_optimizer.pt")

    def restore(self) -> int:
        """Load the run's latest checkpoint (model, optimizer, RNG); returns the iterations already done."""
        import json

        self._warmup, self._warmup_batch = None, None  # they hold the backend that restoring replaces
        path = self.run.latest_checkpoint()
        if path is None:
            return 0
        state = json.loads((path / "trainer_state.json").read_text())
        if (path / f"{self.stage_name}_optimizer.pt").is_file():
            self._warmup_optimizer_state = torch.load(path / f"{self.stage_name}_optimizer.pt", weights_only=False)
        if self.cfg.policy.lora and not is_neural(self.backend):
            self.backend.load_adapter(path / "policy")
        else:
            self.backend = load_checkpoint_backend(self.cfg.policy, path, self.cfg.env)
        self.optimizer = torch.optim.AdamW(
            self.backend.trainable_parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay
        )
        load_optimizer(self.optimizer, path)
        self.backend.clear_prefix_cache()
        torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
        self.run.truncate_metrics(int(state["iteration"]))
        return int(state["iteration"])

    @classmethod
    def policy_from_run(cls, run_dir: str | Path, *, temperature: float | None = None, compile: bool = False) -> Any:
        """The policy of a run directory's latest checkpoint, with the run's prompt and sampling settings.

        ``compile``: a neural policy runs its inference through ``torch.compile`` (``compile_inference``).
        """
        cfg, checkpoint = load_run(run_dir, cls.Config)
        backend = load_checkpoint_backend(cfg.policy, checkpoint, cfg.env)
        if compile:
            if not is_neural(backend):
                raise ConfigError("compile=true applies to neural policies; an LLM run's speed is the backend's.")
            backend.model.compile_inference()
        return build_policy(
            backend,
            cfg.policy,
            temperature=getattr(cfg, "eval_temperature", None) if temperature is None else temperature,
        )

    def config_dict(self) -> dict[str, Any]:
        """The resolved config with the trainer's name."""
        return {"trainer": self.name, **to_dict(self.cfg)}

    def write_samples(self, iteration: int | str, trajectories: list[Trajectory], limit: int = 8) -> None:
        """Keep a few trajectories of each iteration (or of a stage's data) for inspection (``agentgym replay``)."""
        with TrajectoryWriter(self.run.path / "samples" / "train.jsonl") as writer:
            for t in trajectories[:limit]:
                t.policy = f"{self.name}@{iteration}"
                writer.write(t)

    def iteration_metrics(self, trajectories: list[Trajectory], started: float) -> dict[str, float]:
        """Rollout statistics of one iteration."""
        tokens = sum(t.response_tokens for t in trajectories)
        return {
            "return_mean": float(np.mean([t.episode_return for t in trajectories])),
            "success_rate": float(np.mean([t.success for t in trajectories])),
            **self._task_start_success(trajectories),
            "invalid_action_rate": float(np.mean([t.invalid_actions / max(t.steps, 1) for t in trajectories])),
            "steps_mean": float(np.mean([t.steps for t in trajectories])),
            "generated_tokens": float(tokens),
            "generate_tokens_per_s": tokens / max(self.last_generate_s, 1e-9),
            "iteration_s": time.perf_counter() - started,
        }

    def _task_start_success(self, trajectories: list[Trajectory]) -> dict[str, float]:
        """With oracle starts, the success rate of the episodes that began at their task's start, and their share."""
        if self.cfg.env.oracle_starts == 0:
            return {}
        from_start = [t.success for t in trajectories if t.start_moves == 0]
        stats = {"task_start_share": len(from_start) / max(len(trajectories), 1)}
        if from_start:
            stats["task_start_success_rate"] = float(np.mean(from_start))
        return stats

    # ------------------------------------------------------------------ evaluation and the loop
    def evaluate(self, split: str, label: str) -> dict[str, float]:
        """Held-out evaluation with the current model through ``agentgym eval``'s code; returns metrics."""
        from agentgym.evaluation import evaluate_policy

        cfg = self.cfg
        self.backend.model.eval()
        agent = build_policy(self.backend, cfg.policy, temperature=cfg.eval_temperature)
        samples = self.run.path / "samples" / f"eval-{split}-{label}.jsonl"
        samples.unlink(missing_ok=True)  # one evaluation per file: a resumed run's final one replaces the last's
        with torch.no_grad():
            summary, trajectories = evaluate_policy(
                cfg.env.id,
                agent,
                policy_name=f"{self.name}:{label}",
                episodes=cfg.eval_tasks,
                split=split,
                seed=cfg.seed + 10_000,
                env_kwargs=cfg.env.kwargs,
                rollout=RolloutConfig(num_envs=cfg.num_envs, max_turns=cfg.env.max_turns),
                trajectories_path=samples,
            )
        return {
            f"eval/{split}/success_rate": summary.success_rate,
            f"eval/{split}/return_mean": summary.mean_return,
            f"eval/{split}/invalid_action_rate": summary.invalid_action_rate,
            f"eval/{split}/steps_mean": summary.mean_steps,
        }

    @property
    def warmup_steps(self) -> int:
        """Steps of the supervised warm start (its epochs; 0 without one)."""
        return self.cfg.warmup_epochs if getattr(self.cfg, "warmup_demos", 0) else 0

    def total_steps(self) -> int:
        """How many training steps ``fit`` runs: the warm start's epochs, then the iterations (epochs for SFT)."""
        return self.warmup_steps + self.cfg.iterations

    def prepare(self) -> None:
        """Work done once before the first step (SFT builds its demonstrations here)."""

    def train_step(self, iteration: int) -> dict[str, float]:
        """A warm-start epoch while ``iteration < warmup_steps``, else one iteration: collect, update, keep samples.

        Iterations are numbered from the end of the warm start (task draws and sampling seeds depend on them).
        """
        if iteration < self.warmup_steps:
            return self.warmup_step(iteration)
        self._ensure_reference(iteration)
        iteration -= self.warmup_steps
        self.iteration = iteration
        started = time.perf_counter()
        trajectories = self.collect(iteration)
        metrics = self.iteration_metrics(trajectories, started)
        metrics.update(self.update(trajectories))
        metrics["iteration_s"] = time.perf_counter() - started
        self.write_samples(iteration, trajectories)
        return metrics

    def warmup_fields(self) -> tuple[dict[str, Any], dict[str, float]]:
        """The supervised first stage's ``stage_trainer`` fields, and metrics of building its data.

        Here the warm start: ``warmup_demos`` oracle demonstrations at ``warmup_lr``. ProAct's GLAD stage returns its
        search-chain file instead.
        """
        cfg = self.cfg
        fields = dict(demo_tasks=cfg.warmup_demos, epochs=cfg.warmup_epochs, lr=cfg.warmup_lr)
        fields.update(minibatch_size=8, micro_batch_size=8)
        return fields, {}

    def warmup_step(self, epoch: int) -> dict[str, float]:
        """One epoch of the supervised first stage; the first builds its SFT trainer (own AdamW) and sequences.

        Metrics, the evaluation after the stage and the optimizer's checkpoint file are named by ``stage_name``.
        """
        from trainers.sft import stage_trainer

        started = time.perf_counter()
        name = self.stage_name
        metrics: dict[str, float] = {}
        if self._warmup is None:
            fields, built = self.warmup_fields()
            metrics.update(built)
            self._warmup = stage_trainer(self.cfg, self.run, self.backend, self._warmup_optimizer_state, **fields)
            self._warmup_optimizer_state = None
        if self._warmup_batch is None:
            demos = self._warmup.demonstrations()
            self.write_samples(name, demos)  # labelled "<trainer>@<stage>"; iterations are "<trainer>@<n>"
            # As the SFT trainer: with truncated history each turn is its own row, with the prompt the policy sees.
            self._warmup_batch = make_batch(self.backend, demos, history_turns=self.cfg.policy.history_turns)
            metrics[f"{name}_demonstrations"] = float(len(demos))
            metrics[f"{name}_sequences"] = float(len(self._warmup_batch.episode))  # rows: episodes or turns
        stats = self._warmup.epoch(self._warmup_batch, epoch)
        metrics.update({f"{name}_{key}": value for key, value in stats.items()})
        metrics.update(
            {f"{name}_epoch": float(epoch + 1)},
            train_tokens=float(self._warmup_batch.loss_mask.sum()),
            iteration_s=time.perf_counter() - started,
        )
        if epoch + 1 >= self.warmup_steps:  # the stage is over: free its optimizer state and sequences
            self._warmup, self._warmup_batch = None, None
        return metrics

    def step_evaluation(self, done: int, total: int) -> dict[str, float]:
        """The held-out evaluation logged after step ``done`` of ``total``.

        Dev every ``eval_every`` steps, and dev and test at the end of a supervised first stage when iterations
        follow (labelled with ``stage_name``).
        """
        if done == self.warmup_steps > 0 and done < total:
            return {**self.evaluate("dev", self.stage_name), **self.evaluate("test", self.stage_name)}
        if self.cfg.eval_every and done % self.cfg.eval_every == 0 and done < total:
            return self.evaluate("dev", f"it{done}")
        return {}

    def fit(self, *, resume: bool = False, on_iteration: Any = None) -> dict[str, Any]:
        """Run ``total_steps()`` steps (continuing from the latest checkpoint when ``resume``) and evaluate."""
        cfg = self.cfg
        self.run.write_config(self.config_dict())
        self.prepare()
        done = self.restore() if resume else 0
        started_fit = time.perf_counter()
        if done == 0 and cfg.eval_start:
            self.run.log(0, {**self.evaluate("dev", "start"), **self.evaluate("test", "start")})
        total = self.total_steps()
        budget = getattr(cfg, "time_budget_minutes", None)
        first = done
        try:
            for iteration in range(first, total):
                elapsed = (time.perf_counter() - started_fit) / 60
                if budget is not None and elapsed > budget and iteration > first:
                    self.run.log(done, {"stopped_time_budget_minutes": elapsed})
                    break
                self.iteration = iteration
                metrics = self.train_step(iteration)
                done = iteration + 1
                metrics.update(self.step_evaluation(done, total))
                self.run.log(done, metrics)
                if done % cfg.checkpoint_every == 0 and done < total:
                    self.checkpoint(done)
                if on_iteration is not None:
                    on_iteration(done, metrics)
        except KeyboardInterrupt:
            self.checkpoint(done)
            raise
        self.checkpoint(done)
        final = {**self.evaluate("dev", "end"), **self.evaluate("test", "end")}
        self.run.log(done, final)
        return final


def _frozen(backend: Any) -> Any:
    """``backend`` in eval mode with no parameter requiring grad (a KL reference)."""
    for p in backend.model.parameters():
        p.requires_grad_(False)
    backend.model.eval()
    return backend
