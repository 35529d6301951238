"""The UAM scenario: a vertiport network, a fleet, a day of demand and fares, costs and uncertainty rates.

A ``Scenario`` is immutable data: everything that a task fixes before the day starts. What happens during the
day (which passengers arrive, which flights are delayed, which routes close, which aircraft break down) is drawn
by the env from its own ``np_random`` with the rates given here.

Scenarios come from ``generator.generate_scenario`` (seeded) or from JSON files (``load_scenarios``). A file holds
one scenario object, a list of them, or ``{"scenarios": [...]}``; each object has the fields of ``Scenario``
(arrays as nested lists), and the derived fields may be left out:

- ``distance`` (default: Euclidean distance between ``coords``), ``route`` (default: every pair within
  ``max_route_km``, default 60 km), ``travel_ticks`` (default: distance at ``cruise_kmh``, default 150 km/h,
  rounded up to whole ticks), ``energy`` (default: ``energy_per_km`` x distance, default 0.01 SoC per km),
  ``route_capacity`` (default 3 everywhere), ``init_soc`` (default 1.0).
- Demand is either ``demand_rate`` (``[T][N][N]`` expected passengers arriving per tick) or ``demand_base``
  (``[N][N]``) times ``demand_profile`` (``[T]``); the fare is either ``fare`` (``[T][N][N]``) or ``fare_base``
  (``[N][N]``, constant over the day).

Every problem raises ``ScenarioError`` naming the scenario, the field and the fix.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from agentgym.errors import LevelFormatError

#: Scalar fields of a scenario: name -> (type, lowest allowed value, highest allowed value).
_SCALARS: dict[str, tuple[type, float, float]] = {
    "seats": (int, 1, 1000),
    "reserve_soc": (float, 0.0, 0.95),
    "charge_per_tick": (float, 1e-6, 1.0),
    "max_wait_ticks": (int, 1, 1000),
    "tick_minutes": (int, 1, 240),
    "start_minute": (int, 0, 24 * 60 - 1),
    "flight_cost": (float, 0.0, math.inf),
    "cost_per_km": (float, 0.0, math.inf),
    "cost_per_passenger": (float, 0.0, math.inf),
    "charge_cost": (float, 0.0, math.inf),
    "unserved_penalty": (float, 0.0, math.inf),
    "p_delay": (float, 0.0, 1.0),
    "max_delay_ticks": (int, 1, 1000),
    "p_closure": (float, 0.0, 1.0),
    "p_downtime": (float, 0.0, 1.0),
}
_RANGES = ("closure_ticks", "downtime_ticks")


class ScenarioError(LevelFormatError):
    """A scenario (generated or read from a file) that is malformed or infeasible."""


@dataclass(frozen=True, eq=False)
class Scenario:
    """One operating day of a UAM network (``N`` vertiports, ``M`` aircraft, ``T`` decision ticks).

    Attributes:
        name: a label (the generator uses ``seed-<seed>``).
        coords: ``[N, 2]`` vertiport positions in km.
        route: ``[N, N]`` bool, True where an airspace route from ``o`` to ``d`` exists (diagonal False).
        distance: ``[N, N]`` route length in km.
        travel_ticks: ``[N, N]`` flight time in ticks (>= 1 on routes, 0 on the diagonal).
        energy: ``[N, N]`` state of charge (SoC, a fraction of a full battery) a flight uses.
        pads: ``[N]`` aircraft a vertiport can hold: parked, charging, boarding, and inbound (reserved) ones.
        route_capacity: ``[N, N]`` most aircraft on a route at once (boarded or airborne): airspace separation.
        demand_rate: ``[T, N, N]`` expected passengers arriving per tick for each origin-destination pair.
        fare: ``[T, N, N]`` ticket price per passenger at each tick.
        init_location: ``[M]`` vertiport of each aircraft at the start of the day.
        init_soc: ``[M]`` SoC of each aircraft at the start of the day.
        seats: passenger seats per aircraft.
        reserve_soc: SoC that must remain after any flight.
        charge_per_tick: SoC an idle aircraft gains per tick (up to 1.0).
        max_wait_ticks: a waiting passenger leaves (unserved) after this many ticks.
        tick_minutes: minutes per tick.
        start_minute: minute of the day of tick 0 (360 = 6:00).
        flight_cost: fixed operating cost per flight.
        cost_per_km: operating cost per km flown (crew, maintenance; energy is paid when charging).
        cost_per_passenger: handling cost per passenger carried.
        charge_cost: electricity price of a full charge (cost of 1.0 SoC).
        unserved_penalty: cost per passenger who leaves unserved.
        p_delay: probability that a departing flight waits on the pad before take-off.
        max_delay_ticks: a delay lasts 1..``max_delay_ticks`` ticks (uniform).
        p_closure: probability per tick that weather closes an open route (both directions).
        closure_ticks: ``(lo, hi)`` ticks a closure lasts (uniform, inclusive).
        p_downtime: probability per tick that an idle aircraft becomes unavailable.
        downtime_ticks: ``(lo, hi)`` ticks a downtime lasts (uniform, inclusive).
    """

    name: str
    coords: np.ndarray
    route: np.ndarray
    distance: np.ndarray
    travel_ticks: np.ndarray
    energy: np.ndarray
    pads: np.ndarray
    route_capacity: np.ndarray
    demand_rate: np.ndarray
    fare: np.ndarray
    init_location: np.ndarray
    init_soc: np.ndarray
    seats: int = 4
    reserve_soc: float = 0.2
    charge_per_tick: float = 0.15
    max_wait_ticks: int = 3
    tick_minutes: int = 10
    start_minute: int = 360
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

    @property
    def num_vertiports(self) -> int:
        """``N``."""
        return int(self.coords.shape[0])

    @property
    def num_aircraft(self) -> int:
        """``M``."""
        return int(self.init_location.shape[0])

    @property
    def num_ticks(self) -> int:
        """``T``: decision ticks in the day."""
        return int(self.demand_rate.shape[0])

    def fingerprint(self) -> bytes:
        """A 16-byte digest of the whole scenario (equal content gives equal bytes)."""
        h = hashlib.blake2b(digest_size=16)
        for f in fields(self):
            value = getattr(self, f.name)
            h.update(f.name.encode())
            h.update(np.ascontiguousarray(value).tobytes() if isinstance(value, np.ndarray) else repr(value).encode())
        return h.digest()

    def to_dict(self) -> dict[str, Any]:
        """The scenario as JSON-ready data (``scenario_from_dict`` reads it back)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = (
                value.tolist()
                if isinstance(value, np.ndarray)
                else (list(value) if isinstance(value, tuple) else value)
            )
        return out


