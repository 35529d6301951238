"""Sokoban speed against gym-sokoban 0.0.6, measured in the same run: stepping, level generation, batched stepping.

Our side runs in this interpreter (the project venv); the peer runs this same file with ``--peer`` in its own
venv (gym-sokoban needs the old ``gym`` and numpy < 2), see ``benchmarks/peers/sokoban-requirements.txt``::

    python3.11 -m venv benchmarks/.peers-sokoban
    benchmarks/.peers-sokoban/bin/pip install -r benchmarks/peers/sokoban-requirements.txt
    .venv/bin/python benchmarks/bench_sokoban.py

Stepping is timed around ``step`` calls only (episode resets happen outside the timer, and the step limit is
set out of reach), with the same random push actions for both. Generation is timed per level at the same room
size and box count. Batched stepping wraps both in gymnasium's ``SyncVectorEnv``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PEER = ROOT / "benchmarks" / ".peers-sokoban" / "bin" / "python"
STEP_ROOM, STEP_BOXES = (10, 10), 4
GEN_CASES = ((6, 6, 1), (7, 7, 2), (10, 10, 4))
NUM_ENVS = 16


def _actions(n: int) -> list[int]:
    import numpy as np

    return [int(a) for a in np.random.default_rng(0).integers(0, 4, n)]


def _time_steps(step, reset, actions: list[int]) -> float:
    """Steps per second of ``step`` over ``actions``, resetting (untimed) whenever an episode ends."""
    total = 0.0
    perf = time.perf_counter
    for a in actions:
        t = perf()
        done = step(a)
        total += perf() - t
        if done:
            reset()
    return len(actions) / total


# ---------------------------------------------------------------------- agentgym side


def ours(steps: int, gen_levels: int, vec_steps: int) -> dict[str, float]:
    """Measure agentgym's Sokoban in this interpreter."""
    import gymnasium as gym

    from environments.sokoban.env import SokobanEnv
    from environments.sokoban.generator import GeneratorConfig, generate_level

    out: dict[str, float] = {}
    actions = _actions(steps)
    for mode in ("struct", "dict", "text", "rgb"):
        env = SokobanEnv(dim_room=STEP_ROOM, num_boxes=STEP_BOXES, max_steps=10**9,
                         obs_mode="struct" if mode == "rgb" else mode)
        env.reset(seed=0)

        def step(a: int, env: SokobanEnv = env, mode: str = mode) -> bool:
            _, _, term, trunc, _ = env.step(a)
            if mode == "rgb":
                env.render_rgb()
            return term or trunc

        out[f"step_{mode}"] = _time_steps(step, lambda env=env: env.reset(), actions)
    for h, w, n in GEN_CASES:
        config = GeneratorConfig(h, w, n)
        t = time.perf_counter()
        for seed in range(gen_levels):
            generate_level(config, 10_000 + seed)
        out[f"gen_{h}x{w}x{n}"] = (time.perf_counter() - t) / gen_levels
        env = SokobanEnv(dim_room=(h, w), num_boxes=n, obs_mode="struct")
        t = time.perf_counter()
        for seed in range(gen_levels):
            env.reset(seed=seed)  # draws a fresh train task: generation plus the split lookup
        out[f"reset_{h}x{w}x{n}"] = (time.perf_counter() - t) / gen_levels
    vec = gym.vector.SyncVectorEnv([
        lambda: SokobanEnv(dim_room=STEP_ROOM, num_boxes=STEP_BOXES, max_steps=10**9, obs_mode="struct")
        for _ in range(NUM_ENVS)
    ])
    out["vec_step"] = _vector_rate(vec, vec_steps)
    return out


def _vector_rate(vec, vec_steps: int) -> float:
    """Env steps per second (batches x num_envs) of a gymnasium vector env."""
    import numpy as np

    vec.reset(seed=0)
    batches = np.random.default_rng(1).integers(0, 4, (vec_steps, vec.num_envs))
    t = time.perf_counter()
    for batch in batches:
        vec.step(batch)
    return vec_steps * vec.num_envs / (time.perf_counter() - t)


# ---------------------------------------------------------------------- gym-sokoban side (run in its venv)


