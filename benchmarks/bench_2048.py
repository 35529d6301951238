"""Speed of agentgym's 2048 against gymnasium-2048 in the same run, and strength of the expectimax oracle.

The peer lives in its own venv (it pins another gymnasium), so the driver runs one worker process per
implementation, alternating them ``--repeats`` times and keeping each measurement's best, so both see the same
machine load. Every measurement uses the same pre-drawn uniform-random actions. Ours is measured unwrapped, as
``agentgym.make`` returns it; the peer is its env class, unwrapped too.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_2048.py --setup-peers        # once: venv benchmarks/.peers-2048
    .venv/bin/python benchmarks/bench_2048.py                      # speed table, ours vs gymnasium-2048
    .venv/bin/python benchmarks/bench_2048.py --oracle-games 20    # expectimax: 2048 rate, scores, time
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PEER_VENV = ROOT / "benchmarks" / ".peers-2048"
PEER_REQUIREMENTS = ROOT / "benchmarks" / "peers" / "game2048-requirements.txt"
BATCH_SIZES = (16, 64)


# ---------------------------------------------------------------------- worker side
def _make_factory(impl: str, obs_mode: str) -> Callable[[], Any]:
    if impl == "peer":
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        from gymnasium_2048.envs import TwentyFortyEightEnv

        return TwentyFortyEightEnv
    import agentgym

    return lambda: agentgym.make("agentgym/Game2048-v0", obs_mode=obs_mode)


def _single_steps_per_s(factory: Callable[[], Any], steps: int) -> float:
    env = factory()
    actions = np.random.default_rng(0).integers(0, 4, steps).tolist()
    env.reset(seed=0)
    start = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - start)


def _reset_us(factory: Callable[[], Any], resets: int) -> float:
    env = factory()
    env.reset(seed=0)
    start = time.perf_counter()
    for _ in range(resets):
        env.reset()
    return (time.perf_counter() - start) / resets * 1e6


def _batched_steps_per_s(factory: Callable[[], Any], num_envs: int, steps: int) -> float:
    from gymnasium.vector import SyncVectorEnv

    envs = SyncVectorEnv([factory] * num_envs)
    actions = np.random.default_rng(0).integers(0, 4, (steps, num_envs))
    envs.reset(seed=0)
    start = time.perf_counter()
    for row in actions:
        envs.step(row)
    elapsed = time.perf_counter() - start
    envs.close()
    return num_envs * steps / elapsed


def worker(impl: str, steps: int) -> dict[str, float]:
    """One pass of every speed measurement for one implementation (``"ours"`` or ``"peer"``)."""
    modes = ("struct", "dict") if impl == "ours" else ("struct",)
    out: dict[str, float] = {}
    for mode in modes:
        factory = _make_factory(impl, mode)
        out[f"steps_per_s[{mode}]"] = _single_steps_per_s(factory, steps)
        out[f"reset_us[{mode}]"] = _reset_us(factory, max(steps // 20, 100))
        for n in BATCH_SIZES:
            out[f"batched{n}_steps_per_s[{mode}]"] = _batched_steps_per_s(factory, n, max(steps // n, 50))
    return out


# ---------------------------------------------------------------------- driver side
def setup_peers() -> None:
    """Create the peer venv and install gymnasium-2048 into it."""
    subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
    subprocess.run([str(PEER_VENV / "bin" / "pip"), "install", "-q", "-r", str(PEER_REQUIREMENTS)], check=True)


def _run_worker(python: str, impl: str, steps: int) -> dict[str, float]:
    cmd = [python, str(Path(__file__).resolve()), "--worker", impl, "--steps", str(steps)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYGAME_HIDE_SUPPORT_PROMPT": "1"}
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(steps: int, repeats: int) -> None:
    """Alternate ours and the peer ``repeats`` times; print the best of each measurement and the ratios."""
    peer_python = PEER_VENV / "bin" / "python"
    if not peer_python.exists():
        sys.exit(f"No peer venv at {PEER_VENV}; create it with: {sys.executable} {__file__} --setup-peers")
    best: dict[str, dict[str, float]] = {"ours": {}, "peer": {}}
    for _ in range(repeats):
        for impl, python in (("ours", sys.executable), ("peer", str(peer_python))):
            for key, value in _run_worker(python, impl, steps).items():
                keep = min if key.startswith("reset") else max
                best[impl][key] = keep(best[impl].get(key, value), value)
    print(f"| measurement (best of {repeats}) | agentgym | gymnasium-2048 | ratio |")
    print("|---|---:|---:|---:|")
    for key, value in best["ours"].items():
        peer_key = key.replace("[dict]", "[struct]")
        peer = best["peer"][peer_key]
        ratio = peer / value if key.startswith("reset") else value / peer
        unit = "us" if key.startswith("reset") else "/s"
        print(f"| {key} | {value:,.1f} {unit} | {peer:,.1f} {unit} | {ratio:.2f}x |")


def oracle_games(games: int, size: int, depth: int | None) -> None:
    """Play ``games`` full games with expectimax on held-out tasks and summarise them."""
    from environments.game2048.env import Game2048Env
    from environments.game2048.oracle import Expectimax

    start = time.perf_counter()
    search = Expectimax(size, depth)
    first_call = time.perf_counter()
    search.best_action(0x11)
    print(
        f"expectimax setup {first_call - start:.2f} s, first call (compile or cache load) "
        f"{time.perf_counter() - first_call:.2f} s"
    )
    env = Game2048Env(size=size, obs_mode="struct", max_stuck_steps=None)
    tasks = env.task_set.tasks("test", n=games)
    rows = []
    for i, task in enumerate(tasks):
        env.reset(seed=i, options={"task": task})
        moves, start, info = 0, time.perf_counter(), {"score": 0, "max_tile": 0}
        while (action := search.best_action(env._board)) is not None:
            *_, terminated, truncated, info = env.step(action)
            moves += 1
            if terminated or truncated:
                break
        rows.append((info["max_tile"], info["score"], moves, time.perf_counter() - start))
        print(f"game {i}: max tile {rows[-1][0]}, score {rows[-1][1]}, {moves} moves, {rows[-1][3]:.2f} s", flush=True)
    tiles = [r[0] for r in rows]
    seconds = sum(r[3] for r in rows)
    print(f"\n{size}x{size}, depth {'adaptive' if depth is None else depth}, {games} games:")
    for tile in sorted({t for t in tiles if t >= 256}):
        print(f"  reached {tile}: {sum(t >= tile for t in tiles) / games:.0%}")
    print(
        f"  score: median {statistics.median(r[1] for r in rows):,.0f}, min {min(r[1] for r in rows):,}, "
        f"max {max(r[1] for r in rows):,}"
    )
    print(f"  time: {seconds / games:.2f} s/game, {1000 * seconds / sum(r[2] for r in rows):.3f} ms/move")


def main() -> None:
    """Parse arguments and run the requested benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200_000, help="single-env steps per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per implementation")
    parser.add_argument("--setup-peers", action="store_true", help="create the gymnasium-2048 venv and exit")
    parser.add_argument("--oracle-games", type=int, default=0, help="play this many expectimax games instead")
    parser.add_argument("--oracle-size", type=int, default=4)
    parser.add_argument("--oracle-depth", type=int, default=None, help="fixed depth (default: adaptive)")
    parser.add_argument("--worker", choices=("ours", "peer"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps)))
    elif args.setup_peers:
        setup_peers()
    elif args.oracle_games:
        oracle_games(args.oracle_games, args.oracle_size, args.oracle_depth)
    else:
        compare(args.steps, args.repeats)


if __name__ == "__main__":
    main()
