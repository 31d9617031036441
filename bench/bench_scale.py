"""Every stage at the seed's scale (1000 symbols x 252 days) on this machine, in bounded memory.

Run: ``nice -n 19 python -m bench.bench_scale [--root /work/bench-scale-data] [--symbols 1000 --days 252]``
(about an hour on the 2-core machine; ``--keep`` keeps the lake, otherwise it is deleted at the end).

Each stage runs in its own process (``--stage NAME``), so its peak RSS is its own: the peak of
the process tree's resident memory, sampled every 0.2 s (bench._common.PeakMemory), and the
kernel's ``ru_maxrss`` of the stage process. A stage that finished leaves ``<root>/stage-NAME.json``
and is not run again (a cut-short bench resumes). Stages:

* ``simulate`` (hfcast.data.simulator.write_synth) -> ``validate`` (run_validate) -> ``featurize``
  (run_featurize, 2 workers);
* ``train``: a sample from the stream: :class:`hfcast.features.stream.StreamingSource` over every
  date but the last ``--val-days + --holdout`` (the scaler in one pass over all of them), one
  epoch of ``--train-windows`` windows; validation in memory (capped). Saves the bundle;
* ``stream_vs_memory``: the same sample (``--cmp-days`` dates, ``--cmp-windows`` windows, one
  epoch) from the stream and from one in-memory matrix: training windows/s of each;
* ``predict``: dense batch prediction (hfcast.predict.run_predict, the default runner) of a
  measured fraction of the year (``--predict-days`` dates), extrapolated to every date;
* ``monitor``: the monitoring reference of the trained model, then run_monitor of one date;
* ``ddp``: the same training under ``torchrun`` with 1 and 2 processes (gloo, 1 thread each):
  windows/s and the validation QLIKE of both;
* ``walkforward``: the default user path, ``hfcast train`` as a user runs it (a subprocess: log to
  MLflow, register, gate, the champion's monitoring reference), on the first ``--wf-days`` dates of
  the lake (several sizes, ``--fold last_date=...``), one fold, a small LSTM, a sampled training
  budget; params.yaml's own memory settings. Wall, CPU seconds and peak RSS of the command's whole
  process tree for each size, and their growth with the number of days;
* ``walkforward_before`` (opt-in, ``--only walkforward_before``): the same command with the code of
  ``--wf-before-commit`` on the smallest size, killed above ``--wf-before-limit-mb``.

Writes ``bench/results/scale.json`` after every stage (machine, load average, nice level).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, PeakMemory, machine  # noqa: E402

log = logging.getLogger("bench_scale")
ROOT = Path(__file__).resolve().parents[1]
STAGES = ("simulate", "validate", "featurize", "train", "stream_vs_memory", "predict", "monitor", "ddp", "walkforward")
OPT_IN = ("walkforward_before",)  # run only when named in --only
GOAL_RSS_MB = 6 * 1024
ARCH, MODEL = "lstm", {}  # the fastest architecture on CPU, default width


def _settings(root: Path):
    from hfcast.config import get_settings

    return get_settings(env={"HFCAST_HOME": str(root / "home"), "HFCAST_LAKE": (root / "lake").as_uri(),
                             "HFCAST_PARAMS": str(ROOT / "params.yaml")}, cwd=root)


def _lake(root: Path):
    from hfcast.storage import Lake

    return Lake.from_settings(_settings(root))


def _spans(a: argparse.Namespace, dates: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(train, validation, held-out) dates: the last ``holdout`` are predicted/monitored, the
    ``val_days`` before them validate, everything earlier trains (one embargo day left out)."""
    held = dates[-a.holdout:]
    val = dates[-a.holdout - a.val_days:-a.holdout]
    train = dates[:-a.holdout - a.val_days - 1]
    return train, val, held


def _val_windows(lake, dates, names):
    from hfcast.features.engine import load_features
    from hfcast.features.windows import LABEL_COLS, build_windows

    return build_windows(load_features(lake, dates, [*names, *LABEL_COLS]), names)


