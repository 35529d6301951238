"""The Hugging Face transformers backend: batched, KV-cached sampling written out, plus what trainers need.

``HFBackend.generate`` runs one sampling loop for a whole batch of token-id prompts (left-padded, with explicit
position ids so padded rows see the same positions as unpadded ones). Rows that finish are dropped from the
batch and its KV cache, so a long straggler does not pay for the short ones. Each step costs one forward pass,
a few vectorised tensor ops over the vocabulary, and one device-to-host copy of three numbers per row.

Guided decoding (``SamplingParams.choices``) lives in ``hf_guided``; ``sequence_logprobs`` re-scores
sequences for trainers, with gradients when called under grad.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint
from transformers import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast

from policies.llm.base import Generation, SamplingParams
from policies.llm.hf_guided import ChoiceGuide, RowState, token_strings
from policies.llm.hf_prefix import PrefixCache, assemble, extract
from policies.llm.model_files import DEFAULT_MODEL, downloads_allowed, resolve_model

#: The forward keyword (and output field) of the KV cache: ``cache`` from transformers 5.2x on, where
#: ``past_key_values`` still works but warns on every call; ``past_key_values`` before.
CACHE = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"

_NEG_INF = float("-inf")


@dataclass(frozen=True)
class LoraSettings:
    """A LoRA adapter (peft) on top of the frozen model.

    Attributes:
        r: adapter rank.
        alpha: scaling numerator (the update is scaled by ``alpha / r``).
        dropout: dropout on the adapter input during training.
        target_modules: names of the linear layers that get adapters.
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"LoRA rank r={self.r} must be >= 1.")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"LoRA dropout={self.dropout} must be in [0, 1).")


