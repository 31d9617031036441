"""MLflow tracking and model registry for hfcast: log runs, register bundles, resolve and load them.

Why it looks like this:

* The model artifact is the Forecaster bundle FOLDER (``model.json``, ``weights.safetensors``,
  ``scaler.json``, ``calibration.json``) logged under ``model/`` of its run, as an MLflow pyfunc
  model (:mod:`hfcast.pyfunc`: a small ``PythonModel`` whose ``load_context`` rebuilds the bundle);
  the model version's source is ``runs:/<run_id>/model``. No pickle: anything that loads the
  bundle needs only hfcast and safetensors. This module never looks inside the bundle.
* Aliases, not stages: ``challenger`` on registration, ``champion`` only through the gate
  (:mod:`hfcast.gate`), ``previous-champion`` so a rollback is one command.
* Every run records its walk-forward test spans (tag + ``eval/scores.json``) so that the gate can
  prove two models were scored on the same spans before comparing them.
* Embedded default: a sqlite file under ``settings.home`` and artifacts under
  ``settings.home/mlartifacts`` (absolute: MLflow puts a relative artifact location in the current
  directory of whichever process creates the experiment); an ``http(s)`` tracking URI leaves
  artifacts to the server.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from hfcast import integrity, provenance
from hfcast.config import Settings
from hfcast.contracts import BUNDLE_FILES
from hfcast.errors import UserError, explain
from hfcast.gate import config_from_settings

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"
SCORES_ARTIFACT = "eval/scores.json"
PICKLE_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".joblib", ".ckpt")  # torch.save is pickle
CHALLENGER, CHAMPION, PREVIOUS = "challenger", "champion", "previous-champion"
SPANS_TAG, SPANS_SHA_TAG = "hfcast.test_spans", "hfcast.test_spans_sha"
PYFUNC_TAG = "hfcast.mlflow_model_uri"  # the run's MLflow (pyfunc) model; registered versions point at it
PYFUNC_ID_TAG = "hfcast.mlflow_model_id"  # its LoggedModel id (``m-...``), which a version links to
#: MLflow 3 opens an experiment in its GenAI view unless told it holds classic model training
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


class RegistryError(UserError, LookupError):
    """A model, version, alias or artifact that the caller named does not exist or is unusable."""


@dataclass
class Tracking:
    """An open connection to the tracking server: the client, its URI and the hfcast experiment."""

    client: Any  # mlflow.MlflowClient
    uri: str
    model_name: str
    experiment_name: str
    home: Path
    _experiment_id: str | None = None

    @property
    def experiment_id(self) -> str:
        """The experiment of training runs, created on first use (registry-only calls skip it).

        A local store gets an ABSOLUTE artifact location under ``<home>/mlartifacts`` (else MLflow
        writes ``./mlruns`` in the current directory); a server decides its own.
        """
        if self._experiment_id is None:
            exp = self.client.get_experiment_by_name(self.experiment_name)
            if exp is None:
                location = (self.home / "mlartifacts").resolve().as_uri() if _is_local(self.uri) else None
                self._experiment_id = self.client.create_experiment(self.experiment_name, artifact_location=location,
                                                                    tags=dict([EXPERIMENT_KIND]))
            else:
                self._experiment_id = exp.experiment_id
                if exp.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:
                    self.client.set_experiment_tag(self._experiment_id, *EXPERIMENT_KIND)
        return self._experiment_id


def tracking_uri(settings: Settings) -> str:
    """The tracking URI, with the sqlite file's folder created (sqlite will not create it)."""
    uri = settings.mlflow_uri
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return uri