def _train_cfg(a: argparse.Namespace, windows: int, threads: int | None = 1):
    """One epoch on CPU. One torch thread by default: on this shared machine (load 7-9 from other
    work) two intra-op threads ran 15x slower than one (OpenMP threads waiting on each other)."""
    from hfcast.train import TrainConfig

    return TrainConfig(epochs=1, max_train_windows=windows, max_val_windows=a.val_windows, device="cpu",
                       compile="off", seed=0, num_threads=threads, stream_buffer_dates=a.buffer_dates)


# --- the stages (each in its own process) --------------------------------------------------------

def stage_simulate(a, root: Path) -> dict:
    from hfcast.data.simulator import SimConfig, write_synth

    summary = write_synth(SimConfig(n_symbols=a.symbols, n_days=a.days, seed=a.seed), _lake(root), progress=False)
    rows = a.symbols * a.days * 390
    return {"stock_minutes": rows, "summary": {k: v for k, v in summary.items() if k != "dates"}}


def _fraction(a, n_measured: int) -> dict:
    """How a stage measured on ``n_measured`` of the year's dates is scaled to all of them."""
    return {"dates_measured": n_measured, "dates_in_year": a.days, "factor": round(a.days / n_measured, 3),
            "how": "per-date cost of the measured dates x the year's dates (each date is independent work of "
                   "the same size: 1000 symbols x 390 minutes; memory does not grow with the dates)"}


def stage_validate(a, root: Path) -> dict:
    from hfcast.data.validate import run_validate

    lake = _lake(root)
    dates = lake.dates("raw")[:a.validate_days]
    t = run_validate(lake, dates, progress=False)
    return {"input_rows": t["input_rows"], "clean_rows": t["clean_rows"], "quarantined_rows": t["quarantined_rows"],
            "rows": t["input_rows"], "fraction": _fraction(a, len(dates))}


def stage_featurize(a, root: Path) -> dict:
    from hfcast.features.engine import run_featurize

    lake = _lake(root)
    dates = lake.dates("raw")[:a.featurize_days]
    s = run_featurize(lake, dates, progress=False, workers=2)
    return {"rows": s["rows"], "n_features": s["n_features"], "workers": 2, "fraction": _fraction(a, len(dates))}


def stage_train(a, root: Path) -> dict:
    from hfcast.features.engine import read_feature_set
    from hfcast.features.stream import StreamingSource
    from hfcast.train import train_forecaster

    lake = _lake(root)
    names = read_feature_set(lake)["features"]
    train, val, _ = _spans(a, lake.dates("features"))
    src = StreamingSource(lake, train, names, max_windows=a.train_windows, seed=0, buffer_dates=a.buffer_dates,
                          cache_dir=str(root / "stream-cache"))
    t0 = time.perf_counter()
    src.fit_scaler()
    scaler_s = time.perf_counter() - t0
    fc, hist = train_forecaster(ARCH, src, _val_windows(lake, val, names), MODEL, _train_cfg(a, a.train_windows),
                                progress=False)
    fc.meta.update(model_name="hfcast", model_version="1")
    fc.save(str(root / "bundle"))
    cache_mb = sum(f.stat().st_size for f in (root / "stream-cache").iterdir()) / 2**20
    shutil.rmtree(root / "stream-cache", ignore_errors=True)
    return {"stream_cache_mb": round(cache_mb), "arch": ARCH, "train_dates": len(train), "first": train[0], "last": train[-1],
            "labelled_windows_in_span": int(src._labelled_counts().sum()),
            "windows_trained": hist["n_train_windows"], "val_windows": hist["n_val_windows"],
            "scaler_pass_seconds": round(scaler_s, 1), "scaler_pass_dates_per_s": round(len(train) / scaler_s, 2),
            "epoch_seconds": round(hist["train_seconds"], 1), "windows_per_s": round(hist["windows_per_s"], 1),
            "val_loss": hist["best_val_loss"], "buffer_dates": a.buffer_dates,
            "rows": hist["n_train_windows"]}


