"""The vertiport env as a PettingZoo ``ParallelEnv``: one agent per aircraft.

Agents are ``aircraft_0 .. aircraft_{M-1}``; all of them are live for the whole day and terminate together when
it ends. Every agent acts at every step, but only the actions of deciding (idle) aircraft count; the others'
action masks allow only their current destination. A missing action means "stay".

Per-agent observation: ``{"observation": float32 vector, "action_mask": int8 [N]}``. The vector is the aircraft's
own features (8, see ``observation.py``), one-hot location and destination (2N), the time (2), all vertiport
features (10N), and from its location: passengers waiting per destination / seats, the current fare (/100),
whether each route is open, and the expected demand over the forecast window / seats (4N).

Rewards: each aircraft gets the profit it made (fares of its passengers minus its flight and charging costs) and
an equal share of the penalty for passengers who left unserved, so the agents' rewards sum to the centralised
env's reward.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv

from environments.vertiport.env import VertiportEnv, VertiportState
from environments.vertiport.observation import AIRCRAFT_FEATURES, FEATURE_BOUND, TIME_FEATURES, VERTIPORT_FEATURES


class VertiportParallelEnv(ParallelEnv):
    """PettingZoo view of ``VertiportEnv`` (see the module docstring); ``kwargs`` go to ``VertiportEnv``.

    ``reset(seed, options)`` forwards the ``task`` and ``split`` options and ignores other keys (PettingZoo's API
    test passes arbitrary options). ``get_state``/``set_state``/``state_key`` are those of the centralised env.
    """

    metadata: ClassVar[dict[str, Any]] = {"name": "vertiport_v0", "render_modes": ["ansi"], "is_parallelizable": True}

    def __init__(self, render_mode: str | None = None, **kwargs: Any) -> None:
        if kwargs.get("obs_mode", "struct") != "struct":
            raise ValueError("The parallel env builds its own per-agent observations; do not pass obs_mode.")
        kwargs.pop("obs_mode", None)
        self.env = VertiportEnv(obs_mode="struct", **kwargs)
        self.render_mode = render_mode
        n, m = self.env.num_vertiports, self.env.num_aircraft
        self.possible_agents = [f"aircraft_{i}" for i in range(m)]
        self.agents: list[str] = []
        self._index = {a: i for i, a in enumerate(self.possible_agents)}
        size = AIRCRAFT_FEATURES + 2 * n + TIME_FEATURES + VERTIPORT_FEATURES * n + 4 * n
        obs_space = spaces.Dict(
            {
                "observation": spaces.Box(-FEATURE_BOUND, FEATURE_BOUND, (size,), np.float32),
                "action_mask": spaces.Box(0, 1, (n,), np.int8),
            }
        )
        act_space = spaces.Discrete(n)
        # One space object per agent, returned every time (PettingZoo's API test checks identity).
        self.observation_spaces = {a: obs_space for a in self.possible_agents}
        self.action_spaces = {a: act_space for a in self.possible_agents}
        self._eye = np.eye(n, dtype=np.float32)

    def observation_space(self, agent: str) -> spaces.Space:
        """The observation space of ``agent`` (the same object every call)."""
        return self.observation_spaces[agent]

    def action_space(self, agent: str) -> spaces.Space:
        """``Discrete(N)``: the destination vertiport (its own vertiport = stay)."""
        return self.action_spaces[agent]

    def reset(
        self, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, dict[str, Any]]]:
        """Start a day; ``options`` may hold ``task`` or ``split``."""
        forwarded = {k: v for k, v in (options or {}).items() if k in ("task", "split")}
        struct, info = self.env.reset(seed=seed, options=forwarded)
        self.agents = list(self.possible_agents)
        deciding = struct["deciding"]
        infos = {a: {"deciding": bool(deciding[i]), **info} for i, a in enumerate(self.agents)}
        return self._observations(struct), infos

    def step(self, actions: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        """Apply the agents' destinations (missing agents stay) and advance to the next decision."""
        if not self.agents:
            raise RuntimeError("step() after the day ended; call reset() to start a new day.")
        sim = self.env.sim
        choices = sim.dest.copy()
        for agent, action in actions.items():
            i = self._index.get(agent)
            if i is None:
                raise KeyError(
                    f"Unknown agent {agent!r}; the agents are {self.possible_agents[0]} .. {self.possible_agents[-1]}."
                )
            choices[i] = int(action)
        struct, _, terminated, truncated, info = self.env.step(choices)
        share = sim.step_penalty / sim.m
        agents = self.agents
        rewards = {a: float(sim.aircraft_reward[i] - share) for i, a in enumerate(agents)}
        overridden = info.get("overridden", np.zeros(sim.m, bool))
        deciding = struct["deciding"]
        infos = {
            a: {"deciding": bool(deciding[i]), "overridden": bool(overridden[i]), "action_valid": info["action_valid"]}
            for i, a in enumerate(agents)
        }
        observations = self._observations(struct)
        terminations = dict.fromkeys(agents, bool(terminated))
        truncations = dict.fromkeys(agents, bool(truncated))
        if terminated or truncated:
            self.agents = []
        return observations, rewards, terminations, truncations, infos

    def _observations(self, struct: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
        m = self.env.sim.m
        loc = struct["aircraft_location"]
        routes = struct["routes"][loc]  # [M, N, F]: the routes out of each aircraft's location
        demand_out = struct["demand"].sum(0)[loc]  # [M, N]
        shared = np.concatenate([struct["time"], struct["vertiports"].ravel()])
        vec = np.concatenate(
            [
                struct["aircraft"],
                self._eye[loc],
                self._eye[struct["aircraft_destination"]],
                np.broadcast_to(shared, (m, shared.shape[0])),
                routes[:, :, 7],
                routes[:, :, 9],
                routes[:, :, 1],
                demand_out,
            ],
            axis=1,
            dtype=np.float32,
        )
        mask = struct["action_mask"]
        return {a: {"observation": vec[i], "action_mask": mask[i]} for i, a in enumerate(self.agents)}

    def render(self) -> str:
        """The centralised env's text view."""
        return self.env.text_observation()

    def close(self) -> None:
        """Nothing to release."""

    def state(self) -> np.ndarray:
        """A global state vector for centralised critics: vertiport and aircraft features, flattened."""
        struct = self.env._struct_obs()
        return np.concatenate([struct["vertiports"].ravel(), struct["aircraft"].ravel(), struct["time"]])

    def get_state(self) -> VertiportState:
        """The centralised env's snapshot."""
        return self.env.get_state()

    def set_state(self, state: VertiportState) -> None:
        """Restore a snapshot; all agents are live again unless the day had ended."""
        self.env.set_state(state)
        self.agents = [] if self.env.sim.done else list(self.possible_agents)

    def state_key(self) -> bytes:
        """The centralised env's state key."""
        return self.env.state_key()