def _is_local(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


@contextmanager
def tracking(settings: Settings) -> Iterator[Tracking]:
    """Point MLflow at ``settings.mlflow_uri``; ``.experiment_id`` makes sure the experiment exists.

    The global tracking/registry URIs are set for the duration (so ``mlflow.log_*`` calls by the
    caller land in the same place) and restored afterwards.
    """
    import mlflow
    from mlflow import MlflowClient

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = tracking_uri(settings)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = str(settings.param("registry.experiment", settings.model_name))
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    # restore MLflow's globals exactly as they were, "unset" included (None): re-setting the
    # *derived* defaults would pin a stale URI for later clients, and mlflow.set_*_uri also
    # writes MLFLOW_*_URI into os.environ, which a later get_settings() would read as a setting
    prev_t, prev_r = tracking_utils._tracking_uri, registry_utils._registry_uri
    prev_env = {k: os.environ.get(k) for k in _URI_ENV}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield Tracking(client, uri, settings.model_name, name, settings.home)
    finally:
        mlflow.set_tracking_uri(prev_t)
        mlflow.set_registry_uri(prev_r)
        for key, value in prev_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


_URI_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def check_bundle(bundle_dir: str | os.PathLike) -> Path:
    """Refuse a bundle folder with missing files or anything pickle-based, before it is logged.

    ``calibration.json`` may be absent (a Forecaster without calibrator falls back to Gaussian
    confidences); the other bundle files are required.
    """
    path = Path(bundle_dir)
    if not path.is_dir():
        raise RegistryError(f"model bundle folder {path} does not exist")
    missing = [f for f in ("model.json", "scaler.json") if not (path / f).is_file()]
    if missing:
        raise RegistryError(f"model bundle {path} lacks {missing} (a bundle holds {list(BUNDLE_FILES)} and "
                            "members/<arch>/ for its networks)")
    if not (path / "calibration.json").is_file():
        log.warning("bundle %s has no calibration.json: confidences will be uncalibrated", path)
    _refuse_pickles(path)
    return path


def _refuse_pickles(folder: Path) -> None:
    bad = [str(p.relative_to(folder)) for p in folder.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES]
    if bad:
        raise RegistryError(f"{folder} holds pickle-based files {bad}: hfcast never logs pickles")


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _number(v: Any) -> float | None:
    """A finite float, or None (NaN/inf/strings stay in scores.json only, never as MLflow metrics)."""
    if v is None or isinstance(v, (str, bytes, bool)):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _json_safe(obj: Any) -> Any:
    """JSON without NaN (written as null, which the gate reads as "no score")."""
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if obj is None or isinstance(obj, (str, bool)):
        return obj
    if isinstance(obj, int):
        return obj
    num = _number(obj)
    return num if num is not None or hasattr(obj, "__float__") else str(obj)


def spans_sha(spans: Sequence[Sequence[str]]) -> str:
    """A short digest of the test spans, to compare two runs' spans cheaply."""
    text = json.dumps([[str(a), str(b)] for a, b in spans])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _metrics(row: Mapping[str, Any], prefix: str, step: int, now: int, skip: Sequence[str] = ()) -> list:
    """The finite numeric values of one dict as MLflow metrics ``prefix + key`` at ``step``."""
    from mlflow.entities import Metric

    return [Metric(prefix + str(k), v, now, step) for k, x in row.items()
            if k not in skip and (v := _number(x)) is not None]


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


@dataclass
class TrainingRecord:
    """Everything one training run logs to MLflow (what :func:`log_training_run` records).

    Why one object: the run has many parts (bundle, scores at three levels, lineage, plots) and a
    call with thirteen keyword arguments was hard to read and easy to get wrong.
    """

    bundle_dir: str | os.PathLike  # the saved Forecaster bundle folder; logged as-is under ``model/``
    arch: str
    params: Mapping[str, Any]
    fold_metrics: Sequence[Mapping[str, Any]]  # one dict per fold, logged as ``fold/<key>`` (step = fold)
    aggregate_metrics: Mapping[str, Any]  # the scores the gate compares (``vol_qlike``, ``ret_ic``)
    test_spans: Sequence[tuple[str, str]]  # ``[(first, last), ...]`` of the test folds the scores cover
    feature_names: Sequence[str]
    epoch_metrics: Sequence[Mapping[str, Any]] | None = None  # one dict per epoch (optional ``fold``)
    dataset_version: str | None = None
    plots: Sequence[str | os.PathLike] = ()
    tags: Mapping[str, str] | None = None
    baseline_metrics: Mapping[str, Mapping[str, Any]] | None = None  # same spans: ``baseline/<name>/<metric>``
    run_name: str | None = None
    run_id: str | None = None  # a run opened when training started (:func:`training_runs`): filled, not created
    dataset: Mapping[str, Any] | None = None  # lineage: ``uri``, ``first``, ``last``, ``rows`` (see dataset_input)
    reports: Sequence[str | os.PathLike] = ()  # HTML evaluation reports, logged under ``eval/``
    extra_scores: Mapping[str, Any] | None = None  # more of eval/scores.json: the choices, candidates, validation
    input_example: Any = None  # a few real unscaled windows [n, 30, F] the run saw (hfcast.pyfunc.example_windows)


def _record_metrics(rec: TrainingRecord, now: int) -> list:
    """The run's metrics: the pooled test scores the gate compares, nothing per fold or per baseline.

    Why so few: a run that repeats every fold's and every baseline's scores as its own metrics
    (189 keys on a demo run) buries the numbers that decide. Per-fold scores and epoch curves
    live on the nested fold runs (:class:`LiveTraining`), the baselines' and the folds' scores in
    ``eval/scores.json``. A run opened without fold runs (``rec.run_id`` None) keeps its epoch
    curves (``epoch/<key>``, step = epoch; ``fold<i>/epoch/<key>`` when several folds), which
    would otherwise be lost. Non-numeric values go to scores.json only.
    """
    metrics = []
    if rec.run_id is None:
        for i, row in enumerate(rec.epoch_metrics or []):
            prefix = f"fold{int(row['fold'])}/epoch/" if "fold" in row else "epoch/"
            metrics += _metrics(row, prefix, int(row.get("epoch", i)), now, skip=("epoch", "fold"))
    return metrics + _metrics(rec.aggregate_metrics, "", 0, now)


def _record_params_tags(settings: Settings, rec: TrainingRecord, spans: list[list[str]]) -> tuple[list, dict]:
    """MLflow params (flattened) and run tags (lineage, the test spans and their digest)."""
    from mlflow.entities import Param

    flat = {**_flatten(rec.params), "arch": rec.arch, "n_features": len(rec.feature_names),
            "dataset_version": rec.dataset_version or "unknown", "n_test_spans": len(spans)}
    spans_json = json.dumps(spans)
    run_tags = {"arch": rec.arch, "dataset_version": rec.dataset_version or "unknown", SPANS_SHA_TAG: spans_sha(spans),
                "hfcast.model_name": settings.model_name, **provenance.run_tags(), **(rec.tags or {})}
    if len(spans_json) <= 8000:
        run_tags[SPANS_TAG] = spans_json
    return [Param(k, str(v)[:6000]) for k, v in flat.items()], run_tags


def _write_run(t: "Tracking", run_id: str, rec: TrainingRecord, params: list, metrics: list,
               scores: Mapping[str, Any], bundle: Path, plot_paths: Sequence[Path]) -> None:
    for chunk in _chunks(params, 100):
        t.client.log_batch(run_id, params=chunk)
    for chunk in _chunks(metrics, 1000):
        t.client.log_batch(run_id, metrics=chunk)
    with tempfile.TemporaryDirectory(prefix="hfcast-run-") as tmp:
        (Path(tmp) / "features.json").write_text(json.dumps({"features": list(rec.feature_names)}, indent=1))
        (Path(tmp) / "scores.json").write_text(json.dumps(_json_safe(scores), indent=1))
        t.client.log_artifact(run_id, str(Path(tmp) / "features.json"))
        t.client.log_artifact(run_id, str(Path(tmp) / "scores.json"), "eval")
    t.client.log_artifacts(run_id, str(bundle), MODEL_ARTIFACT)
    for p in plot_paths:
        t.client.log_artifact(run_id, str(p), "plots")
    for p in rec.reports:
        t.client.log_artifact(run_id, str(p), "eval")
    if rec.dataset:
        t.client.log_inputs(run_id, [dataset_input(rec.dataset, rec.dataset_version)])
    _log_mlflow_model(t, run_id, bundle, rec)


def dataset_input(info: Mapping[str, Any], version: str | None, context: str = "training") -> Any:
    """The training data as an MLflow dataset input: name = date range, digest = DVC hash, source = lake.

    The profile carries the row count and dates, so the UI's Datasets panel shows what trained the
    model without opening the lake.
    """
    from mlflow.entities import Dataset, DatasetInput, InputTag

    uri = str(info.get("uri", ""))
    name = f"features {info.get('first', '?')}..{info.get('last', '?')}"
    digest = (version or hashlib.sha256(json.dumps(_json_safe(dict(info)), sort_keys=True).encode()).hexdigest())[:36]
    source_type = uri.split("://", 1)[0] if "://" in uri else "local"
    profile = {k: info[k] for k in ("rows", "first", "last", "dates") if k in info}
    ds = Dataset(name=name, digest=digest, source_type=source_type, source=json.dumps({"uri": uri}),
                 profile=json.dumps(_json_safe({**profile, "dvc_hash": version or "unknown"})))
    return DatasetInput(ds, [InputTag("mlflow.data.context", context)])


def _log_mlflow_model(t: "Tracking", run_id: str, bundle: Path, rec: TrainingRecord) -> None:
    """Log the bundle as an MLflow pyfunc model too (``hfcast.pyfunc``) and tag the run with its id.

    The logged model carries the run's code provenance and what it serves (its page in the UI
    names the commit without opening the run); :func:`register` links its versions to it.
    """
    import mlflow

    from hfcast.pyfunc import log_pyfunc

    served = {k: v for k, v in (rec.tags or {}).items() if k in ("hfcast.kind", "hfcast.vol_kind", "hfcast.return")}
    with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
        info = log_pyfunc(bundle, rec.input_example, tags={**provenance.run_tags(), **served},
                          params={"arch": rec.arch, "n_features": len(rec.feature_names),
                                  "dataset_version": rec.dataset_version or "unknown"})
    t.client.set_tag(run_id, PYFUNC_TAG, info.model_uri)
    t.client.set_tag(run_id, PYFUNC_ID_TAG, info.model_id)


def log_training_run(settings: Settings, rec: TrainingRecord) -> str:
    """Log one training run: params, per-epoch/per-fold/aggregate metrics, lineage, bundle, plots.

    ``eval/scores.json`` holds the scores with the test spans they cover, which the gate reads.

    Returns:
        The MLflow run id.
    """
    bundle = check_bundle(rec.bundle_dir)
    if not rec.dataset_version:
        log.info("run of %s logged without a dataset version (no DVC lock for the features)", rec.arch)
    spans = [[str(a), str(b)] for a, b in rec.test_spans]
    if not spans:
        raise ValueError("test_spans is empty: the gate needs to know which dates the scores cover")
    plot_paths = [Path(p) for p in rec.plots]
    for p in plot_paths:
        if not p.is_file():
            raise RegistryError(f"plot {p} does not exist")
    metrics = _record_metrics(rec, int(time.time() * 1000))
    params, run_tags = _record_params_tags(settings, rec, spans)
    run_tags.update(integrity.registry_tags(bundle))  # checked again at registration and every load
    scores = {"test_spans": spans, "test_spans_sha": spans_sha(spans), "model": rec.aggregate_metrics,
              "baselines": rec.baseline_metrics or {}, "folds": list(rec.fold_metrics), **dict(rec.extra_scores or {})}
    with tracking(settings) as t:
        if rec.run_id:
            run_id = rec.run_id
            for k, v in {**run_tags, **({"mlflow.runName": rec.run_name} if rec.run_name else {})}.items():
                t.client.set_tag(run_id, k, v)
        else:
            run_id = t.client.create_run(t.experiment_id, run_name=rec.run_name, tags=run_tags).info.run_id
        try:
            _write_run(t, run_id, rec, params, metrics, scores, bundle, plot_paths)
        except BaseException:
            t.client.set_terminated(run_id, "FAILED")
            raise
        t.client.set_terminated(run_id, "FINISHED")
    log.info("logged run %s (%s, %d metrics, dataset %s)", run_id, rec.arch, len(metrics), rec.dataset_version)
    return run_id


class LiveTraining:
    """MLflow runs opened while training runs: a parent run per architecture, a nested run per fold.

    Why: a run logged after training shows a 1-second duration and no curves; users expect to
    watch ``train_loss``/``val_loss`` grow step by step (step = epoch) while the model trains.
    Pass :meth:`on_epoch` to the trainer (``run_walkforward(on_epoch=...)``); the parent run is then
    filled by :func:`log_training_run` (``TrainingRecord.run_id``).
    """

    def __init__(self, t: Tracking, tags: Mapping[str, str] | None = None, title: str = "", root: str | None = None,
                 dataset_uri: str = ""):
        self.t, self.tags, self.title = t, {**provenance.run_tags(), **(tags or {})}, title
        self.root = root  # one parent run for every architecture's folds (the forecaster's), else one per arch
        self.dataset_uri = dataset_uri  # the features table the folds read (their dataset inputs' source)
        self.parents: dict[str, str] = {}
        self.children: dict[tuple[str, int], str] = {}

    def parent(self, arch: str) -> str:
        """The architecture's parent run, opened on first use (named until training ends)."""
        if arch not in self.parents:
            name = f"{arch} {self.title}".strip() if self.title else f"{arch} (training)"
            run = self.t.client.create_run(self.t.experiment_id, run_name=name,
                                           tags={"arch": arch, "hfcast.model_name": self.t.model_name, **self.tags})
            self.parents[arch] = run.info.run_id
        return self.parents[arch]

    def fold_run(self, arch: str, fold: Any) -> str:
        """The nested run of one fold (earlier folds of the architecture are closed when it opens)."""
        key = (arch, int(fold.index))
        if key not in self.children:
            self._close(arch)
            name = f"{arch} fold {fold.index} test {fold.test[0]}..{fold.test[-1]}"
            tags = {**self.tags, "mlflow.parentRunId": self.parent(self.root or arch), "arch": arch,
                    "fold": str(fold.index)}
            run = self.t.client.create_run(self.t.experiment_id, run_name=name, tags=tags)
            self.children[key] = rid = run.info.run_id
            spans = {"train": fold.train, "val": fold.val, "test": fold.test}
            self.t.client.log_batch(rid, params=_span_params(spans))
            self.t.client.log_inputs(rid, fold_dataset_inputs(self.dataset_uri, spans))
        return self.children[key]

    def on_epoch(self, arch: str, fold: Any, rec: Mapping[str, Any]) -> None:
        """Stream one epoch's record to the fold's run (step = epoch); never fails the training."""
        try:
            now = int(time.time() * 1000)
            metrics = _metrics(rec, "", int(rec.get("epoch", 0)), now, skip=("epoch", "fold"))
            self.t.client.log_batch(self.fold_run(arch, fold), metrics=metrics)
        except Exception as exc:  # the tracking server is down: keep training, say so once per epoch
            log.warning("could not stream epoch metrics of %s to MLflow: %s", arch, exc)

    def fold_scores(self, arch: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Each fold's test scores on its nested run (step 0)."""
        now = int(time.time() * 1000)
        for row in rows:
            rid = self.children.get((arch, int(row.get("fold", -1))))
            if rid:
                self.t.client.log_batch(rid, metrics=_metrics(row, "test_", 0, now, skip=("fold",)))

    def _close(self, arch: str, status: str = "FINISHED") -> None:
        for (a, _), rid in list(self.children.items()):
            if a == arch and self.t.client.get_run(rid).info.status == "RUNNING":
                self.t.client.set_terminated(rid, status)

    def close(self, status: str = "FINISHED") -> None:
        """End every fold run, and the parents that were never filled (a failure)."""
        for arch in {a for a, _ in self.children}:
            self._close(arch, status)
        if status != "FINISHED":
            for rid in self.parents.values():
                self.t.client.set_terminated(rid, status)


def fold_dataset_inputs(uri: str, spans: Mapping[str, Sequence[str]]) -> list:
    """One MLflow dataset input per non-empty span of a fold (context ``training`` / ``validation``
    / ``test``), so a fold run's Datasets panel shows which dates it trained, stopped and was
    scored on. The digest is that of the span (the DVC hash of the whole features table goes on
    the parent run)."""
    contexts = {"train": "training", "val": "validation", "test": "test"}
    return [dataset_input({"uri": uri, "first": str(days[0]), "last": str(days[-1]), "dates": len(days)}, None,
                          contexts.get(k, k)) for k, days in spans.items() if len(days)]


def _span_params(spans: Mapping[str, Sequence[str]]) -> list:
    from mlflow.entities import Param

    out = []
    for k, days in spans.items():
        if days:
            out += [Param(f"{k}_first", str(days[0])), Param(f"{k}_last", str(days[-1])), Param(f"{k}_days", str(len(days)))]
    return out


@contextmanager
def training_runs(settings: Settings, tags: Mapping[str, str] | None = None, title: str = "",
                  root: str | None = None) -> Iterator[LiveTraining]:
    """Open MLflow runs as training starts (see :class:`LiveTraining`); failed runs end FAILED."""
    with tracking(settings) as t:
        live = LiveTraining(t, tags, title, root, dataset_uri=f"{str(settings.lake_url).rstrip('/')}/features")
        try:
            yield live
        except BaseException:
            live.close("FAILED")
            raise
        live.close()


def _not_found(exc: Exception) -> bool:
    return getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


def register(settings: Settings, run_id: str) -> int:
    """Register the run's bundle as a new version of ``settings.model_name``, alias ``challenger``.

    Returns:
        The new version number.
    """
    from mlflow.exceptions import MlflowException

    with tracking(settings) as t:
        c, name = t.client, t.model_name
        run = c.get_run(run_id)
        names = {f.path for f in c.list_artifacts(run_id, MODEL_ARTIFACT)}
        if f"{MODEL_ARTIFACT}/model.json" not in names:
            raise RegistryError(f"run {run_id} has no model bundle under '{MODEL_ARTIFACT}/' (found {sorted(names)})")
        try:
            c.get_registered_model(name)
        except MlflowException as exc:
            if not _not_found(exc):
                raise
            c.create_registered_model(name, description="hfcast forecaster bundles (aliases: champion, challenger)")
        rt = run.data.tags
        mv_tags = {"arch": rt.get("arch", "unknown"), "dataset_version": rt.get("dataset_version", "unknown"),
                   "run_id": run_id, SPANS_SHA_TAG: rt.get(SPANS_SHA_TAG, ""),
                   **{k: v for k, v in rt.items() if k.startswith(("hfcast.train_", "hfcast.val_", "hfcast.test_",
                                                                   "hfcast.retrain_key", "hfcast.kind", "hfcast.vol_kind",
                                                                   "hfcast.return", "hfcast.members"))}}
        mv_tags.update(_checksum_tags(run_id, rt, t.uri))
        model_id = _logged_model_id(run)
        # the MLflow model wraps the same bundle: `mlflow models predict` can use the version
        source = f"models:/{model_id}" if model_id else f"runs:/{run_id}/{MODEL_ARTIFACT}"
        mv = c.create_model_version(name, source=source, run_id=run_id, tags=mv_tags, model_id=model_id)
        if model_id:
            link_logged_model(c, model_id, name, mv.version)
        c.set_registered_model_alias(name, CHALLENGER, mv.version)
    log.info("registered %s version %s from run %s (alias %s)", name, mv.version, run_id, CHALLENGER)
    return int(mv.version)


def _logged_model_id(run: Any) -> str | None:
    """The id of the run's MLflow (pyfunc) model: its tag, else the model URI of older runs."""
    rt = run.data.tags
    if rt.get(PYFUNC_ID_TAG):
        return rt[PYFUNC_ID_TAG]
    uri = rt.get(PYFUNC_TAG, "")
    return uri.removeprefix("models:/") if uri.startswith("models:/m-") else None


def link_logged_model(client: Any, model_id: str, name: str, version: str | int) -> None:
    """List the version on its logged model (the ``mlflow.modelVersions`` tag the UI reads).

    Why here: MLflow 3.17 links a version to its logged model in ``mlflow.register_model`` and in
    the tracking server's handler, but ``MlflowClient.create_model_version`` against a local
    (sqlite) store writes no link, and no store keeps ``ModelVersion.model_id`` (the version's
    ``source`` ``models:/<model_id>`` is what points back). Idempotent: a server that already
    added the version is left as it is.
    """
    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    current = json.loads(client.get_logged_model(model_id).tags.get(MLFLOW_MODEL_VERSIONS) or "[]")
    if any(str(v.get("name")) == name and str(v.get("version")) == str(version) for v in current):
        return
    client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps([*current, {"name": name,
                                                                                         "version": int(version)}])})


