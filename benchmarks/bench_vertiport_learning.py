"""The trained vertiport GNN against random, greedy and the GA planner on held-out test scenarios, over seeds.

For each seed, one ``agentgym train`` process clones a demonstrator into the default ``VertiportGNNPolicy``
(``--trainer sft --set demo_policy=...``: behaviour cloning on whole simulated days), and optionally others
improve the clone with PPO and with LOOP (``--trainer ppo|loop --set policy.weights=<clone>``). Then every
trained policy (greedy decoding, as ``agentgym eval`` plays a run) and every baseline play the same
``--episodes`` test scenarios (``agentgym.evaluation.evaluate``, seed 0), and the script prints per policy: mean
daily profit, ratio to random and to the GA, the mean paired difference to the GA over scenarios (with its
standard error), and decision time per step (ms, and how many times faster than the GA): with 8 scenarios
batched per policy call, and for trained policies also one scenario at a time (the first 2 scenarios, batch 1).

Usage::

    .venv/bin/python benchmarks/bench_vertiport_learning.py --seeds 0 1 2 --out runs/bench-vp
    .venv/bin/python benchmarks/bench_vertiport_learning.py --seeds 0 1 2 --ppo-minutes 30 --loop-minutes 30
    .venv/bin/python benchmarks/bench_vertiport_learning.py --seeds 0 1 2 --demo vertiport_ga --out runs/bench-vp-ga
    .venv/bin/python benchmarks/bench_vertiport_learning.py --report-only --seeds 0 1 2 --out runs/bench-vp
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINES = ("vertiport_random", "vertiport_greedy", "vertiport_ga")


def train(args: argparse.Namespace, seed: int) -> list[Path]:
    """The run directories of one seed (the clone, then its PPO run if asked), trained unless they exist."""
    out = Path(args.out)
    clone = out / f"bc-seed{seed}"
    sets = {
        "demo_policy": args.demo,
        "demo_tasks": args.demo_tasks,
        "epochs": args.epochs,
        "minibatch_size": 2,
        "micro_batch_size": 2,
        "lr": args.lr,
        "eval_every": 0,
        "time_budget_minutes": "null",
    }
    runs = [(clone, "sft", sets)]
    # Fine-tuning the clone: the settings of the runs in benchmarks/RESULTS.md (30 iterations of 18 simulated days).
    tuning = {"policy.weights": clone, "reward_scale": 0.001, "lr": 1e-4, "eval_temperature": 0, "eval_every": 5}
    if args.ppo_minutes > 0:
        ppo = {"value_clip": "null", "gamma": 0.99, "lam": 0.95, "critic_warmup": 2}
        runs.append((out / f"ppo-seed{seed}", "ppo", {**tuning, **ppo, "time_budget_minutes": args.ppo_minutes}))
    if args.loop_minutes > 0:
        runs.append((out / f"loop-seed{seed}", "loop", {**tuning, "time_budget_minutes": args.loop_minutes}))
    for run, trainer, values in runs:
        if (run / "report.md").is_file():
            continue
        flags = [part for key, value in values.items() for part in ("--set", f"{key}={value}")]
        command = [
            sys.executable,
            "-m",
            "agentgym.cli",
            "train",
            "--env",
            "vertiport",
            "--trainer",
            trainer,
            *flags,
            "--set",
            f"seed={seed}",
            "--set",
            "eval_tasks=8",
            "--out",
            str(run),
        ]
        print("$", " ".join(command[2:]), flush=True)
        started = time.perf_counter()
        subprocess.run(command, cwd=ROOT, check=True)
        print(f"  {run.name}: {(time.perf_counter() - started) / 60:.1f} min", flush=True)
    return [run for run, _, _ in runs]


def evaluate_all(
    policies: list[str], episodes: int, cache: Path, fresh: bool = False, compile: bool = False
) -> dict[str, dict]:
    """Per-scenario profits and decision time of each policy on the first ``episodes`` test scenarios.

    Results are cached in ``cache``; ``fresh`` evaluates every policy again (so all decision times come from one
    run, under the same machine load). ``compile``: trained policies run their inference through
    ``torch.compile``, compiled on a training-split day before the clock starts (cached under ``NAME+compile``).
    """

    from agentgym.evaluation import build_policy, evaluate_policy
    from agentgym.registry import make
    from agentgym.rollout import RolloutConfig

    results = json.loads(cache.read_text()) if cache.is_file() and not fresh else {}
    for name in policies:
        trained = name not in BASELINES
        key = f"{name}+compile" if compile and trained else name
        if key in results and len(results[key]["returns"]) == episodes:
            continue
        env = make("vertiport")
        agent = build_policy(name, env, **({"compile": True} if compile and trained else {}))
        if compile and trained:  # compile outside the timed evaluation: play training days at both batch sizes
            for batch, days in ((8, 8), (1, 2)):  # (graph sizes of 0 or 1 edges of a type recompile once each)
                evaluate_policy(
                    "vertiport", agent, policy_name=name, episodes=days, split="train", seed=1,
                    rollout=RolloutConfig(num_envs=batch),
                )  # fmt: skip
        summary, trajectories = evaluate_policy(
            "vertiport",
            agent,
            policy_name=name,
            episodes=episodes,
            split="test",
            seed=0,
            rollout=RolloutConfig(num_envs=8),
        )
        order = sorted(trajectories, key=lambda t: str(t.task))
        results[key] = {
            "tasks": [str(t.task) for t in order],
            "returns": [t.episode_return for t in order],
            "decision_ms": summary.decision_ms,
            "wall_s": summary.wall_s,
        }
        if trained:  # one scenario at a time: the latency of a single decision
            single, _ = evaluate_policy(
                "vertiport",
                agent,
                policy_name=name,
                episodes=2,
                split="test",
                seed=0,
                rollout=RolloutConfig(num_envs=1),
            )
            results[key]["decision_ms_batch1"] = single.decision_ms
        cache.write_text(json.dumps(results, indent=1))
        print(f"  evaluated {key}: {summary.mean_return:,.0f} ({summary.wall_s:.0f} s)", flush=True)
    return results


def report(results: dict[str, dict], trained: list[str], extra: list[str]) -> None:
    """The table described in the module docstring."""
    ga, rnd = results["vertiport_ga"], results["vertiport_random"]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    print(f"\n{len(ga['returns'])} test scenarios (seed 0), mean daily profit; decisions batched over 8 scenarios:")
    print(
        f"{'policy':<34}{'profit':>10}{'x random':>10}{'x GA':>8}{'vs GA (paired)':>22}{'ms/step':>9}{'GA/ours':>9}"
        f"{'ms batch 1':>12}{'GA/ours':>9}"
    )
    for name in [*BASELINES, *trained, *extra]:
        if f"{name}+compile" in results:
            name = f"{name}+compile"
        r = results[name]
        assert r["tasks"] == ga["tasks"], "every policy must play the same scenarios"
        diffs = [a - b for a, b in zip(r["returns"], ga["returns"])]
        se = math.sqrt(sum((d - mean(diffs)) ** 2 for d in diffs) / max(len(diffs) - 1, 1) / len(diffs))
        speed = ga["decision_ms"] / r["decision_ms"] if r["decision_ms"] > 0 else float("inf")
        print(
            f"{name:<34}{mean(r['returns']):>10,.0f}{mean(r['returns']) / mean(rnd['returns']):>10.2f}"
            f"{mean(r['returns']) / mean(ga['returns']):>8.3f}{mean(diffs):>+12,.0f} ± {se:>7,.0f}"
            f"{r['decision_ms']:>9.2f}{speed:>9.0f}"
            + (f"{single:>12.2f}{ga['decision_ms'] / single:>9.0f}" if (single := r.get("decision_ms_batch1")) else "")
        )
    kinds: dict[str, list[str]] = {}
    for name in trained:  # bc-seedS and ppo-seedS runs pool separately
        kinds.setdefault(Path(name).name.rsplit("-seed", 1)[0], []).append(name)
    for kind, names in kinds.items():
        rows = [results.get(f"{n}+compile", results.get(n)) for n in names]
        pooled = [mean([r["returns"][i] for r in rows]) for i in range(len(ga["returns"]))]
        beating = sum(mean(r["returns"]) >= mean(ga["returns"]) for r in rows)
        profit = mean(pooled)
        print(
            f"{kind} pooled over {len(names)} seeds: {profit:,.0f} ({profit / mean(ga['returns']):.3f} x GA, "
            f"{profit / mean(rnd['returns']):.2f} x random); seeds at or above the GA: {beating}/{len(names)}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--demo", default="vertiport_greedy", help="demonstrator (a registered policy or run dir)")
    parser.add_argument("--demo-tasks", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ppo-minutes", type=float, default=0.0, help="PPO after cloning, per seed (0: none)")
    parser.add_argument("--loop-minutes", type=float, default=0.0, help="LOOP after cloning, per seed (0: none)")
    parser.add_argument("--episodes", type=int, default=16, help="test scenarios every policy plays")
    parser.add_argument("--out", default="runs/bench-vp")
    parser.add_argument("--report-only", action="store_true", help="evaluate and report existing runs only")
    parser.add_argument("--extra", nargs="*", default=[], help="other run directories to evaluate alongside")
    parser.add_argument("--fresh", action="store_true", help="evaluate every policy again (ignore eval.json)")
    parser.add_argument("--compile", action="store_true", help="trained policies infer through torch.compile")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for seed in args.seeds:
        runs += train(args, seed) if not args.report_only else sorted(out.glob(f"*-seed{seed}"))
    trained = [str(r) for r in runs]
    results = evaluate_all(
        [*BASELINES, *trained, *args.extra], args.episodes, out / "eval.json", args.fresh, args.compile
    )
    report(results, trained, args.extra)


if __name__ == "__main__":
    main()
