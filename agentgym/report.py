"""Readable evaluation reports: markdown with a plot of success by difficulty."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agentgym.trajectory import Trajectory


def plot_success_by_difficulty(summary: Any, path: Path) -> Path:
    """Bar chart of success rate per difficulty label, with the episode count on each bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(summary.by_difficulty)
    rates = [summary.by_difficulty[label]["success_rate"] for label in labels]
    counts = [summary.by_difficulty[label]["episodes"] for label in labels]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(labels) + 2), 3.2))
    bars = ax.bar(labels, rates, color="#4c72b0")
    for bar, n in zip(bars, counts):
        ax.annotate(
            f"n={n}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8
        )
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate")
    ax.set_xlabel("difficulty")
    ax.set_title(f"{summary.env_id} — {summary.policy} ({summary.split})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(out_dir: str | Path, summary: Any, trajectories: list[Trajectory]) -> Path:
    """Write ``report.md`` (and its PNG) into ``out_dir``; returns the report path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot = plot_success_by_difficulty(summary, out / "success_by_difficulty.png") if trajectories else None
    lo, hi = summary.success_ci95
    lines = [
        f"# Evaluation: {summary.env_id} with `{summary.policy}`",
        "",
        f"Split `{summary.split}`, {summary.tasks} tasks x k={summary.k} = {summary.episodes} episodes"
        + (" (interrupted: partial results)" if summary.interrupted else "")
        + ".",
        "",
        "| metric | value |",
        "|---|---|",
        f"| success rate | {summary.success_rate:.1%} (95% CI {lo:.1%}–{hi:.1%}) |",
        f"| pass@{summary.k} / mean@{summary.k} | {summary.pass_at_k:.1%} / {summary.mean_at_k:.1%} |",
        f"| mean return | {summary.mean_return:.3f} ± {summary.std_return:.3f} |",
        f"| mean steps | {summary.mean_steps:.1f} |",
        f"| invalid-action rate | {summary.invalid_action_rate:.1%} |",
        f"| generated tokens / episode | {summary.mean_response_tokens:.1f} |",
        f"| generation tokens/s | {summary.tokens_per_s:.1f} |",
        f"| share of wall time in the policy | {summary.generate_share:.0%} |",
        f"| wall time | {summary.wall_s:.1f} s |",
        "",
        "## Success by difficulty",
        "",
        "| difficulty | episodes | success | mean return |",
        "|---|---|---|---|",
        *[
            f"| {label} | {row['episodes']} | {row['success_rate']:.1%} | {row['mean_return']:.3f} |"
            for label, row in summary.by_difficulty.items()
        ],
        "",
    ]
    if plot is not None:
        lines += [f"![success by difficulty]({plot.name})", ""]
    warnings = sorted({w for t in trajectories for w in t.warnings})
    if warnings:
        lines += ["## Warnings recorded in trajectories", "", *[f"- {w}" for w in warnings[:20]], ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [p[0] for p in points], [float(p[1]) for p in points]


def write_training_report(run: Any) -> Path:
    """``report.md`` and ``training.png`` of a run directory from its metrics and config."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import yaml

    records = run.metrics()
    config = run.read_config()
    panels = [
        ("return_mean", "train return"),
        ("success_rate", "train success"),
        ("eval/dev/success_rate", "held-out (dev) success"),
        ("entropy", "token entropy"),
        ("approx_kl", "approx. KL to behaviour policy"),
        ("generate_tokens_per_s", "generation tokens/s"),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    for ax, (key, title) in zip(axes.flat, panels):
        xs, ys = _series(records, key)
        ax.plot(xs, ys, marker="o", ms=3)
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(run.path / "training.png", dpi=90)
    plt.close(fig)

    # Runs with a first stage (a supervised warm start, ProAct's GLAD) evaluate dev and test after it as well.
    both = [r for r in records if "eval/test/success_rate" in r]
    middle = ["after the warm start" if config.get("warmup_demos") else "after GLAD"] if len(both) == 3 else []
    columns = ["before", *middle, "after"]
    rows = []
    for split in ("dev", "test"):
        for metric in ("success_rate", "return_mean", "invalid_action_rate"):
            key = f"eval/{split}/{metric}"
            values = [f"{r[key]:.3f}" for r in both if isinstance(r.get(key), (int, float))]
            cells = values if len(values) == len(columns) else ["-"] * len(columns)
            rows.append(f"| {split} | {metric} | " + " | ".join(cells) + " |")
    budget = [r["stopped_time_budget_minutes"] for r in records if "stopped_time_budget_minutes" in r]
    skipped = sum(1 for r in records if r.get("checkpoint_skipped"))
    no_signal = sum(1 for r in records if r.get("update_skipped_no_signal"))
    train_s = sum(r.get("iteration_s", 0.0) for r in records)
    glad = sum(1 for r in records if "glad_epoch" in r)  # ProAct's first stage; others call theirs a warm start
    warm = glad + sum(1 for r in records if "warmup_epoch" in r)
    lines = [
        f"# Training report: {config.get('trainer')} on {config.get('env', {}).get('id')}",
        "",
        f"{max((r['step'] for r in records), default=0) - warm} iterations"
        + (f" after {warm} epochs of {'GLAD' if glad else 'a supervised warm start'}" if warm else "")
        + f", {train_s / 60:.1f} min of training (evaluations excluded).",
        "",
        "## Held-out evaluation, " + ", ".join(columns),
        "",
        "| split | metric | " + " | ".join(columns) + " |",
        "|---|---|" + "---|" * len(columns),
        *rows,
        "",
        "![training curves](training.png)",
        "",
        "## Notes",
        "",
        f"- iterations with no learning signal (every advantage zero): {no_signal}",
        f"- checkpoints skipped by a failed save: {skipped}",
        f"- stopped by the time budget after {budget[0]:.1f} min" if budget else "- ran every configured iteration",
        _policy_note(config),
        "",
        "## Config",
        "",
        "```yaml",
        yaml.safe_dump(config, sort_keys=False).strip(),
        "```",
        "",
    ]
    path = run.path / "report.md"
    path.write_text("\n".join(lines))
    return path


def _policy_note(config: dict[str, Any]) -> str:
    """What the trained policy decodes with: an LLM's guided decoding and reply format, or a neural network."""
    policy = config.get("policy", {})
    network = policy.get("network", "llm")
    if network == "auto":
        from agentgym.errors import UnknownNameError
        from agentgym.registry import spec

        try:
            network = spec(config.get("env", {}).get("id", "")).policy or "llm"
        except UnknownNameError:  # an env that is no longer registered: say what the config says
            network = "auto"
    if network not in ("llm", "auto"):
        return f"- policy: the neural network {network} (no text, no guided decoding)"
    return (
        f"- guided decoding: {policy.get('guided')} (log-probs are then the constrained sampler's); reply format: "
        + ("think + answer" if policy.get("think") else "bare action")
    )
