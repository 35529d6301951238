"""Which tokens one policy update moved: compare two saved policies on the replies a run kept.

A training run's ``approx_kl`` says that an update moved the policy, not where. This script loads the policy
before and after an update (two ``checkpoints/step-N/policy`` folders, or copies of them), replays the replies kept
in a samples file (``samples/mc_grpo.jsonl`` or ``samples/train.jsonl``: each row holds ``token_ids`` and the
``segments`` that mark the assistant's replies), and at every reply token measures

* the full-distribution KL(before || after) at that position, and
* the change in the sampled token's log-probability.

It prints each row's mean and largest KL and its range of changes, then the positions with the largest KL, with
the text just before them. ``--policy proact@7`` keeps only the
replies sampled by that policy version (the ``policy`` field), which for an update from step N to N+1 are the
replies it was trained on.

Usage::

    .venv/bin/python benchmarks/update_shift.py --before runs/X/checkpoints/step-000010/policy \\
        --after runs/X/checkpoints/step-000011/policy --samples runs/X/samples/mc_grpo.jsonl --policy proact@7
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _reply_positions(row: dict) -> list[int]:
    """Positions of the logits that predict the assistant's tokens (every ``assistant`` segment of the row)."""
    out = [p - 1 for role, start, end, *_ in row.get("segments", []) if role == "assistant" for p in range(start, end)]
    if not out:
        raise ValueError(f"row {row.get('task')!r} has no assistant segment in {row.get('segments')!r}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", type=Path, required=True, help="policy folder before the update")
    ap.add_argument("--after", type=Path, required=True, help="policy folder after the update")
    ap.add_argument("--samples", type=Path, required=True, help="JSONL rows with token_ids and segments")
    ap.add_argument("--policy", default=None, help="keep only rows whose 'policy' field equals this (e.g. proact@7)")
    ap.add_argument("--top", type=int, default=20, help="positions to print, largest KL first")
    args = ap.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for p in (args.before, args.after):
        if not (p / "config.json").is_file():
            sys.exit(f"{p} is not a saved policy folder (no config.json); pass checkpoints/step-N/policy")
    rows = [json.loads(line) for line in args.samples.read_text().splitlines() if line.strip()]
    if args.policy is not None:
        versions = sorted({r.get("policy") for r in rows}, key=str)
        rows = [r for r in rows if r.get("policy") == args.policy]
        if not rows:
            sys.exit(f"no rows with policy {args.policy!r} in {args.samples}; it has {versions}")
    rows = [r for r in rows if r.get("token_ids")]
    if not rows:
        sys.exit(f"no rows with token_ids in {args.samples}")

    tok = AutoTokenizer.from_pretrained(args.before)
    models = [AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32).eval() for p in (args.before, args.after)]
    found = []
    print(f"{len(rows)} replies; per reply: advantage, teacher, mean and max KL over its tokens, sampled-token change")
    for i, row in enumerate(rows):
        ids = torch.tensor([row["token_ids"]])
        with torch.no_grad():
            before, after = (torch.log_softmax(m(ids).logits[0, :-1], -1) for m in models)
        target = ids[0, 1:, None]
        change = (after.gather(1, target) - before.gather(1, target))[:, 0]
        kl = (before.exp() * (before - after)).sum(-1)
        at = _reply_positions(row)  # logits at position p predict token p + 1
        info = (row.get("turns") or [{}])[0].get("info", {})
        who = "teacher" if info.get("teacher") else "       "
        print(f"  {i:3d} adv {info.get('advantage', float('nan')):+.3f} {who} "
              f"KL mean {kl[at].mean():.4f} max {kl[at].max():7.3f}  "
              f"sampled token change {change[at].min():+7.2f} .. {change[at].max():+6.2f} nats")
        for p in at:
            found.append((float(kl[p]), float(change[p]), float(before[p, target[p, 0]]), i,
                          tok.decode(ids[0, p + 1:p + 2]), tok.decode(ids[0, max(0, p - 7):p + 1])))
    found.sort(key=lambda f: -f[0])
    print(f"top {args.top} positions by KL(before || after):")
    for kl_p, d, lp, i, t, ctx in found[: args.top]:
        print(f"  KL {kl_p:7.3f}  sampled token {t!r}: log-prob {lp:6.2f} -> {lp + d:6.2f}  reply {i}  after {ctx!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
