"""The worked example of docs/BACKTEST.md, end to end on a simulated market (numbers + plots).

simulate -> validate -> featurize (the ``hfcast`` commands) -> train a transformer on the first
days -> ``hfcast predict`` the test days -> ``hfcast backtest`` -> ``hfcast explain global`` and
``hfcast explain forecast``. Writes bench/results/backtest_example.json and the plots under
docs/img/. Usage: ``python -m bench.example_backtest [--symbols 40 --days 16]`` (~10 min on a busy 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench._common import write_result

ROOT = Path(__file__).resolve().parents[1]


def hfcast(env: dict, *args: str) -> str:
    """Run one ``hfcast`` command (this tree's code) and return its output."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "hfcast.cli", *args], env=env, cwd=ROOT, check=True,
                         capture_output=True, text=True, timeout=1800)
    print(f"$ hfcast {' '.join(args)}  ({time.perf_counter() - t0:.1f} s)\n{out.stdout[-4000:]}", flush=True)
    return out.stdout


def train(lake_url: str, train_days: list[str], val_days: list[str], bundle: Path) -> dict:
    """A transformer trained on train_days, early-stopped and calibrated on val_days."""
    from hfcast.features.engine import load_features, read_feature_set
    from hfcast.features.windows import build_windows
    from hfcast.storage import Lake
    from hfcast.train import TrainConfig, train_forecaster

    lake = Lake(lake_url)
    names = read_feature_set(lake)["features"]
    df = load_features(lake, train_days + val_days, [*names, "ret_60m", "rv_10m"])
    wa = build_windows(df, names)
    cfg = TrainConfig(epochs=4, batch_size=256, lr=3e-3, max_train_windows=12000, max_val_windows=4000,
                      patience=2, seed=0, num_threads=2)
    fc, hist = train_forecaster("transformer", wa.subset_dates(train_days), wa.subset_dates(val_days),
                                {"d_model": 24, "n_layers": 2, "n_heads": 4, "head_hidden": 24}, cfg, progress=False)
    fc.meta.update(model_name="example", model_version="1")
    fc.save(str(bundle))
    return {"best_epoch": hist["best_epoch"], "seconds": round(hist["seconds"], 1), "train_days": train_days,
            "val_days": val_days}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--symbols", type=int, default=40)
    ap.add_argument("--days", type=int, default=16)
    ap.add_argument("--train-days", type=int, default=9)
    ap.add_argument("--val-days", type=int, default=2)
    ap.add_argument("--home", default="/tmp/hfcast-backtest-example")
    ap.add_argument("--reuse", action="store_true", help="Keep the featurized lake and trained bundle of an earlier run.")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO)
    home = Path(args.home)
    env = {**os.environ, "HFCAST_HOME": str(home), "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"}
    lake_url = (home / "lake").as_uri()
    from hfcast.storage import Lake

    if not (args.reuse and Lake(lake_url).dates("features")):
        shutil.rmtree(home, ignore_errors=True)
        hfcast(env, "synth", "--symbols", str(args.symbols), "--days", str(args.days), "--seed", "7", "--no-shift",
               "--no-progress")
        hfcast(env, "validate", "--no-progress")
        hfcast(env, "featurize", "--no-progress")

    dates = Lake(lake_url).dates("features")
    tr, va = dates[:args.train_days], dates[args.train_days:args.train_days + args.val_days]
    test = dates[args.train_days + args.val_days:]
    meta = home / "training.json"
    if not (args.reuse and meta.exists()):
        meta.write_text(json.dumps(train(lake_url, tr, va, home / "bundle")))
    training = json.loads(meta.read_text())
    span = f"{test[0]}..{test[-1]}"
    # --force: a bundle retrained under the same name/version must not reuse older CSVs
    hfcast(env, "predict", "--bundle", str(home / "bundle"), "--dates", span, "--runner", "torch", "--force")
    out = home / "backtest"
    table = hfcast(env, "backtest", "--model", "example/1", "--dates", span, "--out", str(out))
    table10 = hfcast(env, "backtest", "--model", "example/1", "--dates", span, "--rebalance", "60",
                     "--out", str(home / "backtest60"))
    hfcast(env, "explain", "global", "--bundle", str(home / "bundle"), "--dates", span, "--repeats", "2",
           "--out", str(home / "explain"))
    forecast = hfcast(env, "explain", "forecast", "--bundle", str(home / "bundle"), "--symbol", "S0003",
                      "--ts", f"{test[-1]}T17:00:00Z", "--top", "6")
    img = ROOT / "docs" / "img"
    img.mkdir(parents=True, exist_ok=True)
    for src, dst in ((out / "equity.png", "backtest_equity.png"), (out / "tracking.png", "backtest_tracking.png"),
                     (home / "explain" / "importance.png", "explain_importance.png"),
                     (home / "explain" / "attention.png", "explain_attention.png")):
        if src.exists():
            shutil.copy(src, img / dst)
    write_result("backtest_example", {
        "setup": {"symbols": args.symbols, "days": args.days, "test_dates": test, "training": training},
        "backtest": json.loads((out / "backtest.json").read_text()),
        "backtest_rebalance_60": json.loads((home / "backtest60" / "backtest.json").read_text()),
        "explain": json.loads((home / "explain" / "explain.json").read_text()),
        "cli_output": {"backtest": table, "backtest_rebalance_60": table10, "explain_forecast": forecast},
        "load_avg": os.getloadavg()})


if __name__ == "__main__":
    main()
