"""Demand traces and initial inventories: one scenario per integer seed, reproducible and prefix-stable.

A scenario is everything exogenous about one simulated run: the starting inventory vectors and the demand of every
period. Scenario ``s`` is generated from ``SeedSequence(s)`` alone, so the env's task ``s`` and row ``s`` of a batch
that the HDPO trainer simulates are the same run, and a longer horizon only appends periods (the first ``T``
periods of a ``2T`` trace equal the ``T``-period trace).

Demand models:

- ``normal``: per-store mean and std, a common correlation between stores, clipped at 0 (``clip_demand``);
- ``poisson``: independent Poisson counts with the per-store means;
- ``csv``: windows of a user-provided series (``read_demand_csv``). The series' periods are split in time
  (train: the first 60%, dev: the next 20%, test: the last 20%), and a scenario's window lies inside the segment of
  its task's split, so no held-out period is ever trained on.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agentgym.config import ConfigError
from agentgym.tasks import SeedTasks
from environments.supplychain.settings import Setting

#: Column names treated as a period index (skipped) when ``demand_columns`` is not given.
INDEX_COLUMNS = frozenset({"period", "t", "time", "date", "week", "day", "month"})
#: Share of a CSV series' periods given to the train, dev and test splits, in time order.
CSV_SPLIT_FRACTIONS = (0.6, 0.2, 0.2)


class DemandFileError(ConfigError):
    """A malformed demand CSV; the message names the file, the line and the column."""


@dataclass
class Scenarios:
    """A batch of ``N`` scenarios as float64 arrays.

    Attributes:
        store_inventory: ``[N, n_stores, store_slots]`` starting inventory vectors (slot 0 on hand).
        upstream_inventory: ``[N, n_upstream, upstream_slots]`` starting vectors of the upstream stages.
        demand: ``[N, periods, n_stores]`` demand of every period.
    """

    store_inventory: np.ndarray
    upstream_inventory: np.ndarray
    demand: np.ndarray

    def __len__(self) -> int:
        return self.demand.shape[0]


def task_set_for(setting: Setting) -> SeedTasks:
    """Scenario seeds with hash-based train/dev/test splits, salted by the setting's fingerprint."""
    return SeedTasks(namespace=f"supplychain/{setting.fingerprint()}", label=setting.name)


class DemandModel:
    """Generates ``Scenarios`` for a setting (see the module docstring).

    Args:
        setting: the network and its demand model.
    """

    def __init__(self, setting: Setting) -> None:
        self.setting = setting
        self._mean = np.asarray(setting.demand_mean, dtype=np.float64)
        self._std = np.asarray(setting.demand_std, dtype=np.float64)
        self._mix: np.ndarray | None = None
        self._series: np.ndarray | None = None
        if setting.demand == "normal":
            n = setting.n_stores
            corr = np.full((n, n), setting.correlation) + np.eye(n) * (1.0 - setting.correlation)
            # A symmetric square root rather than Cholesky: it also covers correlation 1 (a singular matrix).
            values, vectors = np.linalg.eigh(corr)
            self._mix = vectors * np.sqrt(np.clip(values, 0.0, None))
        elif setting.demand == "csv":
            assert setting.demand_csv is not None  # make_setting guarantees it
            self._series = read_demand_csv(
                setting.demand_csv, columns=setting.demand_columns, n_stores=setting.n_stores
            )
        s = setting
        self._store_mask = np.arange(s.store_slots)[None, :] < np.asarray(s.lead_times)[:, None]
        self._up_mask = np.arange(s.upstream_slots)[None, :] < np.asarray(s.upstream_lead_times, dtype=int)[:, None]
        self._up_scale = np.full(s.n_upstream, self._mean.sum())

    def scenarios(self, seeds: Sequence[int], periods: int, splits: Sequence[str] | None = None) -> Scenarios:
        """Scenarios of ``seeds`` over ``periods`` periods.

        Args:
            seeds: scenario seeds (env tasks).
            periods: horizon.
            splits: the split of each seed; only CSV demand uses it (None: windows from the whole series).
        """
        s = self.setting
        if periods < 1:
            raise ConfigError(f"periods={periods} must be >= 1.")
        n_seeds = len(seeds)
        store = np.zeros((n_seeds, s.n_stores, s.store_slots))
        upstream = np.zeros((n_seeds, s.n_upstream, s.upstream_slots))
        demand = np.empty((n_seeds, periods, s.n_stores))
        lo, hi = s.initial_inventory
        for i, seed in enumerate(seeds):
            init_rng, demand_rng = (np.random.default_rng(c) for c in np.random.SeedSequence(int(seed)).spawn(2))
            u = init_rng.uniform(lo, hi, (s.n_stores + s.n_upstream, max(s.store_slots, s.upstream_slots)))
            store[i] = u[: s.n_stores, : s.store_slots] * self._mean[:, None] * self._store_mask
            upstream[i] = u[s.n_stores :, : s.upstream_slots] * self._up_scale[:, None] * self._up_mask
            split = splits[i] if splits is not None else None
            demand[i] = self._trace(demand_rng, periods, split)
        return Scenarios(store, upstream, demand)

    def _trace(self, rng: np.random.Generator, periods: int, split: str | None) -> np.ndarray:
        n = self.setting.n_stores
        if self._mix is not None:
            # Row-major draws: the first T rows do not depend on the horizon (prefix-stable traces).
            z = rng.standard_normal((periods, n))
            out = self._mean + (z @ self._mix.T) * self._std
            return np.maximum(out, 0.0) if self.setting.clip_demand else out
        if self._series is None:
            return rng.poisson(self._mean, (periods, n)).astype(np.float64)
        start, stop = self.segment(split)
        if stop - start < periods:
            where = f"the {split!r} segment (rows {start}..{stop - 1})" if split else "the series"
            raise ConfigError(
                f"{self.setting.demand_csv}: {where} has {stop - start} periods but a scenario needs {periods}; "
                "use a longer series or a shorter horizon (fewer periods)."
            )
        offset = start + int(rng.integers(0, stop - start - periods + 1))
        return self._series[offset : offset + periods].copy()

    def segment(self, split: str | None) -> tuple[int, int]:
        """Rows ``[start, stop)`` of the CSV series that scenarios of ``split`` draw from (None: all rows)."""
        assert self._series is not None
        total = len(self._series)
        if split is None:
            return 0, total
        edges = np.round(np.cumsum((0.0, *CSV_SPLIT_FRACTIONS)) * total).astype(int)
        index = ("train", "dev", "test").index(split)
        return int(edges[index]), int(edges[index + 1])


