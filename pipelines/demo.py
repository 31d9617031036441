"""``hfcast demo``: the whole story on embedded defaults, with the Kubeflow local runner.

simulate a small universe with a regime shift -> prep (synth / validate / featurize the first
days) -> Feast -> train the architectures on identical walk-forward folds -> gate -> register ->
export -> then the remaining days replayed one by one in honest time (:mod:`hfcast.replay`): each
day arrives (featurized, DVC-versioned and pushed, on a local or an S3 lake alike), is predicted by
the champion of that moment and monitored with that version; the drift after the shift triggers
exactly one retraining on data up to its decision date (through the same gate) -> start the KServe
model server and send a few requests -> a summary (with the dates each model saw), and one HTML
page linking the reports and CSVs.

Everything lives under ``<home>`` (default ``.hfcast/demo``, wiped at the start). ``s3=True``
puts the lake in a SeaweedFS bucket on 127.0.0.1 instead of a local folder.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hfcast.config import Settings, deep_merge
from pipelines.names import LOCAL_TRAINING

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class DemoConfig:
    """Sizes chosen so the demo finishes in a few minutes on 2 CPU cores."""

    symbols: int = 12
    days: int = 22
    shift_day: int = 14           # first shifted day (volatility x1.8, spreads x1.5, flatter U)
    train_days: int = 12          # the first champion learns from days [0, train_days)
    archs: tuple[str, ...] = ("lstm", "tcn")
    seed: int = 7
    s3: bool = False
    serve: bool = True
    overrides: dict[str, Any] = field(default_factory=lambda: {
        "walkforward": {"train_days": 6, "val_days": 2, "test_days": 2, "step_days": 2, "embargo_days": 1,
                        "max_folds": 1, "train_stride": 2, "eval_stride": 2,
                        "models": {"lstm": {"hidden": 32, "n_layers": 1}, "tcn": {"channels": 32},
                                   "transformer": {"d_model": 32, "n_layers": 1}, "hybrid": {"channels": 32}}},
        "train": {"epochs": 4, "max_train_windows": 20000, "max_val_windows": 6000, "num_threads": 1},
        "monitor": {"consecutive": 2, "cooldown_dates": 10, "current_rows": 3000, "reference_rows": 3000,
                    "reference_sample_rows": 6000, "min_labels": 200},
    })


class _Steps:
    """Timed, printed steps (the summary lists each with its wall time)."""

    def __init__(self, console: Any):
        self.console, self.times = console, {}

    def __call__(self, title: str):
        steps = self

        class _Step:
            def __enter__(self):
                steps.console.rule(f"[bold]{title}")
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                steps.times[title] = round(time.perf_counter() - self.t0, 1)
                if exc[0] is None:
                    steps.console.print(f"[green]done[/] in {steps.times[title]} s")

        return _Step()


def _environment(home: Path, cfg: DemoConfig, stack: ExitStack) -> dict[str, str]:
    """Environment for this process and every component subprocess (credentials only here)."""
    env = {"HFCAST_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
           "HFCAST_FEAST_REPO": str(home / "feature_repo"), "HFCAST_PARAMS": str(home / "params.yaml")}
    if cfg.s3:
        from hfcast.testing.servers import SeaweedFS

        weed = stack.enter_context(SeaweedFS(data_dir=home / "seaweedfs"))
        env.update(weed.env())
        bucket = weed.make_bucket("hfcast-demo")
        env["HFCAST_LAKE"], dvc_remote = f"{bucket}/lake", f"{bucket}/dvc"
    else:
        env["HFCAST_LAKE"], dvc_remote = (home / "lake").as_uri(), str(home / "dvc-remote")
    params = deep_merge(yaml.safe_load((ROOT / "params.yaml").read_text()) or {}, cfg.overrides)
    # every prep (the pipeline's prepare step, each replayed day) pushes its dataset version here
    params["dvc"] = {**(params.get("dvc") or {}), "remote": dvc_remote}
    params["synth"] = {**params.get("synth", {}), "n_symbols": cfg.symbols, "n_days": cfg.days, "seed": cfg.seed,
                       "regime_shift_day": cfg.shift_day}
    (home / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return env


def run_demo(cfg: DemoConfig, home: Path, console: Any) -> dict[str, Any]:
    """Run every stage; returns the summary (also written to ``<home>/summary.json``)."""
    from hfcast.config import get_settings
    from hfcast.data.schema import trading_days
    from hfcast.storage import Lake
    from pipelines.local import run_local

    home = home.resolve()
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    step = _Steps(console)
    t_start = time.perf_counter()
    summary: dict[str, Any] = {"home": str(home), "config": {k: v for k, v in cfg.__dict__.items() if k != "overrides"}}
    with ExitStack() as stack:
        env = _environment(home, cfg, stack)
        os.environ.update(env)
        settings = get_settings()
        lake = Lake.from_settings(settings)
        days = trading_days(settings.param("synth.start_date", "2024-01-02"), cfg.days)

        with step("1. training pipeline: simulate -> validate -> featurize -> Feast -> train -> gate"):
            first_days = {"featurize": {"dates": days[:cfg.train_days]}}
            train_params = {"settings": settings.with_(params=deep_merge(settings.params, first_days)).to_param(),
                            "archs": list(cfg.archs), "synth_symbols": cfg.symbols, "synth_days": cfg.days,
                            "synth_seed": cfg.seed, "synth_shift_day": cfg.shift_day}
            out = run_local(LOCAL_TRAINING, **train_params)
            summary["first_gate"] = out["gate"].metadata.get("summary", "")
            if not out.get("champion_version"):
                # no champion exists yet and the gate rejected the candidate: say so, and bootstrap
                # one explicitly (recorded on the version) so the rest of the story can run
                console.print(f"[yellow]gate rejected the first model[/]: {summary['first_gate'][:400]}")
                out = run_local(LOCAL_TRAINING, **{**train_params,
                                                   "force_reason": "demo bootstrap: first model, gate rejected"})
                summary["bootstrap_forced"] = True
            summary["champion_before"] = out["champion_version"]
            console.print(f"champion: hfcast/{out['champion_version']}")

        with step("2. replay the next days in order: arrive -> predict -> monitor -> decide -> retrain"):
            summary.update(_replay(settings, lake, days, cfg, console))

        if cfg.serve:
            with step("3. KServe model server: requests by window and by symbol"):
                summary["serving"] = _serve_and_query(settings, console, home)

        summary["seconds"] = round(time.perf_counter() - t_start, 1)
        summary["steps_seconds"] = step.times
        summary.update(_write_report(settings, home))
    (home / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def _replay(settings: Settings, lake: Any, days: list[str], cfg: DemoConfig, console: Any) -> dict[str, Any]:
    """The days after the first training, one by one in honest time (:func:`hfcast.replay.run_replay`):
    each day's features are DVC-versioned and pushed to the settings' ``dvc.remote`` (a local lake in
    place, an S3 lake through its local mirror), predicted by the champion of that moment, monitored
    with that version; a retraining uses data up to its decision date only."""
    from hfcast import registry
    from hfcast.monitoring.decision import load_history, trigger_outcome
    from hfcast.replay import run_replay, versions_seen

    def show(d: str, e: dict[str, Any]) -> None:
        shifted = "(regime shifted)" if days.index(d) >= cfg.shift_day else ""
        console.print(f"{d}: predicted by v{e['predict']['version']} -> {e['monitor']['action']} "
                      f"{trigger_outcome(e['monitor'].get('trigger'))} {shifted}".rstrip())

    run_replay(settings, days[cfg.train_days], days[-1], archs=(), on_day=show)
    replayed = days[cfg.train_days:]
    history = [r for r in load_history(lake, settings.model_name) if r["date"] in replayed]
    seen = versions_seen(settings)
    for v in seen:
        console.print(f"v{v['version']} {v.get('aliases') or ''}: trained {v.get('train_first')}..{v.get('train_last')}, "
                      f"validated {v.get('val_first')}..{v.get('val_last')}, tested {v.get('test_first')}..{v.get('test_last')}")
    return {"monitoring": [{"date": r["date"], "version": r.get("version"),
                            "drift_share": (r.get("checks") or {}).get("drift_share"), "drift_alarm": r.get("drift_alarm"),
                            "action": r.get("action"), "explanation": r.get("explanation")} for r in history],
            "retrainings": [r["date"] for r in history if r.get("action") == "retrain"],
            "champion_after": str(registry.resolve(settings, f"{settings.model_name}@champion").version),
            "champion_kind": registry.resolve(settings, f"{settings.model_name}@champion").tags.get("hfcast.kind", ""),
            "versions": seen}


def _serve_and_query(settings: Settings, console: Any, home: Path) -> dict[str, Any]:
    """Start ``hfcast serve`` on 127.0.0.1, send V1/V2 requests by window and by symbol, stop it."""
    import httpx
    import numpy as np

    from hfcast.feature_store import online_windows
    from hfcast.testing.servers import free_port, wait_http

    port, grpc = free_port(), free_port()
    logf = open(home / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-c", "from hfcast.cli import main; main()", "serve",
                             "--model", "hfcast@champion",
                             "--port", str(port), "--grpc-port", str(grpc),
                             # a replayed past: its last minute is older than any staleness limit measured
                             # against the wall clock (in trading time), so serve it with no limit
                             "--max-staleness-s", "-1"],
                            stdout=logf, stderr=subprocess.STDOUT, start_new_session=True, cwd=str(ROOT))
    base = f"http://127.0.0.1:{port}"
    out: dict[str, Any] = {}
    try:
        wait_http(f"{base}/v2/health/ready", timeout=180, proc=proc)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and httpx.get(f"{base}/v2/models/hfcast/ready").status_code != 200:
            time.sleep(0.5)
        out["model"] = httpx.get(f"{base}/v2/models/hfcast").json()
        windows, _, names = online_windows(settings, _symbols(settings)[:2])
        v1 = httpx.post(f"{base}/v1/models/hfcast:predict",
                        json={"instances": windows.tolist(), "parameters": {"scaled": False}}, timeout=60)
        syms = _symbols(settings)[:3]
        v2 = httpx.post(f"{base}/v2/models/hfcast/infer", timeout=60, json={
            "inputs": [{"name": "symbol", "shape": [len(syms)], "datatype": "BYTES", "data": syms}]})
        bad = httpx.post(f"{base}/v2/models/hfcast/infer", timeout=60, json={
            "inputs": [{"name": "window", "shape": [1, 30, 3], "datatype": "FP32", "data": [0.0] * 90}]})
        out.update(v1_status=v1.status_code, v2_status=v2.status_code, bad_request_status=bad.status_code,
                   bad_request_error=bad.json().get("error", "")[:200], v1_answer=v1.json(), v2_answer=v2.json())
        console.print(f"V1 by window -> {v1.status_code}; V2 by symbol {syms} -> {v2.status_code}; "
                      f"malformed window -> {bad.status_code}: {out['bad_request_error']}")
        got = {o["name"]: o["data"] for o in v2.json().get("outputs", [])}
        out["feature_ts"] = sorted(set(got.get("feature_ts", [])))
        console.print(f"by symbol, features as of {', '.join(out['feature_ts']) or '?'}: the last replayed day, "
                      "put online as it arrived (the replay's materialize step)")
        console.print_json(json.dumps(v2.json())[:1500] if v2.status_code != 200 else json.dumps(v2.json()))
        out["n_features"] = len(names)
        assert np.isfinite(windows).all()
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return out


def _symbols(settings: Settings) -> list[str]:
    from hfcast.storage import Lake

    lake = Lake.from_settings(settings)
    last = lake.dates("features")[-1]
    return sorted(lake.read("features", last, ["symbol"])["symbol"].astype(str).unique().tolist())


def _write_report(settings: Settings, home: Path) -> dict[str, Any]:
    """The quant's report under ``<home>/report`` (hfcast.report), and the numbers the summary prints."""
    from hfcast import report

    out = home / "report"
    index = report.write(settings, out, title="hfcast demo report")
    doc = json.loads((out / "report.json").read_text())
    return {"index": str(index), "scores": doc.get("aggregate") or {}, "notes": doc.get("notes") or [],
            "mlflow_uri": settings.mlflow_uri}
