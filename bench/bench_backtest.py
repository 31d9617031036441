"""Backtest time for N symbols x D days (default 100 x 20) beside the time to read its inputs.

The lake is simulated (raw bars + truth), featurized (HAR-RV / EWMA need the features' labels),
and given prediction CSVs in the batch format whose forecasts are the oracle blurred by noise
(the backtest's cost does not depend on skill). Timed: reading the inputs alone (reference),
the backtest in its three stages (what ``run_backtest`` does): loading the days with the HAR-RV /
EWMA baselines, both books on the days in memory, and writing JSON + plots. Writes bench/results/backtest.json.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench._common import PeakMemory, write_result

log = logging.getLogger("bench.backtest")


def build_lake(root: Path, symbols: int, days: int, fit_days: int) -> tuple[object, list[str]]:
    """Simulated raw + truth, features, and noisy-oracle prediction CSVs for the last ``days`` dates."""
    from hfcast import storage
    from hfcast.data.simulator import SimConfig, write_synth
    from hfcast.features.engine import run_featurize
    from hfcast.contracts import PRED_COLUMNS
    from hfcast.predict import to_csv_bytes
    from hfcast.storage import Lake

    lake = Lake(root.as_uri())
    write_synth(SimConfig(n_symbols=symbols, n_days=days + fit_days, seed=7), lake, progress=False)
    run_featurize(lake, progress=False)
    dates = lake.dates("truth")[fit_days:]
    log.info("simulated and featurized; writing %d prediction CSVs", len(dates))
    rng = np.random.default_rng(0)
    for d in dates:
        truth = lake.read("truth", d)
        minute = truth.groupby("symbol").cumcount().to_numpy()
        f = truth[["symbol", "ts"]].copy()
        sd = np.nanstd(truth["true_ret_60m"])
        f["ret_60m_pred"] = truth["true_ret_60m"] + rng.normal(0, 1.5 * sd, len(f))
        f["rv_10m_pred"] = np.sqrt(truth["true_var_10m"]) * np.exp(rng.normal(0, 0.3, len(f)))
        for c in PRED_COLUMNS:
            f[c] = f.get(c, 0.5)
        f.loc[minute < 29, list(PRED_COLUMNS)] = np.nan
        f["filled"] = False
        storage.write_bytes(lake.predictions("bench", "1", d), to_csv_bytes(f, "bench", "1", "dense"))
    return lake, dates


def read_inputs(lake, dates: list[str]) -> int:
    """The I/O floor: read every input the backtest reads, do nothing with it."""
    from hfcast.backtest import read_predictions

    rows = 0
    for d in dates:
        rows += len(lake.read("validated" if lake.exists("validated", d) else "raw", d, ["symbol", "ts", "bid", "ask"]))
        rows += len(read_predictions(lake, "bench", "1", d)) + len(lake.read("truth", d))
        rows += len(lake.read("features", d, ["symbol", "ts", "ret_60m", "rv_10m"]))
    return rows


def main() -> None:
    from hfcast.backtest import BacktestConfig, backtest_days, load_days, write_outputs

    ap = argparse.ArgumentParser()
    ap.add_argument("--symbols", type=int, default=100)
    ap.add_argument("--days", type=int, default=20)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("hfcast.features.engine").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        lake, dates = build_lake(Path(tmp) / "lake", args.symbols, args.days, fit_days=2)
        setup = time.perf_counter() - t0
        t0 = time.perf_counter()
        rows = read_inputs(lake, dates)
        t_read = time.perf_counter() - t0
        cfg = BacktestConfig()
        log.info("setup %.0f s; timing the backtest", setup)
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            days, notes = load_days(lake, "bench", "1", dates)
            t_load = time.perf_counter() - t0
            res = backtest_days(days, cfg, "bench/1")
            t_books = time.perf_counter() - t0 - t_load
            write_outputs(res, Path(tmp) / "out")
            t_full = time.perf_counter() - t0
        log.info("backtest %.1f s (load %.1f, books %.1f)", t_full, t_load, t_books)
    write_result("backtest", {
        "what": f"hfcast.backtest.run_backtest over {args.symbols} symbols x {args.days} days (dense minute "
                "predictions), vs reading the same inputs alone",
        "symbols": args.symbols, "days": args.days, "stock_minutes": args.symbols * args.days * 390,
        "seconds": {"backtest_total": round(t_full, 2), "reference_read_inputs": round(t_read, 2),
                    "load_days_incl_baselines": round(t_load, 2), "books_in_memory": round(t_books, 2),
                    "outputs": round(t_full - t_load - t_books, 2),
                    "setup_simulate_featurize_write": round(setup, 1)},
        "rows_read": rows, "peak_rss_mb": round(mem.peak_mb, 1),
        "net_sharpe": {m: round(v["net_sharpe"], 3) for m, v in res.long_short.items()},
        "load_avg": os.getloadavg(),
        "note": "shared 2-core machine with other agents: the lead re-runs on an idle machine",
    })


if __name__ == "__main__":
    main()