def stage_stream_vs_memory(a, root: Path) -> dict:
    from hfcast.features.engine import read_feature_set
    from hfcast.features.stream import StreamingSource
    from hfcast.train import train_forecaster

    lake = _lake(root)
    names = read_feature_set(lake)["features"]
    train, val, _ = _spans(a, lake.dates("features"))
    sample = train[-a.cmp_days:]
    cfg = _train_cfg(a, a.cmp_windows)
    val_wa = _val_windows(lake, val[-1:], names)
    out: dict[str, Any] = {"dates": len(sample), "windows": a.cmp_windows, "arch": ARCH, "rounds": a.cmp_rounds}
    rates: dict[str, list[float]] = {"stream": [], "memory": []}
    totals: dict[str, list[float]] = {"stream": [], "memory": []}
    mem = _val_windows(lake, sample, names)  # the in-memory path's one matrix (loaded once, outside the timing)
    for _ in range(a.cmp_rounds):  # alternate, so a change in the machine's load hits both alike
        for kind in ("stream", "memory"):
            src = (StreamingSource(lake, sample, names, max_windows=a.cmp_windows, seed=0, buffer_dates=a.buffer_dates)
                   if kind == "stream" else mem)
            hist = train_forecaster(ARCH, src, val_wa, MODEL, cfg, calibrate=False, progress=False)[1]
            rates[kind].append(hist["windows_per_s"])
            totals[kind].append(hist["seconds"])
    import numpy as np

    out.update({f"{k}_windows_per_s": [round(v, 1) for v in r] for k, r in rates.items()})
    out.update({f"{k}_seconds_including_scaler_and_cache": [round(v, 1) for v in r] for k, r in totals.items()})
    out["stream_over_memory"] = round(float(np.median(rates["stream"]) / np.median(rates["memory"])), 3)
    out["goal"] = ">= 0.9"
    out["rows"] = a.cmp_windows * a.cmp_rounds * 2
    return out


def stage_predict(a, root: Path) -> dict:
    from hfcast.predict import choose_runner, run_predict

    settings = _settings(root)
    dates = _lake(root).dates("features")
    _, _, held = _spans(a, dates)
    todo = held[-a.predict_days:]
    s = run_predict(settings, todo, bundle_dir=str(root / "bundle"), mode="dense", progress=False)
    rows, secs = s.rows, s.seconds
    per_date = secs / len(todo)  # dates run one after another in one process (memory: one date + the next)
    return {"dates": len(todo), "first": todo[0], "last": todo[-1], "rows": rows, "seconds_measured": round(secs, 1),
            "runner": choose_runner(str(root / "bundle"), "auto", _lake(root))[0], "failed": len(s.failed),
            "time_split_seconds": {k: round(v, 1) for k, v in s.timing_split().items()},
            "seconds_per_date": round(per_date, 1), "fraction": _fraction(a, len(todo))}


def stage_monitor(a, root: Path) -> dict:
    from hfcast.monitoring.decision import MonitorConfig
    from hfcast.monitoring.drift import run_monitor
    from hfcast.monitoring.reference import build_reference
    from hfcast.monitoring.retraining import RecordOnlyStarter

    settings = _settings(root)
    dates = _lake(root).dates("features")
    train, _, held = _spans(a, dates)
    cfg = MonitorConfig.from_params(settings.param("monitor", {}))
    t0 = time.perf_counter()
    build_reference(settings, str(root / "bundle"), train[-5:], n_rows=cfg.reference_sample_rows, seed=cfg.seed,
                    model=("hfcast", "1"), test_scores={"vol_qlike": 1.0, "ret_ic": 0.0})
    ref_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rec = run_monitor(settings, held[-1], "hfcast/1", starter=RecordOnlyStarter(), log_mlflow=False, cfg=cfg)
    return {"date": held[-1], "reference_seconds": round(ref_s, 1), "monitor_seconds": round(time.perf_counter() - t0, 1),
            "drift_share": rec["checks"]["drift_share"], "action": rec["action"], "rows": a.symbols * 390}


