"""Seeded generation of UAM-like scenarios (a reconstruction of the setting of arXiv 2401.04851).

The paper's numeric setting was not retrievable, so every number here is a documented, configurable guess
(``ScenarioConfig``); the defaults give the paper's test size, 8 vertiports and 40 aircraft, over one day from
6:00 to 24:00 at 10-minute ticks.

1. Network: ``N`` vertiports placed uniformly in a disc (radius 25 km for 8 vertiports, growing with
   ``sqrt(N)``) at least ``min_spacing_km`` apart. A route exists between every pair within ``max_route_km``
   (plus each vertiport's nearest neighbour, so none is isolated). Flight time is distance at ``cruise_kmh``
   rounded up to ticks; energy is ``energy_per_km`` x distance.
2. Land use: each vertiport has a residential weight and a business weight. Demand per origin-destination pair
   is a gravity term (``exp(-distance / 40 km)``) times an off-peak level plus a morning peak (residential ->
   business) and an evening peak (business -> residential), scaled so that the day's expected passengers are
   ``demand_factor`` x the fleet's seat capacity (seats x trips an aircraft could fly in the day, counting the
   ticks to recharge the energy of a trip).
3. Fares: ``base_fare + fare_per_km`` x distance, times a surge factor that follows demand relative to the
   pair's daily mean (clipped to [0.8, 1.6]).
4. Capacity: pads proportional to the vertiport's total weight (at least 2) summing to ``pad_factor`` x the fleet;
   aircraft start at vertiports in proportion to residential weight, never above the pads; SoC in [0.6, 1].

The same (seed, config) always gives the same scenario: randomness comes from a ``SeedSequence`` of the seed,
split into independent streams for the network, the land use and the fleet.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

from environments.vertiport.scenario import Scenario, ScenarioError, validate_scenario

#: Named scenario sizes accepted by the env's ``preset`` argument.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"num_vertiports": 3, "num_aircraft": 4, "start_hour": 7.0, "end_hour": 10.0},
    "small": {"num_vertiports": 4, "num_aircraft": 8, "start_hour": 6.0, "end_hour": 12.0},
    "default": {},
    "large": {"num_vertiports": 50, "num_aircraft": 500},
}


@dataclass(frozen=True)
class ScenarioConfig:
    """Knobs of the scenario generator (the defaults are the paper's test size; numbers are documented guesses).

    Attributes:
        num_vertiports: ``N``, 2..50.
        num_aircraft: ``M``, 1..500.
        start_hour: start of the operating day (6.0 = 6:00).
        end_hour: end of the operating day (24.0 = midnight).
        tick_minutes: minutes per decision tick.
        min_spacing_km: minimum distance between two vertiports.
        max_route_km: longest airspace route.
        cruise_kmh: cruise speed, which sets flight times.
        seats: passenger seats per aircraft.
        energy_per_km: SoC used per km flown.
        reserve_soc: SoC that must remain after a flight.
        charge_per_tick: SoC gained per idle tick.
        pad_factor: total pads across vertiports / fleet size.
        route_capacity: most aircraft on one directed route at a time.
        demand_factor: day's expected passengers / fleet seat capacity.
        morning_peak_hour: centre of the morning peak.
        evening_peak_hour: centre of the evening peak.
        peak_width_hours: standard deviation of each peak.
        offpeak_level: demand level outside peaks, relative to a peak's height.
        base_fare: fixed part of a fare.
        fare_per_km: distance part of a fare.
        surge: how strongly fares follow demand.
        max_wait_ticks: ticks a passenger waits before leaving.
        flight_cost: fixed cost per flight.
        cost_per_km: operating cost per km flown.
        cost_per_passenger: handling cost per passenger.
        charge_cost: price of a full charge.
        unserved_penalty: cost per passenger who leaves unserved.
        p_delay: take-off delay probability per departure.
        max_delay_ticks: longest take-off delay.
        p_closure: weather closure probability per route per tick.
        closure_ticks: duration range of a closure.
        p_downtime: downtime probability per idle aircraft per tick.
        downtime_ticks: duration range of a downtime.
    """

    num_vertiports: int = 8
    num_aircraft: int = 40
    start_hour: float = 6.0
    end_hour: float = 24.0
    tick_minutes: int = 10
    min_spacing_km: float = 8.0
    max_route_km: float = 60.0
    cruise_kmh: float = 150.0
    seats: int = 4
    energy_per_km: float = 0.01
    reserve_soc: float = 0.2
    charge_per_tick: float = 0.15
    pad_factor: float = 1.5
    route_capacity: int = 3
    demand_factor: float = 1.0
    morning_peak_hour: float = 8.0
    evening_peak_hour: float = 17.5
    peak_width_hours: float = 1.2
    offpeak_level: float = 0.25
    base_fare: float = 25.0
    fare_per_km: float = 2.5
    surge: float = 0.3
    max_wait_ticks: int = 3
    flight_cost: float = 30.0
    cost_per_km: float = 2.0
    cost_per_passenger: float = 5.0
    charge_cost: float = 40.0
    unserved_penalty: float = 15.0
    p_delay: float = 0.1
    max_delay_ticks: int = 2
    p_closure: float = 0.003
    closure_ticks: tuple[int, int] = (3, 9)
    p_downtime: float = 0.002
    downtime_ticks: tuple[int, int] = (6, 18)

    def __post_init__(self) -> None:
        if not 2 <= self.num_vertiports <= 50:
            raise ScenarioError(f"num_vertiports={self.num_vertiports} must be in 2..50.")
        if not 1 <= self.num_aircraft <= 500:
            raise ScenarioError(f"num_aircraft={self.num_aircraft} must be in 1..500.")
        if not 0 <= self.start_hour < self.end_hour <= 24:
            raise ScenarioError(
                f"start_hour={self.start_hour}, end_hour={self.end_hour}: need 0 <= start_hour < end_hour <= 24."
            )
        if self.num_ticks < 1:
            raise ScenarioError(f"tick_minutes={self.tick_minutes} leaves no tick between start_hour and end_hour.")
        if self.energy_per_km * self.max_route_km > 1.0 - self.reserve_soc + 1e-9:
            raise ScenarioError(
                f"A {self.max_route_km} km route needs {self.energy_per_km * self.max_route_km:.2f} SoC but only "
                f"{1 - self.reserve_soc:.2f} is usable above reserve_soc={self.reserve_soc}; lower max_route_km or "
                "energy_per_km."
            )
        if self.pad_factor < 1.0:
            raise ScenarioError(
                f"pad_factor={self.pad_factor} < 1 leaves too few pads to park the whole fleet; use >= 1 (default 1.5)."
            )
        for name in ("min_spacing_km", "cruise_kmh", "charge_per_tick", "demand_factor"):
            if getattr(self, name) <= 0:
                raise ScenarioError(f"{name}={getattr(self, name)} must be > 0.")

    @property
    def num_ticks(self) -> int:
        """Decision ticks in the day."""
        return int(round((self.end_hour - self.start_hour) * 60 / self.tick_minutes))

    @classmethod
    def from_options(cls, preset: str = "default", **overrides: Any) -> ScenarioConfig:
        """A preset (``tiny``, ``small``, ``default``, ``large``) with field overrides; unknown names are errors."""
        if preset not in PRESETS:
            raise ScenarioError(f"Unknown preset {preset!r}; choose one of {sorted(PRESETS)}.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ScenarioError(f"Unknown scenario setting(s) {unknown}; the settings are {sorted(known)}.")
        merged = {**PRESETS[preset], **overrides}
        for key in ("closure_ticks", "downtime_ticks"):
            if key in merged:
                merged[key] = tuple(merged[key])
        return replace(cls(), **merged)

    def as_dict(self) -> dict[str, Any]:
        """The settings as plain data."""
        return asdict(self)


def _gaussian(hours: np.ndarray, centre: float, width: float) -> np.ndarray:
    return np.exp(-0.5 * ((hours - centre) / width) ** 2)


def _place_vertiports(cfg: ScenarioConfig, rng: np.random.Generator) -> np.ndarray:
    radius = 25.0 * math.sqrt(cfg.num_vertiports / 8.0)
    spacing = cfg.min_spacing_km
    for _ in range(50):
        points: list[np.ndarray] = []
        for _ in range(200 * cfg.num_vertiports):
            r, a = radius * math.sqrt(rng.random()), 2 * math.pi * rng.random()
            p = np.array([r * math.cos(a), r * math.sin(a)])
            if all(np.hypot(*(p - q)) >= spacing for q in points):
                points.append(p)
                if len(points) == cfg.num_vertiports:
                    return np.round(np.stack(points), 3)
        spacing *= 0.9  # too crowded for this spacing: relax it rather than fail
    raise ScenarioError(f"Could not place {cfg.num_vertiports} vertiports; lower min_spacing_km.")


def _network(cfg: ScenarioConfig, coords: np.ndarray) -> tuple[np.ndarray, ...]:
    n = cfg.num_vertiports
    distance = np.sqrt(((coords[:, None] - coords[None]) ** 2).sum(-1))
    route = (distance <= cfg.max_route_km) & ~np.eye(n, dtype=bool)
    masked = distance + np.eye(n) * 1e9
    nearest = masked.argmin(1)
    route[np.arange(n), nearest] = True  # no vertiport is isolated
    route[nearest, np.arange(n)] = True
    # A nearest-neighbour link longer than the battery allows would be unflyable: shorten the energy to fit.
    km_per_tick = cfg.cruise_kmh * cfg.tick_minutes / 60.0
    travel = np.where(route, np.maximum(1, np.ceil(distance / km_per_tick - 1e-9)), 0).astype(np.int64)
    energy = np.where(route, np.minimum(cfg.energy_per_km * distance, 1.0 - cfg.reserve_soc), 0.0)
    return distance, route, travel, energy


def generate_scenario(seed: int, config: ScenarioConfig | None = None) -> Scenario:
    """The scenario of ``seed`` under ``config`` (default: 8 vertiports, 40 aircraft, 6:00-24:00)."""
    cfg = config or ScenarioConfig()
    net_rng, use_rng, fleet_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(3))
    n, m, t = cfg.num_vertiports, cfg.num_aircraft, cfg.num_ticks
    coords = _place_vertiports(cfg, net_rng)
    distance, route, travel, energy = _network(cfg, coords)

    residential = use_rng.uniform(0.2, 1.0, n)
    business = use_rng.uniform(0.2, 1.0, n)
    business[use_rng.integers(n)] += 1.0  # one central business district
    hours = cfg.start_hour + (np.arange(t) + 0.5) * cfg.tick_minutes / 60.0
    morning = _gaussian(hours, cfg.morning_peak_hour, cfg.peak_width_hours)[:, None, None]
    evening = _gaussian(hours, cfg.evening_peak_hour, cfg.peak_width_hours * 1.1)[:, None, None]
    total = residential + business
    shape = (
        cfg.offpeak_level * np.outer(total, total)[None] / 4.0
        + morning * np.outer(residential, business)[None]
        + evening * np.outer(business, residential)[None]
    ) * np.where(route, np.exp(-distance / 40.0), 0.0)[None]
    # Ticks per trip: flying, plus recharging the energy it used (charging is the usual bottleneck).
    mean_trip = float(travel[route].mean()) + float(energy[route].mean()) / cfg.charge_per_tick
    seat_capacity = m * cfg.seats * t / mean_trip
    demand = shape * (cfg.demand_factor * seat_capacity / shape.sum())
    mean_od = demand.mean(0, keepdims=True)
    ratio = np.divide(demand, mean_od, out=np.ones_like(demand), where=mean_od > 0)
    surge = np.clip(1.0 + cfg.surge * (ratio - 1.0), 0.8, 1.6)
    fare = np.where(route, cfg.base_fare + cfg.fare_per_km * distance, 0.0)[None] * surge

    weight = total / total.sum()
    pads = np.maximum(2, np.round(weight * cfg.pad_factor * m)).astype(np.int64)
    home = residential / residential.sum()
    init_location = np.empty(m, dtype=np.int64)
    free = pads.copy()
    for a in range(m):
        p = home * (free > 0)
        v = int(fleet_rng.choice(n, p=p / p.sum()))
        init_location[a] = v
        free[v] -= 1
    init_soc = np.round(fleet_rng.uniform(0.6, 1.0, m), 3)

    scenario = Scenario(
        name=f"seed-{seed}",
        coords=coords,
        route=route,
        distance=distance,
        travel_ticks=travel,
        energy=energy,
        pads=pads,
        route_capacity=np.where(route, cfg.route_capacity, 0).astype(np.int64),
        demand_rate=demand,
        fare=fare,
        init_location=init_location,
        init_soc=init_soc,
        seats=cfg.seats,
        reserve_soc=cfg.reserve_soc,
        charge_per_tick=cfg.charge_per_tick,
        max_wait_ticks=cfg.max_wait_ticks,
        tick_minutes=cfg.tick_minutes,
        start_minute=int(round(cfg.start_hour * 60)),
        flight_cost=cfg.flight_cost,
        cost_per_km=cfg.cost_per_km,
        cost_per_passenger=cfg.cost_per_passenger,
        charge_cost=cfg.charge_cost,
        unserved_penalty=cfg.unserved_penalty,
        p_delay=cfg.p_delay,
        max_delay_ticks=cfg.max_delay_ticks,
        p_closure=cfg.p_closure,
        closure_ticks=tuple(cfg.closure_ticks),  # type: ignore[arg-type]
        p_downtime=cfg.p_downtime,
        downtime_ticks=tuple(cfg.downtime_ticks),  # type: ignore[arg-type]
    )
    return validate_scenario(scenario)
