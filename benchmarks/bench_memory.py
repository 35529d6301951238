"""Peak memory of one LOOP iteration vs one PPO iteration (learned critic + reference model) on the same model.

Each case runs in a fresh subprocess: build the trainer with the default model (SmolLM2-135M-Instruct), run one
``collect`` + ``update`` iteration on a small Sokoban config, and report

* the child's peak resident set size (``ru_maxrss`` from ``os.wait4`` on that child alone),
* ``torch.cuda.max_memory_allocated`` when the model runs on CUDA,
* the bytes of parameters the trainer holds (policy, reference copy, value head) and the trainable ones.

A ``load`` case (import, build the backend, nothing else) gives the floor every case pays. LOOP has no reference
and no value head: one copy of the model; PPO holds the policy, a frozen reference copy and the critic.

Usage::

    .venv/bin/python benchmarks/bench_memory.py                  # full fine-tuning and LoRA
    .venv/bin/python benchmarks/bench_memory.py --modes lora --turns 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(trainer: str, mode: str, turns: int, out: str) -> None:
    """Run one case in this process and write its numbers to ``out`` (JSON)."""
    import torch

    torch.set_num_threads(1)  # a shared 2-core machine: one thread is faster and steadier (see RESULTS.md)
    from agentgym.config import load_config
    from agentgym.registry import trainer_spec
    from agentgym.runs import RunDir
    from trainers.common import PolicySection, build_backend

    started = time.perf_counter()
    result: dict[str, float | str] = {"trainer": trainer, "mode": mode}
    if trainer == "load":
        backend = build_backend(PolicySection(lora=mode == "lora"))
        modules = {"policy": backend.model}
        result["init_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    else:
        cls = trainer_spec(trainer).load()
        overrides = [
            f"policy.lora={mode == 'lora'}",
            f"env.max_turns={turns}",
            "tasks_per_iteration=2",
            "group_size=2",
            "num_envs=4",
            "epochs=1",
            "minibatch_size=4",
            "micro_batch_size=2",
        ]
        cfg = load_config(cls.Config, overrides=overrides)
        with tempfile.TemporaryDirectory() as tmp:
            trainer_obj = cls(cfg, RunDir(Path(tmp) / "run", tensorboard=False))
            result["init_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            trajectories = trainer_obj.collect(0)
            # Distinct returns within every group, so LOOP keeps every episode (it drops |A| < 0.01) and both
            # trainers back-propagate through the same episodes; memory does not depend on the reward values.
            for i, t in enumerate(trajectories):
                t.episode_return += 0.5 * (i % 2)
            stats = trainer_obj.update(trajectories)
        backend = trainer_obj.backend
        modules = {"policy": backend.model}
        if trainer_obj.reference is not None:
            modules["reference"] = trainer_obj.reference.model
        if hasattr(trainer_obj, "value_head"):
            modules["value_head"] = trainer_obj.value_head
        result.update(
            tokens=float(sum(len(t.token_ids or ()) for t in trajectories)),
            optimizer_steps=float(stats.get("optimizer_steps", 0.0)),
        )
    for name, module in modules.items():
        result[f"{name}_param_mb"] = sum(p.numel() * p.element_size() for p in module.parameters()) / 2**20
    result["trainable_mb"] = (
        sum(p.numel() * p.element_size() for m in modules.values() for p in m.parameters() if p.requires_grad) / 2**20
    )
    result["device"] = str(backend.device)
    if torch.cuda.is_available() and backend.device.type == "cuda":
        result["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    result["seconds"] = time.perf_counter() - started
    Path(out).write_text(json.dumps(result))


def run_case(trainer: str, mode: str, turns: int) -> dict[str, float | str]:
    """One case in a fresh interpreter; its own peak RSS comes from ``wait4`` on it alone."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [sys.executable, __file__, "--child", trainer, mode, "--turns", str(turns), "--out", out]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"case {trainer}/{mode} failed with exit code {proc.returncode}")
    result = json.loads(Path(out).read_text())
    os.unlink(out)
    result["peak_rss_mb"] = usage.ru_maxrss / 1024  # kilobytes on Linux
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", nargs="+", default=["full", "lora"], choices=["full", "lora"])
    parser.add_argument("--turns", type=int, default=3, help="turn budget of each Sokoban episode")
    parser.add_argument("--child", nargs=2, metavar=("TRAINER", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.turns, args.out)
        return
    rows = []
    for mode in args.modes:
        for trainer in ("load", "loop", "ppo"):
            print(f"running {trainer} / {mode} ...", flush=True)
            rows.append(run_case(trainer, mode, args.turns))
    header = (
        "| mode | case | peak RSS MB | RSS after init MB | CUDA peak MB | policy MB | reference MB | value head MB | "
        "trainable MB | tokens | optimizer steps | s |"
    )
    print("\n" + header + "\n|" + "---|" * 12)
    for r in rows:
        cells = [
            r["mode"],
            r["trainer"],
            f"{r['peak_rss_mb']:.0f}",
            f"{r['init_rss_mb']:.0f}",
            f"{r['cuda_peak_mb']:.0f}" if "cuda_peak_mb" in r else "-",
            f"{r['policy_param_mb']:.0f}",
            f"{r.get('reference_param_mb', 0):.0f}",
            f"{r.get('value_head_param_mb', 0):.2f}",
            f"{r['trainable_mb']:.1f}",
            f"{r.get('tokens', 0):.0f}",
            f"{r.get('optimizer_steps', 0):.0f}",
            f"{r['seconds']:.0f}",
        ]
        print("| " + " | ".join(cells) + " |")
    print()
    for mode in args.modes:
        by = {r["trainer"]: r for r in rows if r["mode"] == mode}
        loop, ppo, load = by["loop"], by["ppo"], by["load"]
        copies = {
            n: (r["policy_param_mb"] + r.get("reference_param_mb", 0)) / r["policy_param_mb"] for n, r in by.items()
        }
        above = (ppo["peak_rss_mb"] - load["peak_rss_mb"]) / max(loop["peak_rss_mb"] - load["peak_rss_mb"], 1)
        line = (
            f"{mode}: PPO/LOOP peak RSS {ppo['peak_rss_mb'] / loop['peak_rss_mb']:.2f}x "
            f"(above the load-only floor: {above:.2f}x); "
            f"model copies held: LOOP {copies['loop']:.0f}, PPO {copies['ppo']:.0f} + value head"
        )
        if "cuda_peak_mb" in loop:
            line += f"; CUDA peak PPO/LOOP {ppo['cuda_peak_mb'] / loop['cuda_peak_mb']:.2f}x"
        print(line)


if __name__ == "__main__":
    main()