def stage_ddp(a, root: Path) -> dict:
    """1 process (1 and 2 threads) vs torchrun with 2 processes (1 thread each) on the same sample."""
    out: dict[str, Any] = {"arch": ARCH, "dates": a.cmp_days, "windows": a.cmp_windows}
    for name, procs, threads in (("1_process_1_thread", 1, 1), ("1_process_2_threads", 1, 2),
                                 ("2_processes_1_thread_each", 2, 1)):
        res = root / f"ddp-{name}.json"
        res.unlink(missing_ok=True)
        worker = [str(Path(__file__).resolve()), "--stage", "ddp_worker", "--root", str(root), "--out", str(res),
                  "--threads", str(threads), *_passthrough(a)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        if procs == 1:
            cmd = [sys.executable, *worker]
        else:
            from hfcast.testing.servers import free_port

            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs), "--master-addr",
                   "127.0.0.1", "--master-port", str(free_port()), *worker]
        with PeakMemory(interval=0.2) as mem:
            t0 = time.perf_counter()
            subprocess.run(cmd, env=env, check=True)
        out[name] = {**json.loads(res.read_text()), "wall_seconds": round(time.perf_counter() - t0, 1),
                     "peak_rss_mb_all_processes": round(mem.peak_mb, 1)}
    one, two = out["1_process_2_threads"], out["2_processes_1_thread_each"]
    out["qlike_relative_difference_2_processes_vs_1"] = round(abs(two["val_qlike"] - one["val_qlike"]) / one["val_qlike"], 5)
    out["throughput_2_processes_over_1_process_2_threads"] = round(two["windows_per_s"] / one["windows_per_s"], 3)
    out["throughput_2_processes_over_1_process_1_thread"] = round(
        two["windows_per_s"] / out["1_process_1_thread"]["windows_per_s"], 3)
    return out


def stage_ddp_worker(a, root: Path) -> dict | None:
    import numpy as np

    from hfcast.distributed import env_rank, shutdown
    from hfcast.features.engine import read_feature_set
    from hfcast.features.stream import StreamingSource
    from hfcast.metrics import qlike
    from hfcast.train import train_forecaster

    lake = _lake(root)
    names = read_feature_set(lake)["features"]
    train, val, _ = _spans(a, lake.dates("features"))
    val_wa = _val_windows(lake, val[-1:], names)
    src = StreamingSource(lake, train[-a.cmp_days:], names, max_windows=a.cmp_windows, seed=0,
                          buffer_dates=a.buffer_dates)
    fc, hist = train_forecaster(ARCH, src, val_wa, MODEL, _train_cfg(a, a.cmp_windows, threads=a.threads),
                                calibrate=False, progress=False)
    if env_rank() == 0:
        sel = np.flatnonzero(np.isfinite(val_wa.labels()[:, 1]))[:a.val_windows]
        rv = val_wa.labels()[sel, 1].astype(np.float64)
        pred = fc.predict(val_wa.windows(sel))["rv_10m_pred"].to_numpy()
        ok = rv > 0
        doc = {"world": hist["world_size"], "windows_per_s": round(hist["windows_per_s"], 1),
               "epoch_seconds": round(hist["train_seconds"], 1), "val_loss": hist["best_val_loss"],
               "val_qlike": qlike(pred[ok] ** 2, rv[ok] ** 2), "peak_rss_mb_rank0": round(_maxrss_mb(), 1)}
        Path(a.out).write_text(json.dumps(doc))
    shutdown()
    return None


# the walk-forward stage's own settings over params.yaml: what a user would set to try the CLI on a
# year (a small model, one fold, a training budget); memory settings (train.stream_above_rows,
# walkforward.chunk_rows and the samples) stay params.yaml's
WF_PARAMS = {"walkforward": {"max_folds": 1, "models": {"lstm": {"hidden": 16, "n_layers": 1, "head_hidden": 16}}},
             "train": {"epochs": 1, "device": "cpu", "num_threads": 1}, "forecaster": {"archs": ["lstm"]}}


