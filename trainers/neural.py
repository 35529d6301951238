"""Neural (MLP, GNN) policies in the policy-gradient trainers: the same loss and loop as for an LLM.

An LLM episode is one token sequence whose sampled tokens carry log-probs; a neural episode is a sequence of env
steps whose actions carry joint log-probs (``policies.neural``). ``StepBatch`` lays steps out like ``TokenBatch``
lays tokens out — ``[B, T]`` tensors of ``loss_mask``, ``sampled_logp`` and ``turn_ids`` — so
``agentgym.ops.policy_loss``, the advantage estimators and the trainer's minibatch loop need no second copy.
``NeuralBackend`` gives a ``NeuralPolicy`` the small surface the trainers use of an LLM backend (``model``,
``device``, ``trainable_parameters``, ``save``, ``clear_prefix_cache``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agentgym.errors import AgentGymError
from agentgym.registry import load_entry_point
from agentgym.trajectory import Trajectory
from policies.neural import NeuralPolicy

#: Short names of the built-in neural policies (``policy.network``); anything else is a ``module:Class`` path.
NETWORKS = {"mlp": "policies.mlp:MLPPolicy"}


def network_class(name: str) -> type[NeuralPolicy]:
    """The ``NeuralPolicy`` class named by ``policy.network`` (a short name or ``module:Class``)."""
    entry = NETWORKS.get(name, name)
    if ":" not in entry:
        raise AgentGymError(
            f"policy.network={name!r} is not a neural policy; use 'llm', 'auto', one of {sorted(NETWORKS)} or "
            "'package.module:ClassName' of a NeuralPolicy subclass."
        )
    cls = load_entry_point(entry)
    if not (isinstance(cls, type) and issubclass(cls, NeuralPolicy)):
        raise AgentGymError(f"policy.network={name!r} resolves to {cls!r}, which is not a NeuralPolicy subclass.")
    return cls


class NeuralBackend:
    """A ``NeuralPolicy`` with what the trainers use of a backend; saved as ``policy.pt`` + ``policy.json``."""

    is_neural = True

    def __init__(self, model: NeuralPolicy, *, entry_point: str, kwargs: dict[str, Any], device: str = "auto"):
        self.entry_point, self.kwargs = entry_point, dict(kwargs)
        resolved = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self.model = model.to(resolved)

    @classmethod
    def build(cls, network: str, env: Any, kwargs: dict[str, Any], *, device: str = "auto") -> NeuralBackend:
        """A fresh policy of class ``network`` sized for ``env``."""
        policy_cls = network_class(network)
        entry = f"{policy_cls.__module__}:{policy_cls.__qualname__}"
        return cls(policy_cls.make(env, **kwargs), entry_point=entry, kwargs=kwargs, device=device)

    @classmethod
    def load(cls, directory: str | Path, env: Any, *, device: str = "auto") -> NeuralBackend:
        """The policy saved by ``save`` in ``directory``."""
        directory = Path(directory)
        meta = json.loads((directory / "policy.json").read_text())
        backend = cls.build(meta["entry_point"], env, meta["kwargs"], device=device)
        backend.model.load_state_dict(torch.load(directory / "policy.pt", map_location=backend.device))
        backend.model.eval()  # loaded to play (trainers call train() before their updates)
        return backend

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self.model.device

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters the optimizer updates."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def save(self, directory: str | Path) -> None:
        """Weights and how to rebuild the module."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.model.state_dict(), directory / "policy.pt")
        (directory / "policy.json").write_text(json.dumps({"entry_point": self.entry_point, "kwargs": self.kwargs}))

    def clear_prefix_cache(self) -> None:
        """Nothing is cached across updates (the LLM backend's prompt cache has no neural counterpart)."""


