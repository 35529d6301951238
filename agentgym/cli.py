"""The ``agentgym`` command line: envs, describe, play, check, eval, replay, glad, train."""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agentgym import registry
from agentgym.errors import AgentGymError

console = Console()
err_console = Console(stderr=True)


def parse_kwargs(pairs: Sequence[str] | None, flag: str = "--env-kwargs") -> dict[str, Any]:
    """Parse ``KEY=VALUE`` pairs; values are YAML scalars/lists (``6``, ``0.5``, ``[6,6]``, ``true``, text)."""
    out: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, raw = pair.partition("=")
        if not sep or not key.isidentifier():
            raise AgentGymError(f"{flag} {pair!r} is not KEY=VALUE; write e.g. {flag} level_file=levels.xsb")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        out[key] = value
    return out


def _add_env_args(parser: argparse.ArgumentParser, *, flag: str | None = "required") -> None:
    """``--env`` (required, optional, or absent when the env is positional) and ``--env-kwargs``."""
    if flag is not None:
        parser.add_argument(
            "--env", "-e", required=flag == "required", default=None, help="env id or alias (see `agentgym envs`)"
        )
    parser.add_argument(
        "--env-kwargs",
        nargs="+",
        action="extend",
        metavar="KEY=VALUE",
        default=[],
        help="keyword arguments passed to the env's constructor, e.g. --env-kwargs level_file=levels.xsb",
    )


# ---------------------------------------------------------------------------------------------- commands
def cmd_envs(args: argparse.Namespace) -> int:
    """Table of registered envs."""
    table = Table(title="agentgym environments")
    table.add_column("id", no_wrap=True)
    for col in ("aliases", "views", "tags", "description"):
        table.add_column(col, overflow="fold")
    for s in registry.list_envs():
        aliases = ", ".join(a for a in s.aliases)
        table.add_row(s.id, aliases, ", ".join(s.views), ", ".join(s.tags), s.description)
    console.print(table)
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    """Spec card, arguments, spaces, instructions and a sample observation of one env."""
    env_spec = registry.spec(args.env)
    overrides = parse_kwargs(args.env_kwargs)
    env = registry.make(env_spec.id, **overrides)
    cls = type(env.unwrapped)
    console.rule(f"[bold]{env_spec.id}[/bold]  ({cls.__module__}.{cls.__qualname__})")
    console.print(
        f"aliases: {', '.join(env_spec.aliases) or '-'}   views: {', '.join(env_spec.views)}   "
        f"tags: {', '.join(env_spec.tags)}"
    )
    console.print(inspect.getdoc(cls) or "(no spec card)", markup=False, highlight=False)
    table = Table(title="constructor arguments (registry defaults and --env-kwargs applied)")
    for col in ("argument", "default"):
        table.add_column(col)
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            continue
        default = {**env_spec.kwargs, **overrides}.get(name, param.default)
        table.add_row(name, "(required)" if default is inspect.Parameter.empty else repr(default))
    console.print(table)
    console.print(f"action_space: {env.action_space}", markup=False)
    console.print(f"observation_space: {env.observation_space}", markup=False)
    _, info = env.reset(seed=0)
    console.rule("instructions()")
    console.print(env.unwrapped.instructions(), markup=False, highlight=False)
    console.rule(f"sample observation (seed 0, task {info.get('task')!r})")
    console.print(env.unwrapped.text_observation(), markup=False, highlight=False)
    return 0


