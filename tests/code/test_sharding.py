"""Batch prediction's date shards: contiguous, balanced, as many as the pods that run at once, more
only when a shard would exceed its date budget; every date exactly once."""

from __future__ import annotations

import pytest

from hfcast.predict import parse_dates
from hfcast.sharding import shard_dates

YEAR = parse_dates("2024-01-02..2024-12-31")[:252]


@pytest.mark.parametrize("n, parallelism, per_pod, shards, sizes", [
    (252, 8, 5, 51, {4, 5}),   # a year: 51 pods, 8 at a time
    (22, 8, 5, 8, {2, 3}),     # a month: every pod busy
    (5, 8, 5, 5, {1}),         # fewer dates than pods: one date each
    (252, 300, 5, 252, {1}),
    (10, 1, 100, 1, {10}),     # one pod
])
def test_shards_cover_every_date_once_in_order(n, parallelism, per_pod, shards, sizes):
    days = YEAR[:n]
    out = shard_dates(list(reversed(days)), parallelism, per_pod)
    assert len(out) == shards and {len(s) for s in out} == sizes
    assert [d for s in out for d in s] == days  # contiguous, sorted, nothing lost or repeated
    assert max(len(s) for s in out) <= max(per_pod, -(-n // parallelism))


def test_bad_limits_are_refused_and_no_dates_no_shards():
    assert shard_dates([], 8, 5) == []
    assert shard_dates(["2024-01-02", "2024-01-02"], 8, 5) == [["2024-01-02"]]
    with pytest.raises(ValueError, match="must be >= 1"):
        shard_dates(YEAR, 0, 5)
