"""Batch inference: one prediction CSV per date, dense or sparse, parallel and resumable.

For each date: read that date's features, pack them into one float32 matrix and scale it ONCE
(windows are views over the scaled matrix, never a materialised [N, 30, F] copy), run the model
on batches of windows with the fastest runner available, merge the forecasts back onto every
(symbol, minute) row of the date, and write

    <out>/predictions/<model>/<version>/date=YYYY-MM-DD.csv
    <out>/predictions/<model>/<version>/date=YYYY-MM-DD.manifest.json

Both writes are atomic (see :mod:`hfcast.storage`) and the manifest is written after the CSV, so
a date is complete exactly when its manifest exists and agrees with the CSV's checksum. A rerun
skips such dates and redoes the others; a batch killed at any point therefore resumes without
partial files or duplicated rows. ``workers`` dates are in the model at once and one date more is
in flight (threads that share one loaded model and runner: onnxruntime and torch release the GIL
while they compute, so reading, windowing and CSV writing of one date overlap the model of
another - with one worker too); a failing date is reported with its reason and does not stop the
others.

Why threads and not processes (measured, bench/results/predict.json): with worker processes each
process paid its own start-up (interpreter, torch, onnxruntime, the bundle: seconds) and took
whole dates, so on 2 cores two processes were SLOWER than one process with two runner streams
(5 dates split 3:2 leave a core idle at the end). Threads share the runner's streams, which are
as many as the cores, so no core idles while a date is left.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import pandas as pd

from hfcast import runners, storage
from hfcast.config import Settings
from hfcast.contracts import INFO_COLUMNS, PRED_COLUMNS
from hfcast.csvout import prediction_csv
from hfcast.errors import UserError
from hfcast.export import export_onnx
from hfcast.integrity import cached_export
from hfcast.journal import killpoint
from hfcast.market import Market
from hfcast.market import resolve as resolve_market
from hfcast.quantize import cpu_model
from hfcast.registry import demoted_confidences, download_bundle, fetch_export, resolve
from hfcast.runners import (Int8Runner, StreamedRunner, choose_runner_kind, make_runner,
                            tensorrt_available, threads_per_worker)
from hfcast.sharding import shard_dates
from hfcast.storage import Lake

log = logging.getLogger(__name__)

MODES = ("dense", "sparse")
SPARSE_STRIDE = 10
BATCH = 512  # windows per runner call: onnxruntime on CPU is fastest around 256-1024
NO_GRAPH = "none"  # the runner of a forecaster that serves a baseline: no network, the post-step is all
CSV_FLOAT_FORMAT = "%.9g"


def parse_dates(spec: str | Iterable[str], available: list[str] | None = None) -> list[str]:
    """Dates from ``"2024-01-02..2024-01-31"``, ``"2024-01-02,2024-01-05"`` or a list.

    A range keeps the ``available`` dates inside it (all weekdays when ``available`` is None);
    explicitly listed dates are kept as given so that a missing one fails loudly later.
    """
    if not isinstance(spec, str):
        return sorted({pd.Timestamp(d).date().isoformat() for d in spec})
    spec = spec.strip()
    if ".." in spec:
        lo, hi = (pd.Timestamp(p.strip()).date().isoformat() for p in spec.split("..", 1))
        if lo > hi:
            raise ValueError(f"date range {spec!r} runs backwards")
        pool = available if available is not None else [d.date().isoformat() for d in pd.bdate_range(lo, hi)]
        return sorted(d for d in pool if lo <= d <= hi)
    return sorted({pd.Timestamp(p.strip()).date().isoformat() for p in spec.split(",") if p.strip()})


# --- one date ------------------------------------------------------------------------------------

def predict_frame(forecaster: Any, features: pd.DataFrame, mode: str = "dense", runner: Any = None,
                  batch_size: int = BATCH, model_slot: Any = None, market: Market | None = None
                  ) -> tuple[pd.DataFrame, dict[str, float]]:
    """Forecasts for every (symbol, minute) row of a features frame.

    Args:
        forecaster: a :class:`hfcast.models.base.Forecaster`.
        features: one or more dates of features (symbol, ts, the forecaster's feature columns).
        mode: ``dense`` predicts every minute with a full 30-minute window; ``sparse`` every 10th
            such minute, forward-filled within the symbol-day to the minutes in between.
        runner: an :mod:`hfcast.export` runner (``.run(windows_scaled) -> raw``); None = torch eager.
        model_slot: held while the model runs (a semaphore shared by the dates of a batch run:
            ``workers`` dates in the model at once, the others reading or writing meanwhile).
        market: the calendar whose trade dates bound a sparse forward fill and the windows'
            sessions (the settings'; None: XNYS, :func:`hfcast.market.default`).

    Returns:
        (frame with symbol, ts, PRED_COLUMNS, INFO_COLUMNS, filled; timings in seconds for window,
        wait (for a model slot) and model). INFO_COLUMNS are constant per model version, NaN on rows without a forecast.
    """
    from hfcast.features.windows import build_windows

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    t0 = time.perf_counter()
    wa = build_windows(features, forecaster.feature_names, stride=SPARSE_STRIDE if mode == "sparse" else 1,
                       label_cols=None, market=market)
    side = forecaster.side_inputs_arrays(wa)  # the baselines' inputs and the context, from the same windows
    scaled = dataclasses.replace(wa, X=np.ascontiguousarray(forecaster.scaler.transform(wa.X)), _view=None)
    t_built = time.perf_counter()
    with model_slot if model_slot is not None else contextlib.nullcontext():
        t1 = time.perf_counter()
        if forecaster.graph() is None:  # a baseline is served: the post-step is the whole forecast
            raw = np.empty((len(wa), 0), np.float32)
        else:
            raw = runners.run_windows(runner if runner is not None else forecaster.predict_raw, scaled.windows, len(scaled),
                              batch_size)
        t2 = time.perf_counter()
    pred = forecaster.postprocess(raw, side)
    out = wa.keys.copy()
    cols = {c: np.full(len(out), np.nan) for c in PRED_COLUMNS}
    for c in PRED_COLUMNS:
        cols[c][wa.ends] = pred[c]
    out = pd.concat([out, pd.DataFrame(cols)], axis=1)
    sampled = np.zeros(len(out), dtype=bool)
    sampled[wa.ends] = True
    if mode == "sparse":
        # forward-fill each sampled forecast to the following minutes of the same symbol-day
        day = resolve_market(market).trade_date(out["ts"])  # the symbol-day of the settings' calendar
        group = [out["symbol"].to_numpy(), day]
        has = pd.Series(np.where(sampled, 1.0, np.nan)).groupby(group).ffill().notna().to_numpy()
        out[list(PRED_COLUMNS)] = out[list(PRED_COLUMNS)].groupby(group).ffill()
        out["filled"] = has & ~sampled
    else:
        has = sampled
        out["filled"] = False
    for c, v in forecaster.info_columns(len(out)).items():
        out[c] = np.where(has, v, np.nan)
    out = out[["symbol", "ts", *PRED_COLUMNS, *INFO_COLUMNS, "filled"]]
    t3 = time.perf_counter()
    return out, {"window": (t_built - t0) + (t3 - t2), "wait": t1 - t_built, "model": t2 - t1}


def to_csv_bytes(frame: pd.DataFrame, model_name: str, model_version: str, mode: str) -> bytes:
    """The CSV body for one date: fixed column order and float format (byte-stable reruns).

    Written column by column (:mod:`hfcast.csvout`, the same bytes ~4x faster); the pandas code
    below is the reference and the fallback for values that path does not reproduce.
    """
    float_cols = (*PRED_COLUMNS, *INFO_COLUMNS)
    body = prediction_csv(frame, float_cols, {"model_name": model_name, "model_version": str(model_version),
                                              "mode": mode}, CSV_FLOAT_FORMAT)
    if body is not None:
        return body
    out = frame[["symbol", "ts", *float_cols, "filled"]].copy()
    out["ts"] = pd.DatetimeIndex(out["ts"]).strftime("%Y-%m-%dT%H:%M:%SZ")
    out.insert(len(out.columns) - 1, "model_name", model_name)
    out.insert(len(out.columns) - 1, "model_version", str(model_version))
    out.insert(len(out.columns) - 1, "mode", mode)
    buf = io.StringIO()
    out.to_csv(buf, index=False, float_format=CSV_FLOAT_FORMAT, lineterminator="\n")
    return buf.getvalue().encode()


@dataclass
class DateResult:
    """What happened to one date."""

    date: str
    status: str  # done | skipped | failed
    rows: int = 0
    symbols: int = 0
    predicted: int = 0
    seconds: float = 0.0
    reason: str = ""
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Job:
    """Everything a date needs (the model is loaded once per process and shared by the date threads)."""

    bundle_dir: str
    lake_url: str
    out_url: str
    storage_options: dict[str, Any] | None
    model_name: str
    model_version: str
    mode: str
    runner: str  # torch | onnxruntime | ... (see hfcast.export); "" = torch eager in-process
    onnx_path: str | None
    force: bool = False
    threads: int = 1  # intra-op threads (torch), cores // workers
    model_slots: Any = field(default=None, compare=False)  # a Semaphore(workers): dates in the model at once
    market: Market | None = field(default=None, compare=False)  # the calendar of the sparse fill (the settings')
    conf_demoted: dict[str, str] = field(default_factory=dict)  # confidences live monitoring demoted (registry tag)


def _manifest_url(csv_url: str) -> str:
    return csv_url[: -len(".csv")] + ".manifest.json"


def _input_fingerprint(lake: Lake, date: str) -> str:
    return hashlib.sha256(storage.read_bytes(lake.partition("features", date), lake.storage_options)).hexdigest()


def is_complete(csv_url: str, storage_options: dict | None, expect: dict[str, Any]) -> bool:
    """True when the date's manifest exists, agrees with ``expect`` and with the CSV's checksum."""
    try:
        manifest = json.loads(storage.read_text(_manifest_url(csv_url), storage_options))
        body = storage.read_bytes(csv_url, storage_options)
    except (FileNotFoundError, storage.StorageError, json.JSONDecodeError):
        return False
    if any(manifest.get(k) != v for k, v in expect.items()):
        return False
    return manifest.get("sha256") == hashlib.sha256(body).hexdigest() and manifest.get("bytes") == len(body)


_WORKER: dict[str, Any] = {}
_WORKER_LOCK = threading.Lock()  # dates of one run load the model once, whichever thread comes first


def _worker_model(job: Job) -> tuple[Any, Any]:
    """The forecaster and its runner, loaded once per process (the date threads share them)."""
    key = (job.bundle_dir, job.runner, job.onnx_path)
    with _WORKER_LOCK:
        if _WORKER.get("key") != key:
            forecaster = _load_forecaster(job)
            _WORKER.update(key=key, forecaster=forecaster, runner=_load_runner(job, forecaster))
        return _WORKER["forecaster"], _WORKER["runner"]


def _load_forecaster(job: Job) -> Any:
    import torch

    from hfcast.forecaster import Forecaster

    torch.set_num_threads(max(1, job.threads))
    forecaster = Forecaster.load(job.bundle_dir)
    forecaster.demote_confidence(job.conf_demoted)
    return forecaster


def _load_runner(job: Job, forecaster: Any) -> Any:
    """None = the forecaster's own torch eager path (or, with no network, no graph at all)."""
    if job.runner == NO_GRAPH:
        return None
    if job.runner == "onnxruntime":
        return StreamedRunner(job.onnx_path)  # one stream per core, shared by the date threads
    if job.runner == "onnxruntime-int8":  # job.onnx_path is the int8 model (see choose_runner)
        return Int8Runner(job.onnx_path)
    if job.runner and job.runner != "torch":
        return make_runner(job.runner, forecaster, onnx_path=job.onnx_path)
    return None


def predict_date(job: Job, date: str) -> DateResult:
    """Predict one date and write its CSV + manifest; never raises (failures are results)."""
    t0 = time.perf_counter()
    lake = Lake(job.lake_url, job.storage_options)
    out = Lake(job.out_url, job.storage_options)
    csv_url = out.predictions(job.model_name, job.model_version, date)
    try:
        fingerprint = _input_fingerprint(lake, date)
        expect = {"model_version": job.model_version, "mode": job.mode, "input_sha256": fingerprint}
        if not job.force and is_complete(csv_url, job.storage_options, expect):
            return DateResult(date, "skipped", seconds=time.perf_counter() - t0)
        forecaster, runner = _worker_model(job)
        t_read = time.perf_counter()
        features = lake.read("features", date, ["symbol", "ts", *forecaster.feature_names])
        if features.empty:
            raise ValueError(f"features partition for {date} is empty")
        t_read = time.perf_counter() - t_read
        frame, timings = predict_frame(forecaster, features, job.mode, runner, model_slot=job.model_slots,
                                       market=job.market)
        t_write = time.perf_counter()
        body = to_csv_bytes(frame, job.model_name, job.model_version, job.mode)
        storage.write_bytes(csv_url, body, job.storage_options)
        killpoint("predict-csv")  # a test hook: the CSV written, its manifest not (hfcast.journal)
        manifest = {
            **expect, "date": date, "model_name": job.model_name, "rows": len(frame),
            "symbols": int(frame["symbol"].nunique()),
            "predicted": int(frame["ret_60m_pred"].notna().sum()),
            "sha256": hashlib.sha256(body).hexdigest(), "bytes": len(body),
            "run_seconds": round(time.perf_counter() - t0, 3),
            "written_at": pd.Timestamp.now(tz="UTC").isoformat(),
        }
        storage.write_text(_manifest_url(csv_url), json.dumps(manifest, indent=1), job.storage_options)
        timings.update(read=t_read, write=time.perf_counter() - t_write)
        return DateResult(date, "done", len(frame), manifest["symbols"], manifest["predicted"],
                          time.perf_counter() - t0, timings=timings)
    except FileNotFoundError as exc:
        return DateResult(date, "failed", seconds=time.perf_counter() - t0,
                          reason=f"missing input: {exc.filename or exc}")
    except Exception as exc:  # a corrupt date must not stop the others
        return DateResult(date, "failed", seconds=time.perf_counter() - t0,
                          reason=storage.redact(f"{type(exc).__name__}: {exc}"))


# --- many dates ----------------------------------------------------------------------------------

@dataclass
class PredictSummary:
    results: list[DateResult]
    seconds: float
    workers: int
    model_name: str
    model_version: str
    mode: str

    def _with(self, status: str) -> list[DateResult]:
        return [r for r in self.results if r.status == status]

    @property
    def failed(self) -> list[DateResult]:
        return self._with("failed")

    @property
    def rows(self) -> int:
        return sum(r.rows for r in self.results)

    @property
    def throughput(self) -> float:
        """Stock-minutes written per second of wall time (end to end)."""
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def timing_split(self) -> dict[str, float]:
        """Seconds spent in read / window / wait (for a model slot) / model / write, summed over the
        dates done (dates overlap, so the sum can exceed the wall time)."""
        split: dict[str, float] = {}
        for r in self._with("done"):
            for k, v in r.timings.items():
                split[k] = split.get(k, 0.0) + v
        return split

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": f"{self.model_name}/{self.model_version}", "mode": self.mode, "workers": self.workers,
            "done": len(self._with("done")), "skipped": len(self._with("skipped")), "failed": len(self.failed),
            "failed_dates": {r.date: r.reason for r in self.failed}, "rows": self.rows,
            "seconds": round(self.seconds, 3), "rows_per_second": round(self.throughput, 1),
            "timing_split": {k: round(v, 3) for k, v in self.timing_split().items()},
        }


def prepare_bundle(settings: Settings, model_ref: str | None, bundle_dir: str | None) -> tuple[str, str, str]:
    """A local bundle folder plus (model name, version) from a registry ref or a local folder."""
    from hfcast.forecaster import Forecaster

    if bundle_dir:
        meta = Forecaster.load(bundle_dir).meta
        return bundle_dir, str(meta.get("model_name", "local")), str(meta.get("model_version", "0"))

    mv = resolve(settings, model_ref or f"{settings.model_name}@champion")  # pin the version once
    path = download_bundle(settings, f"{mv.name}/{mv.version}")
    fetch_export(settings, mv, path)  # its stored export, verified, where choose_runner looks (else exported here)
    return str(path), str(mv.name), str(mv.version)


def _check_dates_have_features(dates: list[str], available: list[str], lake_url: str) -> None:
    missing = [d for d in dates if d not in set(available)]
    if not missing:
        return
    have = (f"{len(available)} dates, {available[0]}..{available[-1]}" if len(available) > 3
            else ", ".join(available) or "none")
    raise UserError(f"no features for {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} in the lake "
                    f"{lake_url} (dates with features: {have})",
                    f"run `hfcast featurize --dates {missing[0]}` once raw data for that date is ingested "
                    f"(`hfcast ingest` / `hfcast synth`), or pick dates that have features")


def choose_runner(bundle_dir: str, runner: str, lake: Lake | None = None) -> tuple[str, str | None]:
    """Resolve ``auto`` to a runner kind and export ONNX once (not once per worker) when needed.

    On CPU, ``auto`` takes the int8 model when its quality guard passed (:mod:`hfcast.quantize`,
    computed once per bundle from ``lake``'s validation span).
    """
    from hfcast.forecaster import Forecaster

    if Forecaster.load(bundle_dir).graph() is None:
        return NO_GRAPH, None  # a baseline is served: nothing to export or run
    auto = runner == "auto"
    if runner == "auto":
        import torch

        runner = choose_runner_kind(torch.cuda.is_available(), tensorrt_available())
    onnx_path = None
    if runner in ("onnxruntime", "onnxruntime-int8", "tensorrt"):
        # once per bundle checksum: changed weights get a new export, a changed export is refused
        onnx_path = str(cached_export(bundle_dir, "model.onnx", lambda p: export_onnx(Forecaster.load(bundle_dir), p)))
    if runner in ("onnxruntime", "onnxruntime-int8"):  # auto takes int8 only when its guard passed
        runner, onnx_path = cpu_model(bundle_dir, runner, onnx_path, lake, auto=auto)
    return runner, onnx_path


def run_predict(settings: Settings, dates: str | list[str], model_ref: str | None = None, bundle_dir: str | None = None,
                mode: str = "dense", workers: int = 1, out: str | None = None, force: bool = False,
                runner: str = "auto", progress: bool = True) -> PredictSummary:
    """Predict every date in ``dates`` and write the CSVs (the function behind ``hfcast predict``).

    Args:
        settings: :class:`hfcast.config.Settings` (lake, registry, S3 credentials).
        dates: ``"A..B"``, ``"A,B"`` or a list; a range keeps the dates that have features.
        model_ref: registry reference (``hfcast@champion``, ``hfcast/3``); ignored with bundle_dir.
        bundle_dir: a local forecaster bundle instead of the registry.
        mode: ``dense`` or ``sparse``.
        workers: dates predicted at once (threads sharing one model; torch gets ``cores // workers``
            intra-op threads, onnxruntime one stream per core shared by all).
        out: output root URL (default: the lake).
        force: redo dates even when complete.
        runner: ``auto``, ``onnxruntime``, ``onnxruntime-int8``, ``torch``, ``torch-compiled``, ``tensorrt``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    lake = Lake.from_settings(settings)
    available = lake.dates("features")
    date_list = parse_dates(dates, available)
    _check_dates_have_features(date_list, available, lake.url)  # before any model is loaded or exported
    if not date_list:
        raise ValueError(f"no dates to predict in {dates!r} (the lake has features for {len(lake.dates('features'))} dates)")
    local_bundle, name, version = prepare_bundle(settings, model_ref, bundle_dir)
    runner_kind, onnx_path = choose_runner(local_bundle, runner, lake)
    workers = max(1, min(workers, len(date_list)))

    # one S3 configuration serves the lake and an s3:// --out alike (the same client, hfcast.config)
    options = (settings.storage_options_for(out) or None) if out and storage.is_remote(out) else lake.storage_options
    job = Job(local_bundle, lake.url, (out or settings.lake_url).rstrip("/"), options, name, version,
              mode, runner_kind, onnx_path, force, threads=threads_per_worker(workers),
              model_slots=threading.Semaphore(workers), market=settings.market,
              conf_demoted={} if bundle_dir else demoted_confidences(resolve(settings, f"{name}/{version}").tags))
    log.info("predicting %d date(s) with %s/%s (%s, %s runner, %d worker(s))", len(date_list), name, version,
             mode, runner_kind, workers)
    t0 = time.perf_counter()
    results: list[DateResult] = []
    with _progress(progress, len(date_list)) as advance, \
            ThreadPoolExecutor(min(workers + 1, len(date_list)), thread_name_prefix="predict") as pool:
        # one date more than ``workers`` in flight: while ``workers`` dates are in the model, the
        # next one is read and windowed and the last one written (the slots keep the model at
        # ``workers`` dates, so memory stays at workers + 1 dates)
        futures = {pool.submit(predict_date, job, d): d for d in date_list}
        for fut in as_completed(futures):
            results.append(fut.result())  # predict_date turns every failure into a result
            advance(results[-1])
    results.sort(key=lambda r: r.date)
    for r in results:
        if r.status == "failed":
            log.error("date %s failed: %s", r.date, r.reason)
    return PredictSummary(results, time.perf_counter() - t0, workers, name, version, mode)


class _progress:
    """A rich progress bar over dates (a no-op when disabled)."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total = enabled, total

    def __enter__(self):
        if not self.enabled:
            return lambda res: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._p = Progress(TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                           TextColumn("{task.description}"), transient=False)
        self._p.start()
        task = self._p.add_task("", total=self.total)

        def advance(res: DateResult) -> None:
            self._p.update(task, advance=1, description=f"{res.date} {res.status}")

        return advance

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._p.stop()



@dataclass(frozen=True)
class BatchPlan:
    """A batch run's dates, in shards (one pod each), and the model version pinned for all of them."""

    model_ref: str                # NAME/VERSION, resolved once: the champion may move during the run
    requested: str                # the reference as given (an alias, e.g. hfcast@champion)
    dates: list[str]
    shards: list[str]             # "D1,D2,...", one per pod

    def metadata(self) -> dict[str, Any]:
        return {"model_ref": self.model_ref, "requested": self.requested, "dates": list(self.dates),
                "shards": list(self.shards)}


def plan_batch(settings: Settings, dates: str, model_ref: str = "hfcast@champion", parallelism: int = 8,
               max_dates_per_pod: int = 5) -> BatchPlan:
    """The batch pipeline's plan: ``dates`` ('A..B' = lake dates with features in the range, or 'D1,D2')
    in shards (:func:`hfcast.sharding.shard_dates`), and ``model_ref`` resolved to ``NAME/VERSION``."""
    lake = Lake.from_settings(settings)
    todo = parse_dates(dates, lake.dates("features"))
    if not todo:
        raise ValueError(f"no dates with features in {dates!r} under {lake.url}")
    mv = resolve(settings, model_ref)
    return BatchPlan(f"{mv.name}/{mv.version}", model_ref, list(todo),
                     [",".join(shard) for shard in shard_dates(todo, parallelism, max_dates_per_pod)])
