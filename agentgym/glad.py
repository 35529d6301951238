"""GLAD (Grounded LookAhead Distillation, ProAct stage 1): oracle play with compressed search chains, as SFT data.

For each training task the env's oracle plays from the start; at every step the env's own search (a solver, an
expectimax) is run on the true simulator and what it found is compressed into a short causal chain: the state,
what each candidate move leads to, why the rejected ones are worse, then the chosen move. Each turn is recorded as
the reply ``<think>CHAIN</think><answer>ACTION</answer>``, the format the LLM policy's prompt asks for with
``policy.think=true``, inside ordinary agentgym trajectory records, so that

    agentgym glad --env sokoban --tasks 64 --out glad.jsonl
    agentgym train --env sokoban --trainer sft --set data_file=glad.jsonl --set policy.think=true \
        --set policy.max_new_tokens=96 --env-kwargs text_neighbors=true

distils the search into the model (the SFT trainer replays each record's replies in the env and keeps the chain
text in the tokenized reply; chains are about 20-40 words, 35-80 SmolLM2 tokens, so replies need a token budget
of about 96 at play time). ``agentgym glad`` builds the env as a ProAct run does (on Sokoban, the trainers' default
tiny preset with the ``Around you`` line, hence ``text_neighbors=true`` above); train on the env the data was made
with: replay checks that every observation matches the recorded one.

Oracle play only visits the solver's own path, while a policy that errs once is off it, often with its mistake
in the history (a small model repeats a blocked push it believes is shortest). ``GladConfig.detours`` (``agentgym
glad --detours 0.25``, ProAct's ``glad_detours``) makes that fraction of the steps detours: the env family's
``glad_detour(env, budget, rng)`` picks a worse move that keeps the task solvable and writes the mistaken chain
that would choose it; the turn is played and kept in the conversation but recorded with ``info["teach"] = False``,
so SFT gives it no loss (``trainers.sft.Untaught``) and teaches the recovery from the state it leads to. With
ProAct's state-only prompts (``policy.history_turns=0``) what a detour adds is that off-path state; with a history
the taught turn also sees the mistake.

Chain writers are per env family: a function ``glad_chain(env, budget) -> (chain, action) | None`` in the module
``glad`` next to the env's module (``environments/sokoban/glad.py`` for ``environments.sokoban.env``), or one
registered with :func:`register_chain_writer`. It returns None when the state has no good action (a dead end) and
raises :class:`SearchTimeout` when its search runs out of budget; either way the task is skipped and counted.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agentgym.config import ConfigError
from agentgym.env import observation_text
from agentgym.errors import AgentGymError
from agentgym.trajectory import Trajectory, TrajectoryWriter, Turn, to_jsonable


@dataclass(frozen=True)
class SearchBudget:
    """What one step's search may spend.

    Attributes:
        seconds: wall-clock seconds for all the searches of one step.
        nodes: states each search may expand (writers whose search has no node count ignore it).
    """

    seconds: float = 10.0
    nodes: int = 1_000_000


class SearchTimeout(AgentGymError):
    """The search of a chain writer ran out of its budget (nothing is proven; the task is skipped)."""


ChainWriter = Callable[[Any, SearchBudget], tuple[str, int] | None]

#: Chain writers registered explicitly, by the package of the env class (``"environments.sokoban"``); a value
#: is a writer or a ``"module:function"`` string. Packages not listed use the ``<package>.glad:glad_chain``
#: convention.
CHAIN_WRITERS: dict[str, ChainWriter | str] = {}


def register_chain_writer(package: str, writer: ChainWriter | str) -> None:
    """Use ``writer`` (or ``"module:function"``) for the envs whose class lives in ``package``."""
    CHAIN_WRITERS[package] = writer


def _family(env: Any) -> tuple[Any, str, ChainWriter | str]:
    """``env``'s base env, the package of its class, and that family's chain-writer entry."""
    base = getattr(env, "unwrapped", env)
    package = type(base).__module__.rpartition(".")[0] or type(base).__module__
    return base, package, CHAIN_WRITERS.get(package, f"{package}.glad:glad_chain")


def chain_writer(env: Any) -> ChainWriter:
    """The chain writer of ``env``'s family (see the module docstring)."""
    base, package, entry = _family(env)
    if callable(entry):
        return entry
    module_name, _, name = entry.partition(":")
    try:
        writer = getattr(importlib.import_module(module_name), name)
    except (ModuleNotFoundError, AttributeError) as exc:
        raise AgentGymError(
            f"{type(base).__name__} has no GLAD chain writer ({entry} was not found: {exc}). Write a function "
            f"glad_chain(env, budget) -> (chain, action) in {package}.glad, or register one with "
            "agentgym.glad.register_chain_writer."
        ) from exc
    return writer


