"""One-turn training rows from recorded LLM episodes: each reply with exactly the prompt it was sampled from.

Used by trainers that score or resample single turns (ProAct's MC-GRPO and MC-PPO): the prompt is rebuilt from
the recorded tokens by the policy's own ``Conversation.prompt_ids`` (so history truncation and the context budget
are the policy's), and ``replay_states`` recovers the env states an episode visited by replaying its actions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from agentgym.env import observation_text
from agentgym.errors import AgentGymError
from agentgym.mc_groups import chain_agreement, clause_verdicts
from agentgym.trajectory import Trajectory, Turn, to_jsonable
from policies.llm.conversation import Conversation, Segment
from policies.llm.prompts import ANSWER_OPEN


def reply_span(trajectory: Trajectory, turn: int) -> tuple[int, int] | None:
    """``(start, end)`` of the reply of ``turn`` in the trajectory's token sequence (None: no reply that turn)."""
    for role, start, end, seg_turn in trajectory.segments or ():
        if role == "assistant" and int(seg_turn) == turn:
            return int(start), int(end)
    return None


def play_time_prompt(trajectory: Trajectory, turn: int, policy: Any) -> list[int] | None:
    """The prompt ids the LLM policy generated ``turn``'s reply from (None when that turn has no reply).

    The recorded segments before the reply are put back into a ``Conversation`` with the policy's context budget,
    and ``prompt_ids`` is asked exactly as ``LLMPolicy.act`` asks it, so dropped history turns are dropped again.
    """
    span = reply_span(trajectory, turn)
    if span is None or not trajectory.token_ids:
        return None
    ids = trajectory.token_ids
    conv = Conversation(policy.backend.tokenizer, "", policy.budget)  # its rendered system segment is replaced
    before = [s for s in trajectory.segments or () if s[2] <= span[0]]
    conv.segments = [Segment(str(role), list(ids[a:b]), int(t)) for role, a, b, t in before]
    return conv.prompt_ids(reserve=policy.config.max_new_tokens, max_turns=policy.config.history_turns)


def one_turn_row(
    source: Trajectory,
    turn: int,
    prompt: Sequence[int],
    reply: Sequence[int],
    logprobs: Sequence[float],
    *,
    text: str,
    reward: float,
    key: Any,
    constrained: bool,
    valid: bool = True,
    info: dict[str, Any] | None = None,
    choice_sets: Sequence[Sequence[int] | None] | None = None,
    loss_from: int = 0,
) -> Trajectory:
    """A one-turn trajectory: prompt tokens (masked out) then reply tokens (in the loss), for ``make_batch``.

    ``key`` becomes the row's ``task``: the policy-gradient update groups rows by ``(task, seed)``;
    ``choice_sets`` are the reply tokens' guided-decoding sets (``Generation.choice_sets``); the reply's first
    ``loss_from`` tokens are masked out too (``decision_start``).
    """
    n, r = len(prompt), len(reply)
    observation = source.turns[turn].observation if turn < len(source.turns) else None
    return Trajectory(
        env_id=source.env_id,
        task=to_jsonable(key),
        seed=source.seed,
        group=source.group,
        split=source.split,
        difficulty=source.difficulty,
        task_name=source.task_name,
        policy=source.policy,
        turns=[
            Turn(
                observation,
                text,
                float(reward),
                bool(valid),
                to_jsonable(info or {}),
                prompt_tokens=n,
                response_tokens=r,
            )
        ],
        episode_return=float(reward),
        token_ids=[*prompt, *reply],
        loss_mask=[0] * (n + loss_from) + [1] * (r - loss_from),
        logprobs=[0.0] * n + [float(x) for x in logprobs],
        segments=[["user", 0, n, 0], ["assistant", n, n + r, 0]],
        constrained=constrained,
        choice_sets=[[n + j, list(s)] for j, s in enumerate(choice_sets or ()) if s is not None] or None,
    )


def decision_start(tokenizer: Any, reply: Sequence[int], markers: Sequence[str] = ("Best:", ANSWER_OPEN)) -> int:
    """Index of the reply token where its decision starts: the chain's last ``Best:`` clause, else its ``<answer>``.

    The largest ``j`` whose decoded ``reply[j:]`` still holds the first marker the reply has (a binary search: the
    tail only shrinks as ``j`` grows); 0, the whole reply, when it has neither (an unparsed reply is all decision).
    """
    ids = list(reply)
    for marker in markers:
        if marker not in tokenizer.decode(ids):
            continue
        low, high = 0, len(ids) - 1
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if marker in tokenizer.decode(ids[mid:]) else (low, mid - 1)
        return low
    return 0


def _chain_head(row: Trajectory) -> tuple[int, list[int]]:
    """Where a decision-span row's reply starts, and the positions of its chain (the reply tokens out of the loss)."""
    _, start, end, _ = row.segments[-1]
    return int(start), [j for j in range(start, end) if not row.loss_mask[j]]


def chain_rows(rows: Sequence[Trajectory], groups: Sequence[int], solver: Sequence[str | None]) -> list[Trajectory]:
    """The chains of MC-GRPO's decision-span rows (``mc_chain_reward``), each scored by the solver's chain.

    ``rows[i]`` (a ``one_turn_row`` trained from its decision on, ``decision_start``) is a reply at state
    ``groups[i]``; its chain row holds the same tokens with the head before the decision in the loss instead. Its
    return is the reply's ``mc_groups.chain_agreement`` with ``solver[groups[i]]`` (the solver's reply there).
    Rows with no head (the whole reply trains) and states with no solver reply get no chain row.
    """
    out: list[Trajectory] = []
    for row, group in zip(rows, groups):
        start, head = _chain_head(row)
        if head and solver[group] is not None:
            agree = chain_agreement(row.turns[0].action, solver[group])
            info = {"chain_agreement": agree, "group": int(group), "teacher": bool(row.turns[0].info.get("teacher"))}
            turn = replace(row.turns[0], reward=agree, info=info)
            mask = [int(start <= j <= head[-1]) for j in range(len(row.loss_mask))]
            out.append(replace(row, loss_mask=mask, turns=[turn], episode_return=agree))
    return out


