"""Task sets: what ``reset`` can set up, partitioned into disjoint ``train``/``dev``/``test`` splits.

A task is a small hashable value (a level seed, a level index) that fully determines the episode's start.
Splits are assigned by hashing a *content key* of the task (for generated levels: the level itself), so two
seeds that happen to generate the same level always land in the same split and no test level is ever seen in
training. The hash is keyed by a namespace, so different envs (or presets) get independent partitions.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Sequence

import numpy as np

from agentgym.errors import TaskError

SPLITS: tuple[str, ...] = ("train", "dev", "test")
#: Share of the content-hash space given to each split, in ``SPLITS`` order.
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.8, 0.1, 0.1)
ALL = "all"  # pseudo-split of finite task sets: every task, in file order


def split_for_key(key: bytes, namespace: bytes = b"", fractions: Sequence[float] = DEFAULT_FRACTIONS) -> str:
    """Return the split a content key falls in: a stable hash bucket, independent of Python's hash seed."""
    digest = hashlib.blake2b(key, digest_size=8, key=namespace[:64]).digest()
    u = int.from_bytes(digest, "little") / 2.0**64
    edge = 0.0
    for name, frac in zip(SPLITS, fractions, strict=True):
        edge += frac
        if u < edge:
            return name
    return SPLITS[-1]


def _check_split(split: str, allowed: Sequence[str]) -> None:
    if split not in allowed:
        raise TaskError(f"Unknown split {split!r}; choose one of {', '.join(map(repr, allowed))}.")


class TaskSet(ABC):
    """The tasks of an env and their disjoint splits."""

    finite: bool = False

    @abstractmethod
    def split_of(self, task: Hashable) -> str:
        """The split ``task`` belongs to (raises ``TaskError`` for a task outside the set)."""

    @abstractmethod
    def sample(self, split: str, rng: np.random.Generator) -> Hashable:
        """Draw a task of ``split`` with ``rng``."""

    @abstractmethod
    def tasks(self, split: str, n: int | None = None) -> list[Hashable]:
        """The first ``n`` tasks of ``split`` in canonical order (all of them for a finite set when ``n`` is None)."""

    def difficulty(self, task: Hashable) -> str | None:
        """A difficulty label for ``task`` (used to break results down), or None."""
        return None


class SeedTasks(TaskSet):
    """An unbounded task set of integer seeds.

    Args:
        content_key: maps a seed to the bytes of what it generates; the split is a hash of those bytes. When
            None, the seed itself is the content (right for envs whose start is the seed, like 2048).
        namespace: salt for the split hash (for example the env id and preset).
        fractions: share of train/dev/test.
        max_seed: seeds are drawn from ``[0, max_seed)``.
        label: difficulty label reported for every task.
    """

    def __init__(
        self,
        content_key: Callable[[int], bytes] | None = None,
        *,
        namespace: str = "",
        fractions: Sequence[float] = DEFAULT_FRACTIONS,
        max_seed: int = 2**31 - 1,
        label: str | None = None,
    ) -> None:
        if len(fractions) != len(SPLITS) or abs(sum(fractions) - 1.0) > 1e-9 or min(fractions) <= 0:
            raise TaskError(f"fractions={tuple(fractions)} must be three positive shares summing to 1.")
        self._key = content_key
        self._namespace = namespace.encode()
        self._fractions = tuple(fractions)
        self._max_seed = max_seed
        self._label = label
        self._cache: dict[int, str] = {}

    def split_of(self, task: Hashable) -> str:
        """The split of a seed: the hash bucket of what it generates (cached)."""
        if not isinstance(task, (int, np.integer)) or not 0 <= int(task) < self._max_seed:
            raise TaskError(f"Task {task!r} is not a seed in [0, {self._max_seed}); pass an int seed as the task.")
        seed = int(task)
        split = self._cache.get(seed)
        if split is None:
            key = self._key(seed) if self._key is not None else seed.to_bytes(8, "little")
            split = split_for_key(key, self._namespace, self._fractions)
            if len(self._cache) < 100_000:
                self._cache[seed] = split
        return split

    def sample(self, split: str, rng: np.random.Generator) -> int:
        """Draw seeds with ``rng`` until one falls in ``split``."""
        _check_split(split, SPLITS)
        for _ in range(10_000):
            seed = int(rng.integers(0, self._max_seed))
            if self.split_of(seed) == split:
                return seed
        raise TaskError(f"Could not draw a {split!r} task in 10000 tries; the split fractions are too skewed.")

    def tasks(self, split: str, n: int | None = None) -> list[int]:
        """The first ``n`` seeds (counting up from 0) that fall in ``split``."""
        _check_split(split, SPLITS)
        if n is None:
            raise TaskError("This task set is unbounded; ask for a number of tasks (n=...).")
        out: list[int] = []
        seed = 0
        while len(out) < n and seed < self._max_seed:
            if self.split_of(seed) == split:
                out.append(seed)
            seed += 1
        return out

    def difficulty(self, task: Hashable) -> str | None:
        """The set's label (every seed has the same difficulty)."""
        return self._label


class ListTasks(TaskSet):
    """A finite task set (for example the levels of a file); tasks are indices into ``keys``.

    Args:
        keys: content bytes of each task; equal content always lands in the same split.
        namespace: salt for the split hash.
        names: display names of the tasks (level titles).
        labels: difficulty label per task.
    """

    finite = True

    def __init__(
        self,
        keys: Sequence[bytes],
        *,
        namespace: str = "",
        fractions: Sequence[float] = DEFAULT_FRACTIONS,
        names: Sequence[str] | None = None,
        labels: Sequence[str | None] | None = None,
    ) -> None:
        ns = namespace.encode()
        self._splits = [split_for_key(k, ns, fractions) for k in keys]
        self.names = list(names) if names is not None else [f"#{i + 1}" for i in range(len(keys))]
        self._labels = list(labels) if labels is not None else [None] * len(keys)

    def __len__(self) -> int:
        return len(self._splits)

    def split_of(self, task: Hashable) -> str:
        """The split of a task index."""
        if not isinstance(task, (int, np.integer)) or not 0 <= int(task) < len(self._splits):
            raise TaskError(f"Task {task!r} is not a level index in [0, {len(self._splits)}).")
        return self._splits[int(task)]

    def sample(self, split: str, rng: np.random.Generator) -> int:
        """A uniform draw among the split's tasks."""
        members = self.tasks(split)
        if not members:
            raise TaskError(
                f"Split {split!r} of this {len(self)}-task set is empty; use split='all' or a larger level file."
            )
        return members[int(rng.integers(len(members)))]

    def tasks(self, split: str, n: int | None = None) -> list[int]:
        """The split's task indices in file order (``all``: every task)."""
        _check_split(split, (*SPLITS, ALL))
        members = [i for i, s in enumerate(self._splits) if split == ALL or s == split]
        return members if n is None else members[:n]

    def difficulty(self, task: Hashable) -> str | None:
        """The task's own label."""
        return self._labels[int(task)]  # type: ignore[arg-type]