DetourWriter = Callable[[Any, SearchBudget, Any], tuple[str, int] | None]


def detour_writer(env: Any) -> DetourWriter:
    """The detour writer of ``env``'s family: ``glad_detour`` next to its chain writer (see ``GladConfig.detours``)."""
    base, _, entry = _family(env)
    module_name = entry.__module__ if callable(entry) else entry.partition(":")[0]
    try:
        return importlib.import_module(module_name).glad_detour
    except (ModuleNotFoundError, AttributeError) as exc:
        raise ConfigError(
            f"detours > 0 needs a function glad_detour(env, budget, rng) -> (chain, action) | None in {module_name} "
            f"(the mistaken move a detour plays); {type(base).__name__} has none. Set detours=0."
        ) from exc


def glad_reply(chain: str, action_name: str) -> str:
    """The reply a GLAD turn teaches: ``<think>CHAIN</think><answer>ACTION</answer>``."""
    # The LLM policy owns the answer tags; imported here so that importing agentgym never imports policies.
    from policies.llm.prompts import ANSWER_CLOSE, ANSWER_OPEN

    return f"<think>{chain}</think>{ANSWER_OPEN}{action_name}{ANSWER_CLOSE}"


@dataclass(frozen=True)
class GladConfig:
    """Settings of a GLAD dataset build."""

    tasks: int = 64
    """Tasks to play (the first N of the split, as the SFT trainer's oracle demonstrations)."""
    split: str = "train"
    """Split the tasks come from."""
    seed: int = 0
    """Episode i is reset with seed + i (its spawns, for stochastic envs)."""
    max_turns: int = 200
    """Taught turns per episode at most (an episode still running then is recorded as truncated); detours are
    extra."""
    search_seconds: float = 10.0
    """Seconds the search of one step may take; a step that needs more skips its task."""
    search_nodes: int = 1_000_000
    """States one search may expand (for node-counting searches such as the Sokoban solver)."""
    detours: float = 0.0
    """Chance that a step is a detour: a mistaken move (from the env's ``glad_detour``) played and kept in the
    history but not taught (``info["teach"] = False``), so the next, taught turn starts off the oracle's path (and
    sees the mistake when the policy's prompt keeps history). The step after a detour is never one. Oracle play
    alone only shows states on the solver's path; a policy that errs once is then in states the data never
    covered."""

    def __post_init__(self) -> None:
        for name in ("tasks", "max_turns", "search_nodes"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), int) \
                    or getattr(self, name) < 1:
                raise ConfigError(f"GladConfig.{name}={getattr(self, name)!r} must be an int >= 1.")
        if isinstance(self.detours, bool) or not isinstance(self.detours, (int, float)) \
                or not 0 <= self.detours < 1:
            raise ConfigError(f"GladConfig.detours={self.detours!r} must be a probability in [0, 1), e.g. 0.25.")
        if not self.search_seconds > 0:
            raise ConfigError(f"GladConfig.search_seconds={self.search_seconds!r} must be > 0 seconds.")

    @property
    def budget(self) -> SearchBudget:
        """The per-step search budget."""
        return SearchBudget(self.search_seconds, self.search_nodes)


@dataclass
class GladReport:
    """What a build produced: counts of written and skipped tasks, and chain lengths."""

    path: str
    requested: int = 0
    written: int = 0
    successful: int = 0
    timed_out: int = 0
    dead_ends: int = 0
    turns: int = 0
    detours: int = 0
    chain_words: list[int] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        """One line for the terminal."""
        words = self.chain_words or [0]
        return (
            f"wrote {self.written}/{self.requested} tasks ({self.successful} successful, {self.turns} taught turns"
            f"{f' + {self.detours} untaught detours' if self.detours else ''}) to "
            f"{self.path}; skipped {self.timed_out} (search timeout) + {self.dead_ends} (dead end); chain words "
            f"mean {sum(words) / len(words):.1f}, max {max(words)}; {self.seconds:.1f}s"
        )


class DeadEnd(AgentGymError):
    """The chain writer found no good action (the oracle is stuck); the task is skipped."""


