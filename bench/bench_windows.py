"""Windows: memory of the zero-copy windowed dataset vs a materialised [N, 30, F] copy, DataLoader
throughput, and training throughput (windows/s) of every architecture at default size.

Run: ``python bench/bench_windows.py [--symbols 40 --days 4 --train-windows 8000]``
Writes ``bench/results/windows.json``.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import time
import tracemalloc

import numpy as np
import torch

from _common import PeakMemory, write_result
from hfcast.contracts import LOOKBACK
from hfcast.features.windows import (WindowDataset, build_windows, fit_scaler, make_loader,
                                     synthetic_feature_frame)
from hfcast.models import ARCHITECTURES
from hfcast.train import TrainConfig, train_forecaster

N_FEATURES = 59  # the feature registry's size


def memory(df, feats) -> dict:
    """Bytes held by the windowed dataset (tracemalloc: numpy allocations) vs a materialised copy."""
    gc.collect()
    tracemalloc.start()
    wa = build_windows(df, feats)
    ds = WindowDataset(wa, fit_scaler(wa))
    retained, build_peak = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    for _ in make_loader(ds, batch_size=256, shuffle=True):
        pass
    _, epoch_peak = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    with PeakMemory() as rss:
        dense = wa.windows(np.arange(len(wa)))  # the naive [M, 30, F] copy
    _, mat_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    x = wa.X.nbytes
    out = {"rows": len(wa.X), "features": wa.X.shape[1], "windows_dense": len(wa),
           "windows_sparse": len(build_windows(df, feats, stride=10)),
           "feature_matrix_mb": x / 2**20, "windowed_retained_mb": retained / 2**20,
           "windowed_retained_ratio": retained / x, "windowed_build_peak_ratio": build_peak / x,
           "windowed_epoch_peak_ratio": epoch_peak / x, "materialised_mb": dense.nbytes / 2**20,
           "materialised_ratio": (mat_peak - base) / x, "materialised_rss_delta_mb": rss.peak_mb - rss.start_mb}
    del dense
    gc.collect()
    return out


def loader_throughput(wa, batch_size: int = 256) -> dict:
    """Windows/s of one shuffled epoch: lazy windowed loader vs indexing a materialised tensor."""
    ds = WindowDataset(wa, fit_scaler(wa))
    t0 = time.perf_counter()
    n = sum(len(x) for x, _ in make_loader(ds, batch_size, shuffle=True))
    lazy = n / (time.perf_counter() - t0)
    mat = torch.from_numpy(ds.scaler.transform(wa.windows(np.arange(len(wa)))))
    perm = torch.randperm(len(mat))
    t0 = time.perf_counter()
    for a in range(0, len(mat), batch_size):
        mat[perm[a:a + batch_size]].contiguous()
    ref = len(mat) / (time.perf_counter() - t0)
    return {"batch_size": batch_size, "lazy_windows_per_s": lazy, "materialised_windows_per_s": ref}


def train_throughput(wa, n_windows: int, threads: int) -> dict:
    """Training windows/s (one epoch, default model sizes) per architecture.

    Wall-clock windows/s depends on what else the machine runs; windows per CPU-second of this
    process is the steadier number on a shared machine.
    """
    days = sorted(set(wa.end_dates()))
    train, val = wa.subset_dates(days[:-1]), wa.subset_dates(days[-1:])
    out = {}
    for arch in ARCHITECTURES:
        cfg = TrainConfig(epochs=1, max_train_windows=n_windows, max_val_windows=1000, num_threads=threads)
        _, hist = train_forecaster(arch, train, val, cfg=cfg, calibrate=False, progress=False)
        ep = hist["epochs"][0]
        out[arch] = {"windows_per_s": hist["windows_per_s"],
                     "windows_per_cpu_s": hist["n_train_windows"] / max(ep["cpu_seconds"], 1e-9),
                     "n_params": hist["n_params"], "n_windows": hist["n_train_windows"], "device": hist["device"]}
        logging.info("%s: %.0f windows/s (%.0f per CPU-second)", arch, out[arch]["windows_per_s"],
                     out[arch]["windows_per_cpu_s"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--symbols", type=int, default=40)
    ap.add_argument("--days", type=int, default=4)
    ap.add_argument("--train-windows", type=int, default=4000)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the training runs")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO)
    feats = [f"f{j}" for j in range(N_FEATURES)]
    df = synthetic_feature_frame(args.symbols, args.days, N_FEATURES, seed=0)
    mem = memory(df, feats)
    wa = build_windows(df, feats)
    write_result("windows", {
        "config": {"symbols": args.symbols, "days": args.days, "lookback": LOOKBACK, "features": N_FEATURES,
                   "train_threads": args.threads, "load_average": os.getloadavg()},
        "memory": mem,
        "loader": loader_throughput(wa),
        "train": train_throughput(wa, args.train_windows, args.threads),
    })


if __name__ == "__main__":
    main()
