"""Urban-air-mobility fleet scheduling as a centralised agentgym env (``agentgym/Vertiport-v0``)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from gymnasium import spaces

from agentgym.env import AgentEnv
from agentgym.errors import StateError, TaskError
from agentgym.tasks import ListTasks, SeedTasks, TaskSet
from environments.vertiport.fleet import FleetSim
from environments.vertiport.generator import ScenarioConfig, generate_scenario
from environments.vertiport.observation import StructView, struct_space
from environments.vertiport.oracle import greedy_choices
from environments.vertiport.render import (
    TEXT_CHARSET,
    instructions,
    parse_text_action,
    render_text,
    text_max_length,
)
from environments.vertiport.scenario import Scenario, ScenarioError, load_scenarios

_CACHE_SIZE = 8


@dataclass(frozen=True)
class VertiportState:
    """A snapshot of a vertiport day (see ``VertiportEnv.get_state``); arrays are copies.

    Attributes:
        task: the scenario's task (seed, or index in the scenario file).
        sizes: ``(N, M)``, checked on restore.
        tick: current tick.
        status, loc, dest, timer, soc, load: per-aircraft arrays (see ``FleetSim``).
        closure: ``[N, N]`` weather closure ticks left.
        waiting: ``[W, N, N]`` waiting passengers by age.
        delay_draw: ``[M]`` pending take-off delay draws.
        totals: day totals (profit, revenue, operating, charging, penalty, passengers).
        unserved: passengers who left unserved.
        rng: ``np_random.bit_generator.state``.
    """

    task: Hashable
    sizes: tuple[int, int]
    tick: int
    status: np.ndarray
    loc: np.ndarray
    dest: np.ndarray
    timer: np.ndarray
    soc: np.ndarray
    load: np.ndarray
    closure: np.ndarray
    waiting: np.ndarray
    delay_draw: np.ndarray
    totals: np.ndarray
    unserved: int
    rng: dict[str, Any]


_STATE_ARRAYS = ("status", "loc", "dest", "timer", "soc", "load", "closure", "waiting", "delay_draw", "totals")


class VertiportEnv(AgentEnv[VertiportState]):
    """Electric air-taxi fleet dispatch across vertiports over one day (UAM-like reconstruction of CapTAIN's setting).

    ## Description
    ``M`` electric aircraft serve ``N`` vertiports. Passengers arrive at each origin for each destination at a
    time-varying rate (morning and evening peaks) and leave unserved after ``max_wait_ticks``. At every decision
    step each *idle* aircraft (on the ground and available) chooses a destination; choosing its own vertiport
    means staying, which charges the battery. A departing aircraft boards the longest-waiting passengers for its
    destination (up to its seats), may wait out a take-off delay on the pad, then flies for the route's travel
    ticks. Weather closes routes for a while, and idle aircraft may go down for maintenance. Time advances tick
    by tick; ticks in which no aircraft is idle are skipped. See ``scenario.py`` and ``generator.py`` for the
    numbers (a documented guess: the paper's setting was not published).

    ## Action Space
    ``MultiDiscrete([N] * M)``: a destination per aircraft. Only the entries of aircraft with
    ``struct["deciding"] == 1`` count. A choice that ``struct["action_mask"]`` forbids (no route, route closed or
    at its concurrency limit, destination full, battery below reserve after the flight), or that loses a conflict
    to a lower-numbered aircraft for the last pad or route slot, becomes "stay" and is reported in
    ``info["num_masked"]``, ``info["num_conflicts"]`` and ``info["overridden"]`` (a ``[M]`` bool array); it is
    never charged as a flight. Text actions such as ``A0->V2, A5->V1`` (or ``stay``) are parsed by
    ``parse_action``; unmentioned aircraft stay. Anything else is an invalid no-op (every aircraft stays) with
    ``info["action_valid"] = False``.

    ## Observation Space
    ``"struct"``: a ``Dict`` of arrays (vertiport, aircraft and route features, a ``demand_window``-tick forecast
    of demand and fares, the action mask and who decides; see ``observation.py``). ``"text"``: a compact listing
    (see ``render.py``). ``"dict"``: both. ``graph_observation()`` gives the state as a ``torch_geometric``
    ``HeteroData`` (vertiport and aircraft nodes; route, at and heading-to edges).

    ## Rewards
    The profit of the step: fares of the passengers boarded, minus flight costs (fixed + per km + per passenger),
    minus charging costs, minus a penalty per passenger who left unserved. The episode return is the day's profit.

    ## Starting State
    The task is a scenario: an int seed for generated ones (``preset`` and the settings fix the size), or an
    index into ``scenario_file``. The day's uncertainty (arrivals, delays, weather, downtime) comes from
    ``np_random``.

    ## Episode End
    Terminated when the day ends (tick ``T``). ``info["success"]`` is True at the end if the day's profit exceeds
    ``success_profit``. There is no truncation: a day has at most ``T`` steps.

    ## Arguments
    - ``preset``: ``tiny`` (3 vertiports, 4 aircraft, 3 h), ``small`` (4, 8, 6 h), ``default`` (8, 40, 6:00-24:00)
      or ``large`` (50, 500).
    - ``num_vertiports``, ``num_aircraft``: override the preset's sizes.
    - ``scenario``: a dict of other ``ScenarioConfig`` settings (tick length, costs, uncertainty rates, ...).
    - ``scenario_file``: a JSON file of scenarios (see ``scenario.py``); its scenarios are the tasks, split by
      content hash. All of them must have the same ``N`` and ``M``.
    - ``demand_window``: ticks of demand and fare forecast in the observation (default 6).
    - ``success_profit``: profit above which a day counts as a success (default 0).
    - ``obs_mode``, ``invalid_action_penalty``, ``render_mode``: see ``AgentEnv``.

    ## Version History
    - v0: initial version.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi", "human"], "render_fps": 4}
    tags: ClassVar[tuple[str, ...]] = ("scheduling", "multi-agent", "graph", "stochastic", "fleet")
    views: ClassVar[tuple[str, ...]] = ("struct", "text", "graph")
    text_charset: frozenset[str] = TEXT_CHARSET

    def __init__(
        self,
        *,
        preset: str = "default",
        num_vertiports: int | None = None,
        num_aircraft: int | None = None,
        scenario: dict[str, Any] | None = None,
        scenario_file: str | None = None,
        demand_window: int = 6,
        success_profit: float = 0.0,
        obs_mode: str = "dict",
        invalid_action_penalty: float = 0.0,
        render_mode: str | None = None,
    ) -> None:
        super().__init__(obs_mode=obs_mode, invalid_action_penalty=invalid_action_penalty, render_mode=render_mode)
        if not isinstance(demand_window, int) or demand_window < 1:
            raise ValueError(f"demand_window={demand_window!r} must be a positive int (ticks of forecast).")
        self.demand_window = demand_window
        self.success_profit = float(success_profit)
        self._cache: OrderedDict[Hashable, Scenario] = OrderedDict()
        self.config: ScenarioConfig | None = None
        self._file_scenarios: list[Scenario] | None = None
        if scenario_file is not None:
            if num_vertiports is not None or num_aircraft is not None or scenario:
                raise ScenarioError(
                    "scenario_file fixes the sizes and settings; drop num_vertiports, num_aircraft "
                    "and scenario (or drop scenario_file to generate scenarios)."
                )
            self._file_scenarios = load_scenarios(scenario_file)
            sizes = {(s.num_vertiports, s.num_aircraft) for s in self._file_scenarios}
            if len(sizes) > 1:
                raise ScenarioError(
                    f"{scenario_file!r} mixes network sizes (vertiports, aircraft) {sorted(sizes)}; "
                    "one env has fixed spaces, so split the file by size."
                )
            first = self._file_scenarios[0]
            self._tasks: TaskSet = ListTasks(
                [s.fingerprint() for s in self._file_scenarios],
                namespace="vertiport/file",
                names=[s.name for s in self._file_scenarios],
            )
        else:
            overrides = dict(scenario or {})
            if num_vertiports is not None:
                overrides["num_vertiports"] = num_vertiports
            if num_aircraft is not None:
                overrides["num_aircraft"] = num_aircraft
            self.config = ScenarioConfig.from_options(preset, **overrides)
            # Scenarios are continuous random draws, so distinct seeds never generate equal scenarios: the seed is
            # a faithful content key. The namespace holds the sizes only, so a seed keeps its split when other
            # settings (costs, rates) change.
            self._tasks = SeedTasks(
                namespace=f"vertiport/{self.config.num_vertiports}x{self.config.num_aircraft}",
                label=preset,
            )
            first = self._scenario_for(self._tasks.tasks("train", 1)[0])
        self.num_vertiports, self.num_aircraft = first.num_vertiports, first.num_aircraft
        self.text_max_length = text_max_length(self.num_vertiports, self.num_aircraft)
        self.action_space = spaces.MultiDiscrete(np.full(self.num_aircraft, self.num_vertiports, dtype=np.int64))
        self._build_observation_space(struct_space(self.num_vertiports, self.num_aircraft, demand_window))
        self._bind(first)
        self._success = False

    # ------------------------------------------------------------------ scenarios
    @property
    def task_set(self) -> TaskSet:
        """Int seeds (generated scenarios) or file indices, split by content hash."""
        return self._tasks

    @property
    def scenario(self) -> Scenario:
        """The scenario of the current episode."""
        return self.sim.scenario

    def _scenario_for(self, task: Hashable) -> Scenario:
        found = self._cache.get(task)
        if found is not None:
            self._cache.move_to_end(task)
            return found
        self._tasks.split_of(task)  # raises TaskError for a task outside the set
        if self._file_scenarios is not None:
            scenario = self._file_scenarios[int(task)]  # type: ignore[arg-type]
        else:
            scenario = generate_scenario(int(task), self.config)  # type: ignore[arg-type]
        self._cache[task] = scenario
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return scenario

    def _bind(self, scenario: Scenario) -> None:
        self.sim = FleetSim(scenario)
        self._view = StructView(self.sim, self.demand_window)
        self._mask: np.ndarray | None = None

    def _reset_task(self, task: Hashable) -> dict[str, Any]:
        scenario = self._scenario_for(task)
        if scenario is not self.sim.scenario:
            self._bind(scenario)
        self.sim.reset(self.np_random)
        self._mask = None
        self._success = False
        return {"profit": 0.0, "tick": 0, "scenario": scenario.name}

    # ------------------------------------------------------------------ dynamics
    def action_mask(self) -> np.ndarray:
        """``[M, N]`` bool allowed destinations at this step (cached until the state changes)."""
        if self._mask is None:
            self._mask = self.sim.action_mask()
        return self._mask

    def _step(self, action: np.ndarray | None) -> tuple[float, bool, bool, dict[str, Any]]:
        sim = self.sim
        if sim.done:
            info = {"success": self._success, "profit": float(sim.totals[0]), "tick": sim.tick, "ticks": 0}
            return 0.0, True, False, info
        choices = sim.dest if action is None else np.asarray(action, dtype=np.int64)
        stats = sim.step(choices, self.np_random, self.action_mask())
        self._mask = None
        reward = sim.reward()
        terminated = sim.done
        if terminated:
            self._success = bool(sim.totals[0] > self.success_profit)
        info = {
            "success": self._success,
            "profit": float(sim.totals[0]),
            "revenue": float(sim.totals[1]),
            "passengers": int(sim.totals[5]),
            "unserved": int(sim.unserved),
            "tick": sim.tick,
            **stats,
        }
        return reward, terminated, False, info

    # ------------------------------------------------------------------ views
    def _struct_obs(self) -> dict[str, np.ndarray]:
        return self._view.observe(self.action_mask())

    def graph_observation(self) -> Any:
        """The current state as a ``torch_geometric.data.HeteroData`` (see ``graph.py``; imports torch lazily)."""
        from environments.vertiport.graph import struct_to_heterodata

        return struct_to_heterodata(self._struct_obs())

    def text_observation(self) -> str:
        """The compact text view (see ``render.py``)."""
        return render_text(self.sim, self.action_mask())

    def instructions(self) -> str:
        """Rules and the answer format."""
        return instructions(self.sim)

    def action_format(self) -> str:
        """One line telling how to write an action."""
        return "assign destinations to deciding aircraft, for example <answer>A0->V2, A5->V1</answer>, or 'stay'"

    def parse_action(self, text: str) -> np.ndarray | None:
        """Destinations from text such as ``A0->V2, A5->V1``; unmentioned aircraft stay (see ``render.py``)."""
        return parse_text_action(text, self.sim.dest, self.num_vertiports)

    # ------------------------------------------------------------------ state
    def get_state(self) -> VertiportState:
        """A picklable snapshot (every state array copied, RNG included)."""
        sim = self.sim
        return VertiportState(
            task=self.task,
            sizes=(self.num_vertiports, self.num_aircraft),
            tick=sim.tick,
            unserved=sim.unserved,
            rng=self._rng_state(),
            **{name: getattr(sim, name).copy() for name in _STATE_ARRAYS},
        )

    def set_state(self, state: VertiportState) -> None:
        """Restore a snapshot of an env with the same sizes (the scenario is regenerated from the task if needed)."""
        if not isinstance(state, VertiportState):
            raise StateError(f"set_state got a {type(state).__name__}; pass a VertiportState from get_state().")
        if state.sizes != (self.num_vertiports, self.num_aircraft):
            raise StateError(
                f"The state has (vertiports, aircraft) = {state.sizes} but this env has "
                f"{(self.num_vertiports, self.num_aircraft)}; restore it into an env of that size."
            )
        try:
            scenario = self._scenario_for(state.task)
        except TaskError as exc:
            raise StateError(f"The state's task {state.task!r} is not a task of this env ({exc}).") from None
        if scenario is not self.sim.scenario:
            self._bind(scenario)
        sim = self.sim
        for name in _STATE_ARRAYS:
            target = getattr(sim, name)
            value = getattr(state, name)
            if target.shape != value.shape:
                setattr(sim, name, value.copy())
            else:
                target[...] = value
        sim.tick, sim.unserved = state.tick, state.unserved
        self.task = state.task
        self._mask = None
        self._success = bool(sim.done and sim.totals[0] > self.success_profit)
        self._restore_rng(state.rng)

    def state_key(self) -> bytes:
        """Bytes of the tick and every state array except the day totals (history-free)."""
        sim = self.sim
        parts = [np.int64(sim.tick).tobytes()]
        parts += [np.ascontiguousarray(getattr(sim, name)).tobytes() for name in _STATE_ARRAYS if name != "totals"]
        return b"".join(parts)

    # ------------------------------------------------------------------ expert
    def oracle_action(self) -> np.ndarray | None:
        """The greedy highest-expected-revenue dispatch (see ``oracle.py``); None once the day is over."""
        if self.sim.done:
            return None
        return greedy_choices(self.sim, self.action_mask())