def validate_scenario(s: Scenario) -> Scenario:
    """Check shapes, ranges and feasibility; raise ``ScenarioError`` naming the field and the fix."""
    n, m = s.coords.shape[0] if s.coords.ndim == 2 else -1, s.init_location.shape[0]
    where = f"scenario {s.name!r}"
    if s.coords.ndim != 2 or s.coords.shape[1] != 2 or n < 2:
        raise ScenarioError(f"{where}: 'coords' has shape {s.coords.shape}; it must be [N, 2] with N >= 2 vertiports.")
    if not np.isfinite(s.coords).all():
        raise ScenarioError(f"{where}: 'coords' holds a non-finite value; give each vertiport finite x, y in km.")
    t = s.demand_rate.shape[0] if s.demand_rate.ndim == 3 else 0
    shapes = {
        "route": (n, n),
        "distance": (n, n),
        "travel_ticks": (n, n),
        "energy": (n, n),
        "pads": (n,),
        "route_capacity": (n, n),
        "demand_rate": (t, n, n),
        "fare": (t, n, n),
        "init_soc": (m,),
    }
    for name, shape in shapes.items():
        arr = getattr(s, name)
        if arr.shape != shape:
            raise ScenarioError(
                f"{where}: {name!r} has shape {arr.shape}; with {n} vertiports, {m} aircraft and "
                f"{t} ticks it must be {list(shape)}."
            )
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ScenarioError(f"{where}: {name!r} holds a non-finite value (nan or inf); use finite numbers.")
    if t < 1:
        raise ScenarioError(f"{where}: 'demand_rate' must be [T, N, N] with T >= 1 ticks; got {s.demand_rate.shape}.")
    if m < 1:
        raise ScenarioError(f"{where}: 'init_location' is empty; the fleet needs at least one aircraft.")
    for name, (kind, lo, hi) in _SCALARS.items():
        value = getattr(s, name)
        if not lo <= value <= hi or (kind is int and int(value) != value):
            raise ScenarioError(
                f"{where}: {name!r} = {value!r} must be {'an int' if kind is int else 'a number'} in [{lo}, {hi}]."
            )
    for name in _RANGES:
        lo, hi = getattr(s, name)
        if not 1 <= lo <= hi:
            raise ScenarioError(f"{where}: {name!r} = {(lo, hi)!r} must be [lo, hi] ticks with 1 <= lo <= hi.")
    _check_network(s, where, n)
    _check_fleet(s, where, n, m)
    return s


