"""``agentgym train``: resolve the trainer and its config, run it with a progress display, write the report."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agentgym.config import describe_fields, load_config, parse_overrides, to_dict
from agentgym.errors import AgentGymError
from agentgym.registry import spec, trainer_spec
from agentgym.runs import RunDir


def print_config_help(console: Console, trainer: str) -> None:
    """Every config field of a trainer with its type, default and doc."""
    cls = trainer_spec(trainer).load()
    table = Table(title=f"agentgym train --trainer {trainer}: config fields (set with --set KEY=VALUE)")
    for col in ("field", "type", "default", "doc"):
        table.add_column(col, overflow="fold")
    for name, kind, default, doc in describe_fields(cls.Config):
        table.add_row(name, kind, default, doc)
    console.print(table)


def resolve_config(
    config_cls: type,
    *,
    env: str | None = None,
    env_kwargs: dict[str, Any] | None = None,
    overrides: Sequence[str] = (),
    config_file: str | None = None,
    base: dict[str, Any] | None = None,
) -> Any:
    """A trainer's config from its defaults, ``--env``, ``--env-kwargs``, ``--config`` and ``--set``.

    ``base`` is a resumed run's config (it is taken as it is). Otherwise the trainer's whole default config is the
    base, so a section set in part keeps the trainer's defaults for the rest (``--set policy.temperature=0.7``
    keeps LOOP's LoRA and prompt settings), and ``--env-kwargs``, ``--config`` and ``--set env.kwargs.KEY=...`` add
    to the default env's kwargs (its preset and shaping) and keep its turn budget; another ``--env`` starts from
    no kwargs (or the trainer's ``env_defaults`` for it), no oracle starts and no warm start.
    """
    resume = bool(base)
    base = dict(base) if resume else to_dict(config_cls())
    if env is None and not resume:  # an env named by --set env.id=... or the --config file counts as --env

        def env_id_of(values: Any) -> Any:
            section = values.get("env") if isinstance(values, dict) else None
            return section.get("id") if isinstance(section, dict) else None

        named = env_id_of(parse_overrides(overrides))
        if named is None and config_file is not None and Path(config_file).is_file():
            named = env_id_of(yaml.safe_load(Path(config_file).read_text()))
        env = named if isinstance(named, str) else None
    if env is not None:
        env_id = spec(env).id
        if not resume and env_id != spec(base["env"]["id"]).id:
            own = getattr(config_cls, "env_defaults", {}).get(env_id, {})  # what this trainer starts that env with
            base["env"]["kwargs"] = dict(own.get("kwargs", {}))  # the default env's kwargs (its preset) do not carry
            if "max_turns" in own:
                base["env"]["max_turns"] = own["max_turns"]
            base["env"]["oracle_starts"] = 0.0  # nor does its curriculum (another env may have no oracle)
            if base.get("warmup_demos"):  # nor LOOP's warm start on Sokoban's oracle (opt in with --set)
                base["warmup_demos"] = 0
            if spec(env_id).policy is not None:  # a neural policy plays the env's whole episode (a fleet's day)
                base["env"]["max_turns"] = None
        base.setdefault("env", {})["id"] = env_id
    if env_kwargs:
        base.setdefault("env", {}).setdefault("kwargs", {}).update(env_kwargs)
    return load_config(config_cls, file=config_file, overrides=overrides, base=base)


def train(
    console: Console,
    *,
    env: str | None,
    trainer: str | None,
    overrides: list[str],
    config_file: str | None,
    out: str | None,
    resume: str | None,
    env_kwargs: dict[str, Any],
) -> int:
    """Build (or resume) a run and train it; returns the process exit code."""
    base: dict[str, Any] = {}
    if resume is not None:
        run = RunDir(resume)
        base = run.read_config()
        trainer = trainer or base.pop("trainer", None)
        base.pop("trainer", None)
    if trainer is None:
        raise AgentGymError(f"{resume}/config.yaml names no trainer; pass --trainer NAME.")
    cls = trainer_spec(trainer).load()
    config = resolve_config(
        cls.Config,
        env=env,
        env_kwargs=env_kwargs,
        overrides=overrides,
        config_file=config_file,
        base=base if resume is not None else None,
    )
    if resume is None:
        name = f"{spec(config.env.id).name.lower()}-{trainer}-{time.strftime('%Y%m%d-%H%M%S')}"
        run = RunDir(out or Path("runs") / name)
    console.print(
        f"[bold]agentgym train[/bold] {trainer} on {config.env.id} -> {run.path}{' (resuming)' if resume else ''}"
    )
    trainer_obj = cls(config, run)
    columns = (
        TextColumn("[bold]{task.description}[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task("steps", total=trainer_obj.total_steps(), stats="evaluating before training ...")

        def on_iteration(done: int, metrics: dict[str, Any]) -> None:
            stage = getattr(trainer_obj, "stage_name", None)  # the supervised first stage's metric prefix
            if stage is not None and f"{stage}_epoch" in metrics:  # an epoch of it (a warm start, ProAct's GLAD)
                stats = (
                    f"{'warm start' if stage == 'warmup' else stage.upper()} epoch {int(metrics[f'{stage}_epoch'])}: "
                    f"loss {metrics.get(f'{stage}_loss', 0):.3f}  "
                    f"demonstrated-token prob {metrics.get(f'{stage}_token_prob', 0):.0%}  "
                    f"{metrics.get('iteration_s', 0):.0f}s"
                )
            else:
                stats = (
                    f"return {metrics.get('return_mean', 0):+.2f}  success {metrics.get('success_rate', 0):.0%}  "
                    f"loss {metrics.get('loss', 0):+.4f}  {metrics.get('iteration_s', 0):.0f}s/it"
                )
            if "eval/dev/success_rate" in metrics:
                stats += f"  held-out dev success {metrics['eval/dev/success_rate']:.0%}"
            progress.update(bar, completed=done, stats=stats)

        try:
            final = trainer_obj.fit(resume=resume is not None, on_iteration=on_iteration)
        except KeyboardInterrupt:
            progress.stop()
            console.print(f"interrupted: checkpoint saved; continue with  agentgym train --resume {run.path}")
            run.close()
            return 130
    from agentgym.report import write_training_report

    report = write_training_report(run)
    run.close()
    console.print(f"done: {final}\nreport: {report}")
    return 0
