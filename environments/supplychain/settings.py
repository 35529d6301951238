"""Inventory-network settings: the named presets of the HDPO paper's table and their overrides.

A ``Setting`` is one problem instance: ``n_stores`` stores fed by an optional chain of upstream stages (stage 0 is
the warehouse that ships to every store, stage 1 the echelon that ships to the warehouse, and so on up to the
stage that orders from an unlimited outside supplier), with lead times, costs and a demand model. Presets:

=====================  ===================================================================================
one_store_backlogged   1 store, Normal(5, 1.6) clipped at 0, L=4, h=1, p=9, backlogged (base-stock optimal)
one_store_lost         1 store, Poisson(5), L=4, h=1, p=9, lost sales (capped base-stock near-optimal)
serial                 store <- warehouse <- 2 echelons, Normal(5, 2) clipped, store L=4 h=1 p=9, warehouse
                       L=3 h=0.5, echelons (warehouse side first) L=4 h=0.2 and L=2 h=0.1; backlogged
                       (echelon base-stock optimal)
one_warehouse_lost     1 warehouse (L=3, h=0.3) -> ``n_stores`` stores (default 5), per-store mean ~U[2.5, 7.5],
                       CV ~U[0.25, 0.5], correlation 0.5, L ~U{2, 3}, h ~U[0.7, 1.3], p ~U[6.3, 11.7], lost
                       sales; the per-store values are drawn once from ``instance_seed``
=====================  ===================================================================================

Every field can be overridden by name (``make_setting("one_store_lost", lead_time=2, underage_cost=19)``).
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from agentgym.config import ConfigError

DEMAND_KINDS = ("normal", "poisson", "csv")
PRESETS = ("one_store_backlogged", "one_store_lost", "serial", "one_warehouse_lost")
#: Largest store count of the one-warehouse setting (the paper's largest instance).
MAX_STORES = 50


@dataclass(frozen=True)
class Setting:
    """One inventory network (see the module docstring); build it with ``make_setting``.

    Attributes:
        name: the preset it came from (a label in reports).
        n_stores: number of stores.
        lost_sales: unmet store demand is lost (True) or backlogged (False).
        lead_times: per store, periods from order to arrival (an order placed at t is on hand at t + L).
        holding_costs: per store, cost per unit on hand after demand.
        underage_costs: per store, cost per unit of unmet demand (lost or backlogged) in a period.
        upstream_lead_times: lead times of the upstream stages, warehouse first (empty: stores order from an
            unlimited supplier).
        upstream_holding_costs: holding cost per unit on hand of each upstream stage, warehouse first.
        demand: "normal", "poisson" or "csv".
        demand_mean: per store mean demand (for "csv": the series' mean, filled in by the CSV reader).
        demand_std: per store standard deviation (normal; the square root of the mean for Poisson).
        correlation: correlation of normal demand between every pair of stores.
        clip_demand: clip normal demand at 0.
        demand_csv: path of the CSV demand series (``demand="csv"``).
        demand_columns: CSV columns used as the stores' series, in store order (None: every numeric column).
        initial_inventory: each pipeline slot starts at ``U[lo, hi] x`` the node's mean demand.
    """

    name: str
    n_stores: int
    lost_sales: bool
    lead_times: tuple[int, ...]
    holding_costs: tuple[float, ...]
    underage_costs: tuple[float, ...]
    upstream_lead_times: tuple[int, ...] = ()
    upstream_holding_costs: tuple[float, ...] = ()
    demand: str = "normal"
    demand_mean: tuple[float, ...] = (5.0,)
    demand_std: tuple[float, ...] = (1.6,)
    correlation: float = 0.0
    clip_demand: bool = True
    demand_csv: str | None = None
    demand_columns: tuple[str, ...] | None = None
    initial_inventory: tuple[float, float] = field(default=(0.0, 1.0))

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def n_upstream(self) -> int:
        """Number of upstream stages (0: stores only; 1: a warehouse; more: a serial chain)."""
        return len(self.upstream_lead_times)

    @property
    def n_orders(self) -> int:
        """Order quantities per period: one per store, then one per upstream stage (warehouse first)."""
        return self.n_stores + self.n_upstream

    @property
    def store_slots(self) -> int:
        """Length of each store's inventory vector: on hand, then arrivals in 1..L-1 periods."""
        return max(self.lead_times)

    @property
    def upstream_slots(self) -> int:
        """Length of each upstream stage's inventory vector (1 when there is none)."""
        return max(self.upstream_lead_times, default=1)

    @property
    def kind(self) -> str:
        """The network shape: ``stores`` (no upstream), ``serial`` (several upstream stages) or ``warehouse``."""
        if self.n_upstream == 0:
            return "stores"
        return "serial" if self.n_upstream > 1 else "warehouse"

    def fingerprint(self) -> str:
        """A short stable hash of every field (cache key of oracle levels, split namespace)."""
        text = json.dumps(asdict(self), sort_keys=True, default=str)
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()

    def describe(self) -> str:
        """One line: network, demand, lead times and costs."""
        sales = "lost sales" if self.lost_sales else "backlogged"
        up = ""
        if self.n_upstream:
            stages = ", ".join(
                f"L={lt} h={h:g}" for lt, h in zip(self.upstream_lead_times, self.upstream_holding_costs)
            )
            up = f"; upstream (warehouse first): {stages}"
        return f"{self.name}: {self.n_stores} store(s), {self.demand} demand, {sales}{up}"


_OVERRIDES = {
    "n_stores": "number of stores (one_warehouse_lost: 3..50)",
    "lost_sales": "True: unmet demand is lost; False: backlogged",
    "lead_time": "store lead time(s): an int or one per store",
    "holding_cost": "store holding cost(s): a number or one per store",
    "underage_cost": "store underage cost(s): a number or one per store",
    "warehouse_lead_time": "lead time of the warehouse (upstream stage 0)",
    "warehouse_holding_cost": "holding cost of the warehouse",
    "echelon_lead_times": "lead times of the echelons above the warehouse, warehouse side first",
    "echelon_holding_costs": "holding costs of the echelons above the warehouse, warehouse side first",
    "demand": "normal, poisson or csv",
    "demand_mean": "mean demand: a number or one per store",
    "demand_std": "standard deviation of normal demand: a number or one per store",
    "demand_cv": "coefficient of variation of normal demand (std = cv x mean)",
    "correlation": "correlation of normal demand across stores",
    "clip_demand": "clip normal demand at 0",
    "demand_csv": "CSV file of demand series (implies demand='csv')",
    "demand_columns": "CSV columns to use, in store order",
    "initial_inventory": "(lo, hi): each pipeline slot starts at U[lo, hi] x mean demand",
    "instance_seed": "seed of the per-store parameters drawn by one_warehouse_lost",
}


def make_setting(preset: str = "one_store_backlogged", **overrides: Any) -> Setting:
    """Build a ``Setting`` from a preset name and overrides (None values are ignored).

    Raises:
        ConfigError: an unknown preset or override name (with a suggestion), or an invalid value.
    """
    if preset not in PRESETS:
        close = difflib.get_close_matches(str(preset), PRESETS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"preset={preset!r} is not a supply-chain preset.{hint} Choose one of {', '.join(PRESETS)}.")
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - set(_OVERRIDES))
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(_OVERRIDES), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"Unknown supply-chain setting {unknown[0]!r}.{hint} Settings: "
            + "; ".join(f"{k} ({doc})" for k, doc in _OVERRIDES.items())
        )
    base = _preset_values(preset, given)
    n = base["n_stores"]
    if "lead_time" in given:
        base["lead_times"] = _per_store(given["lead_time"], n, "lead_time", int)
    if "holding_cost" in given:
        base["holding_costs"] = _per_store(given["holding_cost"], n, "holding_cost", float)
    if "underage_cost" in given:
        base["underage_costs"] = _per_store(given["underage_cost"], n, "underage_cost", float)
    if "lost_sales" in given:
        base["lost_sales"] = bool(given["lost_sales"])
    _apply_upstream(base, given)
    _apply_demand(base, given, n)
    if "initial_inventory" in given:
        base["initial_inventory"] = tuple(float(x) for x in given["initial_inventory"])
    return Setting(**base)