def _checksum_tags(run_id: str, run_tags: Mapping[str, str], uri: str) -> dict[str, str]:
    """The checksums of the run's bundle as stored, verified against those recorded when it was logged."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="hfcast-register-") as tmp:
        got = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=MODEL_ARTIFACT, dst_path=tmp,
                                                       tracking_uri=uri))
        if integrity.expected(run_tags):
            integrity.verify_bundle(got, run_tags, f"the bundle of run {run_id}")
        return integrity.registry_tags(got)


def parse_ref(ref: str | int, default_name: str) -> tuple[str, str | None, str | None]:
    """``(name, version, alias)`` from "hfcast@champion", "hfcast/3", "models:/hfcast@champion",
    "3" or "champion" (a bare word is an alias of the default model)."""
    s = str(ref).strip()
    s = s[len("models:/"):] if s.startswith("models:/") else s
    if not s:
        raise RegistryError("empty model reference")
    if "@" in s:
        name, alias = s.split("@", 1)
        return name or default_name, None, alias
    if "/" in s:
        name, version = s.rsplit("/", 1)
        if not version.isdigit():
            raise RegistryError(f"model reference {ref!r}: the part after '/' must be a version number")
        return name or default_name, version, None
    return (default_name, s, None) if s.isdigit() else (default_name, None, s)


def resolve(settings: Settings, ref: str | int):
    """The MLflow ModelVersion that ``ref`` names (see :func:`parse_ref`)."""
    from mlflow.exceptions import MlflowException

    name, version, alias = parse_ref(ref, settings.model_name)
    with tracking(settings) as t:
        try:
            if alias is not None:
                return t.client.get_model_version_by_alias(name, alias)
            return t.client.get_model_version(name, version)
        except MlflowException as exc:
            if not (_not_found(exc) or getattr(exc, "error_code", "") == "INVALID_PARAMETER_VALUE"):
                raise
            what = f"alias '{alias}'" if alias is not None else f"version {version}"
            raise RegistryError(f"model '{name}' has no {what} in {t.uri}",
                                "list the versions with `hfcast registry list`; a new registry has no champion until "
                                "`hfcast train` registers a model and the gate promotes it (or pass --model "
                                "NAME/VERSION, or --bundle DIR)") from None


def champion(settings: Settings):
    """The champion's ModelVersion, or None when the registry says there is none.

    "None" only on the registry's own answer (no such model, no such alias: :class:`RegistryError`
    from :func:`resolve`); an outage (connection refused, a 500) raises, so a caller never trains or
    predicts as if no champion existed because a request failed.
    """
    try:
        return resolve(settings, f"{settings.model_name}@{CHAMPION}")
    except RegistryError:
        return None


def run_scores(settings: Settings, run_id: str) -> dict[str, Any]:
    """The run's ``eval/scores.json`` (test spans, model and baseline scores, folds)."""
    import mlflow

    with tracking(settings) as t:
        with tempfile.TemporaryDirectory(prefix="hfcast-scores-") as tmp:
            try:
                p = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=SCORES_ARTIFACT,
                                                        dst_path=tmp, tracking_uri=t.uri)
            except Exception as exc:
                raise RegistryError(f"run {run_id} has no {SCORES_ARTIFACT}: {exc}") from None
            return json.loads(Path(p).read_text())


