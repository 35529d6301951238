"""Pieces every trainer shares.

Config sections, building the policy (an LLM, or a neural policy: see ``trainers.neural``), turning trajectories
into tensors, scoring them with the trainer's model, and saving/loading checkpoints. Each function takes the
backend and dispatches on its kind, so the trainers themselves never ask which kind of policy they train.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from agentgym.config import ConfigError
from agentgym.trajectory import Trajectory


@dataclass(frozen=True)
class EnvSection:
    """Which env a trainer plays, and the episode budget."""

    id: str = "sokoban"
    """Env id or alias (set by --env)."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Constructor arguments of the env (also --env-kwargs KEY=VALUE)."""
    max_turns: int | None = 8
    """Turn budget per episode; episodes reaching it are truncated (and scored as failures). None: the env's own
    limit (the default for envs whose default policy is neural, e.g. a fleet's whole day)."""
    oracle_starts: float = 0.0
    """Share of training episodes that start at a random state on the oracle's path to the goal instead of at
    the task's start (a start-state curriculum, see ``agentgym.curriculum``; needs an env with an oracle and
    get_state/set_state). Held-out evaluation always starts at the task's start. 0: never."""

    def __post_init__(self) -> None:
        if not (isinstance(self.oracle_starts, (int, float)) and 0.0 <= self.oracle_starts <= 1.0):
            raise ConfigError(
                f"env.oracle_starts={self.oracle_starts!r} must be a share in [0, 1] (0: every training episode "
                "starts at its task's start)."
            )


def default_env(**changes: Any) -> EnvSection:
    """The trainers' default env section: Sokoban's tiny preset with shaping and the offsets line, 10 turns."""
    kwargs = {"preset": "tiny", "distance_reward": 0.5, "approach_reward": 0.2, "text_positions": True}
    return EnvSection(kwargs=kwargs, max_turns=10, **changes)


@dataclass(frozen=True)
class PolicySection:
    """The policy being trained (an LLM, or a neural network over the env's structured/graph view)."""

    network: str = "auto"
    """'auto' (the env's own neural policy if it registers one, e.g. a graph env's GNN; else the LLM), 'llm',
    'mlp', or 'module:Class' of a NeuralPolicy. The fields below through gradient_checkpointing are the LLM's."""
    network_kwargs: dict[str, Any] = field(default_factory=dict)
    """Constructor arguments of a neural policy (hidden sizes, layers)."""
    compile: bool = False
    """Run a neural policy's inference (rollouts, evaluation) through ``torch.compile``: the same function, faster
    once compiled (15-45 s at the start; CPU needs a C++ compiler). Updates stay eager."""
    weights: str | None = None
    """Start from saved weights (e.g. an SFT run, for PPO or LOOP to improve): a run directory (its latest
    checkpoint), a checkpoint directory, or its policy directory. A neural policy uses the saved network's class
    and sizes. An LLM takes a saved LoRA adapter (on ``model``; policy.lora must be on, with the saved rank) and
    goes on training it, or a whole saved model (as ``model``)."""
    model: str = "smollm2"
    """'smollm2' (the embedded default), a local model directory, or a hub id with downloads allowed."""
    device: str = "auto"
    """'auto' (cuda if available, else cpu), or a torch device."""
    dtype: str = "auto"
    """'auto' (bf16 on CUDA, fp32 on CPU) or a torch dtype name."""
    temperature: float = 1.0
    """Sampling temperature of rollouts (the loss scores tokens at the same temperature)."""
    max_new_tokens: int = 8
    """Cap on each reply, in tokens."""
    think: bool = False
    """Ask for <think>...</think><answer>...</answer> replies instead of the bare action."""
    guided: bool = True
    """Constrain the action part of replies to the env's action names (guided decoding)."""
    context_tokens: int = 1536
    """Prompt + reply budget per turn; older turns are dropped beyond it."""
    history_turns: int | None = None
    """At most this many earlier turns in each prompt (None: all that fit the context budget)."""
    hints: bool = False
    """Add the env family's strategy hints to the system prompt (more tokens per turn)."""
    lora: bool = False
    """Train a LoRA adapter instead of all weights."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator."""
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    """Linear layers that get LoRA adapters."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, ~30% slower)."""


