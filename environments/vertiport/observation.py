"""The structured observation of the vertiport env: a dict of arrays, and its gymnasium ``Dict`` space.

Keys (``N`` vertiports, ``M`` aircraft, ``W`` ticks of demand window; all float arrays are float32 and scaled to
roughly unit range):

- ``vertiports`` ``[N, 10]``: x, y (/50 km), pads (/10), pads in use or reserved / pads, idle aircraft / pads,
  inbound aircraft / pads, down aircraft / pads, passengers waiting to leave / seats, waiting to arrive / seats,
  mean SoC of the idle aircraft there.
- ``aircraft`` ``[M, 8]``: SoC, status one-hot (idle, boarded, flying, down), ticks left in status (/6),
  passengers aboard / seats, usable charge ``(SoC - reserve) / (1 - reserve)``.
- ``aircraft_location`` ``[M]`` int64: current vertiport (the origin while boarded or flying).
- ``aircraft_destination`` ``[M]`` int64: destination (``== location`` on the ground when not boarded).
- ``routes`` ``[N, N, 10]``: route exists, route open, distance (/50 km), flight ticks (/6), energy (SoC),
  closure ticks left (/10), aircraft on route / route capacity, passengers waiting / seats, waiting passengers
  about to leave / seats, current fare (/100).
- ``demand`` ``[W, N, N]``: expected passenger arrivals per tick for the next ``W`` ticks (from now) / seats.
- ``fare`` ``[W, N, N]``: fares for the next ``W`` ticks (/100); both are 0 past the end of the day.
- ``action_mask`` ``[M, N]`` int8: allowed destinations (see ``FleetSim.action_mask``).
- ``deciding`` ``[M]`` int8: 1 for the aircraft whose choice counts at this step.
- ``time`` ``[2]``: fraction of the day elapsed, clock time as a fraction of 24 h.
"""

from __future__ import annotations

import numpy as np
from gymnasium import spaces

from environments.vertiport.fleet import BOARDED, DOWN, FLYING, IDLE, FleetSim

VERTIPORT_FEATURES = 10
AIRCRAFT_FEATURES = 8
ROUTE_FEATURES = 10
TIME_FEATURES = 2
STRUCT_KEYS = (
    "vertiports",
    "aircraft",
    "aircraft_location",
    "aircraft_destination",
    "routes",
    "demand",
    "fare",
    "action_mask",
    "deciding",
    "time",
)


#: Bound of the float features' boxes: finite (gymnasium's checker warns on infinite bounds) and far beyond any
#: value a scenario can produce (features are scaled to about unit range).
FEATURE_BOUND = 1e6


def struct_space(n: int, m: int, window: int) -> spaces.Dict:
    """The ``Dict`` space of ``struct_obs`` for ``n`` vertiports, ``m`` aircraft and a ``window``-tick forecast."""
    b = FEATURE_BOUND
    return spaces.Dict(
        {
            "vertiports": spaces.Box(-b, b, (n, VERTIPORT_FEATURES), np.float32),
            "aircraft": spaces.Box(-b, b, (m, AIRCRAFT_FEATURES), np.float32),
            "aircraft_location": spaces.Box(0, n - 1, (m,), np.int64),
            "aircraft_destination": spaces.Box(0, n - 1, (m,), np.int64),
            "routes": spaces.Box(-b, b, (n, n, ROUTE_FEATURES), np.float32),
            "demand": spaces.Box(0, b, (window, n, n), np.float32),
            "fare": spaces.Box(0, b, (window, n, n), np.float32),
            "action_mask": spaces.Box(0, 1, (m, n), np.int8),
            "deciding": spaces.Box(0, 1, (m,), np.int8),
            "time": spaces.Box(0, b, (TIME_FEATURES,), np.float32),
        }
    )


class StructView:
    """Builds ``struct_obs`` for one scenario; the static route features are computed once."""

    def __init__(self, sim: FleetSim, window: int) -> None:
        s = sim.scenario
        self.sim, self.window = sim, window
        n = s.num_vertiports
        static = np.zeros((n, n, ROUTE_FEATURES), np.float32)
        static[..., 0] = s.route
        static[..., 2] = s.distance / 50.0
        static[..., 3] = s.travel_ticks / 6.0
        static[..., 4] = s.energy
        self._static_routes = static
        self._capacity = np.maximum(s.route_capacity, 1).astype(np.float32)
        self._pads = s.pads.astype(np.float32)
        self._coords = (s.coords / 50.0).astype(np.float32)
        # Demand and fare padded with W zero ticks so that a window past the end of the day is one slice.
        pad = np.zeros((window, n, n))
        self._demand = np.concatenate([s.demand_rate / s.seats, pad]).astype(np.float32)
        self._fare = np.concatenate([s.fare / 100.0, pad]).astype(np.float32)

    def observe(self, mask: np.ndarray) -> dict[str, np.ndarray]:
        """A fresh observation dict of the current state (``mask`` from ``sim.action_mask()``)."""
        sim = self.sim
        s, n, m = sim.scenario, sim.n, sim.m
        t = sim.tick
        status, loc, dest = sim.status, sim.loc, sim.dest
        idle = status == IDLE
        waiting_total = sim.waiting.sum(0)

        v = np.empty((n, VERTIPORT_FEATURES), np.float32)
        v[:, 0:2] = self._coords
        v[:, 2] = self._pads / 10.0
        v[:, 3] = sim.occupancy() / self._pads
        idle_count = np.bincount(loc[idle], minlength=n)
        v[:, 4] = idle_count / self._pads
        moving = (status == BOARDED) | (status == FLYING)
        v[:, 5] = np.bincount(dest[moving], minlength=n) / self._pads
        v[:, 6] = np.bincount(loc[status == DOWN], minlength=n) / self._pads
        v[:, 7] = waiting_total.sum(1) / s.seats
        v[:, 8] = waiting_total.sum(0) / s.seats
        v[:, 9] = np.bincount(loc[idle], weights=sim.soc[idle], minlength=n) / np.maximum(idle_count, 1)

        a = np.zeros((m, AIRCRAFT_FEATURES), np.float32)
        a[:, 0] = sim.soc
        a[sim.arange_m, 1 + status] = 1.0
        a[:, 5] = sim.timer / 6.0
        a[:, 6] = sim.load / s.seats
        a[:, 7] = (sim.soc - s.reserve_soc) / (1.0 - s.reserve_soc)

        r = self._static_routes.copy()
        r[..., 1] = s.route & (sim.closure == 0)
        r[..., 5] = sim.closure / 10.0
        r[..., 6] = sim.route_use().reshape(n, n) / self._capacity
        r[..., 7] = waiting_total / s.seats
        r[..., 8] = sim.waiting[-1] / s.seats
        r[..., 9] = s.fare[min(t, sim.t_end - 1)] / 100.0

        clock = (s.start_minute + t * s.tick_minutes) / 1440.0
        return {
            "vertiports": v,
            "aircraft": a,
            "aircraft_location": loc.copy(),
            "aircraft_destination": dest.copy(),
            "routes": r,
            "demand": self._demand[t : t + self.window].copy(),
            "fare": self._fare[t : t + self.window].copy(),
            "action_mask": mask.astype(np.int8),
            "deciding": idle.astype(np.int8),
            "time": np.array([t / sim.t_end, clock], np.float32),
        }