class HFBackend:
    """An ``LLMBackend`` over a local transformers causal LM.

    Attributes:
        model: the ``torch`` module (a peft model when LoRA is on).
        tokenizer: its tokenizer.
        max_context: longest prompt + completion, in tokens.
        device: where the model runs.
    """

    def __init__(self, model: str = DEFAULT_MODEL, *, device: str = "auto", dtype: str | torch.dtype = "auto",
                 lora: LoraSettings | None = None, max_context: int | None = None,
                 allow_download: bool | None = None) -> None:
        """Load a model by name (``"smollm2"``: the embedded default), local directory, or opt-in hub id.

        Args:
            model: ``"smollm2"``, a directory written by ``save_pretrained``, or a hub id (needs allow_download).
            device: ``"auto"`` (cuda when available, else cpu) or a torch device string.
            dtype: ``"auto"`` (bf16 on CUDA, fp32 on CPU), a dtype name such as ``"float16"``, or a torch dtype.
            lora: wrap the model with a fresh LoRA adapter.
            max_context: override the model's ``max_position_embeddings``.
            allow_download: allow fetching a hub id (None: read ``AGENTGYM_ALLOW_DOWNLOAD``).
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a per-load "Loading weights" bar is noise inside our own progress display
        dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                           "cpu" if device == "auto" else device)
        if dtype == "auto":
            dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
        elif isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        source = resolve_model(model, allow_download=allow_download)
        offline = not downloads_allowed(allow_download)
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=offline)
        loaded = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=offline).to(dev)
        self._setup(loaded, tokenizer, lora=lora, max_context=max_context)
        #: What the weights were loaded from (the cache directory for the embedded model).
        self.source = source

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, *, lora: LoraSettings | None = None,
                   max_context: int | None = None) -> HFBackend:
        """Wrap an already-built model (for example a tiny random one in tests); it stays on its device."""
        backend = cls.__new__(cls)
        backend._setup(model, tokenizer, lora=lora, max_context=max_context)
        backend.source = None
        return backend

    def _setup(self, model: Any, tokenizer: Any, *, lora: LoraSettings | None, max_context: int | None) -> None:
        if lora is not None:
            from peft import LoraConfig, get_peft_model

            config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
            with warnings.catch_warnings():  # peft reads an attribute transformers deprecated; not ours to fix
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                model = get_peft_model(model, config)
        self.model = model
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.max_context = int(max_context or getattr(model.config, "max_position_embeddings", 2048))
        eos = {tokenizer.eos_token_id}
        generation_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos |= set(generation_eos) if isinstance(generation_eos, (list, tuple)) else {generation_eos}
        self.eos_token_ids = sorted(e for e in eos if e is not None)
        self._eos = torch.tensor(self.eos_token_ids, dtype=torch.long, device=self.device)
        self._pad_id = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0)
        self._token_strings: list[str] | None = None
        self._guides: dict[tuple[Any, ...], ChoiceGuide] = {}
        #: Keys/values of earlier turns, reused by later prompts that extend them (None disables reuse).
        self.prefix_cache: PrefixCache | None = PrefixCache()

    # ------------------------------------------------------------------ generation
    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[Generation]:
        """Sample one completion per prompt in one batched, KV-cached loop (see ``SamplingParams``).

        Temperature 0 is greedy; its log-probs and entropies are then those of the unscaled (temperature 1)
        distribution, after any masking, since a point mass would carry no information. With ``choices``, EOS
        and stop strings cannot end the completion: it always ends with a choice (see ``ChoiceGuide``).
        """
        if not prompts:
            return []
        longest = max(len(p) for p in prompts)
        if min(len(p) for p in prompts) == 0 or longest + params.max_new_tokens > self.max_context:
            raise ValueError(
                f"Prompts must be non-empty and fit max_context={self.max_context} with max_new_tokens="
                f"{params.max_new_tokens} (longest prompt: {longest} tokens); shorten the prompt or the reply cap.")
        guide = self._guide(params) if params.choices else None
        rows = [RowState(guide, self.tokenizer) for _ in prompts]
        generator = torch.Generator(self.device)
        if params.seed is not None:
            generator.manual_seed(params.seed)
        else:
            generator.seed()
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                self._sample_loop(prompts, rows, params, guide, generator)
        finally:
            self.model.train(was_training)
        return [row.result(self.tokenizer) for row in rows]

    def _sample_loop(self, prompts: Sequence[Sequence[int]], rows: list[RowState], params: SamplingParams,
                     guide: ChoiceGuide | None, generator: torch.Generator) -> None:
        # Cross-turn reuse: each row's longest cached prefix is loaded as past keys/values, so the prefill only
        # runs the last `chunk` columns (the tokens added since the row's previous turn, aligned to the right).
        if self.prefix_cache is not None and len(prompts) > 1:
            self._cache_common_prefix(prompts)
        reuse = [self.prefix_cache.lookup(p) for p in prompts] if self.prefix_cache is not None else \
            [(0, None)] * len(prompts)
        chunk = max(len(p) - n for p, (n, _) in zip(prompts, reuse))
        width = max(len(p) for p in prompts)
        past = width - chunk
        ids = torch.full((len(prompts), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width + params.max_new_tokens), dtype=torch.long)
        for i, prompt in enumerate(prompts):  # left padding: every row's next token lands in the same column
            ids[i, width - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long)
            mask[i, width - len(prompt):] = 1  # the prompt and every column a generated token will fill
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask[:, :width].cumsum(-1) - 1).clamp(min=0)
        layers = assemble([(max(len(p) - chunk, 0), kv) for p, (_, kv) in zip(prompts, reuse)], past,
                          self.model.config.num_hidden_layers) if past else None
        cache = DynamicCache(ddp_cache_data=layers) if layers is not None else None
        out = self.model(input_ids=ids[:, past:], attention_mask=mask[:, :width], position_ids=positions[:, past:],
                         use_cache=True, logits_to_keep=1, **{CACHE: cache})
        cache, next_pos = getattr(out, CACHE), positions[:, -1] + 1
        active = list(range(len(rows)))
        for step in range(params.max_new_tokens):
            tokens = self._next_tokens(out.logits[:, -1].float(), [rows[i] for i in active], params, generator)
            keep = [j for j, i in enumerate(active) if rows[i].finish is None]
            if self.prefix_cache is not None:  # remember what finished rows read, for their next turn
                for j, i in enumerate(active):
                    if rows[i].finish is not None:
                        fed = [*prompts[i], *rows[i].tokens[:-1]]
                        self.prefix_cache.store(fed, extract(cache, j, mask[j]))
            if not keep:
                return
            if len(keep) < len(active):  # drop finished rows from the batch and the KV cache
                index = torch.tensor(keep, device=self.device)
                cache.reorder_cache(index)
                tokens, mask, next_pos = tokens[index], mask[index], next_pos[index]
                active = [active[j] for j in keep]
            out = self.model(input_ids=tokens[:, None], attention_mask=mask[:, :width + step + 1],
                             position_ids=next_pos[:, None], use_cache=True, **{CACHE: cache})
            next_pos = next_pos + 1

    def _cache_common_prefix(self, prompts: Sequence[Sequence[int]]) -> None:
        """Run the opening every prompt shares (the system prompt) once and cache its keys/values.

        Each row's prefill then starts after it, unless the row's own history is cached further. With one-turn
        prompts (``history_turns=0``) nothing else is ever reused, and the system prompt is most of each prompt.
        """
        first = prompts[0]
        limit = min(len(p) for p in prompts) - 1  # a proper prefix of every prompt
        common = next((i for i in range(limit) if any(p[i] != first[i] for p in prompts[1:])), limit)
        if common < _MIN_SHARED_PREFIX or len(self.prefix_cache.longest(first[: common + 1]) or ()) >= common:
            return
        key = list(first[:common])
        out = self.model(input_ids=torch.tensor([key], device=self.device), use_cache=True)
        self.prefix_cache.store(key, extract(getattr(out, CACHE), 0, torch.ones(common, dtype=torch.long)))

    def clear_prefix_cache(self) -> None:
        """Forget cached prompt keys/values; call after every change of the weights."""
        if self.prefix_cache is not None:
            self.prefix_cache.clear()

    def _next_tokens(self, logits: torch.Tensor, rows: list[RowState], params: SamplingParams,
                     generator: torch.Generator) -> torch.Tensor:
        """Choose each active row's next token, record it on the row, and return the tokens [b]."""
        scaled = logits / params.temperature if params.temperature > 0 else logits
        logprobs = torch.log_softmax(scaled, dim=-1)
        probs = logprobs.exp()
        entropy = -(probs * logprobs).sum(-1)  # of the temperature-scaled distribution, before any truncation
        forced: dict[int, int] = {}
        masked = False
        for j, row in enumerate(rows):
            rule = row.constraint(params.max_new_tokens)
            if isinstance(rule, int):
                forced[j] = rule
            elif rule is not None:
                masked = True
                if rule.dtype == torch.long:  # banned ids
                    scaled[j, rule] = _NEG_INF
                else:  # additive 0 / -inf mask over the vocabulary
                    scaled[j] += rule
        if masked or params.top_k > 0 or params.top_p < 1.0:  # renormalise over what is left
            scaled = _truncate(scaled, params.top_k, params.top_p)
            logprobs = torch.log_softmax(scaled, dim=-1)
            probs = logprobs.exp()
        if params.temperature == 0:
            chosen = scaled.argmax(-1)
        else:
            chosen = _sample(probs, generator)
        if forced:
            where = torch.tensor(list(forced), device=chosen.device)
            chosen[where] = torch.tensor(list(forced.values()), device=chosen.device)
        picked = logprobs.gather(-1, chosen[:, None]).squeeze(-1)
        # One host copy per step (a device sync point); everything else stays on the device.
        stats = torch.stack([chosen.to(picked.dtype), picked, entropy]).tolist()
        for j, row in enumerate(rows):
            token = int(stats[0][j])
            row.add(token, 0.0 if j in forced else stats[1][j], stats[2][j])
            self._update_finish(row, params)
        return chosen

    def _update_finish(self, row: RowState, params: SamplingParams) -> None:
        token = row.tokens[-1]
        if row.guide is not None:
            row.advance()
        elif token in self.eos_token_ids:
            row.finish = "eos"
        elif params.stop and _tail_contains(self.tokenizer, row.tokens, params.stop):
            row.finish = "stop"
        if row.finish is None and len(row.tokens) >= params.max_new_tokens:
            row.finish = "length"

    def _guide(self, params: SamplingParams) -> ChoiceGuide:
        key = (params.choices, params.choice_prefix, params.choice_suffix, params.max_new_tokens,
               params.choice_tokenization)
        if key not in self._guides:
            if self._token_strings is None:
                self._token_strings = token_strings(self.tokenizer)
            vocab = self.model.get_output_embeddings().weight.shape[0]
            self._guides[key] = ChoiceGuide(self._token_strings, self.tokenizer, params, vocab, self._eos)
        return self._guides[key]

    # ------------------------------------------------------------------ training support
    def sequence_logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, temperature: float = 1.0,
                          chunk: int = 256, scored: torch.Tensor | None = None,
                          choices: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-prob and entropy of each next token under the current parameters (with grad under grad).

        Only the decoder runs on the whole sequence; the vocabulary projection and softmax run ``chunk``
        positions at a time, recomputed in the backward pass (activation checkpointing), so the fp32
        ``[B, T, vocab]`` logits never exist at once. Works for left- or right-padded batches.

        Args:
            input_ids: ``[B, T]`` token ids.
            attention_mask: ``[B, T]``, 1 on real tokens.
            temperature: the logits are divided by it (use the sampling temperature; 0 is treated as 1).
            chunk: positions per vocabulary-projection chunk.
            scored: optional ``[B, T-1]`` mask of the positions the caller uses (a loss mask). Only those go through
                the vocabulary projection, which otherwise costs as much as a fifth of a small model's pass on
                prompts where only a few reply tokens are trained; the others come back as 0.
            choices: optional ``[B, T-1, C]`` ids (-1 padded) that guided decoding drew each next token from
                (``TokenBatch.choices``). Where a position has any, its log-prob and entropy are those of the
                distribution renormalised over them, i.e. of the sampler that produced the token (a forced token
                scores 0); elsewhere the whole vocabulary's.

        Returns:
            ``(logprobs, entropies)``, each ``[B, T-1]``: position t scores token t+1; padded (and unscored)
            positions are junk and must be masked by the caller.
        """
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        head = base.get_output_embeddings()
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        shared = _shared_prefix(input_ids, attention_mask)
        decoder = base.get_decoder()
        if shared >= _MIN_SHARED_PREFIX:
            # Rows that start with the same tokens (every turn's prompt opens with the system prompt) run that
            # prefix once; its keys/values are repeated for every row. Exact, and the gradient through the prefix
            # is the sum over rows, as if each row had run it.
            from transformers import DynamicCache

            cache = DynamicCache()
            first = decoder(input_ids=input_ids[:1, :shared], position_ids=positions[:1, :shared],
                            use_cache=True, **{CACHE: cache}).last_hidden_state
            cache.batch_repeat_interleave(input_ids.shape[0])
            rest = decoder(input_ids=input_ids[:, shared:], attention_mask=attention_mask,
                           position_ids=positions[:, shared:], use_cache=True, **{CACHE: cache}).last_hidden_state
            hidden = torch.cat([first.expand(input_ids.shape[0], -1, -1), rest], 1)[:, :-1]
        else:
            hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                             use_cache=False).last_hidden_state[:, :-1]
        targets = input_ids[:, 1:]
        scale = 1.0 / temperature if temperature > 0 else 1.0

        def score(h: torch.Tensor, t: torch.Tensor, c: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
            logits = head(h).float() * scale
            norm = torch.logsumexp(logits, dim=-1)
            probs = torch.softmax(logits, dim=-1)
            entropy = norm - (probs * logits).sum(-1)
            if c is not None:  # guided positions: the sampler's distribution, renormalised over the choice set
                valid = c >= 0
                sub = logits.gather(-1, c.clamp(min=0)).masked_fill(~valid, float("-inf"))
                sub_norm = torch.logsumexp(sub, dim=-1)
                sub_probs = torch.softmax(sub, dim=-1)
                sub_entropy = sub_norm - (sub_probs * sub.masked_fill(~valid, 0.0)).sum(-1)
                guided = valid.any(-1)
                norm = torch.where(guided, sub_norm, norm)
                entropy = torch.where(guided, sub_entropy, entropy)
            return logits.gather(-1, t[..., None]).squeeze(-1) - norm, entropy

        sets = choices.to(hidden.device) if choices is not None and choices.shape[-1] > 0 else None
        if scored is not None:
            keep = scored.to(hidden.device).bool()
            if not bool(keep.any()):  # nothing to score: zeros that still hang on the graph (a loss on them is 0)
                zeros = torch.zeros(keep.shape, device=hidden.device) + hidden.sum() * 0.0
                return zeros, zeros
            hidden, targets = hidden[keep][None], targets[keep][None]  # [1, N, d]: only the used positions
            sets = None if sets is None else sets[keep][None]
        parts = []
        for start in range(0, hidden.shape[1], chunk):
            h, t = hidden[:, start:start + chunk], targets[:, start:start + chunk]
            c = None if sets is None else sets[:, start:start + chunk]
            parts.append(checkpoint(score, h, t, c, use_reentrant=False) if torch.is_grad_enabled() else score(h, t, c))
        logprobs, entropies = torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1)
        if scored is None:
            return logprobs, entropies
        full = torch.zeros(keep.shape, dtype=logprobs.dtype, device=logprobs.device)
        return full.masked_scatter(keep, logprobs[0]), full.masked_scatter(keep, entropies[0])

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters an optimizer should update (only the adapter's when LoRA is on)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def save(self, path: str | Path) -> None:
        """Save the LoRA adapter (when LoRA is on) or the whole model, plus the tokenizer, to a directory."""
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)

    def load_adapter(self, path: str | Path) -> None:
        """Replace any LoRA adapter with the one saved at ``path`` by ``save``; it stays trainable."""
        from peft import PeftModel

        base = self.model.unload() if hasattr(self.model, "unload") else self.model
        self.model = PeftModel.from_pretrained(base, str(path), is_trainable=True)
        self.clear_prefix_cache()


def _truncate(scores: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Top-k then top-p (nucleus) truncation of ``[b, vocab]`` scores; removed entries become -inf."""
    if 0 < top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, _NEG_INF)
    if top_p < 1.0:
        ordered, order = torch.sort(scores, dim=-1, descending=True)
        probs = torch.softmax(ordered, dim=-1)
        # Drop a token when the tokens ranked above it already hold top_p of the mass (the first always stays).
        drop = (probs.cumsum(-1) - probs) >= top_p
        scores = scores.masked_fill(drop.scatter(-1, order, drop), _NEG_INF)
    return scores