def peer(steps: int, gen_levels: int, vec_steps: int) -> dict[str, float]:
    """Measure gym-sokoban 0.0.6 (push actions 1-4, which match our four actions)."""
    import warnings

    warnings.filterwarnings("ignore")
    from gym_sokoban.envs.sokoban_env import SokobanEnv as PeerEnv

    out: dict[str, float] = {}
    actions = _actions(steps)
    for mode in ("tiny_rgb_array", "rgb_array"):
        env = PeerEnv(dim_room=STEP_ROOM, num_boxes=STEP_BOXES, max_steps=10**9)
        n = steps if mode == "tiny_rgb_array" else max(steps // 5, 1000)

        def step(a: int, env=env, mode: str = mode) -> bool:
            return env.step(a + 1, observation_mode=mode)[2]

        out[f"step_{mode}"] = _time_steps(step, env.reset, actions[:n])
    for h, w, n in GEN_CASES:
        env = PeerEnv(dim_room=(h, w), num_boxes=n, max_steps=200)
        count = gen_levels if h * w < 100 else max(gen_levels // 10, 5)
        t = time.perf_counter()
        for _ in range(count):
            env.reset()  # generate_room, retried by gym-sokoban itself when a room fails
        out[f"reset_{h}x{w}x{n}"] = (time.perf_counter() - t) / count
    out["vec_step"] = _peer_vector(vec_steps)
    return out


def _peer_vector(vec_steps: int) -> float:
    import gymnasium
    import numpy as np
    from gym_sokoban.envs.sokoban_env import SokobanEnv as PeerEnv

    class Adapter(gymnasium.Env):
        """gym-sokoban under the gymnasium API (cheapest observation mode) for SyncVectorEnv."""

        def __init__(self) -> None:
            self.env = PeerEnv(dim_room=STEP_ROOM, num_boxes=STEP_BOXES, max_steps=10**9)
            self.action_space = gymnasium.spaces.Discrete(4)
            self.observation_space = gymnasium.spaces.Box(0, 255, (*STEP_ROOM, 3), np.uint8)

        def reset(self, *, seed=None, options=None):
            self.env.reset()
            return self.env.render(mode="tiny_rgb_array"), {}

        def step(self, action):
            obs, reward, done, info = self.env.step(int(action) + 1, observation_mode="tiny_rgb_array")
            return obs, reward, done, False, info

    vec = gymnasium.vector.SyncVectorEnv([Adapter for _ in range(NUM_ENVS)])
    return _vector_rate(vec, vec_steps)


# ---------------------------------------------------------------------- report


def main() -> None:
    """Run both sides and print a table of rates and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer-python", default=str(DEFAULT_PEER), help="python of the gym-sokoban venv")
    parser.add_argument("--steps", type=int, default=20_000, help="single-env steps per measurement")
    parser.add_argument("--gen-levels", type=int, default=50, help="levels generated per room size")
    parser.add_argument("--vec-steps", type=int, default=1_000, help="batched steps (each over 16 envs)")
    parser.add_argument("--peer", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer:
        print(json.dumps(peer(args.steps, args.gen_levels, args.vec_steps)))
        return
    sys.path.insert(0, str(ROOT))
    mine = ours(args.steps, args.gen_levels, args.vec_steps)
    proc = subprocess.run(
        [args.peer_python, "-W", "ignore", __file__, "--peer", "--steps", str(args.steps), "--gen-levels",
         str(args.gen_levels), "--vec-steps", str(args.vec_steps)],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        sys.exit(f"The gym-sokoban side failed (is its venv installed? see the module docstring):\n{proc.stderr}")
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    cheap = theirs["step_tiny_rgb_array"]
    print(f"Single env, {STEP_ROOM[0]}x{STEP_ROOM[1]} room, {STEP_BOXES} boxes, steps/s:")
    print(f"  gym-sokoban tiny_rgb_array {cheap:12,.0f}")
    print(f"  gym-sokoban rgb_array      {theirs['step_rgb_array']:12,.0f}")
    for mode in ("struct", "dict", "text", "rgb"):
        rate = mine[f"step_{mode}"]
        print(f"  agentgym {mode:<17} {rate:12,.0f}   x{rate / cheap:6.1f} vs tiny_rgb_array")
    print(f"  (agentgym rgb vs gym-sokoban rgb_array: x{mine['step_rgb'] / theirs['step_rgb_array']:.1f})")
    print("Level generation, ms per level (agentgym generator / agentgym env.reset / gym-sokoban reset):")
    for h, w, n in GEN_CASES:
        key = f"{h}x{w}x{n}"
        gen, reset, other = mine[f"gen_{key}"], mine[f"reset_{key}"], theirs[f"reset_{key}"]
        print(f"  {h}x{w}, {n} box(es): {gen * 1e3:8.2f} / {reset * 1e3:8.2f} / {other * 1e3:9.1f}   "
              f"x{other / gen:7.1f} generator, x{other / reset:7.1f} reset")
    print(f"Batched, SyncVectorEnv x{NUM_ENVS}, env steps/s: agentgym struct {mine['vec_step']:,.0f}, "
          f"gym-sokoban tiny_rgb_array {theirs['vec_step']:,.0f}   x{mine['vec_step'] / theirs['vec_step']:.1f}")


if __name__ == "__main__":
    main()
