"""The vllm backend: the ``LLMBackend`` interface on vllm's offline engine (GPU rollouts).

vllm pins its own torch and transformers, so it is an optional extra (``pip install 'agentgym[vllm]'``) that may
live in its own environment; from there, ``vllm serve`` plus the ``openai`` policy evaluates served models.
Token ids go in and come out (``TokensPrompt``), so multi-turn bookkeeping stays token-exact. Sampled-token
log-probs come from vllm (``logprobs=0``); which distribution they describe depends on vllm's logprobs mode, so
trainers recompute behaviour log-probs with their own model (as ``trainers.policy_gradient`` always does).

Not exercised in CI (no GPU there); see benchmarks/RESULTS.md for what was verified on a GPU.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from agentgym.errors import AgentGymError, MissingExtraError
from policies.llm.base import Generation, SamplingParams
from policies.llm.model_files import resolve_model


def _require_vllm() -> Any:
    try:
        import vllm
    except ImportError as exc:
        raise MissingExtraError("The vllm backend", "vllm", "vllm") from exc
    import torch

    if not torch.cuda.is_available():
        raise AgentGymError(
            "The vllm backend needs a CUDA GPU and none is visible; use the hf backend "
            "(policy 'smollm2' or 'hf:PATH') on CPU."
        )
    return vllm


class VLLMBackend:
    """An ``LLMBackend`` over ``vllm.LLM``.

    Args:
        model: ``"smollm2"``, a local model directory, or a hub id with downloads allowed.
        gpu_memory_utilization: share of GPU memory vllm may take (leave room for a colocated trainer).
        max_context: the engine's ``max_model_len`` (None: the model's).
        dtype: weights dtype for vllm (``"auto"``: bf16 where supported).
        seed: the engine's seed.
    """

    def __init__(
        self,
        model: str = "smollm2",
        *,
        gpu_memory_utilization: float = 0.5,
        max_context: int | None = None,
        dtype: str = "auto",
        seed: int = 0,
        allow_download: bool | None = None,
    ) -> None:
        vllm = _require_vllm()
        source = str(resolve_model(model, allow_download=allow_download))
        self.llm = vllm.LLM(
            model=source,
            dtype=dtype,
            seed=seed,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_context,
            enable_prefix_caching=True,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.max_context = int(self.llm.llm_engine.model_config.max_model_len)
        self._vllm = vllm

    def _sampling(self, params: SamplingParams) -> Any:
        kwargs: dict[str, Any] = dict(
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else -1,
            max_tokens=params.max_new_tokens,
            stop=list(params.stop),
            include_stop_str_in_output=True,
            seed=params.seed,
            logprobs=0,
        )
        if params.choices is not None:
            pattern = (
                (f"(?s).*?{re.escape(params.choice_prefix)}" if params.choice_prefix else "")
                + "("
                + "|".join(re.escape(c) for c in params.choices)
                + ")"
                + re.escape(params.choice_suffix)
            )
            kwargs.update(self._guided(pattern))
        return self._vllm.SamplingParams(**kwargs)

    def _guided(self, pattern: str) -> dict[str, Any]:
        """Regex-constrained decoding, across the two names vllm has used for it."""
        sampling = self._vllm.sampling_params
        if hasattr(sampling, "StructuredOutputsParams"):
            return {"structured_outputs": sampling.StructuredOutputsParams(regex=pattern)}
        if hasattr(sampling, "GuidedDecodingParams"):
            return {"guided_decoding": sampling.GuidedDecodingParams(regex=pattern)}
        raise AgentGymError("This vllm version offers no regex-guided decoding; set guided=false.")

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[Generation]:
        """One batched vllm call; token ids, sampled log-probs and text per prompt."""
        inputs = [self._vllm.inputs.TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        outputs = self.llm.generate(inputs, self._sampling(params), use_tqdm=False)
        result = []
        for out in outputs:
            completion = out.outputs[0]
            ids = list(completion.token_ids)
            logprobs = [float(step[token].logprob) for step, token in zip(completion.logprobs or [], ids)]
            eos = self.tokenizer.eos_token_id
            reason = "eos" if ids and ids[-1] == eos else ("length" if completion.finish_reason == "length" else "stop")
            if params.choices is not None:
                reason = "choice" if completion.finish_reason == "stop" else reason
            result.append(
                Generation(
                    ids,
                    logprobs or [0.0] * len(ids),
                    None,
                    completion.text,
                    reason,
                    constrained=params.choices is not None,
                )
            )
        return result

    def load_weights(self, named_tensors: Iterable[tuple[str, Any]]) -> None:
        """Copy the trainer's current weights into the engine (call after each update)."""
        weights = list(named_tensors)
        engine = self.llm.llm_engine
        executor = getattr(engine, "model_executor", None)
        worker = getattr(executor, "driver_worker", None)
        runner = getattr(getattr(worker, "worker", worker), "model_runner", None)
        if runner is not None and hasattr(runner, "model"):
            runner.model.load_weights(weights)
        elif hasattr(self.llm, "collective_rpc"):
            self.llm.collective_rpc(lambda w: w.model_runner.model.load_weights(weights))
        else:
            raise AgentGymError("Cannot reach vllm's model to load weights in this vllm version.")
        if hasattr(self.llm, "reset_prefix_cache"):
            self.llm.reset_prefix_cache()  # cached prefixes were computed with the old weights