def download_bundle(settings: Settings, ref: str | int, dst: str | os.PathLike | None = None,
                    refresh: bool = False) -> Path:
    """Download the bundle folder of a model version.

    Default ``dst``: ``<home>/bundles/<name>-v<version>``, a cache: a model version is immutable,
    so a complete folder already there is reused (``refresh`` forces a new download). The folder
    is published by one rename, so concurrent callers (parallel batch tasks) never see half of it.
    An explicit ``dst`` is replaced.
    """
    import mlflow

    mv = resolve(settings, ref)
    cached = dst is None
    dst = Path(dst) if dst is not None else settings.home / "bundles" / f"{mv.name}-v{mv.version}"
    what = f"model '{mv.name}' version {mv.version}"
    if cached and not refresh and (dst / "model.json").is_file():
        integrity.verify_bundle(dst, mv.tags, f"{what} (cached)")
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".dl-", dir=dst.parent))
    try:
        try:
            with tracking(settings) as t:  # a models:/ source resolves through the global tracking URI
                got = _bundle_in(Path(mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(tmp),
                                                                          tracking_uri=t.uri)))
        except Exception as exc:  # deleted artifacts, unreachable store, refused credentials
            cause = explain(exc)
            raise RegistryError(f"cannot download {what} from {mv.source}: "
                                f"{cause.problem if cause else f'{type(exc).__name__}: {str(exc)[:200]}'}",
                                cause.fix if cause else "the artifacts were deleted or the artifact store is "
                                "unreachable: register the model again, or check the MLflow/S3 settings") from exc
        if not any(p.is_file() for p in got.rglob("*")):  # MLflow returns an empty folder for a missing source
            raise RegistryError(f"cannot download {what} from {mv.source}: no artifacts found there",
                                "the artifacts were deleted: register the model again (or roll back to a "
                                "version whose artifacts exist: hfcast registry rollback)")
        check_bundle(got)
        integrity.verify_bundle(got, mv.tags, what)
        if dst.exists() and (not cached or refresh):
            shutil.rmtree(dst)
        try:
            got.rename(dst)
        except OSError:
            if not (cached and (dst / "model.json").is_file()):  # lost a race to an identical copy: fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


