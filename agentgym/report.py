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
        ax.annotate(f"n={n}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                    fontsize=8)
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
        + (" (interrupted: partial results)" if summary.interrupted else "") + ".",
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
        *[f"| {label} | {row['episodes']} | {row['success_rate']:.1%} | {row['mean_return']:.3f} |"
          for label, row in summary.by_difficulty.items()],
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
