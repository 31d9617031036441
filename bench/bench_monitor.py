"""The monitor's cost for one date, and how fast it notices a regime shift.

What is measured (one run, written to bench/results/monitor.json):

* ``one_date``: ``hfcast.monitoring.drift.run_monitor`` for one date of 100 and of 1000 symbols (Evidently
  feature + prediction drift with HTML/JSON reports, live performance, decision; no MLflow
  logging, no retraining started): wall time of a warm call (and of the first call, which pays the imports)
  and the process's peak RSS inside the warm call. The reference is
  built from 2 training dates with a tiny TCN trained for 2 short epochs (the monitor's cost does
  not depend on how good the model is).
* ``detection``: for volatility shifts of several sizes (with spreads x 1.5 for the larger ones,
  as in params.yaml synth), monitor every date after a 10-date reference span: the first drift
  alarm and the first retraining decision, in dates after the shift day (0 = on the shift day),
  and the false alarms on the stationary dates before it. Thresholds: params.yaml ``monitor:``.

Input: the market simulator; timings are wall clock on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PeakMemory, write_result  # noqa: E402
from hfcast.config import get_settings  # noqa: E402
from hfcast.data.simulator import SimConfig, write_synth  # noqa: E402
from hfcast.monitoring.decision import RETRAIN, MonitorConfig  # noqa: E402
from hfcast.monitoring.drift import run_monitor  # noqa: E402
from hfcast.monitoring.retraining import RecordOnlyStarter  # noqa: E402
from hfcast.monitoring.reference import build_reference  # noqa: E402
from hfcast.features.engine import load_features, read_feature_set, run_featurize  # noqa: E402
from hfcast.features.windows import build_windows  # noqa: E402
from hfcast.predict import run_predict  # noqa: E402
from hfcast.storage import Lake  # noqa: E402

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def _setup(root: Path, sim: SimConfig, n_ref: int, predict_from: int):
    """Simulated + featurized lake, tiny forecaster 'hfcast/1', its reference and prediction CSVs."""
    from hfcast.train import TrainConfig, train_forecaster

    settings = get_settings(env={"HFCAST_HOME": str(root / ".hfcast"), "HFCAST_LAKE": (root / "lake").as_uri(),
                                 "HFCAST_PARAMS": str(PARAMS)}, cwd=root)
    lake = Lake.from_settings(settings)
    write_synth(sim, lake, progress=False)
    run_featurize(lake, progress=False)
    dates = lake.dates("features")
    names = read_feature_set(lake)["features"]
    wa = build_windows(load_features(lake, dates[:n_ref]), names)
    cfg = TrainConfig(epochs=2, max_train_windows=6000, max_val_windows=2000, device="cpu", compile="off", seed=0)
    fc, _ = train_forecaster("tcn", wa.subset_dates(dates[:n_ref - 1]), wa.subset_dates(dates[n_ref - 1:n_ref]),
                             {"channels": 8, "n_levels": 2, "head_hidden": 8}, cfg, progress=False)
    fc.meta.update(model_name="hfcast", model_version="1")
    del wa
    fc.save(str(root / "bundle"))
    cfg = settings.section(MonitorConfig)
    build_reference(settings, fc, dates[:n_ref], n_rows=cfg.reference_sample_rows, seed=cfg.seed,
                    test_dates=dates[n_ref:n_ref + 1])
    run_predict(settings, dates[predict_from:], bundle_dir=str(root / "bundle"), runner="torch", progress=False)
    return settings, dates, cfg


def bench_one_date(n_symbols: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-monitor-") as tmp:
        settings, dates, cfg = _setup(Path(tmp), SimConfig(n_symbols=n_symbols, n_days=3, seed=3), 2, 2)
        t0 = time.perf_counter()
        run_monitor(settings, dates[2], "hfcast/1", starter=RecordOnlyStarter(), log_mlflow=False, cfg=cfg)
        cold = time.perf_counter() - t0  # includes first-call imports (Evidently, plotly) in this process
        t0 = time.perf_counter()
        with PeakMemory() as mem:
            rec = run_monitor(settings, dates[2], "hfcast/1", starter=RecordOnlyStarter(), log_mlflow=False, cfg=cfg)
        seconds = time.perf_counter() - t0
    return {"symbols": n_symbols, "rows_in_date": n_symbols * 390, "seconds": round(seconds, 2),
            "seconds_first_call": round(cold, 2),
            "peak_rss_mb": round(mem.peak_mb, 1), "rss_before_mb": round(mem.start_mb, 1),
            "sampled_rows": {"current": cfg.current_rows, "reference": cfg.reference_rows},
            "drift_share": rec["checks"]["drift_share"]}


def bench_detection(vol_mult: float, n_symbols: int, n_pre: int, n_post: int) -> dict:
    n_ref = 10
    shift = n_ref + n_pre
    sim = SimConfig(n_symbols=n_symbols, n_days=shift + n_post, seed=11, regime_shift_day=shift,
                    shift_vol_mult=vol_mult, shift_spread_mult=1.0 if vol_mult < 1.5 else 1.5)
    with tempfile.TemporaryDirectory(prefix="bench-monitor-") as tmp:
        settings, dates, cfg = _setup(Path(tmp), sim, n_ref, n_ref)
        recs = [run_monitor(settings, d, "hfcast/1", starter=RecordOnlyStarter(), log_mlflow=False, cfg=cfg) for d in dates[n_ref:]]
    pre, post = recs[:n_pre], recs[n_pre:]
    first = lambda xs: next((i for i, x in enumerate(xs) if x), None)  # noqa: E731
    return {"vol_mult": vol_mult, "spread_mult": sim.shift_spread_mult, "symbols": n_symbols,
            "stationary_dates": n_pre, "shifted_dates": n_post,
            "false_drift_alarms": sum(r["drift_alarm"] for r in pre),
            "false_perf_alarms": sum(r["perf_alarm"] for r in pre),
            "false_retrains": sum(r["action"] == RETRAIN for r in pre),
            "reasons_at_retrain": next((r["reasons"] for r in post if r["action"] == RETRAIN), None),
            "first_drift_alarm_delay": first([r["drift_alarm"] for r in post]),
            "first_perf_alarm_delay": first([r["perf_alarm"] for r in post]),
            "retrain_delay": first([r["action"] == RETRAIN for r in post]),
            "retrains_after_shift": sum(r["action"] == RETRAIN for r in post),
            "drift_share_after": [round(r["checks"]["drift_share"], 3) for r in post],
            "drift_share_before_max": round(max(r["checks"]["drift_share"] for r in pre), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="100,1000")
    ap.add_argument("--mults", default="1.2,1.5,2.0")
    ap.add_argument("--det-symbols", type=int, default=15)
    ap.add_argument("--pre", type=int, default=3)
    ap.add_argument("--post", type=int, default=6)
    args = ap.parse_args()
    one = [bench_one_date(int(n)) for n in args.sizes.split(",") if n]
    det = [bench_detection(float(m), args.det_symbols, args.pre, args.post) for m in args.mults.split(",") if m]
    prev = Path(__file__).parent / "results" / "monitor.json"
    if (not det or not one) and prev.exists():  # --mults "" / --sizes "": redo one part, keep the other
        import json

        old = json.loads(prev.read_text())
        det, one = det or old.get("detection", []), one or old.get("one_date", [])
    cfg = get_settings(env={"HFCAST_PARAMS": str(PARAMS)}, cwd=PARAMS.parent).section(MonitorConfig)
    write_result("monitor", {"one_date": one, "detection": det,
                             "config": {k: v for k, v in cfg.__dict__.items() if k in (
                                 "drift_share", "column_method", "column_threshold", "consecutive", "cooldown_dates",
                                 "perf_qlike_ratio", "perf_ic_drop", "perf_consecutive")}})


if __name__ == "__main__":
    main()