def _run_tree(cmd: list[str], env: dict, log_path: Path, kill_above_mb: float | None = None) -> dict:
    """Run a command: wall seconds, CPU seconds and peak RSS of its whole process tree (the tree's RSS
    sampled every 0.2 s, and the kernel's ru_maxrss of the command and its reaped children). With
    ``kill_above_mb`` the tree is killed when it grows past it (a shared machine must not run out)."""
    import signal
    import threading

    import psutil

    peak, stop, killed = [0.0], threading.Event(), [False]

    def sample(pid: int) -> None:
        try:
            proc = psutil.Process(pid)
        except psutil.Error:
            return
        while not stop.is_set():
            try:
                tree = [proc, *proc.children(recursive=True)]
                peak[0] = max(peak[0], sum(c.memory_info().rss for c in tree) / 2**20)
                if kill_above_mb is not None and peak[0] > kill_above_mb:
                    killed[0] = True
                    for c in tree:
                        c.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass
            time.sleep(0.2)

    load0 = os.getloadavg()
    with open(log_path, "w") as fh:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        th = threading.Thread(target=sample, args=(p.pid,), daemon=True)
        th.start()
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        stop.set()
        th.join()
    p.returncode = os.waitstatus_to_exitcode(status)
    return {"exit_code": p.returncode, "wall_seconds": round(wall, 1), "cpu_seconds": round(ru.ru_utime + ru.ru_stime, 1),
            "peak_rss_mb": round(max(peak[0], ru.ru_maxrss / 1024), 1), "peak_rss_mb_tree_sampled": round(peak[0], 1),
            "ru_maxrss_mb": round(ru.ru_maxrss / 1024, 1), "cpu_share_of_one_core": round((ru.ru_utime + ru.ru_stime) / wall, 2),
            "load_average_before": [round(x, 2) for x in load0], "load_average_after": [round(x, 2) for x in os.getloadavg()],
            **({"killed_above_mb": kill_above_mb} if killed[0] else {})}


def _fit_line(x: list[float], y: list[float]) -> tuple[float, float]:
    import numpy as np

    b, a = np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)
    return float(a), float(b)


def _train_span(params: dict, dates: list[str]) -> list[str]:
    """The training dates of the last fold ``hfcast train --fold last_date=<dates[-1]>`` runs."""
    from hfcast.walkforward import WalkForwardConfig, generate_folds

    cfg = WalkForwardConfig.from_params({**params["walkforward"], "last_date": dates[-1]})
    return list(list(generate_folds(dates, cfg))[-1].train)


def _train_run(a, root: Path, dates: list[str], n: int, params: dict, name: str, pythonpath: str | None = None,
               kill_above_mb: float | None = None) -> dict:
    """One ``hfcast train`` on the first ``n`` dates, in its own home (MLflow sqlite, reports)."""
    import pandas as pd
    import yaml

    from hfcast.features.stream import features_rows_by_date

    home = root / name
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    params = {**params, "train": {**params["train"], "max_train_windows": a.wf_train_windows}}
    (home / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "HFCAST_HOME": str(home), "HFCAST_LAKE": (root / "lake").as_uri(),
           "HFCAST_PARAMS": str(home / "params.yaml"), "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the run's own sqlite under its home
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    # quoted: YAML reads it as text in every version of the CLI
    cmd = [sys.executable, "-m", "hfcast", "train", "--model", "lstm", "--fold", f'last_date="{dates[n - 1]}"']
    log.info("walkforward: hfcast train on %d dates (to %s) in %s", n, dates[n - 1], home)
    res = _run_tree(cmd, env, home / "train.log", kill_above_mb)
    train = _train_span(params, dates[:n])
    train_dates = len(train)
    rows = features_rows_by_date(_lake(root), train)
    run = {"dates": n, "last_date": dates[n - 1], "train_dates": train_dates,
           "train_feature_rows": int(sum(rows.values())), **res}
    text = (home / "train.log").read_text(errors="replace")
    if res["exit_code"] != 0:
        if "killed_above_mb" in res:
            return run
        raise SystemExit(f"hfcast train on {n} dates failed ({res['exit_code']}): {text[-3000:]}")
    report = home / "reports" / "train"
    agg = pd.read_csv(report / "aggregate.csv", index_col=0)
    table = pd.read_parquet(report / "predictions.parquet", columns=["model"])
    served = [ln.split("served:", 1)[1].strip() for ln in text.splitlines() if "served:" in ln]
    shutil.rmtree(home / "mlruns", ignore_errors=True)
    return {**run, "streamed_training": "streaming by date" in text,
            "registered": "registered hfcast version 1" in text, "served": served[-1] if served else "",
            "test_rows_scored_per_model": int(agg.loc["forecaster", "n"]),
            "prediction_table_rows_per_model": int(table["model"].value_counts().max()),
            "forecaster_vol_qlike": float(agg.loc["forecaster", "vol_qlike"]),
            "har_tod_vol_qlike": float(agg.loc["har_tod", "vol_qlike"])}


def stage_walkforward_before(a, root: Path) -> dict:
    """The same ``hfcast train`` with the code of ``--wf-before-commit`` (the walk-forward that held
    every fold date in one frame) on the smallest ``--wf-days`` size: what this path cost before.
    Killed above ``--wf-before-limit-mb`` (the machine is shared). Opt-in: ``--only walkforward_before``."""
    import yaml

    from hfcast.config import deep_merge

    src = root / f"src-{a.wf_before_commit}"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", a.wf_before_commit, "src", "params.yaml"],
                         check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=tar, check=True)
    params = deep_merge(yaml.safe_load((src / "params.yaml").read_text()), WF_PARAMS)
    n = min(int(x) for x in a.wf_days.split(","))
    run = _train_run(a, root, _lake(root).dates("features"), n, params, f"wf-before-{n}", str(src / "src"),
                     a.wf_before_limit_mb)
    shutil.rmtree(src, ignore_errors=True)
    return {"commit": a.wf_before_commit, "run": run, "rows": run["train_feature_rows"]}


