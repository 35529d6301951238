"""An MLP policy over an env's structured view: the baseline neural policy for ``Discrete`` action spaces."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from agentgym.errors import AgentGymError
from policies.neural import NeuralPolicy, PolicyOutput


def struct_of(observation: Any) -> np.ndarray:
    """The structured array of an observation (the ``struct`` entry of a dict-mode observation)."""
    if isinstance(observation, dict):
        if "struct" not in observation:
            raise AgentGymError(
                f"An MLP policy reads the structured view; this observation has keys {sorted(observation)}. "
                "Make the env with obs_mode='struct' or 'dict'."
            )
        observation = observation["struct"]
    return np.asarray(observation, dtype=np.float32).reshape(-1)


class MLPPolicy(NeuralPolicy):
    """Flattened struct observation -> ``hidden`` x ``layers`` (tanh) -> action logits, plus a value head.

    Args:
        obs_dim: length of the flattened struct observation.
        num_actions: size of the ``Discrete`` action space.
        hidden: width of the hidden layers.
        layers: number of hidden layers.
    """

    def __init__(self, obs_dim: int, num_actions: int, hidden: int = 64, layers: int = 2) -> None:
        super().__init__()
        if obs_dim < 1 or num_actions < 1 or hidden < 1 or layers < 0:
            raise AgentGymError(
                f"MLPPolicy(obs_dim={obs_dim}, num_actions={num_actions}, hidden={hidden}, layers={layers}) needs "
                "positive sizes."
            )
        body: list[torch.nn.Module] = []
        width = obs_dim
        for _ in range(layers):
            body += [torch.nn.Linear(width, hidden), torch.nn.Tanh()]
            width = hidden
        self.body = torch.nn.Sequential(*body)
        self.pi = torch.nn.Linear(width, num_actions)
        self.v = torch.nn.Linear(width, 1)
        self.num_actions = num_actions

    @classmethod
    def make(cls, env: Any, **kwargs: Any) -> MLPPolicy:
        """An MLP sized for ``env``'s struct view and ``Discrete`` action space."""
        space = env.unwrapped.action_space
        if not isinstance(space, spaces.Discrete):
            raise AgentGymError(
                f"MLPPolicy needs a Discrete action space; {type(env.unwrapped).__name__} has {space}. Use the env's "
                "own neural policy (policy.network=auto)."
            )
        obs, _ = env.reset(seed=0)
        return cls(int(struct_of(obs).shape[0]), int(space.n), **kwargs)

    @property
    def has_value(self) -> bool:
        """The MLP has a value head."""
        return True

    def forward(self, observations: Sequence[Any]) -> PolicyOutput:
        """Logits ``[N, 1, A]`` (one decision per step), all actions allowed, and values ``[N]``."""
        x = torch.as_tensor(np.stack([struct_of(o) for o in observations]), device=self.device)
        h = self.body(x)
        logits = self.pi(h).unsqueeze(1)
        mask = torch.ones_like(logits, dtype=torch.bool)
        active = torch.ones(logits.shape[:2], dtype=torch.bool, device=logits.device)
        return PolicyOutput(logits, mask, active, self.v(h).squeeze(-1))
