"""MC-Critic accuracy and speed: estimates against exact values on tiny Sokoban, and time per estimate.

Accuracy (Sokoban, preset ``tiny``, step limit out of reach so that only the horizon ends a rollout):

* uniform-random rollout policy: the exact ``H``-step discounted value by dynamic programming over the reachable
  state graph (``agentgym.mc_critic.exact_random_value``), against MC estimates with ``M`` rollouts, repeated with
  ``--repeats`` different seeds: bias (mean estimate - exact), standard deviation over seeds, RMSE;
* oracle rollout policy: the discounted return of the solver's optimal plan from the state, against MC estimates.

Speed: seconds per ``V`` estimate (per state, cache off) for Sokoban and 2048 at each ``M``, and per ``Q`` table
(all four actions); 2048 states are taken along an expectimax game. Run with ``nice``::

    nice -n 10 .venv/bin/python benchmarks/bench_mc_critic.py
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from typing import Any

import numpy as np

from agentgym.mc_critic import EnvFactory, MCCritic, MCCriticConfig, exact_random_value, snapshot

MS = (1, 4, 16, 64, 256)


def sokoban_states(tasks: int) -> tuple[EnvFactory, list[tuple[int, Any]]]:
    make = EnvFactory("sokoban", {"preset": "tiny", "obs_mode": "struct", "max_steps": 100_000})
    env = make()
    out = []
    for task in env.unwrapped.task_set.tasks("train", tasks):
        env.reset(seed=0, options={"task": task})
        out.append((task, snapshot(env)))
    return make, out


def oracle_value(make: EnvFactory, state: Any, horizon: int, gamma: float) -> float:
    """Discounted return of the solver's plan from ``state``, cut at the horizon."""
    env = make()
    env.unwrapped.set_state(state)
    plan = env.unwrapped.optimal_plan(from_start=False).plan
    total = 0.0
    for k, action in enumerate(plan[:horizon]):
        total += gamma**k * env.step(action)[1]
    return total


def estimates(make: EnvFactory, state: Any, cfg: dict[str, Any], repeats: int) -> tuple[np.ndarray, float]:
    """``repeats`` estimates with seeds 0..repeats-1, and the mean seconds per estimate (rollouts only)."""
    values, seconds = [], 0.0
    for seed in range(repeats):
        critic = MCCritic(make, MCCriticConfig(seed=seed, cache=False, **cfg))
        started = time.perf_counter()
        values.append(critic.value(state))
        seconds += time.perf_counter() - started
        critic.close()
    return np.array(values), seconds / repeats


def accuracy(args: argparse.Namespace) -> None:
    make, states = sokoban_states(args.tasks)
    h, gamma = args.horizon, args.gamma
    print(f"\n### Sokoban tiny, H={h}, gamma={gamma}: bias and spread over {args.repeats} seeds\n")
    print("| task | policy | exact | M | mean estimate | bias ± its s.e. | std over seeds | RMSE | ms per estimate |")
    print("|---|---|---|---|---|---|---|---|---|")
    for task, state in states:
        exact = exact_random_value(make, state, horizon=h, gamma=gamma)
        for m in MS:
            vals, sec = estimates(make, state, {"rollouts": m, "horizon": h, "gamma": gamma}, args.repeats)
            rmse = float(np.sqrt(np.mean((vals - exact) ** 2)))
            sd = vals.std(ddof=1)
            print(f"| {task} | random | {exact:+.4f} | {m} | {vals.mean():+.4f} | {vals.mean() - exact:+.4f} ± "
                  f"{sd / np.sqrt(len(vals)):.4f} | {sd:.4f} | {rmse:.4f} | {1e3 * sec:.2f} |")
        best = oracle_value(make, state, h, gamma)
        for m in (1, 16):
            cfg = {"rollouts": m, "horizon": h, "gamma": gamma, "rollout_policy": "oracle"}
            vals, sec = estimates(make, state, cfg, min(args.repeats, 5))
            print(f"| {task} | oracle | {best:+.4f} | {m} | {vals.mean():+.4f} | {vals.mean() - best:+.2e} | "
                  f"{vals.std(ddof=1):.1e} | {abs(vals.mean() - best):.1e} | {1e3 * sec:.2f} |")


