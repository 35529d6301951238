"""Trajectory records: what a rollout produced, streamed to JSONL so runs can be replayed and inspected."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any

import numpy as np

from agentgym.errors import AgentGymError


def to_jsonable(value: Any) -> Any:
    """Convert numpy scalars/arrays, tuples and unknown objects so ``json.dumps`` accepts the value."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


@dataclass
class Turn:
    """One env step of an episode.

    Attributes:
        observation: the text view the policy acted on (None when text was not recorded).
        action: what the policy sent to ``env.step`` (model text for LLM policies, an index otherwise).
        reward: the step's reward.
        action_valid: whether the env could use the action.
        info: the step's info dict (JSON-safe).
        prompt_tokens: tokens in the prompt of this turn's generation (0 for non-LLM policies).
        response_tokens: tokens generated this turn.
        finish_reason: why generation stopped (``eos``, ``stop``, ``length``, ``choice``; "" for non-LLM).
        generate_s: seconds in the policy for this turn's batch, divided among its episodes.
        env_s: seconds in ``env.step``.
    """

    observation: str | None
    action: Any
    reward: float
    action_valid: bool
    info: dict[str, Any]
    prompt_tokens: int = 0
    response_tokens: int = 0
    finish_reason: str = ""
    generate_s: float = 0.0
    env_s: float = 0.0


@dataclass
class Trajectory:
    """One episode.

    The token fields hold the whole episode as one sequence (system prompt, then per turn: observation, sampled
    response, template tokens): ``loss_mask`` is 1 exactly on sampled tokens, and ``logprobs`` holds their
    sampling log-probs (0 elsewhere). ``segments`` lists ``[role, start, end, turn]`` spans of that sequence, from
    which each turn's prompt can be rebuilt. ``context_dropped_turns`` > 0 means some turns were generated with
    old turns dropped from the prompt (the context budget), so a whole-sequence re-score differs from sampling
    for those turns. ``constrained`` means guided decoding shaped the replies, so ``logprobs`` are those of the
    constrained sampler rather than of the free model; ``choice_sets`` (``[[position, [ids]], ...]``) says which
    ids each guided token was drawn from, so a trainer can score it over that set. For a neural policy (no
    tokens), ``logprobs`` holds the joint log-prob of each step's action and ``observations`` each step's raw
    observation. ``start_moves`` > 0 means a training curriculum started the episode that many oracle moves into
    the task (``agentgym.curriculum.OracleStarts``) rather than at its start.
    """

    env_id: str
    task: Any
    seed: int
    group: int
    split: str
    difficulty: str | None = None
    task_name: str | None = None
    policy: str = ""
    start_moves: int = 0
    turns: list[Turn] = field(default_factory=list)
    episode_return: float = 0.0
    success: bool = False
    terminated: bool = False
    truncated: bool = False
    token_ids: list[int] | None = None
    loss_mask: list[int] | None = None
    logprobs: list[float] | None = None
    segments: list[list[Any]] | None = None
    context_dropped_turns: int = 0
    constrained: bool = False
    choice_sets: list[list[Any]] | None = None
    warnings: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    observations: list[Any] | None = field(default=None, repr=False, compare=False)
    """Raw observation of every step, kept in memory for neural policies' trainers (never written to JSONL)."""

    @property
    def steps(self) -> int:
        """Number of env steps."""
        return len(self.turns)

    @property
    def response_tokens(self) -> int:
        """Tokens the policy generated in this episode."""
        return sum(t.response_tokens for t in self.turns)

    def choice_set_at(self) -> dict[int, list[int]]:
        """``choice_sets`` as a map from token position to the ids that token was drawn from."""
        return {int(pos): list(ids) for pos, ids in self.choice_sets or ()}

    @property
    def invalid_actions(self) -> int:
        """Steps whose action the env could not use."""
        return sum(not t.action_valid for t in self.turns)

    def to_json(self) -> str:
        """One JSON line."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("turns", "observations")}
        data["turns"] = [asdict(t) for t in self.turns]
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trajectory:
        """Rebuild from ``asdict`` output (a JSONL line)."""
        data = dict(data)
        data["turns"] = [Turn(**t) for t in data.get("turns", [])]
        return cls(**data)


class TrajectoryWriter:
    """Appends trajectories to a JSONL file as they finish (flushed per line, so Ctrl-C loses nothing written)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = self.path.open("a", encoding="utf-8")

    def write(self, trajectory: Trajectory) -> None:
        """Append one trajectory."""
        self._file.write(trajectory.to_json() + "\n")
        self._file.flush()

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def __enter__(self) -> TrajectoryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_trajectories(path: str | Path) -> Iterator[Trajectory]:
    """Read a JSONL file of trajectories, naming the line of any malformed record."""
    with Path(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield Trajectory.from_dict(json.loads(line))
            except (json.JSONDecodeError, TypeError) as exc:
                raise AgentGymError(f"{path}:{number} is not a trajectory record ({exc}).") from exc