def _check_network(s: Scenario, where: str, n: int) -> None:
    if np.diagonal(s.route).any():
        raise ScenarioError(
            f"{where}: 'route' has True on its diagonal; staying is always allowed, so o -> o is "
            "not a route. Set the diagonal to false."
        )
    if (s.distance < 0).any() or (s.demand_rate < 0).any() or (s.fare < 0).any() or (s.energy < 0).any():
        bad = next(k for k in ("distance", "demand_rate", "fare", "energy") if (getattr(s, k) < 0).any())
        raise ScenarioError(f"{where}: {bad!r} holds a negative value; it must be >= 0.")
    on = s.route
    if (s.travel_ticks[on] < 1).any():
        o, d = np.argwhere(on & (s.travel_ticks < 1))[0]
        raise ScenarioError(
            f"{where}: 'travel_ticks' of route {o}->{d} is {s.travel_ticks[o, d]}; a flight takes at least 1 tick."
        )
    usable = 1.0 - s.reserve_soc
    if (s.energy[on] > usable + 1e-9).any():
        o, d = np.argwhere(on & (s.energy > usable + 1e-9))[0]
        raise ScenarioError(
            f"{where}: route {o}->{d} needs {s.energy[o, d]:.3f} SoC ('energy') but only "
            f"{usable:.3f} is usable above 'reserve_soc' = {s.reserve_soc}; remove the route from "
            "'route' or lower its energy."
        )
    if (s.route_capacity < 0).any():
        raise ScenarioError(f"{where}: 'route_capacity' holds a negative value; use 0 (closed) or more.")
    if (s.demand_rate[:, ~on] > 0).any():
        o, d = np.argwhere((s.demand_rate > 0).any(0) & ~on)[0]
        raise ScenarioError(
            f"{where}: 'demand_rate' has demand for {o}->{d}, which is not a route (or is the "
            "diagonal); add the route or set that demand to 0."
        )


def _check_fleet(s: Scenario, where: str, n: int, m: int) -> None:
    if (s.pads < 1).any():
        v = int(np.argmin(s.pads))
        raise ScenarioError(f"{where}: 'pads' of vertiport {v} is {s.pads[v]}; every vertiport needs >= 1 pad.")
    if s.init_location.min() < 0 or s.init_location.max() >= n:
        raise ScenarioError(
            f"{where}: 'init_location' names vertiport {int(s.init_location.max())}, but there are {n} (0..{n - 1})."
        )
    if ((s.init_soc < s.reserve_soc - 1e-9) | (s.init_soc > 1.0)).any():
        a = int(np.argmax((s.init_soc < s.reserve_soc - 1e-9) | (s.init_soc > 1.0)))
        raise ScenarioError(
            f"{where}: 'init_soc' of aircraft {a} is {s.init_soc[a]}; it must be in [reserve_soc={s.reserve_soc}, 1]."
        )
    count = np.bincount(s.init_location, minlength=n)
    if (count > s.pads).any():
        v = int(np.argmax(count - s.pads))
        raise ScenarioError(
            f"{where}: infeasible capacity: {count[v]} aircraft start at vertiport {v}, which has "
            f"{s.pads[v]} 'pads'; move aircraft in 'init_location' or add pads."
        )


# ---------------------------------------------------------------------- JSON files


def scenario_from_dict(data: dict[str, Any], *, where: str = "scenario") -> Scenario:
    """Build and validate a scenario from JSON-ready data (see the module docstring for the fields)."""
    if not isinstance(data, dict):
        raise ScenarioError(f"{where}: expected a JSON object with scenario fields, got {type(data).__name__}.")
    known = {f.name for f in fields(Scenario)} | {
        "demand_base",
        "demand_profile",
        "fare_base",
        "max_route_km",
        "cruise_kmh",
        "energy_per_km",
    }
    unknown = sorted(set(data) - known)
    if unknown:
        raise ScenarioError(f"{where}: unknown field(s) {unknown}; the fields are {sorted(known)}.")
    name = str(data.get("name", where))
    where = f"scenario {name!r}"
    coords = _array(data, "coords", float, where)
    n = coords.shape[0] if coords.ndim == 2 else 0
    diff = coords[:, None, :] - coords[None, :, :] if coords.ndim == 2 else np.zeros((0, 0, 2))
    distance = _array(data, "distance", float, where, default=np.sqrt((diff**2).sum(-1)))
    max_route = float(_scalar(data, "max_route_km", 60.0, where))
    route = _array(data, "route", bool, where, default=(distance <= max_route) & ~np.eye(n, dtype=bool))
    minutes = int(_scalar(data, "tick_minutes", 10, where))
    cruise = float(_scalar(data, "cruise_kmh", 150.0, where))
    if cruise <= 0:
        raise ScenarioError(f"{where}: 'cruise_kmh' = {cruise} must be > 0.")
    default_ticks = np.where(route, np.maximum(1, np.ceil(distance / (cruise * minutes / 60.0) - 1e-9)), 0)
    travel = _array(data, "travel_ticks", int, where, default=default_ticks.astype(np.int64))
    per_km = float(_scalar(data, "energy_per_km", 0.01, where))
    energy = _array(data, "energy", float, where, default=np.where(route, per_km * distance, 0.0))
    demand = _demand(data, where, n)
    if "fare" in data:
        fare = _array(data, "fare", float, where)
    else:
        fare = np.broadcast_to(_array(data, "fare_base", float, where), demand.shape).copy()
    init_location = _array(data, "init_location", int, where)
    if init_location.ndim != 1:
        raise ScenarioError(f"{where}: 'init_location' must be a list of vertiport indices, one per aircraft.")
    scalars = {k: _scalar(data, k, getattr(Scenario, k), where) for k in _SCALARS}
    ranges = {k: tuple(int(x) for x in _pair(data, k, getattr(Scenario, k), where)) for k in _RANGES}
    scenario = Scenario(
        name=name,
        coords=coords,
        route=route,
        distance=distance,
        travel_ticks=travel,
        energy=energy,
        pads=_array(data, "pads", int, where),
        route_capacity=_array(data, "route_capacity", int, where, default=np.where(route, 3, 0)),
        demand_rate=demand,
        fare=fare,
        init_location=init_location,
        init_soc=_array(data, "init_soc", float, where, default=np.ones(init_location.shape[0])),
        **scalars,  # type: ignore[arg-type]
        **ranges,  # type: ignore[arg-type]
    )
    return validate_scenario(scenario)


