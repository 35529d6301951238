"""Held-out Sokoban success of the default model before and after the default LOOP run, over several seeds.

Runs the README's main job, ``agentgym train --env sokoban --trainer loop``, once per seed (``--set seed=S``;
everything else default, or what ``--set`` adds), each in its own process, then reads every run's
``metrics.jsonl`` and prints, per seed and pooled:

* held-out success (dev and test splits, the trainer's own evaluation) at the start and at the end;
* a one-sided exact test that end > start on the pooled test episodes (Fisher's exact test on the 2x2 table);
* the first evaluation step at which dev success reached twice the starting rate, and the minutes it took;
* move quality, a finer measure than success on the same held-out episodes: the share of moves, made from a
  solvable unsolved position, that are on a shortest solution (the move-optimal distance to solved drops by one;
  breadth-first search per position), and the share of episodes that push a box into a deadlock; the pooled
  change from start to end gets a 95% interval from a bootstrap over episodes (moves within an episode are not
  independent).

Usage::

    .venv/bin/python benchmarks/bench_learning_sokoban.py --seeds 0 1 2 --out runs/bench-learning
    .venv/bin/python benchmarks/bench_learning_sokoban.py --report-only --out runs/bench-learning
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from environments.sokoban.env import SokobanEnv  # noqa: E402
from environments.sokoban.oracle import solve_moves  # noqa: E402
from environments.sokoban.xsb import Level, build_level  # noqa: E402


def fisher_one_sided(a_succ: int, a_n: int, b_succ: int, b_n: int) -> float:
    """P(end successes >= observed | margins) under H0 "same rate": hypergeometric upper tail."""
    total_succ, n = a_succ + b_succ, a_n + b_n

    def pmf(k: int) -> float:
        return math.comb(b_n, k) * math.comb(a_n, total_succ - k) / math.comb(n, total_succ)

    return sum(pmf(k) for k in range(b_succ, min(b_n, total_succ) + 1) if 0 <= total_succ - k <= a_n)


def read_run(path: Path) -> dict:
    """Held-out success per stage and split, dev curve and wall minutes of one run directory.

    The stages are the evaluations of dev and test together: "start", "warmup" (after a supervised warm start,
    when the run had one: ``warmup_demos`` > 0) and "end".
    """
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines() if line.strip()]
    config = (path / "config.yaml").read_text()
    eval_tasks = next(int(line.split(":")[1]) for line in config.splitlines() if line.startswith("eval_tasks:"))
    both = [r for r in rows if "eval/test/success_rate" in r]
    labels = ["start", "warmup", "end"] if len(both) == 3 else ["start", "end"]
    stages = {label: {split: r[f"eval/{split}/success_rate"] for split in ("dev", "test")} | {"time": r["time"]}
              for label, r in zip(labels, both)}
    t0 = rows[0]["time"]  # logged right after the starting evaluation
    curve = [(r["step"], r["eval/dev/success_rate"], r["time"] - t0) for r in rows if "eval/dev/success_rate" in r]
    iterations = [r for r in rows if "iteration_s" in r and "warmup_epoch" not in r]
    warmup = [r for r in rows if "warmup_epoch" in r]
    return {
        "n": eval_tasks,
        "stages": stages,
        "curve": curve,
        "iterations": len(iterations),
        "with_signal": sum(1 for r in iterations if not r.get("update_skipped_no_signal")),
        "train_success": [round(r.get("success_rate", 0.0), 2) for r in iterations],
        # With oracle starts (env.oracle_starts > 0), training success counts easier starts too: this is the
        # success of the episodes that began at their task's start.
        "train_task_start": [round(r["task_start_success_rate"], 2) for r in iterations
                             if "task_start_success_rate" in r],
        "warmup_minutes": sum(r["iteration_s"] for r in warmup) / 60,
        "loop_minutes": sum(r["iteration_s"] for r in iterations) / 60,
        "minutes": (both[-1]["time"] - t0) / 60,
    }


_PARSER = SokobanEnv(preset="tiny")


def parse_action(reply: str | None) -> int | None:
    """The action the env played for a recorded reply (a bare word, or a <think> chain then <answer>)."""
    return _PARSER.parse_action(reply or "")


def _grid(observation: str) -> Level:
    rows = []
    for line in observation.splitlines():
        if any(ch.isalpha() for ch in line):  # the offsets line or the legend: XSB rows have no letters
            break
        rows.append(line)
    return build_level(rows)


def _successor(level: Level, player: int, boxes: tuple[int, ...], action: int) -> tuple[int, tuple[int, ...]]:
    """The env's rule: step unless a wall is there; a box moves on when the cell beyond is free."""
    delta = (-level.width, level.width, -1, 1)[action]
    nxt = player + delta
    if level.walls[nxt]:
        return player, boxes
    if nxt in boxes:
        beyond = nxt + delta
        if level.walls[beyond] or beyond in boxes:
            return player, boxes
        return nxt, tuple(sorted(beyond if b == nxt else b for b in boxes))
    return nxt, boxes


