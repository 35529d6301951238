"""MC-GRPO's scoring (ProAct, spec 4.5): replies sampled at a state, valued by the Monte-Carlo critic, in groups.

Each group is the G replies sampled at one state. Reply ``i`` is scored by ``Q_MC(s, a_i)``, the critic's value of
the action the env makes of its text (a reply the env cannot use gets the invalid action's value).
:class:`GroupScores` carries what ``ops.mc_grpo_advantages`` needs besides the values: canonical action ids per
group, and, for a degenerate group (every reply the same action, or every value the same), ``Q(s, a)`` of every
action of the state, against which such a group is scored instead.
"""

from __future__ import annotations

import time
from collections import Counter
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


def rewrite_decision(text: str, old: str, new: str) -> str | None:
    """``text`` with its decision changed from the action named ``old`` to the one named ``new``, or None.

    The decision is the answer (the content of the last ``<answer>...</answer>``, or the whole text when it has
    none) and, when the reasoning before it ends in a clause naming ``old`` (a GLAD chain's ``Best: Left.``), the
    last mention of ``old`` in that closing clause. Everything before stays as written, so the rewritten reply
    shares the sampled reply's reasoning and differs only in the decision. None when the answer is not ``old``.
    """
    from policies.llm.prompts import ANSWER_CLOSE, ANSWER_OPEN

    start = text.rfind(ANSWER_OPEN)
    if start < 0:
        return new if text.strip() == old else None
    end = text.find(ANSWER_CLOSE, start)
    if end < 0 or text[start + len(ANSWER_OPEN) : end].strip() != old:
        return None
    head, tail = text[:start], text[end:]
    body = head.rstrip()
    if body.endswith("</think>"):
        body = body[: -len("</think>")].rstrip()
    clause_start = max(body.rfind(". ", 0, len(body) - 1), body.rfind(">")) + 1  # the closing sentence
    at = body.rfind(old, clause_start)
    if at >= 0:
        head = head[:at] + new + head[at + len(old) :]
    return f"{head}{ANSWER_OPEN}{new}{tail}"


def contrast_groups(scores: GroupScores, base: Any, replies: Sequence[Sequence[str]]
                    ) -> tuple[list[list[str]], list[list[int | None]], GroupScores]:
    """Degenerate groups become one reply per action: the first sampled reply and its rewrites to every other action.

    A group whose G replies all chose one action (or got one value) carries no contrast of its own. This turns it
    into a group over the state's whole action set: the first sampled reply, plus that reply rewritten
    (:func:`rewrite_decision`) to each other action of ``base.action_names``, each scored by its own ``Q(s, a)``
    from the group's table. ``mc_grpo_advantages`` then gives each the z-score of its Q against all actions (the
    same formula as the plain fallback), so the tokens the rows share (the reasoning) get advantages that sum to
    zero, and the decision tokens get the contrast, including a positive one for the best action when the policy
    never sampled it. The other G-1 sampled replies of the group are dropped. Groups that are not degenerate, and
    degenerate ones whose reply cannot be rewritten (no parseable decision), are kept as sampled.

    Returns:
        ``(texts, forced, scores)``: the reply texts per group; per reply, None for a sampled one and the action id
        for a rewrite; the scores of those rows (row-major, as ``score_groups``).
    """
    names = tuple(getattr(base, "action_names", ()))
    texts: list[list[str]] = []
    forced: list[list[int | None]] = []
    row = 0
    rows_of: list[tuple[int, int | None]] = []  # (source row, forced action or None)
    for k, group in enumerate(replies):
        rows = list(range(row, row + len(group)))
        row += len(group)
        first = rows[0]
        parsed = None if scores.invalid[first] else canonical_action(base, group[0])
        rewrites: dict[int, str] = {}
        if scores.degenerate[k] and isinstance(parsed, (int, np.integer)) and len(names) == scores.table.shape[1]:
            for a, name in enumerate(names):
                if a != int(parsed):
                    new = rewrite_decision(group[0], names[int(parsed)], name)
                    if new is not None and canonical_action(base, new) == a:
                        rewrites[a] = new
        if len(rewrites) != len(names) - 1:  # not degenerate, or not every action reachable by a rewrite
            texts.append(list(group))
            forced.append([None] * len(group))
            rows_of += [(r, None) for r in rows]
            continue
        texts.append([group[0], *rewrites.values()])
        forced.append([None, *rewrites.keys()])
        rows_of += [(first, None), *((first, a) for a in rewrites)]
    src = np.array([r for r, _ in rows_of], dtype=np.int64)
    q = scores.q[src].copy()
    invalid = scores.invalid[src].copy()
    for n, (r, a) in enumerate(rows_of):
        if a is not None:
            q[n] = scores.table[r, a]
            invalid[n] = False
    new_scores = GroupScores(
        q=q,
        actions=scores.actions[src].copy(),  # one id per degenerate group, as mc_grpo_advantages' fallback needs
        group=scores.group[src].copy(),
        table=scores.table[src].copy(),
        degenerate=scores.degenerate.copy(),
        invalid=invalid,
        seconds=scores.seconds,
    )
    return texts, forced, new_scores