def stage_walkforward(a, root: Path) -> dict:
    """``hfcast train`` on the first N dates of the lake for each N of ``--wf-days``."""
    import yaml

    from hfcast.config import deep_merge

    dates = _lake(root).dates("features")
    sizes = [int(x) for x in a.wf_days.split(",")]
    if max(sizes) > len(dates):
        raise SystemExit(f"--wf-days {a.wf_days}: the lake has {len(dates)} features dates")
    params = deep_merge(yaml.safe_load((ROOT / "params.yaml").read_text()), WF_PARAMS)
    runs = [_train_run(a, root, dates, n, params, f"wf-home-{n}") for n in sizes]
    x = [r["train_dates"] for r in runs]
    out: dict[str, Any] = {"command": "python -m hfcast train --model lstm --fold last_date=<date N>",
                           "params_over_params_yaml": {**WF_PARAMS, "train": {**WF_PARAMS["train"],
                                                                              "max_train_windows": a.wf_train_windows}},
                           "runs": runs, "rows": sum(r["train_feature_rows"] for r in runs)}
    if len(runs) >= 2:
        ca, cb = _fit_line(x, [r["cpu_seconds"] for r in runs])
        ra, rb = _fit_line(x, [r["peak_rss_mb"] for r in runs])
        year_train = a.days_in_year - (runs[-1]["dates"] - runs[-1]["train_dates"])  # val, test, embargo stay
        share = min(r["cpu_share_of_one_core"] for r in runs)
        out["growth_with_training_dates"] = {
            "peak_rss_mb_per_training_date": round(rb, 2), "peak_rss_mb_at_zero_dates": round(ra, 1),
            "cpu_seconds_per_training_date": round(cb, 2), "cpu_seconds_fixed": round(ca, 1),
            "peak_rss_ratio_largest_over_smallest": round(runs[-1]["peak_rss_mb"] / runs[0]["peak_rss_mb"], 3)}
        out["extrapolated_year"] = {
            "dates": a.days_in_year, "train_dates": year_train,
            "cpu_seconds": round(ca + cb * year_train, 1),
            "wall_seconds_at_the_lowest_measured_cpu_share": round((ca + cb * year_train) / max(share, 1e-3), 1),
            "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs) + max(rb, 0.0) * (year_train - x[-1]), 1),
            "how": "CPU seconds and peak RSS fitted as a line in the training dates over the measured sizes "
                   "(one fold: the validation and test spans do not grow); RSS carried at the largest measured "
                   "peak plus its fitted slope (clipped at 0) times the dates beyond"}
    return out