def _bundle_in(folder: Path) -> Path:
    """The bundle folder inside a download: the folder itself, or an MLflow model's bundle artifact."""
    if (folder / "MLmodel").is_file():
        from hfcast.pyfunc import BUNDLE_KEY

        found = [p.parent for p in (folder / "artifacts").rglob("model.json")]
        if not found:
            raise RegistryError(f"MLflow model {folder} holds no hfcast bundle under artifacts/{BUNDLE_KEY}")
        return found[0]
    return folder


@dataclass(frozen=True)
class FetchedVersion:
    """A registered version in local files, verified against its tags: all a process needs to load
    it without talking to the registry (and without importing MLflow).

    Why: a server's start-up spends ~1.5 s importing MLflow and asking it for the version; fetched
    in a child process (:func:`fetch_version`) while the server imports its own stack, that time
    leaves the start-up's critical path (``hfcast serve``)."""

    name: str
    version: str
    run_id: str
    tags: dict[str, str]
    bundle: Path
    export: Path | None = None  # the stored export's folder (None: none stored, or see export_problem)
    export_problem: str | None = None  # why the stored export could not be fetched


def fetch_version(settings: Settings, ref: str | int | None = None, export: bool = True) -> FetchedVersion:
    """Resolve ``ref`` (default: the champion), download its bundle (cached) and, with ``export``,
    its stored export, each verified against the version's checksums.

    Raises:
        RegistryError: no such version, or its bundle cannot be downloaded. An export that cannot
            be downloaded is not raised but named in ``export_problem`` (the caller decides: a
            server exports the verified bundle instead).
        IntegrityError: a bundle or export file is not the one registered.
    """
    mv = resolve(settings, ref if ref is not None else f"{settings.model_name}@champion")
    bundle = download_bundle(settings, f"{mv.name}/{mv.version}")
    folder, problem = None, None
    if export:
        try:
            folder = fetch_export(settings, mv, bundle)
        except RegistryError as exc:  # an IntegrityError is no RegistryError: it propagates
            problem = exc.problem
    return FetchedVersion(mv.name, str(mv.version), mv.run_id, dict(mv.tags), bundle, folder, problem)


