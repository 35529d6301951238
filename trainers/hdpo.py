"""HDPO: pathwise policy gradients through the differentiable inventory simulator (Alvo, Russo, Kanoria, Lee).

One iteration is one epoch over the training scenarios (demand traces of train-split seeds, fixed at the start):

1. for each minibatch of ``batch_size`` scenarios, roll the current (deterministic) policy through the simulator
   for ``train_periods`` periods, with no exploration noise;
2. loss = the summed cost of every period, divided by ``batch_size x train_periods x n_stores`` (the average cost
   per period and store); backpropagate through the whole rollout (BPTT through the dynamics: no critic, no
   score-function estimator), clip the gradient norm, take an Adam step;
3. every ``eval_every`` iterations, evaluate on the dev scenarios with orders rounded to integers, reporting the
   cost after ``dev_ignore_periods`` warm-up periods, and keep the parameters with the best dev cost.

At the end the best-dev parameters are restored and evaluated on the test scenarios, next to the env's oracle
(``environments.supplychain.oracle``) and the just-in-time lower bound on the same traces. Everything random
derives from ``seed``, so ``--resume`` continues exactly; Ctrl-C saves a checkpoint.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from agentgym.config import ConfigError, to_dict
from agentgym.errors import AgentGymError
from agentgym.registry import make
from agentgym.runs import RunDir, load_run
from environments.supplychain.demand import Scenarios
from environments.supplychain.oracle import just_in_time_cost, policy_costs, solve
from environments.supplychain.simulator import InventorySimulator, torch_threads
from policies.gnn.inventory import InventoryActor, InventoryPolicy, NetworkSpec, build_inventory_policy


@dataclass(frozen=True)
class HDPOEnvSection:
    """Which supply-chain env (and setting) HDPO trains on."""

    id: str = "supplychain"
    """Env id or alias (set by --env); any agentgym/SupplyChain*-v0 id."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Setting overrides passed to the env (preset, n_stores, lead_time, ...; also --env-kwargs KEY=VALUE)."""


@dataclass(frozen=True)
class HDPOPolicySection:
    """The network HDPO trains."""

    kind: Literal["auto", "mlp", "gnn"] = "auto"
    """'mlp' (vanilla), 'gnn' (message passing, shared store head), 'auto' (gnn with several stores, else mlp)."""
    hidden: int = 32
    """Width of the hidden layers (node embedding width for the GNN)."""
    layers: int = 2
    """Hidden layers (message-passing rounds for the GNN)."""

    def __post_init__(self) -> None:
        if self.hidden < 1 or self.layers < 1:
            raise ConfigError(f"policy.hidden={self.hidden} and policy.layers={self.layers} must be >= 1.")


@dataclass(frozen=True)
class HDPOConfig:
    """HDPO settings; the defaults reach the one-store optimum within about 1% in about a minute on a 2-core CPU."""

    env: HDPOEnvSection = field(default_factory=HDPOEnvSection)
    """The env whose simulator is differentiated (its setting and demand model)."""
    policy: HDPOPolicySection = field(default_factory=HDPOPolicySection)
    """The network (kind, width, depth)."""
    iterations: int = 40
    """Epochs over the training scenarios (at most: time_budget_minutes may end a run first)."""
    train_samples: int = 4096
    """Training scenarios (demand traces of train-split seeds), fixed for the run."""
    batch_size: int = 512
    """Scenarios per gradient step."""
    train_periods: int = 50
    """Periods simulated (and backpropagated through) per training rollout."""
    train_ignore_periods: int = 30
    """Warm-up periods left out of the reported training cost (the loss uses every period)."""
    dev_samples: int = 2048
    """Dev scenarios for model selection."""
    dev_periods: int = 100
    """Periods per dev rollout."""
    dev_ignore_periods: int = 60
    """Warm-up periods left out of the dev cost."""
    test_samples: int = 2048
    """Test scenarios evaluated at the end (and before training)."""
    test_periods: int = 500
    """Periods per test rollout."""
    test_ignore_periods: int = 200
    """Warm-up periods left out of the test cost."""
    lr: float = 1e-2
    """Adam learning rate at the start (the paper uses 1e-3 over far more epochs; short CPU runs need more)."""
    lr_final_fraction: float = 0.1
    """Cosine decay of the learning rate to this fraction of lr at the last iteration (1: constant)."""
    max_grad_norm: float | None = 1.0
    """Gradient-norm clip (None: no clipping)."""
    round_actions: bool = True
    """Round orders to integers in dev/test evaluation (and in `agentgym eval`), as in the paper."""
    eval_every: int = 1
    """Evaluate on dev (and keep the best parameters) every N iterations."""
    checkpoint_every: int = 10
    """Checkpoint every N iterations (and always at the end and on Ctrl-C)."""
    success_margin: float = 0.05
    """A trace counts as a success when its cost is within this fraction of the oracle's on the same trace."""
    time_budget_minutes: float | None = 10.0
    """Start no new iteration after this many minutes; the final test evaluation still runs. None: no limit."""
    torch_threads: int | None = 1
    """Torch threads while training (1 suits a shared 2-core CPU; None: the process default)."""
    seed: int = 0
    """Seed of initialisation and minibatch order."""

    def __post_init__(self) -> None:
        for name in ("iterations", "train_samples", "batch_size", "dev_samples", "test_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1.")
        for split in ("train", "dev", "test"):
            periods, ignore = getattr(self, f"{split}_periods"), getattr(self, f"{split}_ignore_periods")
            if not 0 <= ignore < periods:
                raise ConfigError(
                    f"{split}_ignore_periods={ignore} must be in [0, {split}_periods={periods}); some periods must "
                    "count towards the reported cost."
                )
        if self.batch_size > self.train_samples:
            raise ConfigError(
                f"batch_size={self.batch_size} exceeds train_samples={self.train_samples}; lower batch_size or "
                "raise train_samples."
            )
        if self.lr <= 0 or not np.isfinite(self.lr):
            raise ConfigError(f"lr={self.lr} must be a positive number.")
        if not 0 < self.lr_final_fraction <= 1:
            raise ConfigError(f"lr_final_fraction={self.lr_final_fraction} must be in (0, 1].")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ConfigError(f"max_grad_norm={self.max_grad_norm} must be positive, or null for no clipping.")
        if self.eval_every < 1 or self.checkpoint_every < 1:
            raise ConfigError("eval_every and checkpoint_every must be >= 1.")