def teacher_replies(env: Any, states: Sequence[Any], budget: Any) -> list[tuple[str, int] | None]:
    """The GLAD reply at each state (``mc_teacher``): ``(reply text, action id)``, or None where the search has none.

    The env family's GLAD chain writer (``agentgym.glad.chain_writer``) runs from each state, set on ``env`` with
    ``set_state``, and its chain becomes the reply a GLAD turn teaches (``glad.glad_reply``). None for a state
    with no good action (a dead end) or whose search ran out of ``budget`` (a ``glad.SearchBudget``).
    """
    from agentgym.glad import SearchTimeout, chain_writer, glad_reply

    writer = chain_writer(env)
    base = env.unwrapped
    names = tuple(base.action_names)
    out: list[tuple[str, int] | None] = []
    for state in states:
        base.set_state(state)
        try:
            found = writer(env, budget)
        except SearchTimeout:
            found = None
        out.append(None if found is None else (glad_reply(found[0], names[found[1]]), int(found[1])))
    return out


def clause_spans(reply: str) -> list[tuple[str, int, int]]:
    """The clauses of a reply's reasoning, each as ``(clause, start, end)`` with ``reply[start:end] == clause``.

    The clauses are its sentences before its last ``Best:`` (else its ``</think>``/answer), without full stops.

    ``<think>Box 1 left of you. Up: wall. Best: Up.</think>...`` gives ``("Box 1 left of you", 7, 24)`` and
    ``("Up: wall", 26, 34)``.
    """
    from policies.llm.prompts import ANSWER_OPEN  # the LLM policy owns the tags (as ``glad.glad_reply``)

    text = reply.replace("<think>", " " * len("<think>"))  # offsets stay those of ``reply``
    for marker in ("Best:", "</think>", ANSWER_OPEN):
        if marker in text:
            text = text[: text.rindex(marker)]
            break
    out, offset = [], 0
    for part in text.split(". "):
        clause = part.strip().rstrip(".").strip()
        if clause:
            start = offset + part.index(clause)
            out.append((clause, start, start + len(clause)))
        offset += len(part) + 2
    return out


def chain_clauses(reply: str) -> list[str]:
    """The clauses of a reply's reasoning (``clause_spans`` without the spans).

    ``<think>Box 1 left of you. Up: wall. Best: Up.</think>...`` gives ``["Box 1 left of you", "Up: wall"]``.
    """
    return [clause for clause, _, _ in clause_spans(reply)]


def clause_verdicts(reply: str, solver: str) -> list[tuple[int, int, bool]]:
    """``(start, end, right)`` for each clause of ``reply`` (``clause_spans``), judged by the solver's chain.

    The two chains' clauses are aligned in order, by a longest common subsequence that takes the earliest of equal
    reply clauses. A clause is right when the solver's chain states it word for word at its place in that
    alignment; so a repeated clause is right once, as ``chain_agreement`` counts it. Leaving a clause out is an
    error too, charged to the clause that takes its place: where, between two aligned clauses, the solver's chain has
    more clauses than the reply, the reply's next clause counts as wrong, or its last clause when the gap is at the
    end. Without that, leaving a hard clause out would score better than writing it wrong.

    ``Up: wall. Left: wall.`` against the solver's ``Up: wall. Down: shortest. Left: wall.`` is right, wrong.
    """
    spans = clause_spans(reply)
    ours, theirs = [c for c, _, _ in spans], chain_clauses(solver)
    n, m = len(ours), len(theirs)
    tail = [[0] * (m + 1) for _ in range(n + 1)]  # tail[i][j]: common subsequence length of ours[i:], theirs[j:]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            tail[i][j] = tail[i + 1][j + 1] + 1 if ours[i] == theirs[j] else max(tail[i + 1][j], tail[i][j + 1])
    matches, i, j = [], 0, 0
    while i < n and j < m:
        if ours[i] == theirs[j] and tail[i][j] == tail[i + 1][j + 1] + 1:
            matches.append((i, j))
            i, j = i + 1, j + 1
        elif tail[i][j + 1] >= tail[i + 1][j]:  # keep this reply clause in play: the solver's clause is unmatched
            j += 1
        else:
            i += 1
    right = [False] * n
    previous = (-1, -1)
    for i, j in [*matches, (n, m)]:
        if i < n:
            right[i] = True
        if n and j - previous[1] > i - previous[0]:  # more solver clauses than reply clauses in the gap
            right[min(i, n - 1)] = False
        previous = (i, j)
    return [(start, end, ok) for (_, start, end), ok in zip(spans, right)]


