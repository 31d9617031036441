"""The replay's cost per day (:mod:`hfcast.replay`), for 12 and 100 symbols.

What is measured (written to bench/results/replay.json), per universe size:

* ``replay``: wall seconds per replayed day of ``hfcast.replay.run_replay`` (arrive = validate +
  featurize one day + DVC add/commit/push to a local remote; predict with the champion; monitor
  with Evidently; decide), on a stationary universe (no retraining: a retraining's cost is the
  training benchmark's), and the seconds per step;
* ``reference`` (same run, same days, a fresh lake): the same work without the replay, done the
  old way: one ``run_featurize`` + one ``run_predict`` over all the days, then ``run_monitor`` per
  day, no DVC. The difference is the price of honest time (one call per day) and of versioning.

The first champion is trained before the clock starts (tiny settings: its quality does not change
the cost of a day). Wall clock on the machine named in the result, with its load average.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_result  # noqa: E402
from hfcast.config import deep_merge, get_settings  # noqa: E402
from hfcast.data.schema import trading_days  # noqa: E402
from hfcast.data.simulator import SimConfig, write_synth  # noqa: E402
from hfcast.storage import Lake, local_path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = {"walkforward": {"train_days": 6, "val_days": 2, "test_days": 2, "step_days": 2, "embargo_days": 1,
                        "max_folds": 1, "train_stride": 5, "eval_stride": 5, "models": {"tcn": {"channels": 8}}},
        "train": {"epochs": 1, "max_train_windows": 3000, "max_val_windows": 1000, "num_threads": 1},
        "monitor": {"current_rows": 3000, "reference_rows": 3000, "reference_sample_rows": 6000, "min_labels": 200}}
HISTORY = 12  # days before the replay: the first champion's walk-forward fold


def _settings(root: Path, symbols: int, days: int):
    params = deep_merge(yaml.safe_load((ROOT / "params.yaml").read_text()) or {}, TINY)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    settings = get_settings(env={"HFCAST_HOME": str(root / ".hfcast"), "HFCAST_LAKE": (root / "lake").as_uri(),
                                 "HFCAST_PARAMS": str(root / "params.yaml"),
                                 "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}, cwd=root)
    write_synth(SimConfig(n_symbols=symbols, n_days=days, seed=5, regime_shift_day=None),
                Lake.from_settings(settings), progress=False)
    return settings


def _champion(settings, days: list[str]) -> None:
    from hfcast.replay import _bootstrap

    _bootstrap(settings, Lake.from_settings(settings), days[HISTORY], ["tcn"])


def bench_replay(root: Path, symbols: int, n_days: int) -> dict:
    from hfcast.replay import run_replay
    from hfcast.versioning import FeatureVersions

    days = trading_days("2024-01-02", HISTORY + n_days)
    settings = _settings(root, symbols, len(days))
    versions = FeatureVersions(local_path(settings.lake_url), remote=str(root / "dvc-remote")).init()
    _champion(settings, days)
    stamps: list[float] = []
    t0 = time.perf_counter()
    run_replay(settings, days[HISTORY], days[-1], archs=["tcn"], versions=versions,
               on_day=lambda d, e: stamps.append(time.perf_counter()))
    per_day = [b - a for a, b in zip([t0, *stamps[:-1]], stamps)]
    return {"days": n_days, "seconds_per_day": round(sum(per_day) / len(per_day), 2),
            "per_day": [round(s, 2) for s in per_day]}


def bench_reference(root: Path, symbols: int, n_days: int) -> dict:
    from hfcast.data.validate import run_validate
    from hfcast.features.engine import run_featurize
    from hfcast.monitoring.drift import run_monitor
    from hfcast.monitoring.retraining import RecordOnlyStarter
    from hfcast.predict import run_predict

    days = trading_days("2024-01-02", HISTORY + n_days)
    settings = _settings(root, symbols, len(days))
    _champion(settings, days)
    lake = Lake.from_settings(settings)
    todo = days[HISTORY:]
    t0 = time.perf_counter()
    run_validate(lake, dates=todo, progress=False)
    run_featurize(lake, dates=todo, progress=False)
    run_predict(settings, todo, model_ref="hfcast@champion", progress=False)
    for d in todo:
        run_monitor(settings, d, model="hfcast@champion", starter=RecordOnlyStarter())
    total = time.perf_counter() - t0
    return {"days": n_days, "seconds_per_day": round(total / n_days, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--symbols", type=int, nargs="+", default=[12, 100])
    ap.add_argument("--days", type=int, default=3, help="days replayed per size")
    args = ap.parse_args()
    out = {"load_average_start": os.getloadavg(), "sizes": {}}
    for n in args.symbols:
        with tempfile.TemporaryDirectory(prefix="hfcast-bench-replay-") as a, \
                tempfile.TemporaryDirectory(prefix="hfcast-bench-replay-ref-") as b:
            out["sizes"][str(n)] = {"replay": bench_replay(Path(a), n, args.days),
                                    "reference": bench_reference(Path(b), n, args.days)}
    out["load_average_end"] = os.getloadavg()
    write_result("replay", out)


if __name__ == "__main__":
    main()