def load_fetched(fetched: FetchedVersion, bundle: str | os.PathLike | None = None):
    """The Forecaster of a fetched version (from ``bundle`` when given: a copy elsewhere), stamped
    with where it came from (meta) and with the confidences monitoring demoted."""
    from hfcast.forecaster import Forecaster

    fc = Forecaster.load(bundle if bundle is not None else fetched.bundle)
    fc.meta.update({"model_name": fetched.name, "model_version": fetched.version, "run_id": fetched.run_id,
                    "bundle_sha256": fetched.tags.get(integrity.BUNDLE_TAG, "")})
    fc.demote_confidence(demoted_confidences(fetched.tags))
    return fc


def load_forecaster(settings: Settings, ref: str | int | None = None, dst: str | os.PathLike | None = None):
    """Download and load a registered Forecaster, stamped with where it came from (meta).

    ``ref`` defaults to ``<settings.model_name>@champion``; ``meta`` gains ``model_name``,
    ``model_version`` and ``run_id`` so predictions and exports can name their model.
    """
    mv = resolve(settings, ref if ref is not None else f"{settings.model_name}@champion")
    path = download_bundle(settings, f"{mv.name}/{mv.version}", dst)
    return load_fetched(FetchedVersion(mv.name, str(mv.version), mv.run_id, dict(mv.tags), path), path)


