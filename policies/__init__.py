"""Built-in policies, registered through the ``agentgym.policies`` entry-point group like any plugin."""

from __future__ import annotations


def register_policies() -> None:
    """Register the built-in policies (string entry points: nothing heavy is imported here)."""
    from agentgym.registry import register_policy

    register_policy("random", "policies.baselines:RandomPolicy", description="Uniform over the env's action space.")
    register_policy(
        "oracle",
        "policies.baselines:OraclePolicy",
        description="The env's expert (solver or search) via oracle_action().",
    )
    llm = {"extra": "llm", "requires": ("torch", "transformers")}
    register_policy(
        "smollm2",
        "policies.llm:make_smollm2_policy",
        description="The embedded default LLM, SmolLM2-135M-Instruct, on the transformers backend.",
        **llm,
    )
    register_policy(
        "hf",
        "policies.llm:make_hf_policy",
        description="Any local transformers model: hf:PATH (CPU or GPU; the trainable backend).",
        **llm,
    )
    register_policy(
        "vllm",
        "policies.llm:make_vllm_policy",
        extra="vllm",
        requires=("vllm",),
        description="vllm's offline engine on a GPU: vllm:PATH (fast rollouts).",
    )
    register_policy(
        "openai",
        "policies.llm.openai_backend:make_openai_policy",
        description="Any OpenAI-compatible chat server: openai:MODEL (OPENAI_BASE_URL, OPENAI_API_KEY).",
    )
    register_policy(
        "vertiport_random",
        "environments.vertiport.baselines:VertiportRandomPolicy",
        description="Vertiport env: a random allowed destination per deciding aircraft.",
    )
    register_policy(
        "vertiport_greedy",
        "environments.vertiport.baselines:VertiportGreedyPolicy",
        description="Vertiport env: greedy highest-expected-revenue dispatch (the env's oracle).",
    )
    register_policy(
        "vertiport_ga",
        "environments.vertiport.baselines:VertiportGAPolicy",
        description="Vertiport env: genetic-algorithm planner over rollouts of copied states (strong, slow).",
    )