# --- the driver ----------------------------------------------------------------------------------------

def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _passthrough(a) -> list[str]:
    keys = ("symbols", "days", "seed", "val_days", "holdout", "train_windows", "val_windows", "cmp_days",
            "cmp_windows", "cmp_rounds", "predict_days", "buffer_dates", "validate_days", "featurize_days",
            "wf_days", "wf_train_windows", "days_in_year", "wf_before_commit", "wf_before_limit_mb")
    return [x for k in keys if getattr(a, k) is not None for x in (f"--{k.replace('_', '-')}", str(getattr(a, k)))]


def run_stage(a) -> None:
    """Inside the stage's own process: run it, measure it, write ``<root>/stage-NAME.json``."""
    root = Path(a.root)
    fn = globals()[f"stage_{a.stage}"]
    if a.stage == "ddp_worker":
        fn(a, root)
        return
    load0 = os.getloadavg()
    c0 = time.process_time()
    with PeakMemory(interval=0.2) as mem:
        t0 = time.perf_counter()
        res = fn(a, root)
        wall = time.perf_counter() - t0
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    child = kids.ru_maxrss / 1024
    cpu_tree = time.process_time() - c0 + kids.ru_utime + kids.ru_stime
    peak = max(mem.peak_mb, _maxrss_mb())
    rows = res.pop("rows", None)
    doc = {"stage": a.stage, "wall_seconds": round(wall, 1), "cpu_seconds_main_process": round(time.process_time() - c0, 1),
           "peak_rss_mb": round(peak, 1), "peak_rss_mb_process_tree_sampled": round(mem.peak_mb, 1),
           "ru_maxrss_mb_self": round(_maxrss_mb(), 1), "ru_maxrss_mb_largest_child": round(child, 1),
           "rss_goal_met": peak <= GOAL_RSS_MB, "nice": os.getpriority(os.PRIO_PROCESS, 0),
           "load_average_before": [round(x, 2) for x in load0],
           "load_average_after": [round(x, 2) for x in os.getloadavg()], **res}
    doc["cpu_seconds_process_tree"] = round(cpu_tree, 1)  # main process + reaped children (workers, torchrun)
    doc["cpu_share_of_one_core"] = round(cpu_tree / wall, 2)  # how much CPU the shared machine gave the stage
    if rows:
        doc["throughput_rows_per_s"] = round(rows / wall, 1)
        doc["throughput_rows_per_cpu_s"] = round(rows / max(cpu_tree, 1e-9), 1)
    frac = res.get("fraction")
    if frac:
        f = frac["factor"]
        frac["full_year_wall_seconds_at_this_load"] = round(wall * f, 1)
        frac["full_year_cpu_seconds"] = round(cpu_tree * f, 1)
    (root / f"stage-{a.stage}.json").write_text(json.dumps(doc, indent=1, default=float))


