"""The LLM policy through the rollout engine: token-exact multi-turn bookkeeping, masks, budgets, bad output."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import agentgym  # noqa: E402
from agentgym.rollout import RolloutConfig, RolloutEngine  # noqa: E402
from policies.llm.policy import LLMPolicy, LLMPolicyConfig  # noqa: E402


class Recording:
    """Delegates to a real backend and keeps every prompt and generation it saw."""

    def __init__(self, backend):
        self.inner, self.tokenizer, self.max_context = backend, backend.tokenizer, backend.max_context
        self.calls = []

    def generate(self, prompts, params):
        gens = self.inner.generate(prompts, params)
        self.calls.append(([list(p) for p in prompts], gens, params))
        return gens


def _run(corridor_id, backend, *, episodes=2, max_turns=4, env_kwargs=None, **config):
    policy = LLMPolicy(backend, LLMPolicyConfig(**{"max_new_tokens": 6, **config}))
    engine = RolloutEngine(
        lambda: agentgym.make(corridor_id, **(env_kwargs or {"length": 12})),
        policy,
        RolloutConfig(num_envs=episodes, max_turns=max_turns),
        env_id=corridor_id,
    )
    return engine.run([(t, t) for t in range(episodes)], seed=0)


def test_multi_turn_sequence_is_exactly_what_was_sampled(corridor_id, tiny_backend):
    backend = Recording(tiny_backend(seed=0))
    trajectories = _run(corridor_id, backend, episodes=1, max_turns=3)
    (t,) = trajectories
    assert t.steps == 3 and len(backend.calls) == 3
    assistant = [(start, end) for role, start, end, _ in t.segments if role == "assistant"]
    assert len(assistant) == 3
    for (prompts, gens, _), (start, end) in zip(backend.calls, assistant):
        # The prompt of turn i is the episode sequence up to turn i's reply, token for token (no re-templating).
        assert prompts[0] == t.token_ids[:start]
        assert gens[0].token_ids == t.token_ids[start:end]
        assert gens[0].logprobs == pytest.approx(t.logprobs[start:end])
    mask_positions = [i for i, m in enumerate(t.loss_mask) if m]
    assert mask_positions == [i for start, end in assistant for i in range(start, end)]
    assert all(lp == 0.0 for lp, m in zip(t.logprobs, t.loss_mask) if not m)


def test_recorded_logprobs_match_a_rescore_of_the_whole_episode(corridor_id, tiny_backend):
    backend = tiny_backend(seed=1)
    trajectories = _run(corridor_id, backend, episodes=2, max_turns=3, temperature=1.0)
    for t in trajectories:
        ids = torch.tensor([t.token_ids])
        with torch.no_grad():
            logp, _ = backend.sequence_logprobs(ids, torch.ones_like(ids))
        positions = [i for i, m in enumerate(t.loss_mask) if m]
        rescored = [float(logp[0, i - 1]) for i in positions]
        assert rescored == pytest.approx([t.logprobs[i] for i in positions], abs=1e-4)


def test_guided_decoding_always_gives_valid_actions(corridor_id, tiny_backend):
    trajectories = _run(corridor_id, tiny_backend(seed=2), episodes=3, max_turns=4, guided=True)
    assert all(turn.action_valid for t in trajectories for turn in t.turns)
    assert all(t.constrained for t in trajectories)
    assert {turn.action for t in trajectories for turn in t.turns} <= {"Left", "Right"}


def test_unparseable_replies_are_penalised_no_ops_and_the_run_goes_on(corridor_id, tiny_backend):
    # A random tiny model writes garbage: every step is an invalid no-op with the env's penalty, never an error.
    trajectories = _run(
        corridor_id,
        tiny_backend(seed=3),
        episodes=2,
        max_turns=3,
        env_kwargs={"length": 12, "invalid_action_penalty": 0.5},
    )
    invalid = [turn for t in trajectories for turn in t.turns if not turn.action_valid]
    assert invalid, "expected the random model to produce unparseable text"
    assert all(turn.reward == pytest.approx(-0.01 - 0.5) for turn in invalid)
    assert all(t.steps == 3 for t in trajectories)


def test_overlong_replies_are_cut_at_the_budget_with_a_warning(corridor_id, tiny_backend):
    trajectories = _run(corridor_id, tiny_backend(seed=4), episodes=1, max_turns=2, max_new_tokens=3)
    (t,) = trajectories
    assert all(turn.response_tokens <= 3 for turn in t.turns)
    lengths = [turn for turn in t.turns if turn.finish_reason == "length"]
    assert lengths and any("max_new_tokens=3" in w for w in t.warnings)


def test_context_budget_drops_old_turns_and_overflow_truncates(corridor_id, tiny_backend, smol_tokenizer):
    backend = Recording(tiny_backend(seed=5))
    trajectories = _run(corridor_id, backend, episodes=1, max_turns=6, context_tokens=150, max_new_tokens=4)
    (t,) = trajectories
    assert t.context_dropped_turns > 0
    assert all(len(p) + 4 <= 150 for prompts, _, _ in backend.calls for p in prompts)
    # A budget below the system prompt: the episode stops with a warning naming the budget, nothing crashes.
    tiny = _run(corridor_id, tiny_backend(seed=5), episodes=2, max_turns=3, context_tokens=40, max_new_tokens=4)
    assert all(t.truncated and t.steps == 1 for t in tiny)
    assert all("context budget of 40" in " ".join(t.warnings) for t in tiny)


def test_history_turns_limits_the_prompt(corridor_id, tiny_backend):
    backend = Recording(tiny_backend(seed=6))
    _run(corridor_id, backend, episodes=1, max_turns=4, history_turns=0)
    lengths = [len(prompts[0]) for prompts, _, _ in backend.calls]
    assert max(lengths) - min(lengths) <= 12  # each prompt is the system prompt plus only the current turn


def test_cross_turn_kv_reuse_changes_nothing_but_the_cost(corridor_id, tiny_backend):
    from policies.llm.hf_prefix import PrefixCache

    runs = {}
    for reuse in (False, True):
        backend = tiny_backend(seed=7)
        backend.prefix_cache = PrefixCache() if reuse else None
        runs[reuse] = (_run(corridor_id, backend, episodes=3, max_turns=4, temperature=0.0), backend.prefix_cache)
    plain, (cached, cache) = runs[False][0], runs[True]
    assert cache.hits >= 3 * 3 and cache.reused_tokens > 0  # every turn after the first reused its history
    for a, b in zip(sorted(plain, key=lambda t: t.seed), sorted(cached, key=lambda t: t.seed)):
        assert a.token_ids == b.token_ids
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


def test_prefix_cache_is_bounded_and_cleared():
    from policies.llm.hf_prefix import PrefixCache

    cache = PrefixCache(max_tokens=10)
    kv = [(torch.zeros(1, 4, 2), torch.zeros(1, 4, 2))]
    cache.store([1, 2, 3, 4], kv)
    cache.store([5, 6, 7, 8], kv)
    assert cache.lookup([1, 2, 3, 4, 9]) == (4, kv)
    cache.store([9, 9, 9, 9], kv)  # 12 tokens > 10: the least recently used entry goes
    assert cache.lookup([5, 6, 7, 8, 1])[0] == 0 and len(cache) == 2
    assert cache.lookup([1, 2, 3, 4])[0] == 0  # only proper prefixes: a prompt needs at least one new token
    cache.clear()
    assert len(cache) == 0