def chain_agreement(reply: str, solver: str) -> float:
    """How much of ``reply``'s chain the solver's chain (``solver``, a GLAD reply at the same state) confirms.

    The clauses (``chain_clauses``) both chains state word for word, counted as multisets, over the longer chain's
    clause count: 1 for the solver's own chain, less for each wrong or missing clause and for each extra one (a
    chain that repeats a clause gains nothing). 0 when neither has a clause.
    """
    ours, theirs = Counter(chain_clauses(reply)), Counter(chain_clauses(solver))
    size = max(sum(ours.values()), sum(theirs.values()))
    return sum((ours & theirs).values()) / size if size else 0.0


def pick_states(critic: MCCritic, base: Any, states: Sequence[Any], played: Sequence[str], count: int,
                rng: np.random.Generator, *, errors_first: bool) -> list[int]:
    """Indices of ``count`` of ``states`` (sorted): uniformly, or with ``errors_first`` the policy's mistakes first.

    A mistake is a state where the action the policy played (``played[i]``, its reply text) has a lower
    ``Q(s, a)`` than the state's best action, or where the env could not use the reply. With ``errors_first``
    those states are taken first, in random order, and the rest of ``count`` is filled uniformly from the others;
    it needs the critic's ``q_table`` (a Discrete action space).
    """
    count = min(count, len(states))
    if not errors_first:
        return sorted(rng.choice(len(states), size=count, replace=False).tolist())
    table = critic.q_table(list(states))
    q = critic.q_values(list(states), list(played))
    wrong = {i for i in range(len(states)) if q[i] < table[i].max() - 1e-9 or canonical_action(base, played[i]) is None}
    right = [i for i in range(len(states)) if i not in wrong]
    order = [*rng.permutation(sorted(wrong)).tolist(), *rng.permutation(right).tolist()]
    return sorted(int(i) for i in order[:count])


def check_mc_grpo_env(cfg: Any, env: Any) -> None:
    """Raise ``ConfigError`` when the MC-GRPO options of ``cfg`` (a ``ProActConfig``) do not fit ``env``."""
    from gymnasium import spaces

    from agentgym.config import ConfigError
    from agentgym.glad import chain_writer

    base = env.unwrapped
    space = base.action_space
    discrete = isinstance(space, spaces.Discrete)
    if cfg.mc_fallback and not discrete:
        raise ConfigError(
            f"mc_fallback=true scores degenerate groups against every action, which needs a Discrete action "
            f"space; {cfg.env.id} has {space}. Set mc_fallback=false."
        )
    if cfg.mc_fallback_rewrites:
        names = tuple(getattr(base, "action_names", ()))
        if not cfg.mc_fallback or len(names) != getattr(space, "n", -1):
            raise ConfigError(
                f"mc_fallback_rewrites=true rewrites a degenerate group's reply to every action by name, which "
                f"needs mc_fallback=true and an env with one action_names entry per action; got "
                f"mc_fallback={cfg.mc_fallback} and action_names={names!r} for {space}. "
                "Set mc_fallback_rewrites=false."
            )
    if cfg.mc_teacher:
        if cfg.mc_fallback_rewrites:
            raise ConfigError("mc_teacher=true with mc_fallback_rewrites=true: a rewritten group drops the teacher's "
                              "reply; set one of them to false.")
        chain_writer(env)  # raises, naming the function to write, when the env family has none
    elif cfg.mc_loss_span == "decision+teacher":
        raise ConfigError("mc_loss_span=decision+teacher trains the teacher's reply whole, which needs "
                          "mc_teacher=true; set it, or mc_loss_span=decision.")
    if cfg.mc_pick == "errors" and not discrete:
        raise ConfigError(f"mc_pick=errors compares the played action with the best of a Q table, which needs a "
                          f"Discrete action space; {cfg.env.id} has {space}. Set mc_pick=uniform.")
    if cfg.mc_chain_reward:
        if not cfg.mc_chain_reward > 0 or cfg.mc_loss_span != "decision" or cfg.mc_fallback_rewrites:
            raise ConfigError(
                f"mc_chain_reward={cfg.mc_chain_reward!r} with mc_loss_span={cfg.mc_loss_span} and "
                f"mc_fallback_rewrites={str(cfg.mc_fallback_rewrites).lower()}: the chain reward trains each reply's "
                "chain apart from its decision, so it must be > 0 (0: off) with mc_loss_span=decision and "
                "mc_fallback_rewrites=false."
            )
        chain_writer(env)  # the solver's chain it compares with
    elif cfg.mc_chain_credit != "chain":
        raise ConfigError(f"mc_chain_credit={cfg.mc_chain_credit} splits the chain reward by clause, which is off "
                          "(mc_chain_reward=0); set mc_chain_reward=2.0 (with mc_loss_span=decision), or "
                          "mc_chain_credit=chain.")
