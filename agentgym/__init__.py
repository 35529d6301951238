"""agentgym: a gym for training and evaluating LLM and graph agents in multi-turn environments."""

from __future__ import annotations

from agentgym.env import AgentEnv
from agentgym.errors import AgentGymError, MissingExtraError, UnknownNameError
from agentgym.registry import (
    EnvSpec,
    list_envs,
    list_policies,
    list_trainers,
    make,
    policy_spec,
    register,
    register_policy,
    register_trainer,
    spec,
    trainer_spec,
)
from agentgym.tasks import ListTasks, SeedTasks, TaskSet

list = list_envs  # noqa: A001 - `agentgym.list()` mirrors register/make/spec; builtins stay intact elsewhere

__version__ = "0.1.0"

__all__ = [
    "AgentEnv",
    "AgentGymError",
    "EnvSpec",
    "ListTasks",
    "MissingExtraError",
    "SeedTasks",
    "TaskSet",
    "UnknownNameError",
    "list",
    "list_envs",
    "list_policies",
    "list_trainers",
    "make",
    "policy_spec",
    "register",
    "register_policy",
    "register_trainer",
    "spec",
    "trainer_spec",
]
