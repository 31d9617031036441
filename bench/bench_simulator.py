"""Throughput and peak memory of ``hfcast synth`` (simulate + write parquet to a temp lake).

Cases: 100 symbols x 20 days and 1000 symbols x 2 days, each in a fresh subprocess so the peak
memory of one does not hide in the other; the time for the full 1000 x 252 year is extrapolated
from the 1000-symbol stock-minute rate, by wall clock and by CPU time (the dev machine's 2 cores
are shared by several people, so CPU time is the load-independent number; CPU time counts both
threads: drawing and parquet encoding overlap). Also measures the oracle's quality (the numbers quoted in
the simulator's docstring and the README) on 50 symbols x 10 days, seed 7.

    python bench/bench_simulator.py            -> bench/results/simulator.json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import PeakMemory, write_result  # noqa: E402

CASES = [(100, 20), (1000, 2)]
YEAR = (1000, 252)


def run_case(n_symbols: int, n_days: int) -> dict:
    """Simulate and write one case into a temp file:// lake; time, rate and peak RSS."""
    from hfcast.data.simulator import SimConfig, write_synth
    from hfcast.storage import Lake

    cfg = SimConfig(n_symbols=n_symbols, n_days=n_days, seed=7, regime_shift_day=n_days // 2)
    with tempfile.TemporaryDirectory() as tmp, PeakMemory() as mem:
        t0, c0 = time.perf_counter(), time.process_time()
        summary = write_synth(cfg, Lake(f"file://{tmp}"), progress=False)
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
        lake_mb = sum(p.stat().st_size for p in Path(tmp).rglob("*.parquet")) / 1024**2
    stock_minutes = summary["rows"]
    return {"n_symbols": n_symbols, "n_days": n_days, "stock_minutes": stock_minutes,
            "seconds": round(seconds, 3), "stock_minutes_per_s": round(stock_minutes / seconds),
            "cpu_seconds": round(cpu_seconds, 3), "stock_minutes_per_cpu_s": round(stock_minutes / cpu_seconds),
            "load_avg_1m": round(os.getloadavg()[0], 2),
            "peak_rss_mb": round(mem.peak_mb, 1), "start_rss_mb": round(mem.start_mb, 1),
            "lake_mb": round(lake_mb, 1)}


def oracle_quality(n_symbols: int = 50, n_days: int = 10, seed: int = 7) -> dict:
    """Oracle R^2 of the 60-min return, and realized / expected 10-min variance (efficient and mid)."""
    from hfcast.data.simulator import SimConfig, simulate

    tr, ret_mid, ret_eff, tv, rv_eff, rv_mid = ([] for _ in range(6))

    def rv10(logp: np.ndarray) -> np.ndarray:  # sum of squared returns over minutes t+1..t+10
        c = np.concatenate([np.zeros((logp.shape[0], 1)), np.cumsum(np.diff(logp, axis=1) ** 2, axis=1)], axis=1)
        return (c[:, 10:] - c[:, :-10])[:, :380]

    for day in simulate(SimConfig(n_symbols=n_symbols, n_days=n_days, seed=seed)):
        mid = np.log((day.bars["bid"] + day.bars["ask"]) / 2)
        tr.append(day.truth["true_ret_60m"][:, :330])
        ret_mid.append(mid[:, 60:] - mid[:, :-60])
        ret_eff.append(day.p_eff[:, 60:] - day.p_eff[:, :-60])
        tv.append(day.truth["true_var_10m"][:, :380])
        rv_eff.append(rv10(day.p_eff))
        rv_mid.append(rv10(mid))
    tr, ret_mid, ret_eff, tv, rv_eff, rv_mid = (np.concatenate([a.ravel() for a in x])
                                               for x in (tr, ret_mid, ret_eff, tv, rv_eff, rv_mid))
    return {"sample": f"{n_symbols} symbols x {n_days} days, seed {seed}",
            "r2_ret60_mid": round(float(np.corrcoef(tr, ret_mid)[0, 1] ** 2), 4),
            "r2_ret60_eff": round(float(np.corrcoef(tr, ret_eff)[0, 1] ** 2), 4),
            "ic_ret60_mid": round(float(np.corrcoef(tr, ret_mid)[0, 1]), 4),
            "slope_ret60_eff": round(float(np.polyfit(tr, ret_eff, 1)[0]), 3),
            "mean_rv10_over_truth_eff": round(float(np.mean(rv_eff / tv)), 4),
            "mean_rv10_over_truth_mid": round(float(np.mean(rv_mid / tv)), 4),
            "ratio_of_means_rv10_eff": round(float(rv_eff.mean() / tv.mean()), 4),
            "ratio_of_means_rv10_mid": round(float(rv_mid.mean() / tv.mean()), 4),
            "r2_var10_eff": round(float(np.corrcoef(tv, rv_eff)[0, 1] ** 2), 4)}


def main() -> None:
    if len(sys.argv) == 3:  # child: one case, JSON on stdout
        print(json.dumps(run_case(int(sys.argv[1]), int(sys.argv[2]))))
        return
    cases = []
    for s, d in CASES:
        out = subprocess.run([sys.executable, __file__, str(s), str(d)], capture_output=True, text=True, check=True)
        cases.append(json.loads(out.stdout.strip().splitlines()[-1]))
    big = next(c for c in cases if c["n_symbols"] == YEAR[0])
    year_minutes = YEAR[0] * YEAR[1] * 390
    year_s = year_minutes / big["stock_minutes_per_s"]
    year_cpu_s = year_minutes / big["stock_minutes_per_cpu_s"]
    write_result("simulator", {
        "cases": cases,
        "extrapolated_1000x252": {"stock_minutes": year_minutes, "seconds": round(year_s, 1),
                                  "minutes": round(year_s / 60, 2),
                                  "cpu_seconds": round(year_cpu_s, 1),
                                  "peak_rss_mb_estimate": big["peak_rss_mb"],
                                  "note": "streamed date by date: memory is one day's arrays, independent of days"},
        "goal": {"seconds": 900, "peak_rss_mb": 4096, "met": bool(year_s < 900 and big["peak_rss_mb"] < 4096)},
        "oracle": oracle_quality(),
    })


if __name__ == "__main__":
    main()