def collect(a, root: Path, out: Path) -> dict:
    stages = {s: json.loads((root / f"stage-{s}.json").read_text()) for s in (*STAGES, *OPT_IN)
              if (root / f"stage-{s}.json").exists()}
    du = subprocess.run(["du", "-sm", *[str(root / "lake" / t) for t in ("raw", "truth", "validated", "features")
                                        if (root / "lake" / t).exists()]], capture_output=True, text=True).stdout
    doc = {"benchmark": "scale", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine(),
           "nice": os.getpriority(os.PRIO_PROCESS, 0), "load_average_1_5_15m_at_write": list(os.getloadavg()),
           "universe": {"symbols": a.symbols, "days": a.days, "stock_minutes": a.symbols * a.days * 390},
           "config": {k: getattr(a, k) for k in ("val_days", "holdout", "train_windows", "val_windows", "cmp_days",
                                                 "cmp_windows", "cmp_rounds", "predict_days", "buffer_dates",
                                                 "validate_days", "featurize_days")},
           "goals": {"peak_rss_mb_every_stage": GOAL_RSS_MB, "stream_over_memory_training_throughput": 0.9},
           "lake_mb": {line.split()[1].rsplit("/", 1)[-1]: int(line.split()[0]) for line in du.splitlines()},
           "stages": stages}
    old = json.loads(out.read_text()) if out.exists() else None
    if old and old.get("universe") != doc["universe"]:
        # a run on another lake (e.g. the walk-forward stage on fewer days) joins the earlier results:
        # its stages carry their own context, the file's top level stays the earlier run's
        context = {k: doc[k] for k in ("when", "machine", "nice", "load_average_1_5_15m_at_write", "universe",
                                       "config", "lake_mb")}
        doc = {**old, "stages": {**old.get("stages", {}), **{k: {**v, "run": context} for k, v in stages.items()}}}
    elif old:
        doc["stages"] = {**old.get("stages", {}), **stages}
    goal = [v for k, v in doc["stages"].items() if k not in OPT_IN]  # the opt-in stages measure code before a change
    if goal:
        doc["all_stages_within_rss_goal"] = all(s["peak_rss_mb"] <= GOAL_RSS_MB for s in goal)
    out.write_text(json.dumps(doc, indent=2, default=float) + "\n")
    return doc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="/work/bench-scale-data", help="lake + state (outside any git worktree)")
    ap.add_argument("--stage", default=None, help="run one stage in this process (the driver's subprocesses)")
    ap.add_argument("--only", default="", help="comma-separated stages to run (default: all not yet done)")
    ap.add_argument("--out", default=str(RESULTS / "scale.json"))
    ap.add_argument("--keep", action="store_true", help="keep the lake after the run")
    ap.add_argument("--symbols", type=int, default=1000)
    ap.add_argument("--days", type=int, default=252)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--val-days", type=int, default=3)
    ap.add_argument("--holdout", type=int, default=10)
    ap.add_argument("--train-windows", type=int, default=200_000)
    ap.add_argument("--val-windows", type=int, default=20_000)
    ap.add_argument("--cmp-days", type=int, default=8)
    ap.add_argument("--cmp-windows", type=int, default=40_000)
    ap.add_argument("--cmp-rounds", type=int, default=2)
    ap.add_argument("--predict-days", type=int, default=6)
    ap.add_argument("--buffer-dates", type=int, default=4)
    ap.add_argument("--validate-days", type=int, default=None, help="validate only the first N dates (a measured fraction)")
    ap.add_argument("--featurize-days", type=int, default=None, help="featurize only the first N dates (a measured fraction)")
    ap.add_argument("--threads", type=int, default=None, help="(ddp_worker) torch threads per process")
    ap.add_argument("--wf-days", default="30,60", help="(walkforward) comma-separated numbers of dates hfcast train runs on")
    ap.add_argument("--wf-train-windows", type=int, default=50_000, help="(walkforward) train.max_train_windows")
    ap.add_argument("--days-in-year", type=int, default=252, help="(walkforward) the size the figures extrapolate to")
    ap.add_argument("--wf-before-commit", default="b37e6ba", help="(walkforward_before) the code to compare with")
    ap.add_argument("--wf-before-limit-mb", type=float, default=12_000, help="(walkforward_before) kill it above this RSS")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if a.stage:
        run_stage(a)
        return 0
    root = Path(a.root)
    root.mkdir(parents=True, exist_ok=True)
    todo = [s for s in (a.only.split(",") if a.only else STAGES) if s]
    for s in todo:
        if (root / f"stage-{s}.json").exists():
            log.info("stage %s already done (%s)", s, root / f"stage-{s}.json")
            continue
        log.info("stage %s ...", s)
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--stage", s, "--root", str(root),
                        *_passthrough(a)], check=True)
        collect(a, root, Path(a.out))
        log.info("stage %s done: %s", s, json.loads((root / f"stage-{s}.json").read_text())["wall_seconds"])
    doc = collect(a, root, Path(a.out))
    if not a.keep:
        shutil.rmtree(root / "lake", ignore_errors=True)
        shutil.rmtree(root / "home", ignore_errors=True)
    print(json.dumps({k: {"wall_s": v["wall_seconds"], "peak_rss_mb": v["peak_rss_mb"]}
                      for k, v in doc["stages"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
