"""The fleet simulation behind the vertiport env: numpy arrays over aircraft, one tick at a time.

Aircraft are in one of four statuses: ``IDLE`` (on the ground, charging, and choosing a destination at each
decision step), ``BOARDED`` (boarded and waiting on the pad for a take-off delay), ``FLYING`` and ``DOWN``
(unavailable). A decision step applies the choices of the idle aircraft, then advances time by one tick, and on
until some aircraft is idle again (or the day ends).

All uncertainty is drawn from the caller's ``np.random.Generator`` in fixed-size blocks every tick (delay,
downtime, weather and passenger arrivals), whatever the actions: two copies of a state fed different actions see
the same future weather and demand (common random numbers), which makes planners' comparisons fair and keeps
the RNG stream independent of the policy.

Occupancy: a vertiport's pads hold the aircraft parked or down there, the aircraft boarded there, and the aircraft
flying or boarded *towards* it (a pad is reserved at departure). A route's concurrency counts the aircraft boarded
for it or flying it.
"""

from __future__ import annotations

import numpy as np

from environments.vertiport.scenario import Scenario

IDLE, BOARDED, FLYING, DOWN = 0, 1, 2, 3
STATUS_NAMES = ("idle", "boarded", "flying", "down")


def group_rank(keys: np.ndarray) -> np.ndarray:
    """For each element, how many earlier elements (in array order) share its key: 0, 1, 2, ... per key."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    first = np.searchsorted(sorted_keys, sorted_keys, side="left")
    rank = np.empty_like(order)
    rank[order] = np.arange(keys.shape[0]) - first
    return rank


class FleetSim:
    """Mutable day state of one scenario; every method is vectorised over aircraft.

    Attributes (state; ``get_state`` in the env copies exactly these):
        tick: current tick, 0..T (T = end of day).
        status, loc, dest, timer, soc, load: ``[M]`` per-aircraft status, current (or origin) vertiport,
            destination (``== loc`` on the ground), ticks left in the status, state of charge, passengers aboard.
        closure: ``[N, N]`` ticks each route stays closed by weather (0 = open; symmetric).
        waiting: ``[W, N, N]`` passengers waiting per origin-destination pair by age (0 = arrived this tick).
        delay_draw: ``[M]`` take-off delay (ticks, 0 = none) each aircraft would get if it departed now.
        totals: ``[6]`` day totals: profit, revenue, operating cost, charging cost, unserved penalty, passengers.
        unserved: passengers who left unserved so far.
    """

    def __init__(self, scenario: Scenario) -> None:
        s = self.scenario = scenario
        n, m = s.num_vertiports, s.num_aircraft
        self.n, self.m, self.t_end = n, m, s.num_ticks
        self.arange_m = np.arange(m)
        self.travel_flat = s.travel_ticks.ravel()
        self.energy_flat = s.energy.ravel()
        self.flight_cost_flat = np.where(s.route, s.flight_cost + s.cost_per_km * s.distance, 0.0).ravel()
        self.capacity_flat = s.route_capacity.ravel()
        #: ``[N, N]`` cost of a flight without passengers: fixed + per km + the charge to replace its energy.
        self.fixed_flight_cost = np.where(
            s.route, s.flight_cost + s.cost_per_km * s.distance + s.energy * s.charge_cost, 0.0
        )
        self.upper_routes = np.triu(s.route, 1)
        self.soc_floor = s.reserve_soc - 1e-9
        self.tick = 0
        self.status = np.zeros(m, np.int8)
        self.loc = s.init_location.copy()
        self.dest = s.init_location.copy()
        self.timer = np.zeros(m, np.int64)
        self.soc = s.init_soc.astype(np.float64).copy()
        self.load = np.zeros(m, np.int64)
        self.closure = np.zeros((n, n), np.int64)
        self.waiting = np.zeros((s.max_wait_ticks, n, n), np.int64)
        self.delay_draw = np.zeros(m, np.int64)
        self.totals = np.zeros(6, np.float64)
        self.unserved = 0
        # Per-step outputs (rewritten every step, never part of the state).
        self.aircraft_reward = np.zeros(m, np.float64)
        self.step_penalty = 0.0

    # ------------------------------------------------------------------ lifecycle
    def reset(self, rng: np.random.Generator) -> None:
        """Start the day: aircraft at their start vertiports, tick 0's passengers and delay draws drawn."""
        s = self.scenario
        self.tick = 0
        self.status[:] = IDLE
        self.loc[:] = s.init_location
        self.dest[:] = s.init_location
        self.timer[:] = 0
        self.soc[:] = s.init_soc
        self.load[:] = 0
        self.closure[:] = 0
        self.waiting[:] = 0
        self.totals[:] = 0.0
        self.unserved = 0
        self.waiting[0] = rng.poisson(s.demand_rate[0])
        self.draw_delays(rng)

    @property
    def done(self) -> bool:
        """Whether the day is over."""
        return self.tick >= self.t_end

    def deciding(self) -> np.ndarray:
        """``[M]`` bool: the aircraft that choose a destination at this step (idle ones)."""
        return self.status == IDLE

    def occupancy(self) -> np.ndarray:
        """``[N]`` pads in use or reserved per vertiport (see the module docstring)."""
        occ = np.bincount(self.dest, minlength=self.n)
        boarded = self.status == BOARDED
        if boarded.any():
            occ += np.bincount(self.loc[boarded], minlength=self.n)
        return occ

    def route_use(self) -> np.ndarray:
        """``[N * N]`` aircraft boarded for or flying each directed route."""
        busy = self.status >= BOARDED
        busy &= self.status <= FLYING
        return np.bincount(self.loc[busy] * self.n + self.dest[busy], minlength=self.n * self.n)

    def action_mask(self) -> np.ndarray:
        """``[M, N]`` bool allowed destinations.

        A deciding aircraft may stay, or fly an open route whose concurrency limit is not reached to a vertiport
        with a free pad, if its SoC after the flight stays above the reserve. A non-deciding aircraft has exactly
        one allowed entry, its current destination (so every row of the mask has a choice).
        """
        s, n = self.scenario, self.n
        o = self.loc
        ok = s.route[o]
        ok &= self.closure[o] == 0
        ok &= (self.soc[:, None] - s.energy[o]) >= self.soc_floor
        ok &= (self.occupancy() < s.pads)[None, :]
        ok &= self.route_use().reshape(n, n)[o] < s.route_capacity[o]
        ok &= self.deciding()[:, None]
        ok[self.arange_m, self.dest] = True
        return ok

    # ------------------------------------------------------------------ one decision step
    def step(self, choices: np.ndarray, rng: np.random.Generator, mask: np.ndarray | None = None) -> dict[str, object]:
        """Apply the idle aircraft's ``[M]`` destination choices, then advance to the next decision (or day end).

        Choices of non-deciding aircraft are ignored. A choice the mask forbids, or that loses a conflict (two
        aircraft taking the last pad or route slot; earlier aircraft index wins), becomes "stay" and is reported.
        Per-aircraft profit is left in ``aircraft_reward``, the shared unserved penalty in ``step_penalty``.
        ``mask`` is ``action_mask()`` of the current state when the caller has it already.
        """
        self.aircraft_reward[:] = 0.0
        self.step_penalty = 0.0
        stats = self._apply(choices, self.action_mask() if mask is None else mask)
        ticks = 0
        while True:
            self._advance(rng)
            ticks += 1
            if self.done or self.deciding().any():
                break
        self.totals[0] += self.reward()
        stats["ticks"] = ticks
        return stats

    def _apply(self, choices: np.ndarray, mask: np.ndarray) -> dict[str, object]:
        s, n = self.scenario, self.n
        deciding = self.deciding()
        choice = np.where(deciding, choices, self.dest)
        move = deciding & (choice != self.loc)
        masked = move & ~mask[self.arange_m, choice]
        move &= ~masked
        idx = np.flatnonzero(move)
        conflict = np.zeros(self.m, bool)
        departed = 0
        if idx.size:
            key = self.loc[idx] * n + choice[idx]
            ok = group_rank(key) < (self.capacity_flat[key] - self.route_use()[key])
            free = s.pads - self.occupancy()
            ok[ok] = group_rank(choice[idx[ok]]) < free[choice[idx[ok]]]
            conflict[idx[~ok]] = True
            idx = idx[ok]
            if idx.size:
                self._depart(idx, choice[idx])
                departed = int(idx.size)
        overridden = masked | conflict
        return {
            "departures": departed,
            "num_masked": int(masked.sum()),
            "num_conflicts": int(conflict.sum()),
            "overridden": overridden,
        }

    def _depart(self, idx: np.ndarray, to: np.ndarray) -> None:
        """Board passengers (oldest first) and take off (or wait out a delay) for aircraft ``idx``."""
        s, n = self.scenario, self.n
        key = self.loc[idx] * n + to
        counts = np.bincount(key, minlength=n * n)
        ukeys = np.flatnonzero(counts)
        flat = self.waiting.reshape(self.waiting.shape[0], n * n)
        oldest_first = flat[::-1, ukeys]
        before = np.cumsum(oldest_first, axis=0) - oldest_first
        taken = np.clip(counts[ukeys] * s.seats - before, 0, oldest_first)
        flat[:, ukeys] -= taken[::-1]
        boarded = np.zeros(n * n, np.int64)
        boarded[ukeys] = taken.sum(0)
        load = np.clip(boarded[key] - group_rank(key) * s.seats, 0, s.seats)
        revenue = load * s.fare[self.tick].ravel()[key]
        operating = self.flight_cost_flat[key] + s.cost_per_passenger * load
        self.aircraft_reward[idx] += revenue - operating
        self.totals[1] += revenue.sum()
        self.totals[2] += operating.sum()
        self.totals[5] += load.sum()
        self.soc[idx] -= self.energy_flat[key]
        self.dest[idx] = to
        self.load[idx] = load
        delay = self.delay_draw[idx]
        self.status[idx] = np.where(delay > 0, BOARDED, FLYING)
        self.timer[idx] = np.where(delay > 0, delay, self.travel_flat[key])

    # ------------------------------------------------------------------ one tick
    def _advance(self, rng: np.random.Generator) -> None:
        s, n, m = self.scenario, self.n, self.m
        idle = self.status == IDLE
        charge = np.minimum(s.charge_per_tick, 1.0 - self.soc) * idle
        self.soc += charge
        charge_cost = charge * s.charge_cost
        self.aircraft_reward -= charge_cost
        self.totals[3] += charge_cost.sum()

        busy = self.status != IDLE
        self.timer -= busy
        ended = busy & (self.timer <= 0)
        arrive = ended & (self.status == FLYING)
        self.loc[arrive] = self.dest[arrive]
        self.load[arrive] = 0
        takeoff = ended & (self.status == BOARDED)
        self.timer[takeoff] = self.travel_flat[self.loc[takeoff] * n + self.dest[takeoff]]
        self.status[takeoff] = FLYING
        self.status[ended & ~takeoff] = IDLE
        self.tick += 1

        # Fixed-size draws every tick, whatever happened (see the module docstring).
        lo, hi = s.downtime_ticks
        breaks = (rng.random(m) < s.p_downtime) & (self.status == IDLE)
        duration = rng.integers(lo, hi + 1, m)
        self.status[breaks] = DOWN
        self.timer[breaks] = duration[breaks]

        np.subtract(self.closure, 1, out=self.closure, where=self.closure > 0)
        lo, hi = s.closure_ticks
        storm = (rng.random((n, n)) < s.p_closure) & self.upper_routes
        duration = rng.integers(lo, hi + 1, (n, n))
        if storm.any():
            self.closure = np.maximum(self.closure, np.where(storm, duration, 0))
            self.closure = np.maximum(self.closure, self.closure.T)
        self.draw_delays(rng)

        expired = int(self.waiting[-1].sum())
        self.unserved += expired
        self.step_penalty += expired * s.unserved_penalty
        self.totals[4] += expired * s.unserved_penalty
        self.waiting[1:] = self.waiting[:-1]
        self.waiting[0] = rng.poisson(s.demand_rate[self.tick]) if self.tick < self.t_end else 0

    def draw_delays(self, rng: np.random.Generator) -> None:
        """Draw the take-off delays pending for aircraft departing at the current tick (``delay_draw``)."""
        s = self.scenario
        delayed = rng.random(self.m) < s.p_delay
        self.delay_draw = np.where(delayed, rng.integers(1, s.max_delay_ticks + 1, self.m), 0)

    def reward(self) -> float:
        """Profit of the last step: the aircraft's profits minus the shared unserved penalty."""
        return float(self.aircraft_reward.sum() - self.step_penalty)
