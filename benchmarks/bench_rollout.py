"""Speed of the multi-turn rollout engine with the real default model (SmolLM2-135M-Instruct, fp32, CPU).

The same Sokoban episodes (``agentgym/Sokoban-v0`` test tasks, task ``i`` reset with seed ``seed + i``, as
``evaluate_policy`` does) run through ``RolloutEngine`` + ``LLMPolicy(HFBackend("smollm2"))``:

* one by one (``num_envs=1``) on the first ``--episodes`` tasks;
* with ``num_envs`` = each of ``--concurrency``, on ``max(--episodes, num_envs)`` tasks, so every concurrency level
  starts with a full batch (for 64 that is 64 episodes, of which the first ``--episodes`` are the one-by-one ones).

Batched and one-by-one runs may therefore play different numbers of episodes; they are compared by *rates*:
generated tokens per second of rollout wall time, and episodes per second. ``speedup`` is the ratio of the
batched run's generated tokens/s to the one-by-one run's; ``ep/s x`` the same for episodes per second (the better
measure when sampled replies differ in length between runs, since each turn also costs a prompt prefill).

Two settings by default:

* ``free``: unguided free text, ``--max-new-tokens`` (24) per reply, temperature 1: the model's natural replies
  (it rambles; generation-heavy);
* ``guided``: guided decoding of bare action words (one token per action for SmolLM2): prompt-bound.

Per run it reports wall time, generated and prompt tokens (prompt tokens as the policy sent them, and the padded
token count the model actually prefilled), env-step seconds (``engine.env_s``), policy seconds
(``engine.generate_s``: prompt building + ``generate``), the model's forward time split into prefill (calls over
more than one position) and decode (one position per row), and the generation share = ``generate_s / wall``.

Usage::

    .venv/bin/python benchmarks/bench_rollout.py                         # both settings, 16 episodes x 3 turns
    .venv/bin/python benchmarks/bench_rollout.py --no-guided --concurrency 16 --max-turns 2
    .venv/bin/python benchmarks/bench_rollout.py --guided --threads 2

On a shared 2-core machine keep ``--threads 1`` (the default here): with 2 torch threads and other jobs running,
the threads spin-wait on each other and a turn can take 5-10x longer.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

ENV_ID = "agentgym/Sokoban-v0"


@dataclass
class RunStats:
    setting: str
    num_envs: int
    episodes: int
    turns: int
    wall_s: float
    gen_tokens: int
    prompt_tokens: int
    prefill_tokens: int
    policy_s: float
    env_s: float
    prefill_s: float
    decode_s: float
    successes: int

    @property
    def tokens_per_s(self) -> float:
        return self.gen_tokens / self.wall_s

    @property
    def episodes_per_s(self) -> float:
        return self.episodes / self.wall_s


class ForwardTimer:
    """Times the model's forward calls via module hooks: prefill (> 1 position per row) vs decode (1 position)."""

    def __init__(self, model) -> None:
        self.prefill_s = self.decode_s = 0.0
        self.prefill_tokens = 0
        self._start = 0.0
        self._width = 0
        self._numel = 0
        self._handles = [
            model.register_forward_pre_hook(self._pre, with_kwargs=True),
            model.register_forward_hook(self._post, with_kwargs=True),
        ]

    def _pre(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self._width, self._numel = int(ids.shape[-1]), int(ids.numel())
        self._start = time.perf_counter()

    def _post(self, module, args, kwargs, output):
        elapsed = time.perf_counter() - self._start
        if self._width > 1:
            self.prefill_s += elapsed
            self.prefill_tokens += self._numel
        else:
            self.decode_s += elapsed

    def reset(self) -> None:
        self.prefill_s = self.decode_s = 0.0
        self.prefill_tokens = 0

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def run_once(
    backend, timer: ForwardTimer, setting: str, cfg, jobs, num_envs: int, max_turns: int, seed: int
) -> RunStats:
    from agentgym.registry import make
    from agentgym.rollout import RolloutConfig, RolloutEngine
    from policies.llm.policy import LLMPolicy

    policy = LLMPolicy(backend, cfg)
    engine = RolloutEngine(
        lambda: make(ENV_ID),
        policy,
        RolloutConfig(num_envs=num_envs, max_turns=max_turns),
        env_id=ENV_ID,
        policy_name="smollm2",
    )
    timer.reset()
    start = time.perf_counter()
    try:
        trajectories = engine.run(jobs, seed=seed)
    finally:
        engine.close()
    wall = time.perf_counter() - start
    if len(trajectories) != len(jobs):
        raise RuntimeError(f"only {len(trajectories)} of {len(jobs)} episodes finished")
    return RunStats(
        setting=setting,
        num_envs=num_envs,
        episodes=len(trajectories),
        turns=sum(t.steps for t in trajectories),
        wall_s=wall,
        gen_tokens=sum(t.response_tokens for t in trajectories),
        prompt_tokens=sum(turn.prompt_tokens for t in trajectories for turn in t.turns),
        prefill_tokens=timer.prefill_tokens,
        policy_s=engine.generate_s,
        env_s=engine.env_s,
        prefill_s=timer.prefill_s,
        decode_s=timer.decode_s,
        successes=sum(t.success for t in trajectories),
    )


def table(rows: list[RunStats]) -> str:
    base = {r.setting: r for r in rows if r.num_envs == 1}
    lines = [
        "| setting | num_envs | episodes | turns | wall s | gen tokens | gen tok/s | speedup (tok/s) | ep/s x "
        "| prompt tokens (padded prefill) | prefill s | decode s | env s | policy s | generation share |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        b = base.get(r.setting)
        speed = f"{r.tokens_per_s / b.tokens_per_s:.2f}x" if b else "-"
        eps = f"{r.episodes_per_s / b.episodes_per_s:.2f}x" if b else "-"
        lines.append(
            f"| {r.setting} | {r.num_envs} | {r.episodes} | {r.turns} | {r.wall_s:.1f} | {r.gen_tokens:,} "
            f"| {r.tokens_per_s:.1f} | {speed} | {eps} | {r.prompt_tokens:,} ({r.prefill_tokens:,}) "
            f"| {r.prefill_s:.1f} | {r.decode_s:.1f} | {r.env_s:.4f} | {r.policy_s:.1f} "
            f"| {100 * r.policy_s / r.wall_s:.1f}% |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=16, help="episodes of the one-by-one run (default 16)")
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=[16, 64],
        help="num_envs of the batched runs; each plays max(episodes, num_envs) episodes",
    )
    parser.add_argument("--max-turns", type=int, default=3, help="turn budget per episode (default 3)")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="reply cap of the free-text setting")
    parser.add_argument("--guided-max-new-tokens", type=int, default=8, help="reply cap of the guided setting")
    parser.add_argument(
        "--guided",
        dest="guided",
        action="store_true",
        default=None,
        help="run only the guided setting (default: both settings)",
    )
    parser.add_argument(
        "--no-guided", dest="guided", action="store_false", help="run only the unguided free-text setting"
    )
    parser.add_argument("--think", action="store_true", help="ask for <think>...</think><answer>...</answer>")
    parser.add_argument("--hints", action="store_true", help="include the Sokoban strategy hints (longer prompts)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1; 0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    from policies.llm.hf import HFBackend

    backend = HFBackend("smollm2", device="cpu", dtype="float32")
    load_s = time.perf_counter() - t0

    from agentgym.registry import make
    from policies.llm.policy import LLMPolicyConfig

    probe = make(ENV_ID)
    most = max([args.episodes, *args.concurrency])
    tasks = probe.unwrapped.task_set.tasks("test", n=most)
    probe.close()
    jobs = [(task, args.seed + i) for i, task in enumerate(tasks)]

    settings = []
    if args.guided in (None, False):
        settings.append(
            (
                "free",
                LLMPolicyConfig(
                    temperature=args.temperature,
                    max_new_tokens=args.max_new_tokens,
                    think=args.think,
                    guided=False,
                    hints=args.hints,
                    context_tokens=1536,
                ),
            )
        )
    if args.guided in (None, True):
        settings.append(
            (
                "guided",
                LLMPolicyConfig(
                    temperature=args.temperature,
                    max_new_tokens=args.guided_max_new_tokens,
                    think=args.think,
                    guided=True,
                    hints=args.hints,
                    context_tokens=1536,
                ),
            )
        )

    print(f"model: {backend.source} (fp32 CPU), cached load incl. importing transformers: {load_s:.1f} s")
    print(
        f"torch {torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()}, "
        f"cpus = {os.cpu_count()}, load average before: {os.getloadavg()[0]:.2f}"
    )
    print(
        f"env {ENV_ID} (default preset), test tasks {tasks[:4]}...; max_turns={args.max_turns}, think={args.think}, "
        f"hints={args.hints}, temperature={args.temperature}, seed={args.seed}",
        flush=True,
    )

    timer = ForwardTimer(backend.model)
    rows: list[RunStats] = []
    for name, cfg in settings:
        # Warm-up, not reported: first forward calls set up kernels, and guided decoding builds its choice guide
        # (a pass over the vocabulary) on first use.
        run_once(backend, timer, "warmup", cfg, jobs[:1], 1, 1, args.seed)
        for num_envs in (1, *args.concurrency):
            count = args.episodes if num_envs == 1 else max(args.episodes, num_envs)
            stats = run_once(backend, timer, name, cfg, jobs[:count], num_envs, args.max_turns, args.seed)
            rows.append(stats)
            print(
                f"  {name:6s} num_envs={num_envs:3d}: {stats.episodes} episodes, {stats.turns} turns, "
                f"{stats.wall_s:.1f} s, {stats.gen_tokens} gen tokens ({stats.tokens_per_s:.1f}/s), "
                f"{stats.prompt_tokens} prompt tokens, prefill {stats.prefill_s:.1f} s, decode "
                f"{stats.decode_s:.1f} s, env {stats.env_s:.4f} s, share {stats.policy_s / stats.wall_s:.1%}, "
                f"solved {stats.successes}, load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
    timer.remove()
    print()
    print(table(rows))
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
