"""Every architecture and every baseline on identical walk-forward folds of a simulated universe.

Writes ``bench/results/compare.json``: per model, vol QLIKE vs realized and vs latent truth (and
relative to HAR-RV and the oracle), return IC (and relative to the oracle's), coverage, ECE, and
training throughput on CPU. Goals (DESIGN): best model QLIKE below HAR-RV's vs realized and at
most half of HAR-RV's vs latent truth; return IC >= half the oracle's.

Run: ``python bench/bench_compare.py [--symbols 100 --days 60 --epochs 3 ...]`` (about 20-40 min
on 2 shared CPU cores with the defaults: training windows are subsampled, models are small). The
last ``--folds`` x ``--test-days`` days are scored in equal test spans (expanding training).
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import PeakMemory, market_parser, write_result  # noqa: E402

SMALL = {"transformer": {"d_model": 32, "n_layers": 1}, "lstm": {"hidden": 32, "n_layers": 1},
         "tcn": {"channels": 32}, "hybrid": {"channels": 32}}


def main() -> None:
    ap = market_parser(__doc__, symbols=100, days=60, seed=7)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--max-train-windows", type=int, default=25_000)
    ap.add_argument("--max-val-windows", type=int, default=20_000)
    ap.add_argument("--train-stride", type=int, default=5)
    ap.add_argument("--eval-stride", type=int, default=5)
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--test-days", type=int, default=16)
    ap.add_argument("--archs", default="transformer,lstm,tcn,hybrid")
    ap.add_argument("--lake", default=None, help="reuse a lake folder (synth + featurize only if empty)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from hfcast.data.simulator import SimConfig, write_synth
    from hfcast.evaluate import write_comparison
    from hfcast.features.engine import run_featurize
    from hfcast.storage import Lake
    from hfcast.train import TrainConfig
    from hfcast.walkforward import WalkForwardConfig, run_walkforward

    lake_dir = Path(args.lake or tempfile.mkdtemp(prefix="hfcast-bench-"))
    lake = Lake(str(lake_dir))
    t0 = time.perf_counter()
    reused = bool(lake.dates("features"))
    if not reused:
        write_synth(SimConfig(n_symbols=args.symbols, n_days=args.days, seed=args.seed), lake, progress=False)
        run_featurize(lake, progress=False)
    data_s = time.perf_counter() - t0
    archs = [a for a in args.archs.split(",") if a]
    dates = lake.dates("features")
    first_test = len(dates) - args.folds * args.test_days
    if first_test < 20 + 5 + 2:
        raise SystemExit(f"{len(dates)} days leave {first_test} before the first test day; need >= 27")
    wf = WalkForwardConfig(mode="expanding", train_days=20, val_days=5, test_days=args.test_days,
                           step_days=args.test_days, embargo_days=1, first_test_date=dates[first_test],
                           eval_stride=args.eval_stride, train_stride=args.train_stride)
    tc = TrainConfig(epochs=args.epochs, max_train_windows=args.max_train_windows,
                     max_val_windows=args.max_val_windows, device="cpu", seed=0)
    with PeakMemory() as mem:
        t1 = time.perf_counter()
        res = run_walkforward(lake, archs, wf, tc, progress=True, model_configs=SMALL)
        wf_s = time.perf_counter() - t1
    paths = write_comparison(res.aggregate, res.per_fold, res.predictions,
                             Path(__file__).parent / "results" / "compare", "bench_compare")
    agg = res.aggregate
    har, ora = agg.loc["har_rv"], agg.loc["oracle"]
    rows = {}
    for model, s in agg.iterrows():
        rows[model] = {
            "vol_qlike": s["vol_qlike"], "vol_qlike_truth": s["vol_qlike_truth"],
            "vol_qlike_over_har": s["vol_qlike"] / har["vol_qlike"],
            "vol_qlike_truth_over_har": s["vol_qlike_truth"] / har["vol_qlike_truth"],
            "vol_qlike_over_har_tod": s["vol_qlike"] / agg.loc["har_tod", "vol_qlike"],
            "vol_qlike_truth_over_har_tod": s["vol_qlike_truth"] / agg.loc["har_tod", "vol_qlike_truth"],
            "vol_qlike_excess_over_oracle": s["vol_qlike"] - ora["vol_qlike"],
            "vol_qlike_truth_excess_over_oracle": s["vol_qlike_truth"] - ora["vol_qlike_truth"],
            "ret_ic": s["ret_ic"], "ret_ic_truth": s["ret_ic_truth"], "ret_ic_cs": s["ret_ic_cs"],
            "ret_ic_over_oracle": s["ret_ic"] / ora["ret_ic"], "ret_hit": s["ret_hit"],
            "ret_coverage": s["ret_coverage"], "rv_coverage": s["rv_coverage"],
            "ret_ece": s["ret_ece"], "rv_ece": s["rv_ece"],
            "ret_err_low_conf": s.get("ret_err_low_conf"), "ret_err_high_conf": s.get("ret_err_high_conf"),
            "ret_miss_low_conf": s.get("ret_miss_low_conf"), "ret_miss_high_conf": s.get("ret_miss_high_conf"),
            "rv_err_low_conf": s.get("rv_err_low_conf"), "rv_err_high_conf": s.get("rv_err_high_conf"),
            "train_windows_per_s_cpu": res.throughput.get(model),
        }
        pf = res.per_fold[res.per_fold["model"] == model]
        rows[model]["per_fold"] = pf[["fold", "ret_coverage", "rv_coverage", "ret_ece", "rv_ece", "ret_ic",
                                      "vol_qlike", "vol_qlike_truth"]].to_dict(orient="records")
        fc = res.forecaster if model == "forecaster" else (res.nets.get(model) or [None])[-1]
        if fc is not None and fc.calibrator is not None:
            rows[model]["ret_conf_map_last_fold"] = fc.calibrator.ret_conf.to_dict()
    models = [a for a in archs if a in rows]
    goals = {}
    if models:
        best_q = min(models, key=lambda m: rows[m]["vol_qlike"])
        best_t = min(models, key=lambda m: rows[m]["vol_qlike_truth"])
        best_ic = max(models, key=lambda m: rows[m]["ret_ic"])
        goals = {
            "best_qlike_below_har_realized": {"model": best_q, "ratio": rows[best_q]["vol_qlike_over_har"],
                                              "met": rows[best_q]["vol_qlike_over_har"] < 1.0},
            "best_qlike_truth_at_most_half_har": {"model": best_t, "ratio": rows[best_t]["vol_qlike_truth_over_har"],
                                                  "met": rows[best_t]["vol_qlike_truth_over_har"] <= 0.5},
            "best_ic_at_least_half_oracle": {"model": best_ic, "ratio": rows[best_ic]["ret_ic_over_oracle"],
                                             "met": rows[best_ic]["ret_ic_over_oracle"] >= 0.5},
        }
    write_result("compare", {
        "config": {"symbols": args.symbols, "days": args.days, "seed": args.seed, "walkforward": wf.to_dict(),
                   "train": tc.to_dict(), "model_configs": SMALL},
        "folds": [{"index": f.index, "train": [f.train[0], f.train[-1]], "val": [f.val[0], f.val[-1]],
                   "test": [f.test[0], f.test[-1]]} for f in res.folds],
        "n_test_rows_per_model": int(agg["n"].iloc[0]),
        "models": rows, "goals": goals, "seconds": {"data": data_s, "walkforward": wf_s}, "lake_reused": reused,
        "peak_rss_mb": mem.peak_mb, "report": str(paths["report"]),
    })


if __name__ == "__main__":
    main()
