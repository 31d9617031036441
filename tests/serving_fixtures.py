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


def tiny_net(arch: str = "tcn", n_features: int = 8, seed: int = 0, calibrate: bool = True,
             config: dict | None = None, small: bool = True, names: list[str] | None = None, frame=None):
    """A :class:`hfcast.models.base.TrainedNet` with a small (or, ``small=False``, default-size)
    ``arch`` net, a scaler fitted on synthetic rows and (optionally) a calibrator; ``names``: the
    feature columns it reads (default ``f0..f{n-1}``)."""
    import torch

    from hfcast.calibration import Calibrator
    from hfcast.features.windows import Scaler, build_windows, synthetic_feature_frame
    from hfcast.models import TrainedNet, build_model

    torch.manual_seed(seed)
    df = frame if frame is not None else synthetic_feature_frame(n_symbols=2, n_days=1, n_features=n_features, seed=seed)
    names = list(names or [f"f{j}" for j in range(n_features)])
    wa = build_windows(df, names, stride=5)
    scaler = Scaler().fit(wa.X, wa.y, feature_names=names)
    net = build_model(arch, len(names), {**(SMALL[arch] if small else {}), "dropout": 0.0, **(config or {})}).eval()
    tn = TrainedNet(net, scaler, names, meta={"model_name": "hfcast", "model_version": f"tiny-{arch}"})
    if calibrate:
        raw = tn.predict_raw(scaler.transform(wa.windows(np.arange(len(wa)))))
        y = wa.labels()
        tn.calibrator = Calibrator().fit(tn.natural(raw), y[:, 0], y[:, 1])
    return tn


def tiny_forecaster(arch: str = "tcn", n_features: int = 8, seed: int = 0, calibrate: bool = True,
                    config: dict | None = None, small: bool = True):
    """A served :class:`hfcast.forecaster.Forecaster` that is one bare network (``f0..f{n-1}``
    features, no baselines): the simplest graph, for the protocol and runner tests."""
    from hfcast.forecaster import Forecaster

    return Forecaster.from_net(tiny_net(arch, n_features, seed, calibrate, config, small))


def tiny_composite(kind: str = "floor", archs: tuple[str, ...] = ("tcn",), n_f: int = 4, seed: int = 0,
                   ret: str = "zero", frame=None, names: list[str] | None = None):
    """A served forecaster of any kind (``net``, ``floor``, ``ensemble``, ``har_tod``, ``har_rv``,
    ``ewma``) with baselines fitted and the served forecast calibrated on ``frame``'s windows
    (default: the synthetic frame with ``f*`` plus the window features the baselines read).
    Untrained networks: the tests check plumbing and parity, not skill."""
    from hfcast.calibration import Calibrator
    from hfcast.features.windows import build_windows, synthetic_feature_frame, synthetic_feature_names
    from hfcast.forecaster import Choice, Forecaster, compose
    from hfcast.models.baselines import DEPLOYABLE, baseline_inputs, context, fit_baselines

    if frame is None:
        names = synthetic_feature_names(n_f)
        frame = synthetic_feature_frame(n_symbols=3, n_days=3, n_features=n_f, seed=seed)
    wa = build_windows(frame, names, stride=3)
    inp = baseline_inputs(wa, frame)
    base = fit_baselines(inp, inp, DEPLOYABLE)
    nets = {a: tiny_net(a, n_f, seed + i, names=names, frame=frame) for i, a in enumerate(archs)} \
        if kind not in DEPLOYABLE else {}
    members = {"net": {archs[0]: 1.0}, "floor": {archs[0]: 0.5}, "ensemble": {a: 0.5 for a in archs}}.get(kind, {})
    choice = Choice(vol=kind, members=members, scale=1.1, ret=ret if nets else "zero")
    nat = {a: n.natural_windows(wa.windows(np.arange(len(wa)))) for a, n in nets.items()}
    served = compose(choice, nat, {n: b.natural(inp) for n, b in base.items()})
    y = wa.labels()
    cal = Calibrator().fit(served, y[:, 0], y[:, 1], context=context(inp))
    scaler = next(iter(nets.values())).scaler if nets else tiny_net("tcn", n_f, seed, False, names=names, frame=frame).scaler
    kept = {n: b for n, b in base.items() if n in ("har_tod", kind)}
    return Forecaster(nets, kept, choice, cal, names, scaler,
                      {"model_name": "hfcast", "model_version": f"tiny-{kind}", "val_dates": []})


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



def start_serve(args: list[str], env: dict, cwd: Path, log_path: Path, timeout: float = 180.0,
                pythonpath: str | None = None, image_entry: bool = False):
    """`hfcast serve ARGS` in a subprocess of its own session (``-v`` in ``args`` goes before
    ``serve``), or with ``image_entry`` the predictor image's `python -m serving ARGS`:
    ``(process, HTTP base URL, seconds from launch to /v2/health/ready 200)``; its output (stdout
    and stderr) goes to ``log_path``."""
    import subprocess
    import sys
    import time

    import httpx

    from hfcast.testing.servers import free_port

    port, grpc = free_port(), free_port()
    pre = [a for a in args if a in ("-v", "--verbose")]
    rest = [a for a in args if a not in pre]
    cmd = ([sys.executable, "-m", "serving", "--http_port", str(port), "--grpc_port", str(grpc), *args] if image_entry
           else [sys.executable, "-c", "from hfcast.cli import main; main()", *pre, "serve", "--port", str(port),
                 "--grpc-port", str(grpc), *rest])
    if pythonpath is not None:
        env = {**env, "PYTHONPATH": pythonpath}
    out = open(log_path, "wb")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    out.close()
    base = f"http://127.0.0.1:{port}"
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}): {Path(log_path).read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/v2/health/ready", timeout=1).status_code == 200:
                return proc, base, time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    stop_serve(proc)
    raise RuntimeError(f"server not ready in {timeout:.0f} s: {Path(log_path).read_text()[-3000:]}")


def stop_serve(proc) -> None:
    """Stop a server of :func:`start_serve` (its process group: SIGTERM, then SIGKILL if it lingers)."""
    from hfcast.testing.servers import stop_process_group

    stop_process_group(proc, timeout=20)
