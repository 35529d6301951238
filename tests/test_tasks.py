from __future__ import annotations

import numpy as np
import pytest

from agentgym.errors import TaskError
from agentgym.tasks import SPLITS, ListTasks, SeedTasks, split_for_key


def test_split_fractions_match_the_declared_shares():
    counts = {s: 0 for s in SPLITS}
    for i in range(20_000):
        counts[split_for_key(i.to_bytes(8, "little"), b"ns")] += 1
    assert abs(counts["train"] / 20_000 - 0.8) < 0.02
    assert abs(counts["dev"] / 20_000 - 0.1) < 0.01
    assert abs(counts["test"] / 20_000 - 0.1) < 0.01


def test_seed_tasks_are_disjoint_and_sampled_within_their_split():
    tasks = SeedTasks(namespace="x")
    lists = {s: set(tasks.tasks(s, n=200)) for s in SPLITS}
    assert not lists["train"] & lists["test"] and not lists["dev"] & lists["test"] and not lists["train"] & lists["dev"]
    rng = np.random.default_rng(0)
    for split in SPLITS:
        assert all(tasks.split_of(tasks.sample(split, rng)) == split for _ in range(50))


def test_equal_content_always_lands_in_the_same_split():
    # 1000 seeds but only 7 distinct "levels": every seed of a level must share that level's split.
    tasks = SeedTasks(content_key=lambda seed: bytes([seed % 7]), namespace="levels")
    by_level: dict[int, set[str]] = {}
    for seed in range(1000):
        by_level.setdefault(seed % 7, set()).add(tasks.split_of(seed))
    assert all(len(splits) == 1 for splits in by_level.values())


def test_namespace_changes_the_partition():
    a = [split_for_key(bytes([i]), b"a") for i in range(256)]
    b = [split_for_key(bytes([i]), b"b") for i in range(256)]
    assert a != b


def test_list_tasks_cover_every_task_once_and_support_all():
    keys = [f"level {i}".encode() for i in range(50)]
    tasks = ListTasks(keys, namespace="file")
    members = [t for s in SPLITS for t in tasks.tasks(s)]
    assert sorted(members) == list(range(50))
    assert tasks.tasks("all") == list(range(50))
    assert tasks.split_of(3) in SPLITS


def test_bad_tasks_and_splits_name_the_problem():
    tasks = SeedTasks()
    with pytest.raises(TaskError, match="'validation'"):
        tasks.sample("validation", np.random.default_rng(0))
    with pytest.raises(TaskError, match="not a seed"):
        tasks.split_of("abc")
    with pytest.raises(TaskError, match="unbounded"):
        tasks.tasks("test")
    small = ListTasks([b"only one"])
    empty = [s for s in SPLITS if not small.tasks(s)]
    with pytest.raises(TaskError, match="split='all'"):
        small.sample(empty[0], np.random.default_rng(0))