def play_glad_episode(env: Any, task: Hashable, seed: int, config: GladConfig,
                      writer: ChainWriter | None = None) -> Trajectory:
    """One oracle episode from ``(task, seed)`` whose replies carry the search chains.

    Each reply is stepped as text, so the env's own parser checks that it names the chosen action. With
    ``config.detours`` some steps are detours (a mistaken move, recorded with ``info["teach"] = False``); their
    draws come from a generator seeded with ``seed``, so a build is reproducible.

    Raises:
        SearchTimeout: a step's search ran out of budget.
        DeadEnd: the writer had no action for a state.
    """
    writer = writer or chain_writer(env)
    base = env.unwrapped
    names = tuple(base.action_names)
    obs, info = env.reset(seed=seed, options={"task": task})
    task_names = getattr(base.task_set, "names", None)
    traj = Trajectory(
        env_id=str(getattr(env, "spec_id", "")), task=to_jsonable(task), seed=seed, group=0,
        split=str(info.get("split", "")), difficulty=info.get("difficulty"),
        task_name=task_names[int(task)] if task_names else None, policy="glad",
    )
    detour = detour_writer(env) if config.detours > 0 else None
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    last_was_detour, taught = False, 0
    while taught < config.max_turns:  # detours do not count (they never come twice in a row)
        text = observation_text(env, obs)
        found = None
        if detour is not None and not last_was_detour and rng.random() < config.detours:
            found = detour(env, config.budget, rng)
        teach = found is None
        if found is None:
            found = writer(env, config.budget)
        if found is None:
            raise DeadEnd(f"task {task!r}: no action from turn {traj.steps} on")
        chain, action = found
        reply = glad_reply(chain, names[action])
        if base.parse_action(reply) != action:
            raise AgentGymError(f"The GLAD reply {reply!r} does not parse to action {names[action]!r}; the chain "
                                "writer must keep action words out of the answer tags.")
        obs, reward, terminated, truncated, info = env.step(reply)
        info = to_jsonable(info)
        if not teach:
            info["teach"] = False
        last_was_detour = not teach
        taught += teach
        traj.turns.append(Turn(text, reply, float(reward), bool(info.get("action_valid", True)), info))
        traj.episode_return += float(reward)
        traj.success = bool(info.get("success", False))
        if terminated or truncated:
            traj.terminated, traj.truncated = bool(terminated), bool(truncated and not terminated)
            break
    else:
        traj.truncated = True
        traj.warnings.append(f"turn budget reached ({config.max_turns} turns); episode truncated")
    traj.wall_s = time.perf_counter() - started
    return traj


def build_dataset(env_id: str, out: str | Path, config: GladConfig | None = None, *,
                  env_kwargs: dict[str, Any] | None = None,
                  on_task: Callable[[int, str], None] | None = None) -> GladReport:
    """Play ``config.tasks`` tasks with search chains and write them to ``out`` (JSONL, overwritten).

    Args:
        env_id: a registered env id or alias.
        out: the JSONL file to write (one trajectory per task that was not skipped).
        config: build settings.
        env_kwargs: constructor arguments of the env; train with the same ``--env-kwargs`` (the SFT trainer
            checks that replayed observations match the recorded ones).
        on_task: called after each task with its index and "written", "timeout" or "dead end" (progress bars).

    Returns:
        The report: tasks written and skipped (by reason), turns and chain lengths.
    """
    from agentgym.registry import make

    config = config or GladConfig()
    env = make(env_id, **(env_kwargs or {}))
    writer = chain_writer(env)
    tasks = env.unwrapped.task_set.tasks(config.split, config.tasks)[: config.tasks]
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("", encoding="utf-8")
    report = GladReport(str(path), requested=len(tasks))
    started = time.perf_counter()
    with TrajectoryWriter(path) as sink:
        for i, task in enumerate(tasks):
            try:
                traj = play_glad_episode(env, task, config.seed + i, config, writer)
            except SearchTimeout:
                report.timed_out += 1
                status = "timeout"
            except DeadEnd:
                report.dead_ends += 1
                status = "dead end"
            else:
                sink.write(traj)
                report.written += 1
                report.successful += traj.success
                taught = [t for t in traj.turns if t.info.get("teach", True)]
                report.turns += len(taught)
                report.detours += traj.steps - len(taught)
                report.chain_words += [len(_chain_of(t.action).split()) for t in taught]
                status = "written"
            if on_task is not None:
                on_task(i, status)
    env.close()
    report.seconds = time.perf_counter() - started
    return report


def _chain_of(reply: str) -> str:
    return reply.partition("<think>")[2].partition("</think>")[0]