@dataclass(frozen=True)
class TrainerConfig:
    """Settings every trainer has: what it plays and trains, optimisation, evaluation, checkpoints, budget."""

    env: EnvSection = field(default_factory=default_env)
    """The env and episode budget. The default env starts from its easiest preset, with potential-based
    shaping toward boxes on targets (``distance_reward``) and the player toward a box (``approach_reward``): both
    telescope, so they leave optimal policies and success unchanged, and they give groups of failed episodes
    different returns, i.e. a learning signal. Its boards add a line of offsets, the box from the player and
    its target from the box (``text_positions``), which a small model reads more easily than columns of a grid;
    another --env starts from no kwargs."""
    policy: PolicySection = field(default_factory=PolicySection)
    """The policy being trained."""
    minibatch_size: int = 8
    """Episodes per optimizer step."""
    micro_batch_size: int = 4
    """Episodes per forward/backward (gradient accumulation inside a minibatch; a value above minibatch_size runs
    each minibatch in one pass)."""
    lr: float = 2e-4
    """AdamW learning rate."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip."""
    num_envs: int = 24
    """Episodes run concurrently (the generation batch) in collection and evaluation."""
    eval_every: int = 4
    """Evaluate on held-out tasks every N steps (0: only before and after)."""
    eval_tasks: int = 16
    """Held-out (dev split) tasks per evaluation; the final report also evaluates the test split."""
    eval_start: bool = True
    """Evaluate dev and test before training (the zero-shot baseline). On a deterministic env (Sokoban) with greedy
    evaluations (``eval_temperature=0``) every seed gets the same zero-shot episodes, so the seeds after the first
    of a sweep may skip it."""
    eval_temperature: float = 1.0
    """Sampling temperature of evaluations: 1 measures the stochastic policy being trained (0: greedy, which for
    a small untrained model often repeats one move forever)."""
    checkpoint_every: int = 4
    """Checkpoint every N steps (and always at the end)."""
    time_budget_minutes: float | None = 10.0
    """Start no new step after this many minutes of training (evaluations included); the final evaluation and
    report still run. None: run every step. The default suits a 2-core CPU."""
    seed: int = 0
    """Seed of task sampling, rollout sampling and initialisation."""

    #: Whether the trainer's collection honours ``env.oracle_starts`` (the policy-gradient trainers do).
    oracle_starts_supported: ClassVar[bool] = False
    #: What ``--env ID`` (another env than the default) starts from, by registered env id: ``kwargs`` (in place of
    #: none) and ``max_turns`` (in place of the default env's budget). ``--env-kwargs`` and ``--set`` apply on top.
    env_defaults: ClassVar[dict[str, dict[str, Any]]] = {}

    def __post_init__(self) -> None:
        if self.env.oracle_starts > 0 and not self.oracle_starts_supported:
            raise ConfigError(
                f"env.oracle_starts={self.env.oracle_starts}: this trainer always starts episodes at the task's "
                "start (loop, grpo, rloo and ppo read the setting); set env.oracle_starts=0."
            )
        for name in ("minibatch_size", "micro_batch_size", "num_envs", "eval_tasks"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1.")
        if self.lr <= 0 or not math.isfinite(self.lr):
            raise ConfigError(f"lr={self.lr} must be a positive number.")


def network_name(section: PolicySection, env_id: str) -> str | None:
    """The neural policy ``section`` asks for on ``env_id`` (None: the LLM)."""
    from agentgym.registry import spec

    if section.network == "llm":
        return None
    if section.network == "auto":
        return spec(env_id).policy
    return section.network


def is_neural(backend: Any) -> bool:
    """Whether ``backend`` wraps a neural policy rather than an LLM."""
    return getattr(backend, "is_neural", False)


def build_backend(section: PolicySection, *, model: str | None = None, env: EnvSection | None = None) -> Any:
    """The trainable backend described by ``section``: a neural policy sized for ``env``, or the HF LLM.

    ``model`` overrides the LLM's path (for resuming).
    """
    network = network_name(section, env.id) if env is not None else None
    if network is not None:
        from agentgym.registry import make
        from trainers.neural import NeuralBackend

        if section.weights is not None:
            backend = _warm_start(section, network, make(env.id, **env.kwargs))
        else:
            backend = NeuralBackend.build(
                network, make(env.id, **env.kwargs), section.network_kwargs, device=section.device
            )
        if section.compile:
            backend.model.compile_inference()
        return backend
    if section.compile:
        raise ConfigError("policy.compile=true compiles a neural policy's inference; this run trains an LLM.")
    from policies.llm.hf import HFBackend, LoraSettings

    saved = _saved_llm(section) if section.weights is not None and model is None else None
    if saved is not None and not (saved / "adapter_config.json").is_file():
        model = str(saved)  # a whole saved model: train it (with a fresh adapter when policy.lora is on)
        saved = None

    lora = (
        LoraSettings(r=section.lora_r, alpha=section.lora_alpha, target_modules=section.lora_targets)
        if section.lora
        else None
    )
    backend = HFBackend(model or section.model, device=section.device, dtype=section.dtype, lora=lora)
    if saved is not None:
        backend.load_adapter(saved)
    if section.gradient_checkpointing and hasattr(backend.model, "gradient_checkpointing_enable"):
        backend.model.gradient_checkpointing_enable()
    return backend


def _saved_policy_dir(weights: str, is_saved: Any) -> Path | None:
    """The policy directory ``weights`` names: itself, its ``policy`` folder, or a run's latest checkpoint's."""
    from agentgym.runs import RunDir

    path = Path(weights)
    latest = RunDir(path, tensorboard=False).latest_checkpoint() if (path / "checkpoints").is_dir() else None
    candidates = [path, path / "policy"] + ([latest / "policy"] if latest is not None else [])
    return next((c for c in candidates if is_saved(c)), None)


def _saved_llm(section: PolicySection) -> Path:
    """The saved LoRA adapter or whole model ``section.weights`` points at, checked against ``section``."""
    directory = _saved_policy_dir(
        section.weights, lambda c: (c / "adapter_config.json").is_file() or (c / "config.json").is_file()
    )
    if directory is None:
        raise ConfigError(
            f"policy.weights={section.weights!r} holds no saved LLM (a LoRA adapter's adapter_config.json or a "
            "model's config.json); pass a run directory with a checkpoint, a checkpoint directory, or its policy "
            "directory."
        )
    if (directory / "adapter_config.json").is_file():
        import json

        saved = json.loads((directory / "adapter_config.json").read_text())
        if not section.lora:
            raise ConfigError(
                f"policy.weights={section.weights!r} is a LoRA adapter; set policy.lora=true to keep training it "
                "(or pass a whole saved model)."
            )
        if (saved.get("r"), saved.get("lora_alpha")) != (section.lora_r, section.lora_alpha):
            raise ConfigError(
                f"policy.weights={section.weights!r} is a LoRA adapter with r={saved.get('r')}, "
                f"alpha={saved.get('lora_alpha')}, but policy.lora_r={section.lora_r}, "
                f"policy.lora_alpha={section.lora_alpha}; set them to the saved adapter's."
            )
    return directory


def _warm_start(section: PolicySection, network: str, env: Any) -> Any:
    """The neural backend saved where ``section.weights`` points (see ``PolicySection.weights``)."""
    from trainers.neural import NeuralBackend, network_class

    directory = _saved_policy_dir(
        section.weights, lambda c: (c / "policy.pt").is_file() and (c / "policy.json").is_file()
    )
    if directory is None:
        raise ConfigError(
            f"policy.weights={section.weights!r} holds no saved neural policy (policy.pt + policy.json); pass a run "
            "directory with a checkpoint, a checkpoint directory, or its policy directory."
        )
    backend = NeuralBackend.load(directory, env, device=section.device)
    wanted = network_class(network)
    if type(backend.model) is not wanted:
        raise ConfigError(
            f"policy.weights={section.weights!r} is a {type(backend.model).__name__}, but this run trains a "
            f"{wanted.__name__}; pass weights of the same network or set policy.network."
        )
    if section.network_kwargs and section.network_kwargs != backend.kwargs:
        raise ConfigError(
            f"policy.network_kwargs={section.network_kwargs} differ from the saved network's {backend.kwargs}; "
            "leave network_kwargs empty to use the saved sizes."
        )
    return backend


def load_checkpoint_backend(section: PolicySection, checkpoint: Path, env: EnvSection | None = None) -> Any:
    """The backend saved in ``checkpoint/policy``: a neural policy, a LoRA adapter on the base model, or a model."""
    if env is not None and network_name(section, env.id) is not None:
        from agentgym.registry import make
        from trainers.neural import NeuralBackend

        return NeuralBackend.load(checkpoint / "policy", make(env.id, **env.kwargs), device=section.device)
    if section.lora:
        backend = build_backend(replace(section, weights=None))  # the checkpoint's adapter replaces any start
        backend.load_adapter(checkpoint / "policy")
        return backend
    return build_backend(section, model=str(checkpoint / "policy"))


def build_policy(backend: Any, section: PolicySection, *, temperature: float | None = None) -> Any:
    """The rollout policy of ``backend``.

    An ``LLMPolicy`` with the section's sampling and prompt settings, or a ``NeuralActor`` (greedy when
    ``temperature`` is 0).
    """
    temperature = section.temperature if temperature is None else temperature
    if is_neural(backend):
        from policies.neural import NeuralActor

        return NeuralActor(backend.model, greedy=temperature == 0)
    from policies.llm.policy import LLMPolicy, LLMPolicyConfig

    return LLMPolicy(
        backend,
        LLMPolicyConfig(
            temperature=temperature,
            max_new_tokens=section.max_new_tokens,
            think=section.think,
            guided=section.guided,
            context_tokens=section.context_tokens,
            history_turns=section.history_turns,
            hints=section.hints,
        ),
    )


@dataclass
class TokenBatch:
    """Trajectories as padded tensors, aligned to next-token prediction.

    Position ``t`` of the ``[B, T-1]`` tensors describes token ``t+1`` of ``input_ids``: ``loss_mask`` is 1 where
    that token was sampled by the policy, ``sampled_logp`` its sampling log-prob, ``turn_ids`` its turn (-1 off
    the mask). ``episode[b]`` is the trajectory row ``b`` comes from (rows are whole episodes, or single turns
    when prompts kept only recent history: see ``token_batch``). ``choices[b, t]`` lists the ids guided decoding
    drew token t+1 from (-1 padded; all -1 where it was free), or is None when no token was guided.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    sampled_logp: torch.Tensor
    turn_ids: torch.Tensor
    episode: torch.Tensor
    choices: torch.Tensor | None = None

    @property
    def tokens(self) -> int:
        """Real (unpadded) tokens in the batch."""
        return int(self.attention_mask.sum())

    def select(self, rows: Sequence[int] | torch.Tensor) -> TokenBatch:
        """A sub-batch, trimmed to its longest row."""
        index = torch.as_tensor(rows, dtype=torch.long)
        width = int(self.attention_mask[index].sum(1).max())
        return TokenBatch(
            self.input_ids[index, :width],
            self.attention_mask[index, :width],
            self.loss_mask[index, : width - 1],
            self.sampled_logp[index, : width - 1],
            self.turn_ids[index, : width - 1],
            self.episode[index],
            None if self.choices is None else self.choices[index, : width - 1],
        )


Row = tuple[list[int], list[int], list[float], list[int], dict[int, list[int]]]


def _turn_rows(t: Trajectory, history_turns: int) -> list[Row]:
    """One row per reply, each with exactly the prompt the policy generated it from.

    With ``history_turns = h`` the prompt of turn ``k`` is the system prompt and the segments of turns
    ``k-h .. k`` (what ``Conversation.prompt_ids`` keeps when only the turn limit drops history); earlier replies
    in a row are context, so only turn ``k``'s reply is in that row's loss mask.
    """
    spans = [(role, a, b, turn) for role, a, b, turn in t.segments or ()]
    sets = t.choice_set_at()
    rows = []
    for role, a, b, k in spans:
        if role != "assistant":
            continue
        ids: list[int] = []
        mask: list[int] = []
        logp: list[float] = []
        for r2, a2, b2, k2 in spans:
            if k2 == -1 or (max(0, k - history_turns) <= k2 < k) or (k2 == k and r2 == "user"):
                ids += t.token_ids[a2:b2]
                mask += [0] * (b2 - a2)
                logp += [0.0] * (b2 - a2)
        offset = len(ids)
        ids += t.token_ids[a:b]
        mask += t.loss_mask[a:b]
        logp += t.logprobs[a:b]
        row_sets = {offset + p - a: s for p, s in sets.items() if a <= p < b}
        rows.append((ids, mask, logp, [k] * len(ids), row_sets))
    return rows


def token_batch(trajectories: Sequence[Trajectory], pad_id: int, *, history_turns: int | None = None) -> TokenBatch:
    """Right-padded tensors of the trajectories' token sequences; raises if a trajectory has no tokens.

    Each episode is one row (the whole episode as one sequence, scored in one pass) unless ``history_turns`` is
    set: then the policy saw only the last ``history_turns`` turns, so each reply becomes its own row with the
    prompt it was actually sampled from (a whole-episode score would condition on history the policy never saw).
    """
    missing = [i for i, t in enumerate(trajectories) if not t.token_ids]
    if missing:
        raise ValueError(f"Trajectories {missing[:5]} carry no token ids; train with an LLM policy's rollouts.")
    rows: list[Row] = []
    episode: list[int] = []
    for i, t in enumerate(trajectories):
        if history_turns is not None and t.segments:
            per_turn = _turn_rows(t, history_turns)
        else:
            turns = [-1] * len(t.token_ids)
            for role, start, end, turn in t.segments or ():
                if role == "assistant":
                    turns[start:end] = [turn] * (end - start)
            per_turn = [(t.token_ids, t.loss_mask, t.logprobs, turns, t.choice_set_at())]
        rows += per_turn
        episode += [i] * len(per_turn)
    width = max(len(r[0]) for r in rows)
    b = len(rows)
    ids = torch.full((b, width), pad_id, dtype=torch.long)
    attn = torch.zeros((b, width), dtype=torch.long)
    mask = torch.zeros((b, width), dtype=torch.float32)
    logp = torch.zeros((b, width), dtype=torch.float32)
    turn_ids = torch.full((b, width), -1, dtype=torch.long)
    size = max((len(s) for r in rows for s in r[4].values()), default=0)
    choices = torch.full((b, width, size), -1, dtype=torch.long) if size else None
    for i, (r_ids, r_mask, r_logp, r_turns, r_sets) in enumerate(rows):
        n = len(r_ids)
        ids[i, :n] = torch.tensor(r_ids)
        attn[i, :n] = 1
        mask[i, :n] = torch.tensor(r_mask, dtype=torch.float32)
        logp[i, :n] = torch.tensor(r_logp, dtype=torch.float32)
        turn_ids[i, :n] = torch.tensor(r_turns)
        for pos, s in r_sets.items():
            choices[i, pos, : len(s)] = torch.tensor(s)  # type: ignore[index]
    turn_ids[mask == 0] = -1
    # Shift by one: position t predicts token t+1. The first token is never sampled, so nothing is lost.
    return TokenBatch(ids, attn, mask[:, 1:], logp[:, 1:], turn_ids[:, 1:], torch.tensor(episode, dtype=torch.long),
                      None if choices is None else choices[:, 1:])


def make_batch(backend: Any, trajectories: Sequence[Trajectory], *, history_turns: int | None = None) -> Any:
    """``TokenBatch`` of LLM episodes or ``StepBatch`` of neural-policy episodes, for ``backend``."""
    if is_neural(backend):
        from trainers.neural import step_batch

        return step_batch(trajectories, backend.model)
    return token_batch(trajectories, backend._pad_id, history_turns=history_turns)


def score(backend: Any, batch: Any, *, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs and entropies per token (LLM) or per step (neural) of ``batch`` under the current parameters.

    Neural policies sample from their own distribution, so ``temperature`` applies to LLMs only.
    """
    if is_neural(backend):
        from trainers.neural import score_steps

        return score_steps(backend.model, batch)
    device = backend.device
    return backend.sequence_logprobs(
        batch.input_ids.to(device), batch.attention_mask.to(device), temperature=temperature,
        scored=batch.loss_mask.to(device) > 0, choices=None if batch.choices is None else batch.choices.to(device),
    )


def save_policy(backend: Any, optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Model (or LoRA adapter) with tokenizer, and the optimizer state."""
    backend.save(directory / "policy")
    torch.save(optimizer.state_dict(), directory / "optimizer.pt")


def load_optimizer(optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Restore the optimizer state saved by ``save_policy``."""
    optimizer.load_state_dict(torch.load(directory / "optimizer.pt", weights_only=False))


RatioLevel = Literal["token", "turn", "trajectory"]
Aggregation = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
