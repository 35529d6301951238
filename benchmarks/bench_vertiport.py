"""Vertiport env: simulation speed, daily profit of the baselines on held-out scenarios, and decision times.

1. Speed: steps per second of the centralised env (``agentgym/Vertiport-v0``, random allowed destinations; the
   policy's time is excluded) in ``struct`` and ``dict`` (with text) observation modes, on the default (8
   vertiports, 40 aircraft) and large (50, 500) presets, and of the PettingZoo ``ParallelEnv`` (a step = every
   aircraft's action).
2. Profit: mean daily profit of random, greedy and GA dispatch on the first ``--tasks`` test-split scenarios of the
   default preset. Every policy plays each scenario with the same env seed, and the env's randomness does not
   depend on the actions, so all policies face the same passengers, delays, weather and downtime.
3. Decision time per decision step: greedy; the GA's planning time amortised over the day's decisions; and a
   forward of the (untrained) ``VertiportGNNPolicy`` for one observation and per observation in a batch of 16.
   torch runs on one thread (on this shared 2-core machine two threads were slower and erratic).

Usage (from the repository root)::

    nice -n 10 .venv/bin/python benchmarks/bench_vertiport.py                  # everything, about 5 minutes
    nice -n 10 .venv/bin/python benchmarks/bench_vertiport.py --tasks 2 --ga-generations 4   # a quick look
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import numpy as np

from environments.vertiport import parallel_env
from environments.vertiport.baselines import VertiportGAPolicy, VertiportGreedyPolicy, VertiportRandomPolicy
from environments.vertiport.env import VertiportEnv
from environments.vertiport.oracle import random_choices


def env_steps_per_s(preset: str, obs_mode: str, steps: int) -> float:
    env = VertiportEnv(preset=preset, obs_mode=obs_mode)
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    elapsed = 0.0
    for _ in range(steps):
        action = random_choices(env.sim, rng, env.action_mask())
        start = time.perf_counter()
        _, _, terminated, truncated, _ = env.step(action)
        elapsed += time.perf_counter() - start
        if terminated or truncated:
            env.reset()
    return steps / elapsed


def parallel_steps_per_s(preset: str, steps: int) -> float:
    env = parallel_env(preset=preset)
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    elapsed = 0.0
    for _ in range(steps):
        actions = {}
        for agent in env.agents:
            allowed = np.flatnonzero(obs[agent]["action_mask"])
            actions[agent] = int(allowed[rng.integers(allowed.size)])
        start = time.perf_counter()
        obs, *_ = env.step(actions)
        elapsed += time.perf_counter() - start
        if not env.agents:
            obs, _ = env.reset()
    return steps / elapsed


def play_day(env: VertiportEnv, policy: Any, task: int, seed: int) -> dict[str, float]:
    obs, _ = env.reset(seed=seed, options={"task": task})
    rng = np.random.default_rng(seed)
    decisions, done, start = 0, False, time.perf_counter()
    while not done:
        action = policy.act([obs], envs=[env], rng=rng).actions[0]
        obs, _, terminated, truncated, info = env.step(action)
        decisions += 1
        done = terminated or truncated
    return {
        "profit": info["profit"],
        "passengers": info["passengers"],
        "unserved": info["unserved"],
        "seconds": time.perf_counter() - start,
        "decisions": decisions,
    }


def profits(tasks: int, ga_config: dict[str, Any]) -> dict[str, Any]:
    env = VertiportEnv(preset="default", obs_mode="struct")
    env.reset(seed=0)
    VertiportGreedyPolicy().act([None], envs=[env], rng=np.random.default_rng(0))  # load numba's compiled kernel
    test_tasks = env.task_set.tasks("test", tasks)
    out: dict[str, Any] = {"tasks": test_tasks}
    for name in ("random", "greedy", "ga"):
        rows = []
        policy: Any = {"random": VertiportRandomPolicy, "greedy": VertiportGreedyPolicy}.get(name)
        policy = VertiportGAPolicy(seed=0, **ga_config) if name == "ga" else policy()
        for i, task in enumerate(test_tasks):
            row = play_day(env, policy, task, seed=1000 + i)
            rows.append(row)
            print(f"  {name:6s} task {task}: profit {row['profit']:10.0f}  ({row['seconds']:.1f} s)", flush=True)
        decisions = sum(r["decisions"] for r in rows)
        summary = {
            "profit_mean": statistics.mean(r["profit"] for r in rows),
            "profit_std": statistics.stdev(r["profit"] for r in rows) if len(rows) > 1 else 0.0,
            "profits": [round(r["profit"]) for r in rows],
            "passengers_mean": statistics.mean(r["passengers"] for r in rows),
            "unserved_mean": statistics.mean(r["unserved"] for r in rows),
            "seconds_per_day": statistics.mean(r["seconds"] for r in rows),
            "decisions": decisions,
        }
        if name == "greedy":
            summary["ms_per_decision"] = 1000 * policy.decide_seconds / policy.decisions
        if name == "ga":
            summary["ms_per_decision"] = 1000 * policy.plan_seconds / policy.decisions
            summary["plan_seconds_per_day"] = policy.plan_seconds / len(rows)
        out[name] = summary
    return out


def gnn_forward_ms(repeats: int) -> dict[str, float]:
    import torch

    from policies.gnn.vertiport import VertiportGNNPolicy

    torch.set_num_threads(1)
    env = VertiportEnv(preset="default", obs_mode="struct")
    obs, _ = env.reset(seed=0)
    batch = []
    for _ in range(16):
        batch.append(obs)
        obs, *_ = env.step(env.oracle_action())
    policy = VertiportGNNPolicy.make(env).eval()
    result = {"parameters": sum(p.numel() for p in policy.parameters())}
    with torch.no_grad():
        for size in (1, 16):
            policy(batch[:size])  # warm-up
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                out = policy(batch[:size])
                out.sample(torch.Generator().manual_seed(0))
                best = min(best, time.perf_counter() - start)
            result[f"batch{size}_ms"] = 1000 * best
            result[f"batch{size}_ms_per_obs"] = 1000 * best / size
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000, help="env steps per speed measurement")
    parser.add_argument("--tasks", type=int, default=5, help="held-out test scenarios for the profit table")
    parser.add_argument("--ga-population", type=int, default=16)
    parser.add_argument("--ga-generations", type=int, default=10)
    parser.add_argument("--ga-futures", type=int, default=2)
    parser.add_argument("--json", type=str, default=None, help="also write the results to this JSON file")
    args = parser.parse_args()

    results: dict[str, Any] = {"speed": {}}
    print("speed (steps/s):", flush=True)
    for preset, steps in (("default", args.steps), ("large", max(args.steps // 10, 50))):
        for mode in ("struct", "dict"):
            sps = env_steps_per_s(preset, mode, steps)
            results["speed"][f"{preset}/{mode}"] = sps
            print(f"  centralised {preset:7s} obs_mode={mode:6s}: {sps:8.0f}", flush=True)
        sps = parallel_steps_per_s(preset, steps)
        results["speed"][f"{preset}/pettingzoo"] = sps
        print(f"  pettingzoo  {preset:7s}                : {sps:8.0f}", flush=True)

    print("daily profit on held-out test scenarios (default preset):", flush=True)
    ga_config = {"population": args.ga_population, "generations": args.ga_generations, "futures": args.ga_futures}
    results["profit"] = profits(args.tasks, ga_config)
    results["ga_config"] = ga_config
    results["gnn"] = gnn_forward_ms(repeats=20)

    p = results["profit"]
    print("\n| policy | mean daily profit | std | passengers | unserved | decision time (ms per step) |")
    print("|---|---|---|---|---|---|")
    print(
        f"| random | {p['random']['profit_mean']:.0f} | {p['random']['profit_std']:.0f} | "
        f"{p['random']['passengers_mean']:.0f} | {p['random']['unserved_mean']:.0f} | - |"
    )
    for name in ("greedy", "ga"):
        r = p[name]
        print(
            f"| {name} | {r['profit_mean']:.0f} | {r['profit_std']:.0f} | {r['passengers_mean']:.0f} | "
            f"{r['unserved_mean']:.0f} | {r['ms_per_decision']:.2f} |"
        )
    g = results["gnn"]
    print(
        f"| GNN forward (untrained, {g['parameters']} params) | - | - | - | - | "
        f"{g['batch1_ms']:.2f} (batch 1); {g['batch16_ms_per_obs']:.2f} per obs (batch 16) |"
    )
    print(f"\nper-task profits: {json.dumps({k: p[k]['profits'] for k in ('random', 'greedy', 'ga')})}")
    print(
        f"GA planning per day: {p['ga']['plan_seconds_per_day']:.1f} s; GA / GNN(batch 1) decision time: "
        f"{p['ga']['ms_per_decision'] / g['batch1_ms']:.0f}x"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