def _sample(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One draw per row of ``[b, vocab]`` probabilities by inverting the CDF.

    Needs one uniform number per row, where ``torch.multinomial`` or an exponential race draw a vocabulary's
    worth; on a CPU this is about 20x faster for a 49k vocabulary. ``right=True`` never picks a zero-probability
    token (its cumulative sum equals its predecessor's); the fp32 cumsum biases draws by about 1e-7 at most.
    """
    cdf = probs.cumsum(-1)
    u = torch.rand((probs.shape[0], 1), generator=generator, device=probs.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)


def _tail_contains(tokenizer: Any, tokens: list[int], stops: Sequence[str]) -> bool:
    """Whether the decoded last few tokens contain a stop string (only the tail is decoded, for speed).

    A stop string of n characters spans at most 4n tokens (byte-level BPE may split a character into up to four
    byte tokens), and an earlier occurrence would already have ended the row.
    """
    window = 4 * max(len(s) for s in stops) + 1
    text = tokenizer.decode(tokens[-window:], skip_special_tokens=False)
    return any(s in text for s in stops)


#: Shortest common prefix worth running once per batch in ``sequence_logprobs``.
_MIN_SHARED_PREFIX = 16


def _shared_prefix(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> int:
    """Length of the leading tokens every row shares (all real, right-padded rows; 0 for a single row)."""
    if input_ids.shape[0] < 2 or not bool(attention_mask[:, 0].all()):
        return 0
    same = (input_ids == input_ids[:1]) & attention_mask.bool()
    differs = (~same.all(0)).nonzero()
    length = int(differs[0]) if len(differs) else input_ids.shape[1]
    return min(length, input_ids.shape[1] - 1)  # keep at least one position per row in the second pass
