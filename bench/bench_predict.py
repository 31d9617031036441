"""Batch inference throughput: hfcast.predict vs a typical research script, same data, same run.

Dense mode, 100 symbols x 5 dates (simulated, featurized), the default transformer. Both sides
read the features parquet, form windows, run the model on CPU and write one CSV per date:

* **hfcast**: ``run_predict`` (one scaled matrix per date, windows as strided views, the fastest
  runner available - onnxruntime on CPU - atomic CSV + manifest), 1 and 2 worker processes.
* **reference**: what a research script typically does - per-symbol pandas loops that
  materialise every [30, F] window with ``np.stack``, a PyTorch ``DataLoader`` over a
  ``TensorDataset``, eager torch, a pandas merge back onto the rows, ``to_csv`` - with one
  process per date (``multiprocessing.Pool``), 1 and 2 processes.

Reported: stock-minutes per second end to end, the ratio hfcast / reference at equal workers,
hfcast's time split (read / window / model / write), the extrapolated wall time for a year of
1000 symbols (98.3 M stock-minutes), and the model-only throughput of each runner.

Run: ``python -m bench.bench_predict [--symbols 100 --days 5]``
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench._common import PeakMemory, write_result
from hfcast.config import get_settings
from hfcast.data.simulator import SimConfig, write_synth
from hfcast.features.engine import read_feature_set, run_featurize
from hfcast.contracts import LOOKBACK, PRED_COLUMNS
from hfcast.features.windows import Scaler, build_windows
from hfcast.models import build_model
from hfcast.models.base import Forecaster
from hfcast.predict import run_predict
from hfcast.storage import Lake

YEAR_STOCK_MINUTES = 1000 * 252 * 390


def make_lake(root: Path, n_symbols: int, n_days: int) -> Lake:
    lake = Lake(root.as_uri())
    write_synth(SimConfig(n_symbols=n_symbols, n_days=n_days, seed=11), lake, progress=False)
    run_featurize(lake, progress=False)
    return lake


def make_bundle(lake: Lake, path: Path, arch: str) -> str:
    names = read_feature_set(lake)["features"]
    wa = build_windows(lake.read("features", lake.dates("features")[0]), names)
    scaler = Scaler().fit(wa.X, wa.y, feature_names=names)
    torch.manual_seed(0)
    fc = Forecaster(build_model(arch, len(names)), scaler, names, meta={"model_name": "bench", "model_version": "1"})
    fc.save(str(path))
    return str(path)


# --- the reference: a straightforward research script ---------------------------------------------

def _reference_date(args: tuple[str, str, str, str]) -> int:
    bundle, lake_url, out_dir, date = args
    torch.set_num_threads(1)
    fc = Forecaster.load(bundle)
    df = pd.read_parquet(Lake(lake_url).partition("features", date))
    df = df.sort_values(["symbol", "ts"]).reset_index(drop=True)
    names = fc.feature_names
    windows, rows = [], []
    for _, g in df.groupby("symbol", sort=False):  # materialise every window
        x = g[names].to_numpy(np.float32)
        for i in range(LOOKBACK - 1, len(g)):
            windows.append(x[i - LOOKBACK + 1: i + 1])
            rows.append(g.index[i])
    X = np.stack(windows)
    X = ((X - fc.scaler.mean.astype(np.float32)) / fc.scaler.std.astype(np.float32))
    X = np.nan_to_num(np.clip(X, -fc.scaler.clip, fc.scaler.clip)).astype(np.float32)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.from_numpy(X)), batch_size=1024)
    fc.net.eval()
    outs = []
    with torch.no_grad():
        for (xb,) in loader:
            outs.append(fc.net(xb).numpy())
    pred = pd.DataFrame(fc.postprocess(np.concatenate(outs)), columns=list(PRED_COLUMNS))
    pred["row"] = rows
    merged = df[["symbol", "ts"]].reset_index().rename(columns={"index": "row"}).merge(pred, on="row", how="left")
    merged.drop(columns="row").to_csv(Path(out_dir) / f"date={date}.csv", index=False)
    return len(merged)


def run_reference(bundle: str, lake: Lake, out_dir: Path, workers: int) -> tuple[float, int]:
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(bundle, lake.url, str(out_dir), d) for d in lake.dates("features")]
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(workers) as pool:
        rows = sum(pool.map(_reference_date, jobs))
    return time.perf_counter() - t0, rows


def model_only(bundle: str, lake: Lake, n: int = 16384) -> dict[str, float]:
    """Windows per second of each runner on the same scaled windows (batch 4096)."""
    from hfcast.export import runner_for

    fc = Forecaster.load(bundle)
    wa = build_windows(lake.read("features", lake.dates("features")[0]), fc.feature_names, label_cols=None)
    x = np.ascontiguousarray(fc.scaler.transform(wa.windows(slice(0, n))))
    out = {}
    for kind in ("torch", "onnxruntime"):
        runner = runner_for(kind, fc)
        runner.run(x[:64])
        t0 = time.perf_counter()
        for a in range(0, len(x), 4096):
            runner.run(x[a:a + 4096])
        out[kind] = round(len(x) / (time.perf_counter() - t0), 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--symbols", type=int, default=100)
    ap.add_argument("--days", type=int, default=5)
    ap.add_argument("--arch", default="transformer")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="hfcast-bench-predict-") as tmp:
        root = Path(tmp)
        lake = make_lake(root / "lake", a.symbols, a.days)
        bundle = make_bundle(lake, root / "bundle", a.arch)
        settings = get_settings(env={"HFCAST_HOME": str(root / "home"), "HFCAST_LAKE": lake.url}, cwd=root)
        runs = {}
        for workers in (1, 2):
            with PeakMemory() as mem:
                s = run_predict(settings, lake.dates("features"), bundle_dir=bundle, workers=workers,
                                out=str(root / f"out{workers}"), force=True, progress=False)
            d = s.as_dict()
            ref_s, ref_rows = run_reference(bundle, lake, root / f"ref{workers}", workers)
            runs[f"workers_{workers}"] = {
                "hfcast_rows_per_s": d["rows_per_second"], "hfcast_seconds": d["seconds"],
                "hfcast_peak_mb": round(mem.peak_mb), "hfcast_time_split_s": d["timing_split"],
                "reference_rows_per_s": round(ref_rows / ref_s, 1), "reference_seconds": round(ref_s, 3),
                "speedup_vs_reference": round(d["rows_per_second"] / (ref_rows / ref_s), 2),
                "year_1000_symbols_minutes": round(YEAR_STOCK_MINUTES / d["rows_per_second"] / 60, 1),
            }
        write_result("predict", {
            "universe": {"symbols": a.symbols, "days": a.days, "stock_minutes": a.symbols * a.days * 390},
            "arch": a.arch, "runs": runs, "model_only_windows_per_s": model_only(bundle, lake),
            "load_average_1_5_15m_at_end": [round(x, 2) for x in os.getloadavg()],
            "note": "CPU only (no GPU lent to this session)",
        })


if __name__ == "__main__":
    main()