def _preset_values(preset: str, given: dict[str, Any]) -> dict[str, Any]:
    """The preset's fields before overrides (one_warehouse_lost draws its per-store values here)."""
    if preset == "one_store_backlogged":
        n = int(given.get("n_stores", 1))
        return _uniform(preset, n, lost=False, lead=4, h=1.0, p=9.0, mean=5.0, std=1.6, demand="normal")
    if preset == "one_store_lost":
        n = int(given.get("n_stores", 1))
        return _uniform(preset, n, lost=True, lead=4, h=1.0, p=9.0, mean=5.0, std=5.0**0.5, demand="poisson")
    if preset == "serial":
        if int(given.get("n_stores", 1)) != 1:
            raise ConfigError(f"n_stores={given['n_stores']} is not allowed in the serial preset, which has one store.")
        values = _uniform(preset, 1, lost=False, lead=4, h=1.0, p=9.0, mean=5.0, std=2.0, demand="normal")
        values.update(upstream_lead_times=(3, 4, 2), upstream_holding_costs=(0.5, 0.2, 0.1))
        return values
    n = int(given.get("n_stores", 5))
    if not 1 <= n <= MAX_STORES:
        raise ConfigError(f"n_stores={n} must be between 1 and {MAX_STORES} for one_warehouse_lost (the paper: 3..50).")
    rng = np.random.default_rng(int(given.get("instance_seed", 0)))
    mean = rng.uniform(2.5, 7.5, n)
    cv = rng.uniform(0.25, 0.5, n)
    lead = rng.integers(2, 4, n)
    h = rng.uniform(0.7, 1.3, n)
    p = rng.uniform(6.3, 11.7, n)
    return {
        "name": preset,
        "n_stores": n,
        "lost_sales": True,
        "lead_times": tuple(int(x) for x in lead),
        "holding_costs": tuple(round(float(x), 4) for x in h),
        "underage_costs": tuple(round(float(x), 4) for x in p),
        "upstream_lead_times": (3,),
        "upstream_holding_costs": (0.3,),
        "demand": "normal",
        "demand_mean": tuple(round(float(x), 4) for x in mean),
        "demand_std": tuple(round(float(m * c), 4) for m, c in zip(mean, cv)),
        "correlation": 0.5,
    }


