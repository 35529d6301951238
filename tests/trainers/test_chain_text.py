"""Reading GLAD chains in MC-GRPO: their clauses, agreement with the solver, the decision and the clause rows.

Golden tests of the text functions ProAct's MC-GRPO options rest on (``agentgym.mc_groups`` and
``trainers.turn_rows``), on hand-written chains and the real SmolLM2 tokenizer; the trainer tests that use them are
in test_proact.py.
"""

from __future__ import annotations

import pytest

from agentgym.mc_groups import chain_agreement, chain_clauses, clause_spans, clause_verdicts, rewrite_decision
from agentgym.trajectory import Trajectory, Turn
from trainers.turn_rows import clause_rows, decision_start, one_turn_row


def test_rewrite_decision_changes_the_closing_clause_and_the_answer_only():
    chain = "<think>Box 1 left. Left: pushes box, solves it. Down: wall. Best: Down.</think><answer>Down</answer>"
    assert rewrite_decision(chain, "Down", "Left") == (
        "<think>Box 1 left. Left: pushes box, solves it. Down: wall. Best: Left.</think><answer>Left</answer>"
    )
    # A closing clause that names another move than the answer is left as written; the answer still changes.
    odd = "<think>Left: x. Down: y. Best: Left.</think><answer>Down</answer>"
    assert rewrite_decision(odd, "Down", "Up") == "<think>Left: x. Down: y. Best: Left.</think><answer>Up</answer>"
    assert rewrite_decision("blue", "blue", "red") == "red"  # a bare answer
    assert rewrite_decision(chain, "Up", "Left") is None  # the answer is not the named action
    assert rewrite_decision("<think>Best: Down.</think>", "Down", "Up") is None  # no answer to rewrite


def test_decision_start_is_the_last_best_clause_else_the_answer(smol_tokenizer):
    def tail(text):
        ids = smol_tokenizer.encode(text, add_special_tokens=False)
        return smol_tokenizer.decode(ids[decision_start(smol_tokenizer, ids):])

    chain = "<think>Box 1 left of you. Up: wall. Best: Up. Down: shortest. Best: Down.</think><answer>Down</answer>"
    assert tail(chain).strip() == "Best: Down.</think><answer>Down</answer>"
    assert tail("Left: wall.<answer>Right</answer>") == ".<answer>Right</answer>"  # ".<" is one token
    assert tail("blue sky, no decision") == "blue sky, no decision"  # neither marker: the whole reply


def test_chain_agreement_counts_the_solver_clauses_a_chain_states():
    solver = ("<think>Box 1 left of you, target 1 up of it. Next: push it Up, standing below of it: 1 down and 1 left "
              "of you. Up: wall. Down: shortest. Left: 2 more moves. Right: box blocked. Best: Down.</think>"
              "<answer>Down</answer>")
    assert chain_clauses(solver) == ["Box 1 left of you, target 1 up of it",
                                     "Next: push it Up, standing below of it: 1 down and 1 left of you",
                                     "Up: wall", "Down: shortest", "Left: 2 more moves", "Right: box blocked"]
    assert chain_agreement(solver, solver) == 1.0
    wrong = solver.replace("Left: 2 more moves", "Left: shortest").replace("Best: Down", "Best: Left")
    assert chain_agreement(wrong, solver) == pytest.approx(5 / 6)
    # A chain that repeats its closing clause (the looping failure) or a clause gains nothing for the repeat.
    assert chain_agreement(solver.replace("Best: Down.", "Best: Down. Best: Down."), solver) == pytest.approx(6 / 7)
    assert chain_agreement(solver.replace("Up: wall.", "Up: wall. Up: wall."), solver) == pytest.approx(6 / 7)
    # No chain (an answer only) or another reply format altogether: nothing confirmed.
    assert chain_agreement("<answer>Down</answer>", solver) == 0.0
    assert chain_agreement("blue", solver) == 0.0 and chain_agreement("", "") == 0.0