@dataclass
class _Split:
    """Scenarios of one split as simulator tensors, with the oracle's per-trace costs."""

    scenarios: Scenarios
    ignore: int
    oracle: np.ndarray


class HDPOTrainer:
    """Trains an inventory policy by differentiating through the simulator (see the module docstring).

    Args:
        config: the run's settings.
        run: the run directory (config, metrics, checkpoints, report).
    """

    Config: ClassVar[type] = HDPOConfig
    name: ClassVar[str] = "hdpo"

    def __init__(self, config: HDPOConfig, run: RunDir) -> None:
        self.cfg = config
        self.run = run
        env = make(config.env.id, **config.env.kwargs).unwrapped
        if not hasattr(env, "simulator") or not hasattr(env, "demand_model"):
            raise AgentGymError(
                f"HDPO needs a differentiable simulator; {config.env.id!r} has none. Train it on a supply-chain env "
                "(--env supplychain, supplychain-lost, supplychain-serial or supplychain-warehouse)."
            )
        self.env_id = env.spec_id if hasattr(env, "spec_id") else config.env.id
        self.setting = env.setting
        self.demand_model = env.demand_model
        self.task_set = env.task_set
        self.sim = InventorySimulator(self.setting, dtype=torch.float32)
        torch.manual_seed(config.seed)
        self.policy = self.build_policy(config, NetworkSpec.from_simulator(self.sim))
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.lr)
        self.best_state = copy.deepcopy(self.policy.state_dict())
        self.best_dev = float("inf")
        self.iteration = 0
        self._splits: dict[str, _Split] = {}

    @staticmethod
    def build_policy(config: HDPOConfig, spec: NetworkSpec) -> InventoryPolicy:
        """The network of ``config.policy`` ('auto': a GNN for several stores, else an MLP)."""
        section = config.policy
        kind = section.kind
        if kind == "auto":
            kind = "gnn" if spec.n_stores > 1 else "mlp"
        return build_inventory_policy(kind, spec, hidden=section.hidden, layers=section.layers)

    # ------------------------------------------------------------------ data
    def scenarios(self, split: str, samples: int, periods: int) -> Scenarios:
        """The first ``samples`` seeds of ``split`` (the same traces ``agentgym eval`` plays on that split)."""
        seeds = self.task_set.tasks(split, n=samples)
        return self.demand_model.scenarios(seeds, periods, [split] * len(seeds))

    def split(self, name: str) -> _Split:
        """Dev or test scenarios with the oracle's costs on them (built once)."""
        if name not in self._splits:
            cfg = self.cfg
            samples, periods, ignore = (
                (cfg.dev_samples, cfg.dev_periods, cfg.dev_ignore_periods)
                if name == "dev"
                else (cfg.test_samples, cfg.test_periods, cfg.test_ignore_periods)
            )
            scenarios = self.scenarios(name, samples, periods)
            oracle = policy_costs(self.setting, solve(self.setting).policy, scenarios, warmup=ignore)
            self._splits[name] = _Split(scenarios, ignore, oracle)
        return self._splits[name]

    # ------------------------------------------------------------------ training
    def train_epoch(self, iteration: int, train: Scenarios) -> dict[str, float]:
        """One pass over the training scenarios in seeded random minibatches; returns the epoch's metrics."""
        with torch_threads(self.cfg.torch_threads):
            return self._train_epoch(iteration, train)

    def _train_epoch(self, iteration: int, train: Scenarios) -> dict[str, float]:
        cfg = self.cfg
        self.policy.train()
        lr = self.learning_rate(iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + iteration))
        costs, losses, norms, skipped = [], [], [], 0
        for start in range(0, len(train) - cfg.batch_size + 1, cfg.batch_size):
            rows = order[start : start + cfg.batch_size].numpy()
            batch = Scenarios(train.store_inventory[rows], train.upstream_inventory[rows], train.demand[rows])
            result = self.sim.rollout(
                self.policy.sim_policy(),
                self.sim.initial_state(batch),
                self.sim.demand(batch),
                warmup=cfg.train_ignore_periods,
            )
            loss = result.total.mean() / (cfg.train_periods * self.setting.n_stores)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            params = list(self.policy.parameters())
            clip = cfg.max_grad_norm if cfg.max_grad_norm is not None else float("inf")
            norm = torch.nn.utils.clip_grad_norm_(params, clip)
            if not torch.isfinite(norm) or not torch.isfinite(loss):
                self.optimizer.zero_grad(set_to_none=True)
                skipped += 1
                continue
            self.optimizer.step()
            losses.append(float(loss.detach()))
            costs.append(float(result.reported.detach().mean()))
            norms.append(float(norm))
        mean = lambda xs: float(np.mean(xs)) if xs else float("nan")  # noqa: E731
        return {
            "loss": mean(losses),
            "train_cost": mean(costs),
            "return_mean": -mean(costs),
            "grad_norm": mean(norms),
            "lr": lr,
            "optimizer_steps": float(len(losses)),
            "skipped_nonfinite_steps": float(skipped),
        }

    def learning_rate(self, iteration: int) -> float:
        """The cosine-decayed learning rate of an iteration (a function of the iteration: resumes exactly)."""
        cfg = self.cfg
        progress = iteration / max(cfg.iterations - 1, 1)
        cosine = 0.5 * (1.0 + np.cos(np.pi * progress))
        return float(cfg.lr * (cfg.lr_final_fraction + (1.0 - cfg.lr_final_fraction) * cosine))

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def policy_costs(self, scenarios: Scenarios, ignore: int) -> np.ndarray:
        """``[N]`` cost per period and store of the current policy on each scenario (orders rounded if set)."""
        self.policy.eval()
        costs = []
        for start in range(0, len(scenarios), 4096):  # bounded memory for long test rollouts
            part = slice(start, start + 4096)
            batch = Scenarios(
                scenarios.store_inventory[part], scenarios.upstream_inventory[part], scenarios.demand[part]
            )
            result = self.sim.rollout(
                self.policy.sim_policy(),
                self.sim.initial_state(batch),
                self.sim.demand(batch),
                warmup=ignore,
                round_orders=self.cfg.round_actions,
            )
            costs.append(result.reported.double().numpy())
        return np.concatenate(costs)

    def evaluate(self, name: str) -> dict[str, float]:
        """Cost of the current parameters on ``name`` ("dev" or "test") next to the oracle's on the same traces."""
        with torch_threads(self.cfg.torch_threads):
            split = self.split(name)
            cost = self.policy_costs(split.scenarios, split.ignore)
        oracle = float(split.oracle.mean())
        success = cost <= split.oracle * (1 + self.cfg.success_margin) + 1e-9
        return {
            f"eval/{name}/cost": float(cost.mean()),
            f"eval/{name}/cost_sem": float(cost.std(ddof=1) / np.sqrt(len(cost))) if len(cost) > 1 else 0.0,
            f"eval/{name}/oracle_cost": oracle,
            f"eval/{name}/gap_vs_oracle": float(cost.mean()) / oracle - 1.0 if oracle > 0 else float("nan"),
            f"eval/{name}/success_rate": float(success.mean()),
            f"eval/{name}/return_mean": -float(cost.mean()),
        }

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self, iteration: int) -> None:
        """Save current and best parameters, optimizer and progress after ``iteration`` iterations."""

        def write(directory: Path) -> None:
            torch.save(self.policy.state_dict(), directory / "policy.pt")
            torch.save(self.best_state, directory / "best.pt")
            torch.save(self.optimizer.state_dict(), directory / "optimizer.pt")

        state = {
            "iteration": iteration,
            "trainer": self.name,
            "best_dev": self.best_dev,
            "policy_kind": self.policy.kind,
            "policy_settings": self.policy.settings(),
            "torch_rng": torch.get_rng_state().tolist(),
        }
        self.run.save_checkpoint(iteration, write, state)

    def restore(self) -> int:
        """Load the latest checkpoint (parameters, best-dev copy, optimizer, RNG); returns iterations done."""
        path = self.run.latest_checkpoint()
        if path is None:
            return 0
        state = json.loads((path / "trainer_state.json").read_text())
        self.policy.load_state_dict(torch.load(path / "policy.pt"))
        self.best_state = torch.load(path / "best.pt")
        self.optimizer.load_state_dict(torch.load(path / "optimizer.pt"))
        self.best_dev = float(state["best_dev"])
        torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
        self.run.truncate_metrics(int(state["iteration"]))
        return int(state["iteration"])

    @classmethod
    def policy_from_run(cls, run_dir: str | Path, *, temperature: float | None = None, **_: Any) -> InventoryActor:
        """The best-dev policy of a run's latest checkpoint, as a rollout policy for ``agentgym eval``.

        ``temperature`` is accepted for CLI compatibility and ignored: HDPO policies are deterministic.
        """
        del temperature
        cfg, checkpoint = load_run(run_dir, cls.Config)
        env = make(cfg.env.id, **cfg.env.kwargs).unwrapped
        policy = cls.build_policy(cfg, NetworkSpec.from_simulator(InventorySimulator(env.setting)))
        policy.load_state_dict(torch.load(checkpoint / "best.pt"))
        policy.eval()
        return InventoryActor(policy, round_orders=cfg.round_actions)

    def total_steps(self) -> int:
        """Training epochs the run does (the progress bar's length)."""
        return self.cfg.iterations

    def config_dict(self) -> dict[str, Any]:
        """The resolved config with the trainer's name."""
        return {"trainer": self.name, **to_dict(self.cfg)}

    # ------------------------------------------------------------------ the loop
    def fit(self, *, resume: bool = False, on_iteration: Any = None) -> dict[str, Any]:
        """Train for ``iterations`` epochs (continuing from the latest checkpoint when ``resume``), then test."""
        with torch_threads(self.cfg.torch_threads):
            return self._fit(resume, on_iteration)

    def _fit(self, resume: bool, on_iteration: Any) -> dict[str, Any]:
        cfg = self.cfg
        self.run.write_config(self.config_dict())
        done = self.restore() if resume else 0
        train = self.scenarios("train", cfg.train_samples, cfg.train_periods)
        started = time.perf_counter()
        if done == 0:
            self.run.log(0, {**self.evaluate("dev"), **self.evaluate("test")})
        dev_success, first = 0.0, done
        try:
            for iteration in range(first, cfg.iterations):
                elapsed = (time.perf_counter() - started) / 60
                if cfg.time_budget_minutes is not None and elapsed > cfg.time_budget_minutes and iteration > first:
                    self.run.log(iteration, {"stopped_time_budget_minutes": elapsed})
                    break
                self.iteration = iteration
                t0 = time.perf_counter()
                metrics = self.train_epoch(iteration, train)
                step = iteration + 1
                if step % cfg.eval_every == 0 or step == cfg.iterations:
                    metrics.update(self.evaluate("dev"))
                    dev_success = metrics["eval/dev/success_rate"]
                    if metrics["eval/dev/cost"] < self.best_dev:
                        self.best_dev = metrics["eval/dev/cost"]
                        self.best_state = copy.deepcopy(self.policy.state_dict())
                metrics.update(success_rate=dev_success, best_dev_cost=self.best_dev)
                metrics["iteration_s"] = time.perf_counter() - t0
                done = step
                self.run.log(done, metrics)
                if done % cfg.checkpoint_every == 0 and done < cfg.iterations:
                    self.checkpoint(done)
                if on_iteration is not None:
                    on_iteration(done, metrics)
        except KeyboardInterrupt:
            self.checkpoint(done)
            raise
        self.checkpoint(done)
        return self.finish(done)

    def finish(self, done: int) -> dict[str, Any]:
        """Test the best-dev parameters next to the oracle and the just-in-time bound; write ``summary.json``."""
        current = copy.deepcopy(self.policy.state_dict())
        self.policy.load_state_dict(self.best_state)
        final = self.evaluate("test")
        test = self.split("test")
        jit = just_in_time_cost(self.setting, test.scenarios, warmup=test.ignore)
        final["eval/test/jit_lower_bound"] = float(jit.mean())
        final["eval/dev/best_cost"] = self.best_dev
        self.policy.load_state_dict(current)
        self.run.log(done, final)
        oracle = solve(self.setting)
        summary = {
            "setting": self.setting.describe(),
            "policy": self.policy.kind,
            "iterations": done,
            "oracle": {"method": oracle.method, "policy": repr(oracle.policy)},
            **final,
        }
        (self.run.path / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
        return final