def _uniform(
    name: str, n: int, *, lost: bool, lead: int, h: float, p: float, mean: float, std: float, demand: str
) -> dict[str, Any]:
    if n < 1 or n > MAX_STORES:
        raise ConfigError(f"n_stores={n} must be between 1 and {MAX_STORES}.")
    return {
        "name": name,
        "n_stores": n,
        "lost_sales": lost,
        "lead_times": (lead,) * n,
        "holding_costs": (h,) * n,
        "underage_costs": (p,) * n,
        "demand": demand,
        "demand_mean": (mean,) * n,
        "demand_std": (std,) * n,
    }


def _apply_upstream(base: dict[str, Any], given: dict[str, Any]) -> None:
    lead = list(base.get("upstream_lead_times", ()))
    hold = list(base.get("upstream_holding_costs", ()))
    if "warehouse_lead_time" in given or "warehouse_holding_cost" in given:
        if not lead:  # adding a warehouse to a stores-only preset
            lead, hold = [3], [0.5]
        if "warehouse_lead_time" in given:
            lead[0] = int(given["warehouse_lead_time"])
        if "warehouse_holding_cost" in given:
            hold[0] = float(given["warehouse_holding_cost"])
    if "echelon_lead_times" in given or "echelon_holding_costs" in given:
        if not lead:
            raise ConfigError(
                "echelon_lead_times/echelon_holding_costs need a warehouse below them; set warehouse_lead_time too "
                "(or use preset='serial')."
            )
        e_lead = [int(x) for x in given.get("echelon_lead_times", lead[1:])]
        e_hold = [float(x) for x in given.get("echelon_holding_costs", hold[1:])]
        if len(e_lead) != len(e_hold):
            raise ConfigError(
                f"echelon_lead_times={e_lead} and echelon_holding_costs={e_hold} must have the same length "
                "(one entry per echelon, warehouse side first)."
            )
        lead, hold = lead[:1] + e_lead, hold[:1] + e_hold
    base["upstream_lead_times"], base["upstream_holding_costs"] = tuple(lead), tuple(hold)


