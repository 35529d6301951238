"""MC-GRPO's scoring (ProAct, spec 4.5): replies sampled at a state, valued by the Monte-Carlo critic, in groups.

Each group is the G replies sampled at one state. Reply ``i`` is scored by ``Q_MC(s, a_i)``, the critic's value of
the action the env makes of its text (a reply the env cannot use gets the invalid action's value).
:class:`GroupScores` carries what ``ops.mc_grpo_advantages`` needs besides the values: canonical action ids per
group, and, for a degenerate group (every reply the same action, or every value the same), ``Q(s, a)`` of every
action of the state, against which such a group is scored instead.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from agentgym import ops
from agentgym.mc_critic import MCCritic


@dataclass
class GroupScores:
    """Monte-Carlo values of sampled replies, grouped per state (row-major: group 0's replies first).

    Attributes:
        q: ``[N]`` ``Q_MC(s, a_i)`` of each reply's action (the invalid action's value for unparseable text).
        actions: ``[N]`` canonical action ids (-1: invalid); in a degenerate group all rows carry the same id.
        group: ``[N]`` the state (group) of each reply.
        table: ``[N, A]`` ``Q(s, a)`` of every action at the reply's state where the fallback scores the group (other
            rows are unused zeros; one column of ``q`` when the fallback is off).
        degenerate: ``[groups]`` whether each group had one action or one value.
        invalid: ``[N]`` whether the env could not use the reply.
        seconds: wall-clock seconds of the MC-Critic.
    """

    q: np.ndarray
    actions: np.ndarray
    group: np.ndarray
    table: np.ndarray
    degenerate: np.ndarray
    invalid: np.ndarray
    seconds: float

    def advantages(self, q: torch.Tensor | None = None) -> torch.Tensor:
        """MC-GRPO advantages (``ops.mc_grpo_advantages``) of ``q`` (default: the MC values) in these groups."""
        values = torch.as_tensor(self.q, dtype=torch.float64) if q is None else q
        return ops.mc_grpo_advantages(
            values,
            torch.as_tensor(self.group, dtype=torch.long),
            torch.as_tensor(self.actions, dtype=torch.long),
            torch.as_tensor(self.table, dtype=torch.float64),
        )


def score_groups(critic: MCCritic, base: Any, states: Sequence[Any], replies: Sequence[Sequence[str]], *,
                 fallback: bool = True) -> GroupScores:
    """``Q_MC`` of each reply at its group's state, and what ``mc_grpo_advantages`` needs (see ``GroupScores``).

    Args:
        critic: the MC-Critic over copies of the env.
        base: an unwrapped env of the same kind (it parses the reply texts; its action space sizes the fallback).
        states: one env snapshot (``get_state()``) per group.
        replies: the reply texts sampled at each state.
        fallback: score degenerate groups against every action of the state (needs a Discrete action space);
            false: the table repeats ``q``, so such groups get advantage 0.
    """
    started = time.perf_counter()
    flat_states = [s for s, texts in zip(states, replies) for _ in texts]
    texts = [t for group in replies for t in group]
    group = np.array([k for k, g in enumerate(replies) for _ in g], dtype=np.int64)
    q = critic.q_values(flat_states, texts)
    ids: dict[Any, int] = {}
    actions = np.empty(len(texts), dtype=np.int64)
    for i, text in enumerate(texts):
        parsed = canonical_action(base, text)
        actions[i] = -1 if parsed is None else ids.setdefault(parsed, len(ids))
    invalid = actions == -1
    degenerate = np.zeros(len(replies), dtype=bool)
    for k in range(len(replies)):
        rows = group == k
        degenerate[k] = len(set(actions[rows].tolist())) == 1 or float(np.ptp(q[rows])) <= 1e-12
        if degenerate[k]:  # one action or one value: the ops function's "same action" test must see it
            actions[rows] = actions[rows][0]
    if fallback:
        table = np.zeros((len(texts), int(base.action_space.n)))
        for k in np.flatnonzero(degenerate):
            table[group == k] = critic.q_table([states[k]])[0]
    else:
        table = q[:, None].copy()  # the fallback then scores Q - Q = 0
    return GroupScores(q, actions, group, table, degenerate, invalid, time.perf_counter() - started)


def canonical_action(base: Any, text: str) -> Any | None:
    """The action the env makes of ``text`` (hashable), or None when it cannot use it."""
    coerce = getattr(base, "coerce_action", None)
    if coerce is not None:
        parsed, error = coerce(text)
        if error is not None:
            return None
    else:
        parsed = base.parse_action(text)
        if parsed is None:
            return None
    return parsed.tobytes() if isinstance(parsed, np.ndarray) else parsed
