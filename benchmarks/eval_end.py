"""Re-run a training run's final evaluation on one split from its latest checkpoint.

For a run whose process died during the final evaluation (the OOM killer, a full disk): `agentgym train --resume`
would redo the whole final evaluation (dev and test) and load the optimizer state too. This loads only the
checkpoint's policy and runs the trainer's own ``evaluate(split, "end")``: the same tasks, seed, policy settings
and samples file (``samples/eval-{split}-end.jsonl``) as the run's own final evaluation, which
``agentgym eval --policy RUN_DIR`` would match only with every setting (seed, env kwargs, turn budget) passed by hand.

    .venv/bin/python benchmarks/eval_end.py runs/bench-proact8/sokoban-easy/seed0 --split test
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agentgym.registry import trainer_spec  # noqa: E402
from agentgym.runs import RunDir  # noqa: E402
from agentgym.training import resolve_config  # noqa: E402
from trainers.common import load_checkpoint_backend  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="the run directory (with config.yaml and checkpoints/latest)")
    parser.add_argument("--split", choices=["dev", "test"], required=True)
    args = parser.parse_args()
    run = RunDir(args.run)
    base = run.read_config()
    cls = trainer_spec(base.pop("trainer")).load()
    config = resolve_config(cls.Config, base=base)
    checkpoint = run.latest_checkpoint()
    if checkpoint is None:
        raise SystemExit(f"{args.run} has no checkpoint (checkpoints/latest); nothing to evaluate.")
    trainer = cls(config, run, backend=load_checkpoint_backend(config.policy, checkpoint, config.env))
    step = int(checkpoint.name.rsplit("-", 1)[-1])
    metrics = trainer.evaluate(args.split, "end")
    run.log(step, metrics)
    print(checkpoint, metrics)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