def cmd_play(args: argparse.Namespace) -> int:
    """Interactive play in the terminal."""
    from agentgym.play import play

    env = registry.make(args.env, **parse_kwargs(args.env_kwargs))
    task = parse_kwargs([f"task={args.task}"])["task"] if args.task is not None else None
    play(env, seed=args.seed, task=task, split=args.split)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Run the contract check on one env (or all)."""
    from agentgym.testing import check_env

    ids = [s.id for s in registry.list_envs()] if args.env == "all" else [registry.spec(args.env).id]
    ok = True
    for env_id in ids:
        report = check_env(
            env_id, seed=args.seed, steps=args.steps, raise_on_failure=False, **parse_kwargs(args.env_kwargs)
        )
        table = Table(title=f"agentgym check {env_id}")
        for col in ("check", "result", "detail", "seconds"):
            table.add_column(col, overflow="fold")
        for r in report.results:
            table.add_row(
                r.name, "[green]pass[/green]" if r.passed else "[red]FAIL[/red]", r.detail, f"{r.seconds:.2f}"
            )
        console.print(table)
        ok &= report.passed
    return 0 if ok else 1


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate one policy (or several, on the same tasks, with a comparison table) and print the results."""
    from agentgym.evaluation import is_run_dir

    env_spec = registry.spec(args.env)  # fail on a bad name before any progress bar starts
    names = [name for item in args.policy or ["smollm2"] for name in item.split(",") if name]
    if args.baselines:
        names += [b for b in env_spec.baselines if b not in names]
    for name in names:
        if not is_run_dir(name):
            registry.policy_spec(name.partition(":")[0] if ":" in name else name)
    if len(names) == 1:
        summary, trajectories = _eval_one(args, names[0], Path(args.out) if args.out else None)
        _print_episodes(trajectories)
        _print_summary(summary)
        if args.json:
            from agentgym.evaluation import write_json

            write_json(args.json, summary, trajectories)
            console.print(f"wrote {args.json}")
        return 130 if summary.interrupted else 0
    summaries = []
    for name in names:
        out = Path(args.out) / _slug(name) if args.out else None
        summary, _ = _eval_one(args, name, out)
        summaries.append(summary)
        if summary.interrupted:
            break
    table = Table(title=f"{env_spec.id}: {summaries[0].split} split, {summaries[0].tasks} tasks x k={args.k}, "
                  f"seed {args.seed} (every policy plays the same tasks)")
    for col in ("policy", "success (95% CI)", "return mean ± std", "steps", "invalid", "ms/decision", "wall s"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for sm in summaries:
        lo, hi = sm.success_ci95
        table.add_row(
            sm.policy, f"{sm.success_rate:.1%} ({lo:.0%}-{hi:.0%})", f"{sm.mean_return:.2f} ± {sm.std_return:.2f}",
            f"{sm.mean_steps:.1f}", f"{sm.invalid_action_rate:.1%}", f"{sm.decision_ms:.2f}", f"{sm.wall_s:.1f}",
        )
    console.print(table)
    if args.json:
        import json

        from agentgym.trajectory import to_jsonable

        Path(args.json).write_text(json.dumps([to_jsonable(vars(sm)) for sm in summaries], indent=1))
        console.print(f"wrote {args.json}")
    return 130 if summaries[-1].interrupted else 0


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name.rstrip("/"))[-80:]