def test_clause_rows_split_a_chain_by_the_solver_verdict_on_each_clause(smol_tokenizer):
    solver = ("<think>Box 1 left of you. Up: wall. Down: shortest. Left: 2 more moves. Best: Down.</think>"
              "<answer>Down</answer>")
    reply = ("<think>Box 1 left of you. Up: shortest. Down: shortest. Down: shortest. Left: 2 more moves. Best: Up."
             "</think><answer>Up</answer>")
    assert [(c, reply[a:b]) for c, a, b in clause_spans(reply)][:2] == [("Box 1 left of you", "Box 1 left of you"),
                                                                       ("Up: shortest", "Up: shortest")]
    # Wrong: "Up: shortest" (the solver says wall) and the repeat of "Down: shortest" (confirmed once).
    assert [ok for _, _, ok in clause_verdicts(reply, solver)] == [True, False, True, False, True]
    # Leaving a clause out is charged to the clause that takes its place, or to the last clause when the chain stops
    # early; a clause cut short is wrong itself. Nothing is charged where every solver clause has its counterpart.
    gap = "<think>Box 1 left of you. Up: wall. Left: 2 more moves. Best: Up.</think><answer>Up</answer>"
    assert [ok for _, _, ok in clause_verdicts(gap, solver)] == [True, True, False]
    short = "<think>Box 1 left of you. Up: wall. Down: shortest. Best: Down.</think><answer>Down</answer>"
    assert [ok for _, _, ok in clause_verdicts(short, solver)] == [True, True, False]
    cut = "<think>Box 1 left. Up: wall. Down: shortest. Left: 2 more moves. Best: Down.</think><answer>Down</answer>"
    assert [ok for _, _, ok in clause_verdicts(cut, solver)] == [False, True, True, True]
    assert all(ok for _, _, ok in clause_verdicts(solver, solver))
    ids = smol_tokenizer.encode(reply, add_special_tokens=False)
    prompt = smol_tokenizer.encode("Where is the box?", add_special_tokens=False)
    source = Trajectory(env_id="e", task=1, seed=0, group=0, split="train", turns=[Turn(None, reply, 0.0, True, {})])
    row = one_turn_row(source, 0, prompt, ids, [0.0] * len(ids), text=reply, reward=0.0, key=[1, 0, 0],
                       constrained=False, loss_from=decision_start(smol_tokenizer, ids))
    right, wrong = clause_rows([row], [0], [solver], smol_tokenizer)

    def trained(r):
        return smol_tokenizer.decode([t for t, m in zip(r.token_ids, r.loss_mask) if m])

    # Each row trains exactly its clauses' words and their closing full stops: no tag or decision token, no token
    # twice.
    assert trained(right).split() == "Box 1 left of you. Down: shortest. Left: 2 more moves.".split()
    assert trained(wrong).split() == "Up: shortest. Down: shortest.".split()
    assert not any(a and b for a, b in zip(right.loss_mask, wrong.loss_mask))
    assert not any(m for m in right.loss_mask[: len(prompt)])
    assert (right.episode_return, wrong.episode_return) == (1.0, 0.0)
    info = right.turns[0].info
    assert (info["clauses"], wrong.turns[0].info["clauses"], info["reply"]) == (3, 2, 0)
    assert info["chain_agreement"] == chain_agreement(reply, solver) == pytest.approx(3 / 5)
    # The solver's own chain has no wrong row; a state without a solver chain, no rows.
    ids = smol_tokenizer.encode(solver, add_special_tokens=False)
    teacher = one_turn_row(source, 0, prompt, ids, [0.0] * len(ids), text=solver, reward=0.0, key=[1, 0, 0],
                           constrained=False, loss_from=decision_start(smol_tokenizer, ids))
    assert [r.episode_return for r in clause_rows([teacher, row], [0, 1], [solver, None], smol_tokenizer)] == [1.0]
