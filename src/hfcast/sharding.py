"""Dates split into shards for parallel batch prediction (one shard per pod of a Kubeflow ParallelFor).

Why shards and not one pod per date: each pod pays its start and the model's load (ONNX export or
a TensorRT engine) once, so a year of 252 dates in 252 pods spends much of its time starting;
why not one pod for everything: the dates of a shard run one after another in that pod
(``hfcast.predict.run_predict`` with one worker: one date in the model while the next is read),
so a pod's memory is bounded by a date, and the number of shards is what the cluster parallelises.
"""

from __future__ import annotations

import math
from typing import Sequence


def shard_dates(dates: Sequence[str], parallelism: int, max_dates_per_pod: int) -> list[list[str]]:
    """Sorted ``dates`` in contiguous shards of near-equal size (sizes differ by at most one).

    As many shards as pods may run at once (``parallelism``) when there are that many dates, more
    when a shard would otherwise exceed ``max_dates_per_pod``: a month on 8 pods is 8 shards of
    2-3 dates, a year is 51 shards of 4-5 dates run 8 at a time.

    Raises:
        ValueError: ``parallelism`` or ``max_dates_per_pod`` is below 1.
    """
    if parallelism < 1 or max_dates_per_pod < 1:
        raise ValueError(f"parallelism ({parallelism}) and dates per pod ({max_dates_per_pod}) must be >= 1")
    days = sorted(set(dates))
    if not days:
        return []
    n = max(min(len(days), parallelism), math.ceil(len(days) / max_dates_per_pod))
    q, r = divmod(len(days), n)
    out, start = [], 0
    for i in range(n):
        size = q + (1 if i < r else 0)
        out.append(days[start:start + size])
        start += size
    return out