def episode_moves(record: dict, cache: dict) -> tuple[list[tuple[bool, float]], bool]:
    """Per move from a solvable, unsolved position: (on a shortest solution, share of the four actions that
    are); and whether the episode pushed a box into a deadlock."""
    turns = record["turns"]
    level = _grid(turns[0]["observation"])

    def distance(player: int, boxes: tuple[int, ...]) -> int | None:
        key = (level.walls, level.targets, player, boxes)
        if key not in cache:
            result = solve_moves(level, boxes=boxes, player=player)
            cache[key] = result.moves if result.solved else None
        return cache[key]

    def on_path(here: int, state: tuple[int, tuple[int, ...]]) -> bool:
        after = distance(*state)
        return after is not None and after == here - 1

    player, boxes = level.player, tuple(level.boxes)
    moves, deadlocked = [], False
    for i, turn in enumerate(turns):
        action = parse_action(turn["action"])
        nxt = (player, boxes) if action is None else _successor(level, player, boxes, action)
        if i + 1 < len(turns):  # the replay must reproduce the next observation
            seen = _grid(turns[i + 1]["observation"])
            assert (seen.player, tuple(seen.boxes)) == nxt, f"replay diverged at turn {i + 1} of task {record['task']}"
        here = distance(player, boxes)
        if here:  # solvable and not yet solved
            share = sum(on_path(here, _successor(level, player, boxes, a)) for a in range(4)) / 4
            moves.append((on_path(here, nxt), share))
            deadlocked |= distance(*nxt) is None
        player, boxes = nxt
    return moves, deadlocked


def move_quality(run: Path, when: str) -> list[tuple[list[tuple[bool, float]], bool]]:
    """Per held-out episode (dev and test) at ``when`` ("start", "warmup", "end"): its moves and whether it
    deadlocked."""
    cache: dict = {}
    episodes = []
    for split in ("dev", "test"):
        path = run / "samples" / f"eval-{split}-{when}.jsonl"
        for line in path.read_text().splitlines():
            if line.strip():
                episodes.append(episode_moves(json.loads(line), cache))
    return episodes


def _rates(episodes: list) -> tuple[float, float, int, float]:
    """Shortest-solution share of moves, deadlocked share of episodes, moves, and the share a uniformly random
    choice would have had at the same positions."""
    moves = [m for ep, _ in episodes for m in ep]
    n = max(len(moves), 1)
    return (sum(o for o, _ in moves) / n, sum(d for _, d in episodes) / max(len(episodes), 1), len(moves),
            sum(u for _, u in moves) / n)


def bootstrap_difference(before: list, after: list, draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% interval of (after - before) shortest-solution share of moves, resampling episodes."""
    rng = random.Random(seed)
    diffs = []
    for _ in range(draws):
        b = [before[rng.randrange(len(before))] for _ in before]
        a = [after[rng.randrange(len(after))] for _ in after]
        diffs.append(_rates(a)[0] - _rates(b)[0])
    diffs.sort()
    return diffs[int(0.025 * draws)], diffs[int(0.975 * draws) - 1]


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
    runs = {seed: read_run(out / f"seed{seed}") for seed in args.seeds}
    labels = list(next(iter(runs.values()))["stages"])
    print("held-out success per seed (" + " -> ".join(labels) + "), training minutes (warm start + iterations)")
    for seed, r in runs.items():
        cells = "; ".join(
            f"{split} " + " -> ".join(f"{round(r['stages'][label][split] * r['n'])}/{r['n']}" for label in labels)
            for split in ("dev", "test")
        )
        print(f"  seed {seed}: {cells}; {r['iterations']} iterations ({r['with_signal']} with signal); "
              f"{r['warmup_minutes']:.1f} + {r['loop_minutes']:.1f} min of training, {r['minutes']:.1f} min in all; "
              f"doubling (dev) {doubling(r['curve'])}; train success {r['train_success']}"
              + (f", from the task's start {r['train_task_start']}" if r["train_task_start"] else ""))
    for split in ("dev", "test"):
        counts = {label: sum(round(r["stages"][label][split] * r["n"]) for r in runs.values()) for label in labels}
        n = sum(r["n"] for r in runs.values())
        tests = ", ".join(
            f"{a} -> {b}: p = {fisher_one_sided(counts[a], n, counts[b], n):.3g}"
            for a, b in zip(labels, labels[1:])
        ) + (f", start -> end: p = {fisher_one_sided(counts['start'], n, counts['end'], n):.3g}" if len(labels) > 2
             else "")
        print(f"pooled {split}: " + " -> ".join(f"{counts[label]}/{n} = {counts[label] / n:.1%}" for label in labels)
              + f" (one-sided Fisher tests of a rise: {tests})")
    print("move quality (held-out dev + test episodes): shortest-solution moves / moves from solvable positions "
          "(a uniformly random choice at the same positions); episodes with a deadlock")
    pooled: dict[str, list] = {label: [] for label in labels}
    for seed in args.seeds:
        cells = []
        for when in labels:
            episodes = move_quality(out / f"seed{seed}", when)
            pooled[when] += episodes
            optimal, deadlock, moves, uniform = _rates(episodes)
            cells.append(f"{when} {optimal:.1%} of {moves} moves ({uniform:.1%}), deadlock {deadlock:.0%}")
        print(f"  seed {seed}: " + "; ".join(cells))
    for first, last in zip(labels, labels[1:]):
        (b_opt, b_dead, b_n, b_uni), (a_opt, a_dead, a_n, a_uni) = _rates(pooled[first]), _rates(pooled[last])
        low, high = bootstrap_difference(pooled[first], pooled[last])
        n_b, n_a = len(pooled[first]), len(pooled[last])
        # One-sided Fisher test that deadlocks became rarer: count the episodes that stayed clear of one.
        p_dead = fisher_one_sided(round((1 - b_dead) * n_b), n_b, round((1 - a_dead) * n_a), n_a)
        print(f"  pooled {first} -> {last}: {b_opt:.1%} of {b_n} moves ({b_uni:.1%}) -> {a_opt:.1%} of {a_n} "
              f"({a_uni:.1%}); change {a_opt - b_opt:+.1%} (95% bootstrap interval {low:+.1%} to {high:+.1%}); "
              f"deadlocked episodes {round(b_dead * n_b)}/{n_b} -> {round(a_dead * n_a)}/{n_a} (one-sided Fisher "
              f"p = {p_dead:.3f})")

if __name__ == "__main__":
    main()
