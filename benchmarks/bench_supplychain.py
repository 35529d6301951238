"""HDPO against the reference policies of the inventory networks, and the speed of the env and the simulator.

Three learning comparisons, each on the same held-out test traces (common random numbers: every policy sees the same
demand), HDPO's orders rounded to integers as in the paper, the reference policies' orders not rounded:

1. one store, backlogged: HDPO vs the optimal base-stock level (newsvendor closed form);
2. one store, lost sales: HDPO vs the best capped base-stock policy (grid search with a large budget);
3. one warehouse + 10 stores, lost sales: HDPO (GNN) vs the best echelon/capped base-stock heuristic (coordinate
   search with a large budget).

Then: env steps per second (batch 1, through ``agentgym.make``) and the vectorised simulator's throughput in
periods x traces per second, with and without a backward pass. Prints one table per part and the wall time.

Usage (from the repository root)::

    nice .venv/bin/python benchmarks/bench_supplychain.py            # the full benchmark (about 10 minutes)
    nice .venv/bin/python benchmarks/bench_supplychain.py --quick    # smaller budgets, a smoke run
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import agentgym
from agentgym.config import load_config
from agentgym.runs import RunDir
from environments.supplychain import oracle
from environments.supplychain.demand import DemandModel, task_set_for
from environments.supplychain.settings import make_setting
from environments.supplychain.simulator import InventorySimulator, torch_threads
from trainers.hdpo import HDPOTrainer

#: (label, env id, env kwargs, HDPO overrides, reference search)
CASES = (
    ("one store, backlogged", "supplychain", {}, ["iterations=40"], "closed form"),
    ("one store, lost sales", "supplychain-lost", {}, ["iterations=40"], "capped base-stock"),
    (
        "1 warehouse + 10 stores, lost",
        "supplychain-warehouse",
        {"n_stores": 10},
        ["iterations=16", "train_samples=2048", "batch_size=256", "eval_every=2", "policy.kind=gnn"],
        "warehouse heuristic",
    ),
)


def run_hdpo(env_id: str, env_kwargs: dict[str, Any], overrides: list[str], workdir: Path) -> tuple[Any, float]:
    """Train HDPO with the given overrides; returns the trainer (best-dev parameters loaded) and the wall time."""
    kwargs = ", ".join(f"{k}: {v}" for k, v in env_kwargs.items())
    cfg = load_config(HDPOTrainer.Config, overrides=[f"env.id={env_id}", f"env.kwargs={{{kwargs}}}", *overrides])
    trainer = HDPOTrainer(cfg, RunDir(workdir / env_id, tensorboard=False))
    start = time.perf_counter()
    trainer.fit()
    wall = time.perf_counter() - start
    trainer.policy.load_state_dict(trainer.best_state)
    return trainer, wall


def reference(setting: Any, kind: str, budget: oracle.SearchBudget) -> tuple[oracle.LevelPolicy, str, float]:
    """The reference policy of a case, its description and the search time."""
    start = time.perf_counter()
    if kind == "closed form":
        solution = oracle.solve(setting)
    elif kind == "capped base-stock":
        solution = oracle.best_capped_base_stock(setting, budget)
    else:
        solution = oracle.best_warehouse_heuristic(setting, budget)
    return solution.policy, solution.method, time.perf_counter() - start


def learning(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    """The three HDPO-vs-reference comparisons."""
    rows = []
    budget = oracle.SearchBudget(traces=args.search_traces, periods=args.search_periods, warmup=200, rounds=5)
    for label, env_id, env_kwargs, overrides, kind in CASES:
        if args.quick:
            overrides = [*overrides, "iterations=4", "test_samples=256", "test_periods=200", "test_ignore_periods=50"]
        trainer, train_s = run_hdpo(env_id, env_kwargs, overrides, workdir)
        setting = trainer.setting
        policy, method, search_s = reference(setting, kind, budget)
        seeds = task_set_for(setting).tasks("test", n=args.test_traces)
        scenarios = DemandModel(setting).scenarios(seeds, args.test_periods, ["test"] * len(seeds))
        warmup = args.test_periods // 4
        with torch_threads(1):
            hdpo = trainer.policy_costs(scenarios, warmup)
            ref = oracle.policy_costs(setting, policy, scenarios, warmup=warmup)
            ref_rounded = oracle.policy_costs(setting, policy, scenarios, warmup=warmup, round_orders=True)
            jit = oracle.just_in_time_cost(setting, scenarios, warmup=warmup)
        diff = hdpo / ref - 1.0
        rows.append(
            {
                "case": label,
                "reference": method,
                "hdpo_policy": trainer.policy.kind,
                "hdpo_cost": float(hdpo.mean()),
                "reference_cost": float(ref.mean()),
                "reference_rounded_cost": float(ref_rounded.mean()),
                "jit_lower_bound": float(jit.mean()),
                "gap": float(hdpo.mean() / ref.mean() - 1.0),
                "gap_ci95": float(1.96 * diff.std(ddof=1) / np.sqrt(len(diff))),
                "hdpo_train_s": train_s,
                "iterations": int(trainer.run.metrics()[-1]["step"]),
                "search_s": search_s,
            }
        )
        print(_learning_row(rows[-1]), flush=True)
    return rows


def _learning_row(r: dict[str, Any]) -> str:
    return (
        f"| {r['case']} | {r['hdpo_policy']} | {r['hdpo_cost']:.4f} | {r['reference']} | {r['reference_cost']:.4f} "
        f"| {100 * r['gap']:+.2f}% ± {100 * r['gap_ci95']:.2f} | {r['reference_rounded_cost']:.4f} "
        f"| {r['jit_lower_bound']:.4f} | {r['iterations']} it, {r['hdpo_train_s']:.0f} s | {r['search_s']:.1f} s |"
    )


def env_speed(steps: int) -> list[dict[str, Any]]:
    """Env steps per second through ``agentgym.make`` (batch 1), with a constant valid order vector."""
    rows = []
    for env_id, kwargs in (("supplychain", {}), ("supplychain-warehouse", {"n_stores": 10})):
        for obs_mode in ("struct", "dict"):
            env = agentgym.make(env_id, obs_mode=obs_mode, **kwargs)
            action = np.full(env.action_space.shape, 3.0, dtype=np.float32)
            env.reset(seed=0)
            start = time.perf_counter()
            for _ in range(steps):
                *_, terminated, truncated, _ = env.step(action)
                if terminated or truncated:
                    env.reset()
            rate = steps / (time.perf_counter() - start)
            rows.append({"env": f"{env_id} {kwargs or ''}".strip(), "obs_mode": obs_mode, "steps_per_s": rate})
            print(f"| {rows[-1]['env']} | {obs_mode} | {rate:,.0f} |", flush=True)
    return rows


def simulator_speed(batches: tuple[int, ...], periods: int) -> list[dict[str, Any]]:
    """Periods x traces per second of the batched simulator under a base-stock policy (float32, 1 thread)."""
    rows = []
    for preset, kwargs in (("one_store_backlogged", {}), ("one_warehouse_lost", {"n_stores": 10})):
        setting = make_setting(preset, **kwargs)
        sim = InventorySimulator(setting, dtype=torch.float32)
        levels = torch.tensor([m * (lt + 2) for m, lt in zip(setting.demand_mean, setting.lead_times)])
        caps = torch.full((setting.n_stores,), float("inf"))
        echelon = torch.full((setting.n_upstream,), float(levels.sum() + 4 * sum(setting.demand_mean)))
        for batch in batches:
            scenarios = DemandModel(setting).scenarios(list(range(batch)), periods)
            for grad in (False, True):
                scale = torch.ones(1, requires_grad=grad)
                with torch_threads(1), torch.set_grad_enabled(grad):
                    start = time.perf_counter()
                    cost = sim.rollout(
                        lambda state, t: oracle.level_orders(state, levels * scale, caps, echelon),  # noqa: B023
                        sim.initial_state(scenarios),
                        sim.demand(scenarios),
                    )
                    if grad:
                        cost.total.sum().backward()
                    seconds = time.perf_counter() - start
                rate = batch * periods / seconds
                mode = "forward + backward" if grad else "forward"
                rows.append({"setting": setting.describe(), "batch": batch, "mode": mode, "period_traces_per_s": rate})
                print(f"| {preset} n={setting.n_stores} | {batch} | {mode} | {rate:,.0f} |", flush=True)
    return rows


def main() -> None:
    """Run the benchmark and print markdown tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small budgets (a smoke run)")
    parser.add_argument("--test-traces", type=int, default=4096, help="held-out traces per comparison")
    parser.add_argument("--test-periods", type=int, default=1000, help="periods per test trace (the first 1/4 ignored)")
    parser.add_argument("--search-traces", type=int, default=1024, help="traces of the reference policies' searches")
    parser.add_argument("--search-periods", type=int, default=600, help="periods of the searches (200 ignored)")
    parser.add_argument("--env-steps", type=int, default=20000, help="steps per env speed measurement")
    parser.add_argument("--json", default=None, help="also write every number to this JSON file")
    args = parser.parse_args()
    if args.quick:
        args.test_traces, args.test_periods, args.search_traces, args.search_periods = 256, 300, 128, 300
        args.env_steps = 2000
    started = time.perf_counter()
    print(
        "| case | HDPO policy | HDPO cost | reference | reference cost | HDPO vs reference (95% CI) "
        "| reference, rounded orders | JIT lower bound | HDPO training | reference search |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        results: dict[str, Any] = {"learning": learning(args, Path(tmp))}
    print("\n| env | obs_mode | env steps/s |\n|---|---|---|")
    results["env"] = env_speed(args.env_steps)
    print("\n| simulator | traces | mode | periods x traces / s |\n|---|---|---|---|")
    batches = (1, 256, 4096) if args.quick else (1, 256, 4096, 16384)
    results["simulator"] = simulator_speed(batches, 50 if args.quick else 100)
    results["wall_s"] = time.perf_counter() - started
    print(f"\nwall time {results['wall_s']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
