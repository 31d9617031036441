"""Latency of ``OnlineWindows`` (Feast sqlite online store): one window lookup per KServe request.

Builds a temp lake of N_SYMBOLS symbols x 59 float32 features, applies the Feast repo,
materializes the latest windows, then times ``OnlineWindows(symbols)`` for 1 and 64 symbols with
the FeatureStore kept warm (as the predictor does). Goal: p99 < 20 ms for one symbol.
Writes bench/results/feast_online.json.
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench._common import write_result

N_SYMBOLS, N_FEATURES, N_MIN = 200, 59, 40
REPS = {1: 300, 64: 100}


def _lake(root: Path):
    from hfcast import storage
    from hfcast.config import get_settings
    from hfcast.storage import Lake

    settings = get_settings(env={"HFCAST_HOME": str(root)}, cwd=root)
    lake = Lake.from_settings(settings)
    names = [f"f{i:02d}" for i in range(N_FEATURES)]
    rng = np.random.default_rng(0)
    ts = pd.date_range("2024-01-02 14:30", periods=N_MIN, freq="min", tz="UTC").astype("datetime64[us, UTC]")
    symbols = [f"S{i:04d}" for i in range(N_SYMBOLS)]
    df = pd.DataFrame({"symbol": pd.array(np.repeat(symbols, N_MIN), dtype="string"), "ts": np.tile(ts, N_SYMBOLS),
                       **{n: rng.standard_normal(N_SYMBOLS * N_MIN).astype(np.float32) for n in names}})
    lake.write("features", "2024-01-02", df)
    storage.write_text(storage.join(lake.table("features"), "_feature_set.json"), json.dumps({"features": names}))
    return settings, symbols


def _time(fn, reps: int) -> dict[str, float]:
    for _ in range(10):
        fn()
    lat = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        lat.append((time.perf_counter() - t0) * 1e3)
    a = np.array(lat)
    return {"reps": reps, "p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean())}


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    from hfcast import feature_store as fst

    with tempfile.TemporaryDirectory(prefix="hfcast-bench-feast-") as tmp:
        settings, symbols = _lake(Path(tmp))
        t0 = time.perf_counter()
        fst.apply(settings)
        apply_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        fst.materialize_windows(settings)
        mat_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        reader = fst.OnlineWindows(settings)
        init_s = time.perf_counter() - t0
        rnd = random.Random(0)
        results = {}
        for b, reps in REPS.items():
            results[f"batch_{b}"] = _time(lambda: reader(rnd.sample(symbols, b)), reps)
        x, _, _ = reader(symbols[:64])
        assert x.shape == (64, 30, N_FEATURES)
    write_result("feast_online", {
        "setup": {"symbols_online": N_SYMBOLS, "n_features": N_FEATURES, "window": [30, N_FEATURES],
                  "online_store": "sqlite", "apply_s": round(apply_s, 3), "materialize_windows_s": round(mat_s, 3),
                  "reader_init_s": round(init_s, 3)},
        "latency": results,
        "goal": "p99 < 20 ms for one symbol",
        "goal_met": results["batch_1"]["p99_ms"] < 20.0,
    })


if __name__ == "__main__":
    main()