def _demand(data: dict[str, Any], where: str, n: int) -> np.ndarray:
    if "demand_rate" in data:
        return _array(data, "demand_rate", float, where)
    if "demand_base" not in data or "demand_profile" not in data:
        raise ScenarioError(
            f"{where}: no demand; give 'demand_rate' ([T][N][N]) or both 'demand_base' ([N][N]) "
            "and 'demand_profile' ([T])."
        )
    base = _array(data, "demand_base", float, where)
    profile = _array(data, "demand_profile", float, where)
    if base.shape != (n, n) or profile.ndim != 1:
        raise ScenarioError(
            f"{where}: 'demand_base' must be [{n}][{n}] and 'demand_profile' a list [T]; got "
            f"{list(base.shape)} and {list(profile.shape)}."
        )
    return profile[:, None, None] * base[None]


def _array(data: dict[str, Any], key: str, kind: type, where: str, default: np.ndarray | None = None) -> np.ndarray:
    if key not in data:
        if default is None:
            raise ScenarioError(f"{where}: the required field {key!r} is missing.")
        return default
    dtype = {float: np.float64, int: np.int64, bool: np.bool_}[kind]
    try:
        arr = np.asarray(data[key])
        if kind is int and arr.dtype.kind == "f" and arr.size and not (arr == np.round(arr)).all():
            raise ValueError("non-integer values")
        if arr.dtype == object or arr.dtype.kind in "USV":
            raise ValueError("not a rectangular array of numbers")
        return arr.astype(dtype)
    except (TypeError, ValueError) as exc:
        raise ScenarioError(f"{where}: field {key!r} is not a rectangular array of {kind.__name__}s ({exc}).") from None


def _scalar(data: dict[str, Any], key: str, default: Any, where: str) -> Any:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ScenarioError(f"{where}: field {key!r} = {value!r} must be a number.")
    return int(value) if isinstance(default, int) and not isinstance(default, bool) and value == int(value) else value


def _pair(data: dict[str, Any], key: str, default: tuple[int, int], where: str) -> tuple[Any, Any]:
    value = data.get(key, default)
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ScenarioError(f"{where}: field {key!r} = {value!r} must be a pair [lo, hi] of ticks.")
    return value[0], value[1]


def load_scenarios(path: str | Path) -> list[Scenario]:
    """Read the scenarios of a JSON file (one object, a list, or ``{"scenarios": [...]}``)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScenarioError(f"Scenario file {str(path)!r} does not exist; pass the path of a .json file.") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ScenarioError(f"Scenario file {str(path)!r} is not valid JSON ({exc}).") from None
    if isinstance(data, dict) and "scenarios" in data:
        data = data["scenarios"]
    items = data if isinstance(data, list) else [data]
    if not items:
        raise ScenarioError(f"Scenario file {str(path)!r} holds no scenario.")
    return [scenario_from_dict(item, where=f"{path.name}[{i}]") for i, item in enumerate(items)]


def save_scenarios(scenarios: list[Scenario], path: str | Path) -> None:
    """Write scenarios to a JSON file that ``load_scenarios`` reads back exactly."""
    Path(path).write_text(json.dumps({"scenarios": [s.to_dict() for s in scenarios]}), encoding="utf-8")