#: version tag: the confidences live monitoring demoted, ``{"ret"|"rv": reason}`` as JSON
CONF_DEMOTED_TAG = "hfcast.conf_demoted"


def demoted_confidences(tags: Mapping[str, str]) -> dict[str, str]:
    """``{target: reason}`` of a version's :data:`CONF_DEMOTED_TAG` ({} when none)."""
    raw = tags.get(CONF_DEMOTED_TAG, "")
    return dict(json.loads(raw)) if raw else {}


def demote_confidences(settings: Settings, name: str, version: str | int, reasons: Mapping[str, str]) -> dict[str, str]:
    """Record on the version that live dates contradicted its confidence flags for ``reasons``'
    targets: every later load (server, batch prediction, backtest) serves them as uninformative.
    The bundle is untouched (its checksums still hold). Returns every demotion now on the version."""
    with tracking(settings) as t:
        mv = t.client.get_model_version(name, str(version))
        merged = {**demoted_confidences(mv.tags), **dict(reasons)}
        t.client.set_model_version_tag(name, str(version), CONF_DEMOTED_TAG, json.dumps(merged)[:5000])
    log.warning("%s v%s: confidence flag(s) %s demoted: %s", name, version, ", ".join(sorted(reasons)),
                "; ".join(reasons.values()))
    return merged


def log_artifacts_to_version(settings: Settings, ref: str | int, folder: str | os.PathLike, artifact_path: str) -> str:
    """Add files (ONNX, TensorRT engine) to the run behind a model version; the bundle stays untouched.

    Returns:
        The artifact URI of the added folder.
    """
    folder = Path(folder)
    if not folder.exists():
        raise RegistryError(f"{folder} does not exist")
    ap = artifact_path.strip("/")
    if not ap or ap == MODEL_ARTIFACT or ap.startswith(MODEL_ARTIFACT + "/"):
        raise RegistryError(f"artifact_path {artifact_path!r} would change the registered bundle; "
                            "use e.g. 'export/onnx'")
    mv = resolve(settings, ref)
    with tracking(settings) as t:
        if folder.is_dir():
            _refuse_pickles(folder)
            t.client.log_artifacts(mv.run_id, str(folder), ap)
        else:
            if folder.suffix.lower() in PICKLE_SUFFIXES:
                raise RegistryError(f"{folder} is pickle-based: hfcast never logs pickles")
            t.client.log_artifact(mv.run_id, str(folder), ap)
        uri = f"{t.client.get_run(mv.run_id).info.artifact_uri}/{ap}"
    log.info("logged %s to %s version %s (%s)", folder, mv.name, mv.version, uri)
    return uri


def _aliases(client: Any, name: str) -> dict[str, list[str]]:
    """version -> aliases (search_model_versions leaves ``aliases`` empty on some stores)."""
    out: dict[str, list[str]] = {}
    for alias, version in (client.get_registered_model(name).aliases or {}).items():
        out.setdefault(str(version), []).append(alias)
    return out


def _version_row(client: Any, mv: Any, metric_names: Sequence[str], aliases: Sequence[str]) -> dict[str, Any]:
    try:
        run_metrics = client.get_run(mv.run_id).data.metrics if mv.run_id else {}
    except Exception:  # a deleted run must not break the listing
        run_metrics = {}
    return {
        "version": int(mv.version), "aliases": sorted(aliases),
        "arch": mv.tags.get("arch", ""), "dataset_version": mv.tags.get("dataset_version", ""),
        "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, timezone.utc).isoformat(timespec="seconds"),
        "run_id": mv.run_id, "gate": mv.tags.get("gate.decision", ""), "tags": dict(mv.tags),
        "status": version_status(mv.tags, aliases),
        "metrics": {m: run_metrics[m] for m in metric_names if m in run_metrics},
    }