def _eval_one(args: argparse.Namespace, policy: str, out_dir: Path | None) -> tuple[Any, list[Any]]:
    """Evaluate one policy with a progress bar; writes ``out_dir`` (summary, trajectories, report) if given."""
    from agentgym.evaluation import evaluate, write_json
    from agentgym.report import write_report
    from agentgym.rollout import RolloutConfig

    policy_kwargs = parse_kwargs(args.policy_kwargs, "--policy-kwargs")
    if args.temperature is not None:
        policy_kwargs["temperature"] = args.temperature
    rollout = RolloutConfig(num_envs=args.num_envs, max_turns=args.max_turns, max_episode_tokens=args.max_tokens)
    columns = (
        TextColumn("[bold]eval[/bold] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("success {task.fields[succ]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err_console, transient=False) as progress:
        bar = progress.add_task(f"{args.env} / {policy}", total=None, succ="-")
        wins = [0, 0]

        def on_episode(trajectory: Any) -> None:
            wins[0] += trajectory.success
            wins[1] += 1
            progress.update(bar, advance=1, succ=f"{wins[0]}/{wins[1]}")

        summary, trajectories = evaluate(
            args.env,
            policy,
            episodes=args.episodes,
            split=args.split,
            k=args.k,
            seed=args.seed,
            env_kwargs=parse_kwargs(args.env_kwargs),
            policy_kwargs=policy_kwargs,
            rollout=rollout,
            trajectories_path=out_dir / "trajectories.jsonl" if out_dir else None,
            on_start=lambda n: progress.update(bar, total=n),
            on_episode=on_episode,
        )
    if out_dir:
        write_json(out_dir / "summary.json", summary, trajectories)
        console.print(f"wrote {write_report(out_dir, summary, trajectories)}")
    return summary, trajectories


def _print_summary(summary: Any) -> None:
    lo, hi = summary.success_ci95
    console.print(
        f"[bold]{summary.env_id}[/bold] policy={summary.policy} split={summary.split} tasks={summary.tasks} "
        f"k={summary.k}{' (interrupted: partial results)' if summary.interrupted else ''}\n"
        f"success {summary.success_rate:.1%} (95% CI {lo:.1%}-{hi:.1%})  pass@{summary.k} {summary.pass_at_k:.1%}  "
        f"return {summary.mean_return:.2f} ± {summary.std_return:.2f}  steps {summary.mean_steps:.1f}  "
        f"invalid actions {summary.invalid_action_rate:.1%}  tokens/episode {summary.mean_response_tokens:.0f}  "
        f"wall {summary.wall_s:.1f}s"
    )


def _print_episodes(trajectories: Sequence[Any], limit: int = 50) -> None:
    table = Table(title="episodes" + (f" (first {limit})" if len(trajectories) > limit else ""))
    infos = [t.turns[-1].info if t.turns else {} for t in trajectories]
    extra_keys = [k for k in ("moves", "pushes", "score", "max_tile") if infos and k in infos[0]]
    for col in ("task", "difficulty", "success", "return", "steps", *extra_keys):
        table.add_column(col, justify="right")
    for t, info in list(zip(trajectories, infos))[:limit]:
        task = f"{t.task} {t.task_name}" if t.task_name else t.task
        table.add_row(
            str(task),
            str(t.difficulty),
            "yes" if t.success else "no",
            f"{t.episode_return:.2f}",
            str(t.steps),
            *[str(info.get(k)) for k in extra_keys],
        )
    console.print(table)


def cmd_replay(args: argparse.Namespace) -> int:
    """Show a stored episode turn by turn."""
    from agentgym.trajectory import read_trajectories

    trajectories = list(read_trajectories(args.file))
    if not trajectories:
        raise AgentGymError(f"{args.file} holds no trajectories.")
    if not 0 <= args.episode < len(trajectories):
        raise AgentGymError(
            f"--episode {args.episode} is out of range; {args.file} holds episodes 0..{len(trajectories) - 1}."
        )
    t = trajectories[args.episode]
    console.rule(f"{t.env_id}  task {t.task}  seed {t.seed}  group {t.group}  policy {t.policy}")
    for i, turn in enumerate(t.turns):
        console.print(f"[bold]turn {i + 1}[/bold]", highlight=False)
        if turn.observation is not None:
            console.print(turn.observation, markup=False, highlight=False)
        tokens = f" ({turn.response_tokens} tokens, {turn.finish_reason})" if turn.response_tokens else ""
        console.print(f"[cyan]action{tokens}:[/cyan] {turn.action!r}", highlight=False)
        note = "" if turn.action_valid else f"  [red]invalid: {turn.info.get('action_error', '')}[/red]"
        console.print(f"reward {turn.reward:+.3f}{note}", highlight=False)
    console.print(
        f"return {t.episode_return:+.3f}  success {t.success}  steps {t.steps}{'  truncated' if t.truncated else ''}",
        highlight=False,
    )
    for warning in t.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train a policy with a registered trainer; ``--help`` with ``--trainer`` lists its config."""
    from agentgym.training import print_config_help, train

    if args.help:
        if args.trainer is None:
            args.parser.print_help()
            return 0
        print_config_help(console, args.trainer)
        return 0
    if args.resume is None and (args.env is None or args.trainer is None):
        raise AgentGymError(
            "agentgym train needs --env ENV and --trainer NAME (or --resume RUN_DIR); "
            "e.g. agentgym train --env sokoban --trainer loop"
        )
    return train(
        console,
        env=args.env,
        trainer=args.trainer,
        overrides=args.set,
        config_file=args.config,
        out=args.out,
        resume=args.resume,
        env_kwargs=parse_kwargs(args.env_kwargs),
    )


def cmd_glad(args: argparse.Namespace) -> int:
    """Write GLAD demonstrations (oracle play with compressed search chains) as a trajectories JSONL."""
    from agentgym.glad import GladConfig, build_dataset
    from agentgym.training import resolve_config
    from trainers.proact_config import ProActConfig

    # The env as `agentgym train --env ENV --trainer proact` builds it (Sokoban's preset and Around-you line, 2048's
    # moves line), so the data read here is the data a ProAct run trains on; --env-kwargs add to that.
    env = resolve_config(ProActConfig, env=args.env, env_kwargs=parse_kwargs(args.env_kwargs)).env
    config = GladConfig(tasks=args.tasks, split=args.split, seed=args.seed, max_turns=args.max_turns,
                        search_seconds=args.search_seconds, detours=args.detours)
    with Progress(TextColumn("[bold]glad[/bold] {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err_console) as progress:
        bar = progress.add_task(args.env, total=args.tasks)
        report = build_dataset(env.id, args.out, config, env_kwargs=env.kwargs,
                               on_task=lambda _i, _status: progress.advance(bar))
    console.print(report.summary(), markup=False, highlight=False)
    return 0


# ---------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``agentgym`` command."""
    parser = argparse.ArgumentParser(prog="agentgym", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("envs", help="list registered environments")
    p.set_defaults(fn=cmd_envs)

    p = sub.add_parser("describe", help="spec card, arguments, spaces, instructions and a sample observation")
    p.add_argument("env", help="env id or alias")
    _add_env_args(p, flag=None)
    p.set_defaults(fn=cmd_describe)

    p = sub.add_parser("play", help="play an env in the terminal (arrow keys or typed actions)")
    p.add_argument("env", help="env id or alias")
    _add_env_args(p, flag=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--task", default=None, help="a task to play (e.g. a level index or seed)")
    p.add_argument("--split", default="train", help="split to draw tasks from")
    p.set_defaults(fn=cmd_play)

    p = sub.add_parser("check", help="run the env contract check (gymnasium checker, determinism, state, oracle)")
    p.add_argument("env", help="env id or alias, or 'all'")
    _add_env_args(p, flag=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=50, help="steps compared by the determinism check")
    p.set_defaults(fn=cmd_check)

    p = sub.add_parser("eval", help="evaluate a policy on held-out tasks")
    _add_env_args(p)
    p.add_argument(
        "--policy",
        "-p",
        action="append",
        default=None,
        help="random, oracle, smollm2 (default), hf:PATH, vllm:PATH, openai:MODEL, or a run directory; repeat "
        "it (or separate names by commas) to compare several policies on the same tasks in one table",
    )
    p.add_argument(
        "--baselines", action="store_true", help="also evaluate every baseline the env registers (random, oracle, ...)"
    )
    p.add_argument("--policy-kwargs", nargs="+", action="extend", metavar="KEY=VALUE", default=[])
    p.add_argument(
        "--episodes",
        "-n",
        type=int,
        default=None,
        help="number of tasks (default: every task of a level file, else 20)",
    )
    p.add_argument("--split", default=None, help="train/dev/test, or all for level files (default: test / all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=int, default=1, help="episodes per task with the same seed (pass@k, mean@k)")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (LLM policies)")
    p.add_argument("--num-envs", type=int, default=16, help="episodes run concurrently (the policy's batch)")
    p.add_argument("--max-turns", type=int, default=None, help="per-episode turn budget")
    p.add_argument("--max-tokens", type=int, default=None, help="per-episode budget of generated tokens")
    p.add_argument("--json", default=None, metavar="FILE", help="write the summary and per-episode records here")
    p.add_argument(
        "--out", default=None, metavar="DIR", help="write summary.json, trajectories.jsonl, report.md and plots here"
    )
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("replay", help="show a stored episode (a trajectories JSONL file) turn by turn")
    p.add_argument("file", help="a trajectories.jsonl written by eval or train")
    p.add_argument("--episode", type=int, default=0, help="index of the episode in the file")
    p.set_defaults(fn=cmd_replay)

    p = sub.add_parser("glad", help="write GLAD lookahead demonstrations (search chains) for SFT, on the env "
                       "as `agentgym train --trainer proact` builds it (--env-kwargs add to its kwargs)")
    _add_env_args(p)
    p.add_argument("--tasks", "-n", type=int, default=64, help="training tasks to play")
    p.add_argument("--out", required=True, metavar="FILE", help="JSONL to write; train with --set data_file=FILE")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="train", help="split the tasks come from")
    p.add_argument("--max-turns", type=int, default=200, help="turns per episode (SFT trains an episode as one "
                   "sequence: keep 2048 episodes short, e.g. 20)")
    p.add_argument("--search-seconds", type=float, default=10.0, help="search budget per step (seconds)")
    p.add_argument("--detours", type=float, default=0.0, help="chance that a step is an untaught mistaken move, "
                   "so taught turns also start off the oracle's path (e.g. 0.25; Sokoban)")
    p.set_defaults(fn=cmd_glad)

    p = sub.add_parser("train", help="train a policy with a registered trainer", add_help=False)
    _add_env_args(p, flag="optional")
    p.add_argument("--trainer", "-t", default=None, help="registered trainer name (loop, grpo, rloo, ...)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set lr=1e-5 --set policy.temperature=0.7 (repeatable)",
    )
    p.add_argument("--config", default=None, metavar="FILE.yaml", help="config values from a YAML file")
    p.add_argument("--out", default=None, metavar="DIR", help="run directory (default: runs/ENV-TRAINER-TIME)")
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    p.add_argument("-h", "--help", action="store_true", help="with --trainer: list every config field")
    p.set_defaults(fn=cmd_train, parser=p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``agentgym`` command."""
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except AgentGymError as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", markup=True, highlight=False)
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
