"""SFT: supervised fine-tuning of the LLM policy on demonstrations, token-exact with how the policy plays.

Demonstrations come from the env's oracle (``env.oracle_action()`` on ``demo_tasks`` training tasks) or from a
JSONL file (``data_file``): trajectories written by ``agentgym eval``/``train`` (any policy: each is replayed in
the env from its task and seed with its recorded actions), or ``{"messages": [...]}`` chats. Env episodes are
turned into tokens by the LLM policy's own prompt code (``system_prompt``, ``user_message``, ``Conversation``),
and each reply is tokenized as the policy would produce it: the action name in the canonical spelling guided
decoding uses (inside ``<think></think><answer>...</answer>`` with ``policy.think``), ending with the end-of-turn
token only when decoding is free (guided decoding stops at the choice). So the sequence and the loss mask are
those of a rollout that chose the demonstrated actions.

Loss: token cross-entropy on the loss mask, summed over the minibatch's tokens and divided by their number;
AdamW with gradient accumulation over micro-batches and grad-norm clipping. One iteration is one epoch over the
shuffled demonstrations; held-out evaluation and checkpoints are the policy-gradient trainer's.

Neural policies (a graph env's GNN, an MLP) are cloned the same way, one env step standing for one token: the
demonstrator (``demo_policy``: the env's oracle, any registered policy such as ``vertiport_ga``, or a run
directory) plays ``demo_tasks`` training tasks, or a JSONL file's recorded actions are replayed, with every
observation kept; the loss is the negative joint log-prob of each demonstrated step (the sum over its deciding
slots, teacher-forced for an autoregressive decoder), averaged over steps. A cloned policy is a warm start for
PPO or LOOP (``--set policy.weights=RUN_DIR``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from agentgym.config import ConfigError
from agentgym.env import observation_text
from agentgym.errors import AgentGymError
from agentgym.trajectory import Trajectory, Turn
from agentgym.types import ActionBatch
from policies.llm.base import Generation
from policies.llm.conversation import Conversation

# The policy's own observation-to-text rule, so demonstrations see exactly what the policy sees.
from policies.llm.policy import EpisodeMemory, LLMPolicy, LLMPolicyConfig
from policies.llm.prompts import ANSWER_CLOSE, ANSWER_OPEN, user_message
from trainers.common import TokenBatch, TrainerConfig, is_neural, make_batch, score
from trainers.policy_gradient import PolicyGradientTrainer


@dataclass(frozen=True)
class SFTConfig(TrainerConfig):
    """Supervised fine-tuning settings (defaults suit a 2-core CPU and the default model)."""

    lr: float = 5e-5
    """AdamW learning rate."""
    num_envs: int = 16
    """Episodes run concurrently in evaluations."""
    eval_every: int = 1
    """Evaluate on held-out tasks every N epochs (0: only before and after)."""
    eval_temperature: float = 0.0
    """Sampling temperature of evaluations (0: greedy: a cloned policy is judged by its best guess)."""
    checkpoint_every: int = 1
    """Checkpoint every N epochs (and always at the end)."""
    data_file: str | None = None
    """JSONL of trajectories (agentgym eval/train) or {"messages": [...]} chats; None: the env's oracle."""
    demo_tasks: int = 64
    """Training tasks the oracle demonstrates (ignored with data_file)."""
    demo_policy: str = "oracle"
    """Who demonstrates without data_file: 'oracle' (the env's oracle action); a neural policy may also clone any
    policy agentgym eval takes (a registered name such as vertiport_ga, or a run directory)."""
    only_successful: bool = True
    """Keep only successful episodes (oracle dead ends, failed trajectories in a data file)."""
    epochs: int = 3
    """Passes over the demonstrations; one epoch is one step of the run."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("demo_tasks", "epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1.")
        if self.data_file is not None and not Path(self.data_file).is_file():
            raise ConfigError(f"data_file={self.data_file!r} does not exist; pass a JSONL of trajectories or chats.")

    @property
    def iterations(self) -> int:
        """Iterations of the run (``agentgym train`` counts them): one per epoch."""
        return self.epochs


def stage_trainer(parent: Any, run: Any, backend: Any, optimizer_state: dict[str, Any] | None, **fields: Any) -> Any:
    """An SFT trainer over another trainer's model, for a supervised stage of that trainer's run.

    ``parent`` is that trainer's config: its env (without oracle starts), policy, optimisation and evaluation
    settings carry over, ``fields`` set the rest (``demo_tasks`` or ``data_file``, ``epochs``, ``lr``, ...). The
    stage has its own AdamW (``optimizer_state`` restores it when resuming mid-stage), and building it leaves
    torch's random stream as it was.
    """
    from dataclasses import replace

    config = SFTConfig(
        env=replace(parent.env, oracle_starts=0.0),
        policy=parent.policy,
        weight_decay=parent.weight_decay,
        max_grad_norm=parent.max_grad_norm,
        num_envs=parent.num_envs,
        eval_tasks=parent.eval_tasks,
        seed=parent.seed,
        time_budget_minutes=None,
        **fields,
    )
    rng = torch.get_rng_state()  # the SFT trainer seeds torch on construction; keep the run's stream
    trainer = SFTTrainer(config, run, backend=backend)
    torch.set_rng_state(rng)
    if optimizer_state is not None:
        trainer.optimizer.load_state_dict(optimizer_state)
    return trainer


# ---------------------------------------------------------------------------------------------------- replies
def reply_ids(tokenizer: Any, text: str, *, choice: str | None, guided: bool, think: bool) -> list[int]:
    """The token ids the LLM policy would emit for ``text`` (see the module docstring).

    Args:
        tokenizer: the policy's tokenizer.
        text: the reply text.
        choice: the action name inside ``text`` when it is an env action name (guided decoding spells it
            canonically: the tokenizer's own ids for it right after the answer prefix).
        guided: whether the policy decodes with guided choices (then the reply stops at the choice, no EOS).
        think: whether replies are ``<think>...</think><answer>...</answer>``.
    """

    def encode(s: str) -> list[int]:
        return list(tokenizer.encode(s, add_special_tokens=False))

    if not (guided and choice is not None):
        return [*encode(text), tokenizer.eos_token_id]
    prefix = ANSWER_OPEN if think else ""
    head, _, _ = text.rpartition(prefix + choice) if prefix else ("", "", "")
    before = encode(prefix)
    joined = encode(prefix + choice)
    # As ChoiceGuide: the choice's ids as the tokenizer writes them right after the prefix, else on their own.
    ids = joined[len(before) :] if joined[: len(before)] == before else encode(choice)
    suffix = encode(ANSWER_CLOSE) if think else []
    return [*encode(head + prefix), *ids, *suffix]


def reply_for(env: Any, action: Any, *, think: bool) -> tuple[str, str | None]:
    """``(text, choice)`` of a reply playing ``action``: an index or name of the env's actions, or raw text."""
    names = tuple(getattr(env.unwrapped, "action_names", ()))
    if isinstance(action, (int, np.integer)) and not isinstance(action, bool) and names:
        action = names[int(action)]
    if isinstance(action, str) and action in names:
        return (f"<think></think>{ANSWER_OPEN}{action}{ANSWER_CLOSE}" if think else action), action
    text = str(action)
    # Recorded model text that ends in an answer is what guided decoding would have stopped at.
    ending = next((n for n in names if think and text.endswith(f"{ANSWER_OPEN}{n}{ANSWER_CLOSE}")), None)
    return text, ending


@dataclass(frozen=True)
class Untaught:
    """A demonstrated reply that is played and kept in the history but not taught (no loss covers it).

    GLAD's detours are such replies: a mistaken move, so that the next, taught turn starts from an off-path state
    with the mistake in its history (see ``agentgym.glad``).
    """

    action: Any


class DemonstrationPolicy(LLMPolicy):
    """The LLM policy's prompts and bookkeeping, with replies taken from ``choose(env, memory)`` instead of sampled.

    ``choose`` returns an action (index or name) or raw reply text, :class:`Untaught` around one (played, kept as
    history, not taught), or None to stop the episode (a dead end).
    """

    def __init__(self, tokenizer: Any, config: LLMPolicyConfig, choose: Callable[[Any, EpisodeMemory], Any]) -> None:
        # Only the tokenizer and the context size of a backend are read by the prompt code.
        super().__init__(_TokenizerOnly(tokenizer, 1 << 30), config)
        self.choose = choose

    def act(self, observations: Any, *, envs: Any, rng: Any, memories: Any = None) -> ActionBatch:
        """Append each episode's observation and its demonstrated reply; return the replies as actions."""
        if memories is None:
            memories = [self.begin(env, obs, {}) for env, obs in zip(envs, observations)]
        actions, episodes = [], []
        tokenizer = self.backend.tokenizer
        for env, obs, memory in zip(envs, observations, memories):
            conv = memory.conversation
            conv.add_user(user_message(env, observation_text(env, obs), conv.turn))
            action = self.choose(env, memory)
            if action is None:
                actions.append("")
                episodes.append({"stop": True, "warnings": ["no demonstrated action from here"]})
                continue
            teach = not isinstance(action, Untaught)
            if not teach:
                action = action.action
            text, choice = reply_for(env, action, think=self.config.think)
            ids = reply_ids(tokenizer, text, choice=choice, guided=self.config.guided, think=self.config.think)
            guided = self.config.guided and choice is not None
            finish = "choice" if guided else "eos"
            conv.add_assistant(Generation(ids, [0.0] * len(ids), None, text, finish, constrained=guided),
                               trainable=teach)
            memory.constrained |= guided
            memory.turns += 1
            actions.append(text)
            episodes.append({"response_tokens": len(ids), "finish_reason": finish, "warnings": []})
        return ActionBatch(actions, info={"episodes": episodes})


@dataclass
class _TokenizerOnly:
    tokenizer: Any
    max_context: int


def play_demonstration(
    env: Any, policy: DemonstrationPolicy, task: Any, seed: int, *, max_turns: int, expected: list[Turn] | None = None
) -> Trajectory:
    """One episode of ``policy`` from ``(task, seed)``, as a trajectory with the LLM policy's token fields.

    With ``expected`` (a recorded episode being replayed), each observation must match the recorded one, so a
    file played with other env settings fails loudly instead of teaching the wrong prompts.
    """
    obs, info = env.reset(seed=seed, options={"task": task})
    memory = policy.begin(env, obs, info)
    traj = Trajectory(str(getattr(env, "spec_id", "")), task, seed, 0, str(info.get("split", "")))
    for turn in range(max_turns):
        text = observation_text(env, obs)
        if expected is not None and expected[turn].observation not in (None, text):
            raise AgentGymError(
                f"Replaying task {task!r} (seed {seed}): turn {turn} shows {text!r} but the file recorded "
                f"{expected[turn].observation!r}; train with the env settings (--env-kwargs) the file was made with."
            )
        batch = policy.act([obs], envs=[env], rng=None, memories=[memory])
        obs, reward, terminated, truncated, info = env.step(batch.actions[0])
        traj.turns.append(Turn(text, batch.actions[0], float(reward), bool(info.get("action_valid", True)), {}))
        traj.episode_return += float(reward)
        traj.success = bool(info.get("success", False))
        if terminated or truncated or batch.info["episodes"][0].get("stop"):
            break
    for key, value in memory.export().items():
        setattr(traj, key, value)
    return traj


def chat_demonstration(tokenizer: Any, messages: list[dict[str, str]]) -> Trajectory:
    """A ``{"messages": [...]}`` chat (system first, then user/assistant turns) as a trajectory with tokens."""
    if not messages or messages[0].get("role") != "system":
        raise AgentGymError("A chat demonstration must start with a system message (the policy always has one).")
    conv = Conversation(tokenizer, messages[0]["content"])
    for message in messages[1:]:
        if message["role"] == "user":
            conv.add_user(message["content"])
        elif message["role"] == "assistant":
            ids = [*tokenizer.encode(message["content"], add_special_tokens=False), tokenizer.eos_token_id]
            conv.add_assistant(Generation(ids, [0.0] * len(ids), None, message["content"], "eos"))
        else:
            raise AgentGymError(f"Chat roles after the system message are user/assistant, got {message['role']!r}.")
    ids, mask, _ = conv.sequence()
    return Trajectory("", None, 0, 0, "", success=True, token_ids=ids, loss_mask=mask, logprobs=[0.0] * len(ids))


class _Recorded:
    """A demonstrator as a rollout policy whose episodes keep their observations (for a neural policy to score)."""

    records_observations = True

    def __init__(self, policy: Any) -> None:
        self.policy = policy

    def act(self, observations: Any, *, envs: Any, rng: Any, memories: Any = None) -> ActionBatch:
        """The demonstrator's actions, with placeholder behaviour log-probs (SFT does not use them)."""
        batch = self.policy.act(observations, envs=envs, rng=rng)
        return ActionBatch(batch.actions, logprobs=np.zeros(len(batch.actions)), info=batch.info)


def _records(path: str) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` of a JSONL file of trajectories."""
    out = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AgentGymError(f"{path}:{number} is not JSON ({exc}).") from exc
        if "turns" not in record:
            raise AgentGymError(f"{path}:{number} is not a trajectory (no 'turns'); a neural policy clones episodes.")
        out.append((number, record))
    return out


class SFTTrainer(PolicyGradientTrainer):
    """Supervised fine-tuning (see the module docstring); evaluation and checkpoints are the shared trainer's."""

    Config: ClassVar[type] = SFTConfig
    name: ClassVar[str] = "sft"

    def needs_reference(self) -> bool:
        """SFT has no KL penalty, so no reference copy."""
        return False

    # ------------------------------------------------------------------ demonstrations
    def demo_policy(self, choose: Callable[[Any, EpisodeMemory], Any]) -> DemonstrationPolicy:
        """A demonstration policy with the trained policy's prompt settings."""
        section = self.cfg.policy
        config = LLMPolicyConfig(think=section.think, guided=section.guided, hints=section.hints, max_new_tokens=64)
        return DemonstrationPolicy(self.backend.tokenizer, config, choose)

    def demonstrations(self) -> list[Trajectory]:
        """Tokenized demonstrations from ``data_file``, else from the oracle on ``demo_tasks`` training tasks."""
        cfg = self.cfg
        if is_neural(self.backend):
            return self._kept(self.neural_demonstrations())
        if cfg.demo_policy != "oracle":
            raise ConfigError(
                f"demo_policy={cfg.demo_policy!r}: an LLM policy learns from the env's oracle or a data_file; "
                "demo_policy applies to neural policies. Leave it at 'oracle' or pass data_file."
            )
        env = self.make_env()
        max_turns = cfg.env.max_turns
        if cfg.data_file is None:
            policy = self.demo_policy(lambda e, _memory: e.unwrapped.oracle_action())
            tasks = env.unwrapped.task_set.tasks("train", cfg.demo_tasks)[: cfg.demo_tasks]
            demos = [play_demonstration(env, policy, t, cfg.seed + i, max_turns=max_turns) for i, t in enumerate(tasks)]
        else:
            demos = []
            for number, line in enumerate(Path(cfg.data_file).read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    if "messages" in record:
                        demos.append(chat_demonstration(self.backend.tokenizer, record["messages"]))
                        continue
                    recorded = Trajectory.from_dict(record)
                except (json.JSONDecodeError, TypeError, KeyError) as exc:
                    raise AgentGymError(f"{cfg.data_file}:{number} is not a trajectory or chat ({exc}).") from exc
                # A turn recorded with info["teach"] = False (a GLAD detour) is replayed as history, not taught.
                actions = [turn.action if (turn.info or {}).get("teach", True) else Untaught(turn.action)
                           for turn in recorded.turns]
                policy = self.demo_policy(lambda _e, memory, a=actions: a[memory.turns])
                replay = play_demonstration(
                    env, policy, recorded.task, recorded.seed, max_turns=len(actions), expected=recorded.turns
                )
                demos.append(replay)
        env.close()
        return self._kept(demos)

    def _kept(self, demos: list[Trajectory]) -> list[Trajectory]:
        """The demonstrations to learn from: with a reply (or a step), and successful when asked."""
        neural = is_neural(self.backend)
        kept = [
            d
            for d in demos
            if (d.turns if neural else any(d.loss_mask or ())) and (d.success or not self.cfg.only_successful)
        ]
        if not kept:
            raise AgentGymError(
                f"No usable demonstrations ({len(demos)} read, none successful with a reply); check data_file or "
                f"the demonstrator, or set only_successful=false."
            )
        return kept

    def neural_demonstrations(self) -> list[Trajectory]:
        """Demonstrated episodes with their observations, for a neural policy (see the module docstring)."""
        from agentgym.evaluation import build_policy as build_named_policy
        from agentgym.rollout import RolloutConfig, RolloutEngine

        cfg = self.cfg
        if cfg.data_file is not None:
            return [self._replay(Trajectory.from_dict(r), n) for n, r in _records(cfg.data_file)]
        env = self.make_env()
        tasks = env.unwrapped.task_set.tasks("train", cfg.demo_tasks)[: cfg.demo_tasks]
        demonstrator = _Recorded(build_named_policy(cfg.demo_policy, env))
        env.close()
        engine = RolloutEngine(
            self.make_env,
            demonstrator,
            RolloutConfig(num_envs=cfg.num_envs, group_size=1, max_turns=cfg.env.max_turns),
            env_id=self.env_id,
            policy_name=cfg.demo_policy,
        )
        demos = engine.run([(task, cfg.seed + i) for i, task in enumerate(tasks)], seed=cfg.seed)
        engine.close()
        return demos

    def _replay(self, recorded: Trajectory, line: int) -> Trajectory:
        """A recorded episode's actions replayed in the env from its task and seed, keeping the observations."""
        env = self.make_env()
        obs, info = env.reset(seed=recorded.seed, options={"task": recorded.task})
        traj = Trajectory(self.env_id, recorded.task, recorded.seed, 0, str(info.get("split", "")))
        traj.observations, traj.logprobs = [], []
        for turn in recorded.turns:
            action = np.asarray(turn.action) if isinstance(turn.action, list) else turn.action
            if action not in env.action_space:
                raise AgentGymError(
                    f"{self.cfg.data_file}:{line}: action {turn.action!r} is not in the env's action space "
                    f"{env.action_space}; the file was recorded on another env or settings."
                )
            teach = (turn.info or {}).get("teach", True)  # an untaught turn (a detour) is stepped, not cloned
            if teach:
                traj.observations.append(obs)
                traj.logprobs.append(0.0)
            obs, reward, terminated, truncated, info = env.step(action)
            if teach:
                traj.turns.append(Turn(None, turn.action, float(reward), bool(info.get("action_valid", True)), {}))
            traj.episode_return += float(reward)
            traj.success = bool(info.get("success", False))
            if terminated or truncated:
                break
        env.close()
        return traj

    # ------------------------------------------------------------------ training
    def epoch(self, batch: TokenBatch, epoch: int) -> dict[str, float]:
        """One shuffled pass of minibatch steps over the demonstrations."""
        cfg = self.cfg
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        order = torch.randperm(batch.loss_mask.shape[0], generator=gen)
        losses, accuracies, skipped = [], [], 0
        self.backend.model.train()
        for start in range(0, len(order), cfg.minibatch_size):
            result = self._sft_minibatch(batch, order[start : start + cfg.minibatch_size])
            if result is None:
                skipped += 1
                continue
            losses.append(result[0])
            accuracies.append(result[1])
        clear = getattr(self.backend, "clear_prefix_cache", None)
        if losses and clear is not None:  # a backend's cached prompt keys/values belong to the old weights
            clear()
        return {
            "loss": float(np.mean(losses)) if losses else float("nan"),
            # A neural policy's "token" is a whole env step: the probability of the step's joint action.
            ("step_prob" if is_neural(self.backend) else "token_prob"): (
                float(np.mean(accuracies)) if accuracies else 0.0
            ),
            "optimizer_steps": float(len(losses)),
            "skipped_nonfinite_steps": float(skipped),
        }

    def _sft_minibatch(self, batch: TokenBatch, rows: torch.Tensor) -> tuple[float, float] | None:
        """Cross-entropy step; returns (mean token loss, mean probability of the demonstrated tokens)."""
        cfg = self.cfg
        self.optimizer.zero_grad(set_to_none=True)
        tokens = float(batch.loss_mask[rows].sum().clamp(min=1))  # the minibatch's token count: a true token mean
        loss_sum = prob_sum = 0.0
        for start in range(0, len(rows), cfg.micro_batch_size):
            sub = batch.select(rows[start : start + cfg.micro_batch_size])
            logp, _ = score(self.backend, sub, temperature=1.0)
            mask = sub.loss_mask.to(logp.device)
            # torch.where, not a product: padded positions may hold -inf log-probs.
            picked = torch.where(mask > 0, logp, 0.0)
            loss = -picked.sum() / tokens
            if not torch.isfinite(loss):
                self.optimizer.zero_grad(set_to_none=True)
                return None
            loss.backward()
            loss_sum += float(loss.detach())
            prob_sum += float((picked.detach().exp() * mask).sum()) / tokens
        norm = torch.nn.utils.clip_grad_norm_(self.backend.trainable_parameters(), cfg.max_grad_norm)
        if not torch.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.optimizer.step()
        return loss_sum, prob_sum

    def total_steps(self) -> int:
        """One step per epoch over the demonstrations."""
        return self.cfg.epochs

    def prepare(self) -> None:
        """Build the demonstrations (and keep a few as samples) before the first epoch."""
        self.demos = self.demonstrations()
        self.demo_batch = make_batch(self.backend, self.demos, history_turns=self.cfg.policy.history_turns)
        self.write_samples(0, self.demos)

    def train_step(self, iteration: int) -> dict[str, float]:
        """One epoch of supervised updates."""
        started = time.perf_counter()
        metrics = self.epoch(self.demo_batch, iteration)
        metrics.update(
            demonstrations=float(len(self.demos)),
            train_tokens=float(self.demo_batch.loss_mask.sum()),
            iteration_s=time.perf_counter() - started,
        )
        return metrics