def game2048_states(count: int, every: int = 60) -> tuple[EnvFactory, list[tuple[int, Any]]]:
    """``count`` states of one expectimax game, ``every`` moves apart."""
    make = EnvFactory("2048", {"obs_mode": "struct"})
    env = make()
    env.reset(seed=0, options={"task": 1})
    out = []
    for step in range(count * every):
        if step % every == 0:
            out.append((step, snapshot(env)))
        env.step(env.unwrapped.oracle_action())
    return make, out


def speed(args: argparse.Namespace) -> None:
    print("\n### Time per estimate (one state, cache off)\n")
    print("| env | policy | H | gamma | M | ms per V estimate | us per rollout | ms per Q table (4 actions) |")
    print("|---|---|---|---|---|---|---|---|")
    sok_make, sok = sokoban_states(2)
    g_make, g = game2048_states(3)
    cases = [("Sokoban tiny", sok_make, [s for _, s in sok], 20, 0.95, "random"),
             ("2048 4x4", g_make, [s for _, s in g], 1000, 0.9, "random"),
             ("2048 4x4", g_make, [s for _, s in g], 200, 0.9, "random")]
    for name, make, states, h, gamma, policy in cases:
        for m in MS:
            critic = MCCritic(make, MCCriticConfig(rollouts=m, horizon=h, gamma=gamma, cache=False,
                                                   rollout_policy=policy))
            started = time.perf_counter()
            critic.values(states)
            per_v = (time.perf_counter() - started) / len(states)
            started = time.perf_counter()
            critic.q_table(states)
            per_q = (time.perf_counter() - started) / len(states)
            print(f"| {name} | {policy} | {h} | {gamma} | {m} | {1e3 * per_v:.2f} | {1e6 * per_v / m:.1f} | "
                  f"{1e3 * per_q:.2f} |")
    for name, make, states, h in (("Sokoban tiny", sok_make, [s for _, s in sok], 20),
                                  ("2048 4x4", g_make, [s for _, s in g], 20)):
        critic = MCCritic(make, MCCriticConfig(rollouts=1, horizon=h, cache=False, rollout_policy="oracle"))
        started = time.perf_counter()
        critic.values(states)
        per_v = (time.perf_counter() - started) / len(states)
        print(f"| {name} | oracle | {h} | 0.95 | 1 | {1e3 * per_v:.2f} | {1e6 * per_v:.1f} | - |")
    # Worker processes on the 2-core machine: 12 distinct states x M=256 of 2048 at H=200.
    states = [s for _, s in game2048_states(12, every=10)[1]]
    for workers in (0, 2):
        cfg = MCCriticConfig(rollouts=256, horizon=200, gamma=0.9, cache=False, workers=workers)
        with MCCritic(g_make, cfg) as critic:
            if workers:
                critic.values(states)  # start the worker processes (imports) outside the timer
            started = time.perf_counter()
            critic.values(states)
            took = time.perf_counter() - started
        print(f"\n2048, 12 states x M=256, H=200: workers={workers}: {took:.2f} s ({1e3 * took / 12:.1f} ms per state)")


def main() -> None:
    """Print the accuracy and speed tables (markdown)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=3, help="tiny Sokoban training tasks for the accuracy table")
    parser.add_argument("--repeats", type=int, default=50, help="seeds per (task, M)")
    parser.add_argument("--horizon", type=int, default=20)
    parser.add_argument("--gamma", type=float, default=0.95)
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}; python {platform.python_version()}")
    accuracy(args)
    speed(args)


if __name__ == "__main__":
    main()
