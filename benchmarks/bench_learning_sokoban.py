"""Held-out Sokoban success of the default model before and after the default LOOP run, over several seeds.

Runs the README's main job, ``agentgym train --env sokoban --trainer loop``, once per seed (``--set seed=S``;
everything else default, or what ``--set`` adds), each in its own process, then reads every run's
``metrics.jsonl`` and prints, per seed and pooled:

* held-out success (dev and test splits, the trainer's own evaluation) at the start and at the end;
* a one-sided exact test that end > start on the pooled test episodes (Fisher's exact test on the 2x2 table);
* the first evaluation step at which dev success reached twice the starting rate, and the minutes it took.

Usage::

    .venv/bin/python benchmarks/bench_learning_sokoban.py --seeds 0 1 2 --out runs/bench-learning
    .venv/bin/python benchmarks/bench_learning_sokoban.py --report-only --out runs/bench-learning
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


def fisher_one_sided(a_succ: int, a_n: int, b_succ: int, b_n: int) -> float:
    """P(end successes >= observed | margins) under H0 "same rate": hypergeometric upper tail."""
    total_succ, n = a_succ + b_succ, a_n + b_n

    def pmf(k: int) -> float:
        return math.comb(b_n, k) * math.comb(a_n, total_succ - k) / math.comb(n, total_succ)

    return sum(pmf(k) for k in range(b_succ, min(b_n, total_succ) + 1) if 0 <= total_succ - k <= a_n)


def read_run(path: Path) -> dict:
    """Start/end success per split, dev curve and wall minutes of one run directory."""
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines() if line.strip()]
    config = (path / "config.yaml").read_text()
    eval_tasks = next(int(line.split(":")[1]) for line in config.splitlines() if line.startswith("eval_tasks:"))
    start = next(r for r in rows if "eval/test/success_rate" in r)
    end = [r for r in rows if "eval/test/success_rate" in r][-1]
    t0 = rows[0]["time"]  # logged right after the starting evaluation
    curve = [(r["step"], r["eval/dev/success_rate"], r["time"] - t0) for r in rows if "eval/dev/success_rate" in r]
    iterations = [r for r in rows if "iteration_s" in r]
    return {
        "n": eval_tasks,
        "dev": (start["eval/dev/success_rate"], end["eval/dev/success_rate"]),
        "test": (start["eval/test/success_rate"], end["eval/test/success_rate"]),
        "curve": curve,
        "iterations": len(iterations),
        "with_signal": sum(1 for r in iterations if not r.get("update_skipped_no_signal")),
        "train_success": [round(r.get("success_rate", 0.0), 2) for r in iterations],
        "minutes": (end["time"] - t0) / 60,
    }


def doubling(curve: list[tuple[int, float, float | None]]) -> str:
    """When dev success first reached twice its start (or 'not reached'; a start of 0 has no double)."""
    start = curve[0][1]
    for step, rate, seconds in curve[1:]:
        if rate >= max(2 * start, start + 1e-9) and rate > 0:
            when = f"step {step}" + (f" ({seconds / 60:.1f} min)" if seconds else "")
            return when if start > 0 else f"undefined (start 0; first success at {when})"
    return "not reached"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/bench-learning")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra --set KEY=VALUE")
    parser.add_argument("--report-only", action="store_true", help="only read existing runs")
    args = parser.parse_args()
    out = Path(args.out)
    agentgym = str(Path(sys.executable).parent / "agentgym")
    for seed in args.seeds:
        run = out / f"seed{seed}"
        if args.report_only or (run / "report.md").exists():
            continue
        cmd = [agentgym, "train", "--env", "sokoban", "--trainer", "loop", "--set", f"seed={seed}", "--out", str(run)]
        for item in args.overrides:
            cmd += ["--set", item]
        print("$", " ".join(cmd), flush=True)
        started = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        print(f"  seed {seed}: {(time.perf_counter() - started) / 60:.1f} min wall", flush=True)
    totals = {"dev": [0, 0, 0], "test": [0, 0, 0]}  # start successes, end successes, episodes
    print(f"{'seed':>4} {'dev start':>9} {'dev end':>8} {'test start':>10} {'test end':>9} {'its':>4} "
          f"{'signal':>6}  doubling (dev)")
    for seed in args.seeds:
        r = read_run(out / f"seed{seed}")
        for split in ("dev", "test"):
            a, b = r[split]
            totals[split][0] += round(a * r["n"])
            totals[split][1] += round(b * r["n"])
            totals[split][2] += r["n"]
        print(f"{seed:>4} {r['dev'][0]:>9.2f} {r['dev'][1]:>8.2f} {r['test'][0]:>10.2f} {r['test'][1]:>9.2f} "
              f"{r['iterations']:>4} {r['with_signal']:>6}  {doubling(r['curve'])}  {r['minutes']:.1f} min  "
              f"train success {r['train_success']}")
    for split, (a, b, n) in totals.items():
        p = fisher_one_sided(a, n, b, n)
        print(f"pooled {split}: {a}/{n} = {a / n:.1%} before -> {b}/{n} = {b / n:.1%} after; "
              f"one-sided Fisher p = {p:.3f}")


if __name__ == "__main__":
    main()