@dataclass
class StepBatch:
    """Episodes as ``[B, T]`` step tensors, the neural counterpart of ``TokenBatch``.

    ``loss_mask`` is 1 on real steps, ``sampled_logp`` holds the joint log-prob each action was sampled with,
    ``turn_ids`` the step index (-1 past the end), ``actions`` the ``[B, T, S]`` choices and ``observations``
    the raw observation of every step (what the policy is re-run on); ``episode[b]`` the trajectory of row ``b``.
    """

    observations: list[list[Any]]
    actions: torch.Tensor
    loss_mask: torch.Tensor
    sampled_logp: torch.Tensor
    turn_ids: torch.Tensor
    episode: torch.Tensor

    @property
    def tokens(self) -> int:
        """Real steps in the batch (the count ``TokenBatch.tokens`` gives for tokens)."""
        return int(self.loss_mask.sum())

    def select(self, rows: Sequence[int] | torch.Tensor) -> StepBatch:
        """A sub-batch, trimmed to its longest episode."""
        index = torch.as_tensor(rows, dtype=torch.long)
        width = max(int(self.loss_mask[index].sum(1).max()), 1)
        return StepBatch(
            [self.observations[int(i)] for i in index],
            self.actions[index, :width],
            self.loss_mask[index, :width],
            self.sampled_logp[index, :width],
            self.turn_ids[index, :width],
            self.episode[index],
        )


def step_batch(trajectories: Sequence[Trajectory], model: NeuralPolicy) -> StepBatch:
    """Right-padded step tensors of neural-policy episodes; raises for episodes without recorded observations."""
    missing = [i for i, t in enumerate(trajectories) if t.observations is None or t.logprobs is None]
    if missing:
        raise AgentGymError(
            f"Trajectories {missing[:5]} carry no observations or action log-probs; train a neural policy on its "
            "own rollouts (NeuralActor records them)."
        )
    choices = [[model.from_env_action(turn.action) for turn in t.turns] for t in trajectories]
    slots = max((c.shape[0] for row in choices for c in row), default=1)
    width = max(max(len(t.turns) for t in trajectories), 1)
    b = len(trajectories)
    actions = torch.zeros((b, width, slots), dtype=torch.long)
    mask = torch.zeros((b, width))
    logp = torch.zeros((b, width))
    turns = torch.full((b, width), -1, dtype=torch.long)
    for i, (t, row) in enumerate(zip(trajectories, choices)):
        n = len(row)
        if n:
            actions[i, :n, : row[0].shape[0]] = torch.as_tensor(np.stack(row))
            mask[i, :n] = 1.0
            logp[i, :n] = torch.tensor(t.logprobs[:n], dtype=torch.float32)
            turns[i, :n] = torch.arange(n)
    return StepBatch([list(t.observations) for t in trajectories], actions, mask, logp, turns, torch.arange(b))


def score_steps(
    model: NeuralPolicy, batch: StepBatch, *, with_values: bool = False
) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Joint log-probs and entropies ``[B, T]`` of the stored actions under ``model`` (one forward for all steps).

    With ``with_values`` also the state values ``[B, T]`` (the model must have a value head).
    """
    device = model.device
    where = batch.loss_mask.nonzero(as_tuple=False)  # [n, 2] (row, step) of every real step
    flat_obs = [batch.observations[int(r)][int(s)] for r, s in where]
    out = model(flat_obs)
    acts = batch.actions[where[:, 0], where[:, 1]].to(device)[:, : out.logits.shape[1]]
    shape = batch.loss_mask.shape
    logp = torch.zeros(shape, device=device, dtype=out.logits.dtype)
    entropy = torch.zeros(shape, device=device, dtype=out.logits.dtype)
    rows, cols = where[:, 0].to(device), where[:, 1].to(device)
    logp = logp.index_put((rows, cols), out.log_prob(acts))
    entropy = entropy.index_put((rows, cols), out.entropy(acts))
    if not with_values:
        return logp, entropy
    if out.value is None:
        raise AgentGymError(f"{type(model).__name__} has no value head; PPO needs one (has_value=True).")
    values = torch.zeros(shape, device=device, dtype=out.value.dtype).index_put((rows, cols), out.value)
    return logp, entropy, values
