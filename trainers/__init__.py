"""Trainers of agentgym, one file per trainer; registered through the ``agentgym.trainers`` entry-point group.

A trainer module defines a ``Config`` dataclass and a trainer class with ``fit``; the shared policy-gradient
machinery lives in ``trainers.policy_gradient`` and the math in ``agentgym.ops``.
"""

from __future__ import annotations


def register_trainers() -> None:
    """Register the built-in trainers (string entry points: nothing heavy is imported here)."""
    from agentgym.registry import register_trainer

    llm = {"extra": "llm", "requires": ("torch", "transformers")}
    register_trainer(
        "loop",
        "trainers.loop:LoopTrainer",
        **llm,
        description="Leave-one-out PPO: K rollouts per task, LOO advantage, per-token clip, no critic.",
    )
    register_trainer(
        "grpo",
        "trainers.grpo:GRPOTrainer",
        **llm,
        description="Group-normalised advantages, PPO clip, k3 KL to the initial model in the loss.",
    )
    register_trainer(
        "rloo",
        "trainers.rloo:RLOOTrainer",
        **llm,
        description="On-policy REINFORCE with a leave-one-out baseline, KL in the reward.",
    )
    register_trainer(
        "ppo",
        "trainers.ppo:PPOTrainer",
        **llm,
        description="PPO with a learned critic (value head) on turn-level GAE and a k3 KL to the initial model.",
    )
    register_trainer(
        "sft",
        "trainers.sft:SFTTrainer",
        **llm,
        description="Supervised fine-tuning on demonstrations: the env's oracle or a trajectories JSONL file.",
    )
    register_trainer(
        "proact",
        "trainers.proact:ProActTrainer",
        **llm,
        description="ProAct: GLAD (SFT on the env search's compressed chains), then MC-GRPO or MC-PPO with the "
        "Monte-Carlo critic.",
    )
    register_trainer(
        "hdpo",
        "trainers.hdpo:HDPOTrainer",
        extra="graph",
        requires=("torch", "torch_geometric"),
        description="HDPO: pathwise gradients (BPTT) through the differentiable supply-chain simulator.",
    )
