"""A tiny but real Forecaster (any architecture) for tests, benchmarks and a local demo server.

Real means: ``hfcast.models.build_model`` weights, a Scaler fitted on synthetic feature rows, and
a Calibrator fitted on that net's forecasts against the frame's labels. It is not trained (the
serving path does not care about skill), so building one takes well under a second.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SMALL = {
    "transformer": {"d_model": 16, "n_layers": 1, "n_heads": 2, "head_hidden": 8},
    "lstm": {"hidden": 16, "n_layers": 1, "head_hidden": 8},
    "tcn": {"channels": 16, "n_levels": 2, "head_hidden": 8},
    "hybrid": {"channels": 16, "tcn_levels": 1, "n_layers": 1, "n_heads": 2, "head_hidden": 8},
}


def tiny_forecaster(arch: str = "tcn", n_features: int = 8, seed: int = 0, calibrate: bool = True,
                    config: dict | None = None, small: bool = True):
    """A Forecaster with a small (or, ``small=False``, default-size) ``arch`` net, a fitted scaler
    and (optionally) a calibrator."""
    import torch

    from hfcast.calibration import Calibrator
    from hfcast.features.windows import Scaler, build_windows, synthetic_feature_frame
    from hfcast.models import Forecaster, build_model

    torch.manual_seed(seed)
    df = synthetic_feature_frame(n_symbols=2, n_days=1, n_features=n_features, seed=seed)
    names = [f"f{j}" for j in range(n_features)]
    wa = build_windows(df, names, stride=5)
    scaler = Scaler().fit(wa.X, wa.y, feature_names=names)
    net = build_model(arch, n_features, {**(SMALL[arch] if small else {}), "dropout": 0.0, **(config or {})}).eval()
    fc = Forecaster(net, scaler, names, meta={"model_name": "hfcast", "model_version": f"tiny-{arch}"})
    if calibrate:
        ends = wa.ends
        raw = fc.predict_raw(scaler.transform(np.stack([wa.window(i) for i in range(len(ends))])))
        y = wa.y[ends]
        fc.calibrator = Calibrator().fit(fc.natural(raw), y[:, 0], y[:, 1])
    return fc


def tiny_bundle(path: str | Path, arch: str = "tcn", n_features: int = 8, seed: int = 0, small: bool = True) -> Path:
    """Save :func:`tiny_forecaster` as a bundle folder (what ``hfcast serve --bundle`` loads)."""
    tiny_forecaster(arch, n_features, seed, small=small).save(str(path))
    return Path(path)


def feast_repo(settings, n_features: int = 8, n_symbols: int = 3, date: str = "2024-01-02",
               lag_minutes: dict[str, int] | None = None):
    """A real Feast repository (lake features partition, apply, materialize) for ``settings``.

    ``lag_minutes`` drops a symbol's last minutes so that its window ends earlier (a stale symbol
    next to fresh ones). Returns the materialized windows frame (symbol, event_timestamp, window).
    """
    import json

    from hfcast import feature_store, storage
    from hfcast.contracts import FEATURE_SET_FILE
    from hfcast.features.windows import synthetic_feature_frame
    from hfcast.storage import Lake

    df = synthetic_feature_frame(n_symbols=n_symbols, n_days=1, n_features=n_features, start=date)
    for sym, lag in (lag_minutes or {}).items():
        last = df.loc[df["symbol"] == sym, "ts"].max()
        df = df[~((df["symbol"] == sym) & (df["ts"] > last - np.timedelta64(lag, "m")))]
    df = df.assign(ts=df["ts"].astype("datetime64[us, UTC]")).reset_index(drop=True)
    day = str(df["ts"].iloc[0].date())
    lake = Lake.from_settings(settings)
    lake.write("features", day, df)
    names = [f"f{j}" for j in range(n_features)]
    storage.write_text(storage.join(lake.table("features"), FEATURE_SET_FILE),
                       json.dumps({"features": names, "quotes_available": True}), lake.storage_options)
    feature_store.apply(settings)
    return feature_store.materialize_windows(settings, day)


def cli_settings(tmp_path: Path, monkeypatch):
    """Embedded-default settings in ``tmp_path`` that the ``hfcast`` CLI, run in-process, sees too."""
    from hfcast.config import get_settings

    monkeypatch.setenv("HFCAST_HOME", str(tmp_path / ".hfcast"))
    monkeypatch.chdir(tmp_path)
    settings = get_settings()
    # registry.tracking() restores MLflow's previous global URI, which mlflow exports as
    # MLFLOW_TRACKING_URI (cwd/mlflow.db): pin it so the CLI's settings see the same store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.mlflow_uri)
    return settings


def register_forecaster(settings, fc, bundle: Path) -> tuple[str, int]:
    """Save ``fc`` to ``bundle``, log it as a training run (one test day, 2024-01-02) and register
    it in ``settings``' MLflow: ``(run_id, version)``."""
    from hfcast import registry

    fc.save(str(bundle))
    run_id = registry.log_training_run(settings, registry.TrainingRecord(
        bundle, arch=fc.arch, params={}, epoch_metrics=None, fold_metrics=[],
        aggregate_metrics={"vol_qlike": 0.3}, test_spans=[("2024-01-02", "2024-01-02")], dataset_version=None,
        feature_names=fc.feature_names))
    return run_id, registry.register(settings, run_id)