def version_status(tags: Mapping[str, str], aliases: Sequence[str]) -> str:
    """One phrase per version for listings: its alias, else what the gate and rollbacks did to it.

    Why: MLflow lists the newest version as "latest version", which is often a challenger the
    gate rejected; the listing must say so rather than let it pass for the model in use.
    """
    decision = tags.get("gate.decision", "")
    for done, phrase in ((CHAMPION in aliases, "champion"), (bool(tags.get("rolled_back_at")), "rolled back"),
                         (PREVIOUS in aliases, "previous champion"), (decision == "reject", "rejected by the gate"),
                         (decision in ("promote", "forced"), "former champion"),
                         (CHALLENGER in aliases, "challenger, not gated yet")):
        if done:
            return phrase
    return "not gated"


def list_versions(settings: Settings) -> list[dict[str, Any]]:
    """Every version of the model, oldest first: version, aliases, arch, created, gate, metrics."""
    metric_names = [r.name for r in config_from_settings(settings).rules]
    with tracking(settings) as t:
        versions = t.client.search_model_versions(f"name='{t.model_name}'")
        aliases = _aliases(t.client, t.model_name) if versions else {}
        rows = [_version_row(t.client, mv, metric_names, aliases.get(str(mv.version), [])) for mv in versions]
    return sorted(rows, key=lambda r: r["version"])


def describe(settings: Settings, ref: str | int) -> dict[str, Any]:
    """One version in detail: its listing row, source, the run's params and artifact folders."""
    mv = resolve(settings, ref)
    with tracking(settings) as t:
        aliases = _aliases(t.client, mv.name).get(str(mv.version), [])
        row = _version_row(t.client, mv, [r.name for r in config_from_settings(settings).rules], aliases)
        run = t.client.get_run(mv.run_id)
        row.update(name=mv.name, source=mv.source, params=dict(run.data.params),
                   all_metrics=dict(run.data.metrics),
                   artifacts=sorted(f.path for f in t.client.list_artifacts(mv.run_id)))
    return row


# --- a version's stored export (ONNX, int8 model, int8 guard verdict) --------------------------------

EXPORT_STORE = "export/serving"  # a version's stored export: <run artifacts>/export/serving/v<version>/


def store_export(settings: Settings, ref: str | int, folder: str | os.PathLike, names: Sequence[str]) -> dict[str, str]:
    """Attach the files ``names`` of ``folder`` to the version's run and record their checksums as
    version tags (:func:`hfcast.integrity.export_tags`), so that every later load verifies them.

    Why per version (``export/serving/v<N>/``): the files are derived from the version's bundle and
    the tags belong to the version; a second version of the same run never overwrites them.

    Returns:
        The tags written.
    """
    folder = Path(folder)
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise RegistryError(f"cannot store the export of {ref}: {folder} lacks {missing}")
    _refuse_pickles(folder)
    mv = resolve(settings, ref)
    path = f"{EXPORT_STORE}/v{mv.version}"
    tags = integrity.export_tags(folder, names, path)
    with tracking(settings) as t:
        for name in names:
            t.client.log_artifact(mv.run_id, str(folder / name), path)
        for key, value in tags.items():  # the path tag last: the export counts as stored once it is there
            t.client.set_model_version_tag(mv.name, mv.version, key, value)
    log.info("stored the export of %s version %s (%s) under %s", mv.name, mv.version, ", ".join(names), path)
    return tags


def fetch_export(settings: Settings, mv: Any, bundle_dir: str | os.PathLike) -> Path | None:
    """The version's stored export, verified against its tags, in the bundle's export cache
    (``<bundle>/exports/<checksum>/``, where batch prediction looks too): downloaded once, checked
    at every call; a local export that is not the stored one is replaced by it.

    Returns:
        The folder, or None when the version has no stored export (registered before exports were
        stored: :func:`hfcast.export.registered_export` exports and stores it on first demand).

    Raises:
        IntegrityError: a downloaded file differs from the checksum recorded when it was stored.
        RegistryError: the stored files cannot be downloaded.
    """
    stored = integrity.expected_export(mv.tags)
    if stored is None:
        return None
    path, want = stored
    what = f"model '{mv.name}' version {mv.version}"

    def download(target: Path) -> None:
        import mlflow

        for name in sorted(want):
            with tempfile.TemporaryDirectory(prefix=".dl-", dir=target.parent) as tmp:
                try:
                    with tracking(settings) as t:
                        got = mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path=f"{path}/{name}",
                                                                  dst_path=tmp, tracking_uri=t.uri)
                except Exception as exc:  # deleted artifacts, unreachable store, refused credentials
                    raise RegistryError(f"cannot download {path}/{name} of {what}: {type(exc).__name__}: "
                                        f"{str(exc)[:200]}", "the stored export was deleted or the artifact store "
                                        "is unreachable: check the MLflow/S3 settings, or store it again "
                                        "(`hfcast export --model NAME/VERSION`)") from exc
                os.replace(got, target.parent / name)
        integrity.verify_export(target.parent, want, what)

    onnx = integrity.cached_export(bundle_dir, "model.onnx", download, what="stored ONNX",
                                   accept=lambda f: integrity.export_mismatch(f, want) is None)
    return onnx.parent