def _apply_demand(base: dict[str, Any], given: dict[str, Any], n: int) -> None:
    if "demand_csv" in given:
        base["demand"] = "csv"
        base["demand_csv"] = str(given["demand_csv"])
    if "demand" in given:
        if given["demand"] not in DEMAND_KINDS:
            raise ConfigError(f"demand={given['demand']!r} must be one of {', '.join(DEMAND_KINDS)}.")
        base["demand"] = given["demand"]
    if "demand_columns" in given:
        cols = given["demand_columns"]
        base["demand_columns"] = (cols,) if isinstance(cols, str) else tuple(str(c) for c in cols)
    if "demand_mean" in given:
        base["demand_mean"] = _per_store(given["demand_mean"], n, "demand_mean", float)
    if "demand_std" in given:
        base["demand_std"] = _per_store(given["demand_std"], n, "demand_std", float)
    elif "demand_cv" in given:
        cv = _per_store(given["demand_cv"], n, "demand_cv", float)
        base["demand_std"] = tuple(m * c for m, c in zip(base["demand_mean"], cv))
    elif base["demand"] == "poisson":
        base["demand_std"] = tuple(m**0.5 for m in base["demand_mean"])
    if "correlation" in given:
        base["correlation"] = float(given["correlation"])
    if "clip_demand" in given:
        base["clip_demand"] = bool(given["clip_demand"])
    if base["demand"] == "csv":
        if base.get("demand_csv") is None:
            raise ConfigError("demand='csv' needs demand_csv=PATH (a CSV file with one column per store).")
        from environments.supplychain.demand import read_demand_csv

        series = read_demand_csv(base["demand_csv"], columns=base.get("demand_columns"), n_stores=n)
        base["demand_mean"] = tuple(round(float(x), 6) for x in series.mean(0))
        base["demand_std"] = tuple(round(float(x), 6) for x in series.std(0))


def _per_store(value: Any, n: int, name: str, kind: type) -> tuple[Any, ...]:
    values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value] * n
    if len(values) != n:
        raise ConfigError(f"{name}={value!r} has {len(values)} entries; give one number or one per store ({n}).")
    try:
        return tuple(kind(v) for v in values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}={value!r} must be numbers ({kind.__name__}).") from exc


def _validate(s: Setting) -> None:
    n = s.n_stores
    if not 1 <= n <= MAX_STORES:
        raise ConfigError(f"n_stores={n} must be between 1 and {MAX_STORES}.")
    for name in ("lead_times", "holding_costs", "underage_costs", "demand_mean", "demand_std"):
        if len(getattr(s, name)) != n:
            raise ConfigError(f"{name}={getattr(s, name)} needs one entry per store ({n}).")
    if any(lt < 1 for lt in (*s.lead_times, *s.upstream_lead_times)):
        raise ConfigError(
            f"Lead times must be >= 1 (an order placed at t arrives at t + L); got stores {s.lead_times}, "
            f"upstream {s.upstream_lead_times}."
        )
    if len(s.upstream_holding_costs) != s.n_upstream:
        raise ConfigError(
            f"upstream_holding_costs={s.upstream_holding_costs} needs one entry per upstream stage ({s.n_upstream})."
        )
    if s.n_upstream > 1 and n != 1:
        raise ConfigError(
            f"A serial chain of {s.n_upstream} upstream stages supports one store, not {n}; drop the echelons or "
            "use n_stores=1."
        )
    costs = (*s.holding_costs, *s.underage_costs, *s.upstream_holding_costs)
    if any(not np.isfinite(c) or c < 0 for c in costs):
        raise ConfigError(f"Costs must be finite and >= 0; got {costs}.")
    if s.demand not in DEMAND_KINDS:
        raise ConfigError(f"demand={s.demand!r} must be one of {', '.join(DEMAND_KINDS)}.")
    if s.demand != "normal" and s.correlation != 0:
        raise ConfigError(f"correlation={s.correlation} applies to normal demand only; this setting has {s.demand}.")
    if any(not np.isfinite(m) or m <= 0 for m in s.demand_mean):
        raise ConfigError(f"demand_mean={s.demand_mean} must be positive (it also scales orders and inventories).")
    if any(not np.isfinite(v) or v < 0 for v in s.demand_std):
        raise ConfigError(f"demand_std={s.demand_std} must be >= 0.")
    if n > 1 and not -1.0 / (n - 1) <= s.correlation <= 1.0:
        raise ConfigError(
            f"correlation={s.correlation} does not give a valid correlation matrix for {n} stores; it must lie "
            f"in [{-1.0 / (n - 1):.3f}, 1]."
        )
    lo, hi = s.initial_inventory
    if not 0 <= lo <= hi:
        raise ConfigError(f"initial_inventory={s.initial_inventory} must be (lo, hi) with 0 <= lo <= hi.")