def clause_rows(rows: Sequence[Trajectory], groups: Sequence[int], solver: Sequence[str | None],
                tokenizer: Any) -> list[Trajectory]:
    """Per-clause credit for MC-GRPO's decision-span rows (``mc_chain_credit=clause``): up to two rows per reply.

    As ``chain_rows``, but the head before the decision is split by the solver's verdict on each clause
    (``mc_groups.clause_verdicts`` against ``solver[groups[i]]``): one row has the tokens of the clauses the solver's
    chain confirms in its loss (return 1), the other those of the clauses it does not (return 0). A token is a
    clause's when its text, leading spaces aside, lies inside the clause or is its closing full stop (so the full
    stop that ends a clause early is trained with it; the spaces between clauses and the tags are in neither row).
    Each row's info holds ``clauses``, how many clauses it covers, ``reply``, the index of its reply in ``rows``, and
    the reply's ``chain_agreement``. A reply whose tokens do not decode to the start of its text gets no rows.
    """
    out: list[Trajectory] = []
    for index, (row, group) in enumerate(zip(rows, groups)):
        start, head = _chain_head(row)
        if not head or solver[group] is None:
            continue
        ids = row.token_ids[start : head[-1] + 1]
        reply = row.turns[0].action
        ends = [len(tokenizer.decode(ids[: k + 1])) for k in range(len(ids))]  # each token's text ends there
        if not reply.startswith(tokenizer.decode(ids)):  # the spans are offsets into the reply's text
            continue
        pieces = []  # each token's text span, leading spaces left out (" wall" is the clause's "wall")
        for k, stop in enumerate(ends):
            piece = reply[(ends[k - 1] if k else 0) : stop]
            pieces.append((stop - len(piece.lstrip() or piece), stop))
        verdicts = clause_verdicts(reply, solver[group])
        agree = chain_agreement(reply, solver[group])
        for right in (True, False):
            spans = [(a, b + (reply[b : b + 1] == ".")) for a, b, ok in verdicts if ok is right]
            covered = [start + k for k, (a0, b0) in enumerate(pieces)
                       if any(a <= a0 and b0 <= b for a, b in spans)]
            if not covered:
                continue
            info = {"chain_agreement": agree, "clauses": len(spans), "group": int(group), "reply": index,
                    "right": right, "teacher": bool(row.turns[0].info.get("teacher"))}
            mask = [0] * len(row.loss_mask)
            for j in covered:
                mask[j] = 1
            turn = replace(row.turns[0], reward=float(right), info=info)
            out.append(replace(row, loss_mask=mask, turns=[turn], episode_return=float(right)))
    return out


def rewritten_reply_ids(tokenizer: Any, sampled_sets: Sequence[Sequence[int] | None] | None, text: str, name: str,
                        *, guided: bool, think: bool) -> tuple[list[int], list[list[int] | None] | None]:
    """Token ids of ``text``, a sampled reply rewritten to play the action ``name``, and its guided choice sets.

    The ids are the ones the LLM policy would emit for that text (``trainers.sft.reply_ids``). The sets are the
    sampled reply's (``sampled_sets``, one per reply token), aligned at the end, where guided decoding constrains
    the answer and what follows it; None when a rewritten token falls outside its set, so that the row is scored over
    the whole vocabulary.
    """
    from trainers.sft import reply_ids

    ids = reply_ids(tokenizer, text, choice=name, guided=guided, think=think)
    sampled = list(sampled_sets or [])
    first = next((p for p, s in enumerate(sampled) if s is not None), None)
    if first is None:
        return ids, None
    tail = [None if s is None else list(s) for s in sampled[first:]]
    sets = [None] * (len(ids) - len(tail)) + tail
    ok = len(ids) >= len(tail) and all(s is None or tok in s for tok, s in zip(ids, sets))
    return ids, sets if ok else None


def reply_choice_sets(trajectory: Trajectory, span: tuple[int, int]) -> list[list[int] | None]:
    """The guided choice set of each token in ``span`` of the trajectory's sequence (None where free)."""
    sets = trajectory.choice_set_at()
    return [sets.get(p) for p in range(*span)]


def replay_states(env: Any, trajectory: Trajectory) -> list[Any]:
    """``get_state()`` before each recorded turn and after the last (``K + 1`` states), by replaying the replies.

    Raises:
        AgentGymError: a replayed observation differs from the recorded one (the env is not reproducible from its
            task and seed, so the states would be wrong).
    """
    base = env.unwrapped
    obs, _ = env.reset(seed=trajectory.seed, options={"task": trajectory.task})
    states = [base.get_state()]
    for number, turn in enumerate(trajectory.turns):
        if turn.observation is not None and observation_text(env, obs) != turn.observation:
            raise AgentGymError(
                f"Replaying task {trajectory.task!r} (seed {trajectory.seed}) diverged at turn {number}: the env "
                "does not reproduce its episodes from (task, seed), so the MC-Critic cannot find the visited states. "
                "Make reset(seed=...) and step() deterministic (randomness from self.np_random only)."
            )
        obs, *_ = env.step(turn.action)
        states.append(base.get_state())
    return states