def read_demand_csv(path: str | Path, *, columns: Sequence[str] | None = None, n_stores: int = 1) -> np.ndarray:
    """Read a demand series: a header row, then one row per period with one column per store.

    Columns named like a period index (``period``, ``date``, ``week``, ...) are skipped unless ``columns`` names
    them. Values must be finite numbers >= 0.

    Args:
        path: the CSV file.
        columns: the columns to use, in store order (None: every non-index column).
        n_stores: how many series the setting needs.

    Returns:
        A ``[periods, n_stores]`` float64 array.

    Raises:
        DemandFileError: a missing or empty file, a row with the wrong number of fields, a value that is not a
            finite number >= 0 (naming the line and column), unknown columns, or a column count that does not
            match ``n_stores``.
    """
    path = Path(path)
    if not path.is_file():
        raise DemandFileError(f"Demand file {str(path)!r} does not exist; pass demand_csv=PATH of a CSV file.")
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    numbered = [(i + 1, row) for i, row in enumerate(rows) if any(cell.strip() for cell in row)]
    if not numbered:
        raise DemandFileError(f"{path}: the file is empty; it needs a header row and one row per period.")
    header_line, header = numbered[0]
    names = [name.strip() for name in header]
    if len(set(names)) != len(names):
        raise DemandFileError(f"{path}:{header_line}: the header repeats a column name: {names}.")
    if columns is None:
        chosen = [i for i, name in enumerate(names) if name.lower() not in INDEX_COLUMNS]
    else:
        missing = [c for c in columns if c not in names]
        if missing:
            raise DemandFileError(f"{path}: no column {missing[0]!r} in the header; the columns are {names}.")
        chosen = [names.index(c) for c in columns]
    if len(chosen) != n_stores:
        shown = [names[i] for i in chosen]
        raise DemandFileError(
            f"{path}: {len(chosen)} demand column(s) {shown} but the setting has {n_stores} store(s); pass "
            f"demand_columns=[...] with {n_stores} name(s), or n_stores={len(chosen)}."
        )
    data = numbered[1:]
    if len(data) < 2:
        raise DemandFileError(f"{path}: {len(data)} data row(s) after the header; a series needs at least 2 periods.")
    out = np.empty((len(data), len(chosen)))
    for r, (line, row) in enumerate(data):
        if len(row) != len(names):
            raise DemandFileError(
                f"{path}:{line}: {len(row)} field(s) but the header has {len(names)}; every row needs one value per "
                "column."
            )
        for c, col in enumerate(chosen):
            out[r, c] = _parse_value(row[col], path, line, names[col])
    return out


def _parse_value(cell: str, path: Path, line: int, column: str) -> float:
    text = cell.strip()
    try:
        value = float(text)
    except ValueError:
        raise DemandFileError(
            f"{path}:{line}, column {column!r}: {cell!r} is not a number; demand values must be numbers >= 0."
        ) from None
    if not math.isfinite(value) or value < 0:
        raise DemandFileError(
            f"{path}:{line}, column {column!r}: {text} is not a finite number >= 0; fix or drop that row."
        )
    return value
