"""Export a registered forecaster for serving: ONNX, TensorRT, a Triton repository, and runners.

Why three artefacts: ONNX is the portable contract (CPU serving through onnxruntime, and the
input TensorRT compiles); a TensorRT plan is what a GPU serves fastest; Triton serves that plan
with dynamic batching. Each artefact is checked for parity against PyTorch on random windows
before anything is written as done, because a silently wrong export is worse than none.

The backends that execute these artefacts live in :mod:`hfcast.runners`; :func:`runner_for` gives
one for a forecaster, exporting what it needs first. TensorRT code sits behind
:func:`hfcast.runners.tensorrt_available`; the logic around it (profile shapes, which layers keep
FP32, the Triton config) is plain Python and unit-tested on machines without it.
"""

from __future__ import annotations

import errno
import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from hfcast import integrity, quiet, registry
from hfcast.config import Settings
from hfcast.contracts import LOOKBACK, PRED_COLUMNS
from hfcast.integrity import cached_export
from hfcast.quantize import (INT8_FILE, REPORT_FILE, cpu_model, ensure_int8, mlflow_tags, quantize_and_guard,
                             validation_frame, write_report)
from hfcast.runners import (INPUT_NAME, INT8_KIND, OUTPUT_NAME, RUNNER_KINDS, TENSORRT_ABSENT, OnnxRuntimeRunner,
                            Runner, TensorRTRunner, TorchRunner, choose_runner_kind, make_runner, n_features_of,
                            n_outputs_of, net_of, resolve_kind, tensorrt_available)

log = logging.getLogger(__name__)

OPSET = 18
MAX_BATCH = 1024  # the TensorRT profile's and Triton's largest batch
OPT_BATCH = 64  # the batch TensorRT tunes its kernels for
PARITY_TOL_FP32 = 1e-4
PARITY_TOL_FP16 = 1e-2  # FP16 keeps ~3 decimal digits; normalisation stays FP32
PARITY_TOL_FORECAST = 1e-5  # the whole forecaster's served columns, exported graph vs in-process
REL_FLOOR = 1e-2  # below this magnitude relative error is measured against the floor (see rel_err)


# --- parity ------------------------------------------------------------------------------------

def rel_err(candidate: np.ndarray, reference: np.ndarray, floor: float = REL_FLOOR) -> float:
    """Max element-wise relative error, ``|a-b| / max(|b|, floor)``.

    Raw outputs live in scaled target units (order 1), so a floor of 1e-2 keeps outputs that
    happen to be near zero from turning float rounding into a huge "relative" error while staying
    a strict test: 1e-4 relative at the floor is 1e-6 absolute.
    """
    a = np.asarray(candidate, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"parity: shapes differ, candidate {a.shape} vs reference {b.shape}")
    if not np.isfinite(a).all():
        return float("inf")
    return float((np.abs(a - b) / np.maximum(np.abs(b), floor)).max())


def check_parity(candidate: Callable[[np.ndarray], np.ndarray], reference: Callable[[np.ndarray], np.ndarray],
                 n_features: int, batches: tuple[int, ...] = (1, 7, 64), seed: int = 0,
                 n_outputs: int = 4) -> dict[str, Any]:
    """Run both on the same random scaled windows; report the max relative error per batch size."""
    rng = np.random.default_rng(seed)
    per_batch = {}
    for b in batches:
        x = rng.standard_normal((b, LOOKBACK, n_features)).astype(np.float32)
        out, ref = candidate(x), reference(x)
        if out.shape != (b, n_outputs):
            raise ValueError(f"parity: output shape {out.shape} for batch {b}, expected ({b}, {n_outputs})")
        per_batch[b] = rel_err(out, ref)
    return {"max_rel_err": max(per_batch.values()), "per_batch": per_batch, "batches": list(batches)}


def plausible_windows(forecaster: Any, n: int = 64, seed: int = 0) -> np.ndarray:
    """Unscaled windows [n, 30, F] in the training data's units (its scaler's mean + std * z), with a
    consistent time of day: what the parity of the whole forecaster is checked on when no real
    windows are at hand (the post-step reads feature values, so pure noise would not do)."""
    rng = np.random.default_rng(seed)
    sc, names = forecaster.scaler, list(forecaster.feature_names)
    z = np.clip(rng.standard_normal((n, LOOKBACK, len(names))), -3, 3)
    w = (sc.mean + sc.std * z).astype(np.float32)
    m = rng.integers(LOOKBACK - 1, 390, size=n)[:, None] - np.arange(LOOKBACK - 1, -1, -1)[None, :]
    for name, value in (("tod_sin", np.sin(2 * np.pi * m / 390)), ("tod_cos", np.cos(2 * np.pi * m / 390)),
                        ("minutes_to_close", 389.0 - m)):
        if name in names:
            w[:, :, names.index(name)] = value
    for name in ("rv_30m", "rv_60m", "har_rv_d", "har_rv_w", "ewma_vol_60", "rv_5m", "park_5m", "park_15m",
                 "ewma_vol_10", "spread_bps"):
        if name in names:  # volatilities and spreads are positive
            w[:, :, names.index(name)] = np.abs(w[:, :, names.index(name)])
    return w


CONF_COLUMNS = ("ret_60m_conf", "rv_10m_conf")
PARITY_TOL_CONF = 1e-4  # absolute, on a probability (see forecast_parity)


def forecast_parity(forecaster: Any, run: Callable[[np.ndarray], np.ndarray], windows: np.ndarray) -> dict[str, Any]:
    """The served columns (PRED_COLUMNS) of the whole forecaster with ``run`` as its graph against the
    in-process forecaster (torch graph) on the same unscaled windows.

    Volatility forecasts and intervals (positive): the max element-wise relative error. Returns
    and their intervals (which cross 0, and are centred by a constant, so a forecast near 0 would
    turn float32 rounding into a huge "relative" error): the max error relative to the column's
    scale, ``max |a - b| / max |b|``. Confidences:
    the max ABSOLUTE error (they are probabilities read off calibration maps whose steepest segment
    amplifies the float32 rounding of the graph; 1e-4 of a probability changes no decision).
    ``max_rel_err`` is over the forecasts and intervals; ``max_conf_err`` over the confidences.
    """
    w = np.asarray(windows, dtype=np.float32)
    side = forecaster.side_inputs(w)
    scaled = forecaster.scaler.transform(w)
    got = forecaster.postprocess(run(scaled), side)
    want = forecaster.postprocess(forecaster.predict_raw(scaled), side)
    per_col = {}
    for c in PRED_COLUMNS:
        a, b = np.asarray(got[c], np.float64), np.asarray(want[c], np.float64)
        if not b.size:
            per_col[c] = 0.0
        elif c in CONF_COLUMNS:
            per_col[c] = float(np.nanmax(np.abs(a - b)))
        elif c.startswith("ret_"):
            per_col[c] = float(np.nanmax(np.abs(a - b)) / max(float(np.nanmax(np.abs(b))), 1e-300))
        else:
            per_col[c] = float(np.nanmax(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))
    return {"max_rel_err": max(v for c, v in per_col.items() if c not in CONF_COLUMNS),
            "max_conf_err": max(per_col[c] for c in CONF_COLUMNS), "per_column": per_col, "windows": int(len(w))}


# --- ONNX --------------------------------------------------------------------------------------

@dataclass
class OnnxExport:
    """What :func:`export_onnx` produced and how it was checked."""

    path: Path
    exporter: str  # "dynamo" or "torchscript" (the fallback, dynamo=False + dynamic_axes)
    opset: int
    parity: dict[str, Any]
    fallback_reason: str | None = None


#: loggers of the exporters' own progress (torch's dynamo ONNX exporter and the ONNX IR passes it runs)
_EXPORTER_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "torch._dynamo", "onnx_ir", "onnxscript")
#: torch.export's UserWarning on nn.LSTM: its ``_flat_weights`` (torch's own cache of the registered
#: parameters) "were assigned during export. Such attributes must be registered as buffers": about
#: torch's module, not ours, and the exported graph is checked for parity right after.
_EXPORTER_MESSAGES = (r"\s*The tensor attributes \S*_flat_weights",)


def _quiet_exporter():
    """The exporters' chatter held back for the export call (:mod:`hfcast.quiet`): an INFO line per
    deduplicated initializer, "torchvision is not installed" per vision op, FutureWarnings of their
    internals, the LSTM's flat-weights warning. Parity is checked and logged after; a failed dynamo
    export still logs its reason."""
    return quiet.held_back(_EXPORTER_LOGGERS, categories=(FutureWarning, DeprecationWarning),
                           messages=_EXPORTER_MESSAGES)


def export_onnx(model: Any, path: str | Path, opset: int = OPSET, check: bool = True) -> OnnxExport:
    """Export a forecaster's graph (its networks side by side) to ONNX with a dynamic batch
    dimension, then check parity: the raw outputs against PyTorch, and for a forecaster the served
    columns of the whole forecaster (graph + post-step) against the in-process one.

    The dynamo exporter is tried first; if it fails (some architectures trip it), the
    TorchScript exporter with ``dynamic_axes`` is used and the reason is recorded.

    Raises:
        ValueError: parity against PyTorch exceeds 1e-4 relative (fp32) on the raw outputs or 1e-5
            on the forecaster's columns; or the forecaster runs no network (nothing to export).
    """
    import torch

    net, n_features, n_out = net_of(model), n_features_of(model), n_outputs_of(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = (torch.randn(2, LOOKBACK, n_features),)
    exporter, reason = "dynamo", None
    try:
        batch = torch.export.Dim("batch", min=1, max=65536)
        with _quiet_exporter():
            torch.onnx.export(net, example, str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_shapes=({0: batch},), opset_version=opset, dynamo=True, verbose=False,
                              external_data=False)  # one self-contained file: no side file to lose
    except Exception as exc:  # the exporter raises many types; any failure means: use the fallback
        exporter, reason = "torchscript", f"{type(exc).__name__}: {str(exc)[:300]}"
        log.warning("dynamo ONNX export failed (%s); falling back to dynamo=False with dynamic_axes", reason)
        with _quiet_exporter():
            torch.onnx.export(net, example, str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                              opset_version=opset, dynamo=False)
    result = OnnxExport(path=path, exporter=exporter, opset=opset, parity={}, fallback_reason=reason)
    if check:
        ort_runner = OnnxRuntimeRunner(path)
        result.parity = check_parity(ort_runner.run, TorchRunner(net).run, n_features, n_outputs=n_out)
        if not result.parity["max_rel_err"] < PARITY_TOL_FP32:
            raise ValueError(f"ONNX parity failed: max relative error {result.parity['max_rel_err']:.3g} "
                             f">= {PARITY_TOL_FP32} against PyTorch ({exporter} exporter)")
        if callable(getattr(model, "postprocess", None)) and callable(getattr(model, "side_inputs", None)):
            whole = forecast_parity(model, ort_runner.run, plausible_windows(model))
            result.parity["forecaster"] = whole
            if not (whole["max_rel_err"] <= PARITY_TOL_FORECAST and whole["max_conf_err"] <= PARITY_TOL_CONF):
                raise ValueError(f"ONNX parity of the whole forecaster failed: max relative error "
                                 f"{whole['max_rel_err']:.3g} (limit {PARITY_TOL_FORECAST}), confidence error "
                                 f"{whole['max_conf_err']:.3g} (limit {PARITY_TOL_CONF}): {whole['per_column']}")
        log.info("ONNX (%s exporter, opset %d) parity: max rel err %.2e", exporter, opset,
                 result.parity["max_rel_err"])
    return result


# --- TensorRT (logic testable without TensorRT) -------------------------------------------------

def trt_profile(n_features: int, max_batch: int = MAX_BATCH, opt_batch: int = OPT_BATCH) -> dict[str, tuple]:
    """Optimization profile shapes: batch 1 .. max_batch, tuned for opt_batch."""
    if not 1 <= opt_batch <= max_batch:
        raise ValueError(f"need 1 <= opt_batch ({opt_batch}) <= max_batch ({max_batch})")
    return {"min": (1, LOOKBACK, n_features), "opt": (opt_batch, LOOKBACK, n_features),
            "max": (max_batch, LOOKBACK, n_features)}


_NORM_LAYER_TYPES = {"NORMALIZATION", "REDUCE"}  # LayerNorm (opset 17+) / its decomposed mean-var
_NORM_NAME_HINTS = ("layernorm", "layer_norm", "batchnorm", "batch_norm", "norm")


def keep_fp32(layer_name: str, layer_type: str) -> bool:
    """Whether a TensorRT layer must stay FP32 in an FP16 engine.

    Normalisation (LayerNorm / BatchNorm, fused or decomposed into Reduce/Pow/Sqrt) sums squares
    over the feature axis: in FP16 that overflows or loses the variance, so those layers keep FP32.
    """
    name = layer_name.lower()
    return layer_type.upper() in _NORM_LAYER_TYPES or any(h in name for h in _NORM_NAME_HINTS)


def build_tensorrt_engine(onnx_path: str | Path, plan_path: str | Path, n_features: int,
                          max_batch: int = MAX_BATCH, fp16: bool = True) -> dict[str, Any]:
    """Compile ONNX to a TensorRT plan (FP16 with normalisation kept FP32); needs TensorRT + GPU."""
    if not tensorrt_available():
        raise RuntimeError(TENSORRT_ABSENT)
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    fp32_layers = []
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if keep_fp32(layer.name, layer.type.name):
                layer.precision = trt.float32
                for j in range(layer.num_outputs):
                    layer.set_output_type(j, trt.float32)
                fp32_layers.append(layer.name)
    shapes = trt_profile(n_features, max_batch)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError("TensorRT engine build failed (see the TensorRT log above)")
    Path(plan_path).write_bytes(bytes(plan))
    # the plan runs only on this GPU model with this TensorRT: say so beside it (TensorRTRunner checks)
    device = TensorRTRunner.current_device()
    TensorRTRunner.record_device(plan_path, device)
    return {"plan": str(plan_path), "fp16": fp16, "fp32_layers": fp32_layers, "profile": shapes, "device": device}


# --- Triton repository ---------------------------------------------------------------------------

def triton_config(n_features: int, name: str = "hfcast", platform: str = "tensorrt_plan",
                  max_batch: int = MAX_BATCH, preferred: tuple[int, ...] = (64, 256),
                  queue_delay_us: int = 500, gpu: bool = True, n_outputs: int = 4) -> str:
    """config.pbtxt text: batch is Triton's implicit first dim, so dims are [30, F] and [4 k]."""
    pref = ", ".join(str(p) for p in preferred if p <= max_batch)
    kind = "KIND_GPU" if gpu else "KIND_CPU"
    return (
        f'name: "{name}"\nplatform: "{platform}"\nmax_batch_size: {max_batch}\n'
        f'input [\n  {{\n    name: "{INPUT_NAME}"\n    data_type: TYPE_FP32\n    dims: [ {LOOKBACK}, {n_features} ]\n  }}\n]\n'
        f'output [\n  {{\n    name: "{OUTPUT_NAME}"\n    data_type: TYPE_FP32\n    dims: [ {n_outputs} ]\n  }}\n]\n'
        f"dynamic_batching {{\n  preferred_batch_size: [ {pref} ]\n  max_queue_delay_microseconds: {queue_delay_us}\n}}\n"
        f"instance_group [\n  {{\n    count: 1\n    kind: {kind}\n  }}\n]\n"
    )


def write_triton_repo(root: str | Path, model_file: str | Path, n_features: int, name: str = "hfcast",
                      version: int = 1, max_batch: int = MAX_BATCH, n_outputs: int = 4) -> Path:
    """Lay out ``root/<name>/config.pbtxt`` and ``root/<name>/<version>/model.plan|model.onnx``."""
    model_file = Path(model_file)
    is_plan = model_file.suffix == ".plan"
    platform = "tensorrt_plan" if is_plan else "onnxruntime_onnx"
    model_dir = Path(root) / name
    (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_file, model_dir / str(version) / ("model.plan" if is_plan else "model.onnx"))
    (model_dir / "config.pbtxt").write_text(
        triton_config(n_features, name, platform, max_batch, gpu=is_plan, n_outputs=n_outputs))
    return model_dir


# --- a runner for a forecaster ------------------------------------------------------------------

def runner_for(kind: str, forecaster: Any, onnx_path: str | Path | None = None,
               plan_path: str | Path | None = None) -> Runner:
    """A runner of the given kind (or the fastest available for ``"auto"``) for a forecaster.

    ONNX and TensorRT runners export / build what they need into a temp folder when no path is
    given, so a caller holding only a Forecaster can still ask for them.
    """
    kind = resolve_kind(kind)
    if kind not in RUNNER_KINDS:
        raise ValueError(f"unknown runner kind {kind!r}; choose one of {RUNNER_KINDS + ('auto',)}")
    if kind in ("onnxruntime", INT8_KIND, "tensorrt") and onnx_path is None and plan_path is None:
        onnx_path = Path(tempfile.mkdtemp(prefix="hfcast-onnx-")) / "model.onnx"
        export_onnx(forecaster, onnx_path)
    if kind == INT8_KIND:  # the int8 model is quantized beside the fp32 export
        onnx_path = ensure_int8(onnx_path)
    if kind == "tensorrt" and plan_path is None:
        plan_path = Path(onnx_path).with_suffix(".plan")
        build_tensorrt_engine(onnx_path, plan_path, n_features_of(forecaster))
    return make_runner(kind, forecaster, onnx_path=onnx_path, plan_path=plan_path)


# --- the export a server starts from ----------------------------------------------------------------

def serving_files(folder: str | Path) -> list[str]:
    """The files of an export folder that a server (and batch prediction) of the version needs: the
    ONNX graph, its int8 model (absent when quantizing failed) and the int8 guard's verdict."""
    return [n for n in ("model.onnx", INT8_FILE, REPORT_FILE) if Path(folder, n).is_file()]


def export_for_serving(forecaster: Any, onnx_path: str | Path, lake: Any = None) -> dict[str, Any]:
    """The ONNX graph (parity-checked) at ``onnx_path`` and, beside it, the int8 model and the int8
    guard's verdict on the version's validation span in ``lake`` (without that span the int8 model
    is written but unguarded, and ``auto`` keeps fp32).

    int8 is an option, never a condition of serving: when quantizing or guarding fails, the
    report says why, no int8 model is kept, and fp32 is served.

    Returns:
        The quantization report (:func:`hfcast.quantize.quantize_and_guard`).
    """
    export_onnx(forecaster, onnx_path)
    frame, dates = validation_frame(lake, forecaster) if lake is not None else (None, [])
    try:
        return quantize_and_guard(forecaster, onnx_path, frame, dates, market=getattr(lake, "market", None))
    except Exception as exc:  # onnxruntime's quantizer or the guard: any failure means fp32 only
        why = f"int8 quantization failed: {type(exc).__name__}: {str(exc)[:300]}"
        log.warning("%s; the fp32 model is served", why)
        Path(onnx_path).with_name(INT8_FILE).unlink(missing_ok=True)
        report = {"use_int8": False, "guard": {"passed": False, "reason": why}}
        write_report(Path(onnx_path).parent, report)
        return report


def store_serving_export(settings: Settings, ref: str) -> dict[str, str] | None:
    """Export a registered version for serving and store the files with it (registration calls this,
    and a server on first demand for a version registered before exports were stored).

    Returns:
        The version tags written (the checksums of the stored files), or None for a forecaster that
        runs no network (nothing to export: its servers load instantly).
    """
    from hfcast.storage import Lake

    fc = registry.load_forecaster(settings, ref)
    if fc.graph() is None:
        return None
    with tempfile.TemporaryDirectory(prefix="hfcast-export-") as tmp:
        export_for_serving(fc, Path(tmp) / "model.onnx", Lake.from_settings(settings))
        return registry.store_export(settings, f"{fc.meta['model_name']}/{fc.meta['model_version']}", tmp,
                                     serving_files(tmp))


def registered_export(settings: Settings, ref: str, fetched: registry.FetchedVersion | None = None) -> Path:
    """The folder holding a registered version's served ONNX and int8 model: its stored export,
    verified against the version's tags and kept in the bundle's export cache. A version registered
    before exports were stored is exported and stored first, once; later loads fetch it. ``fetched``:
    the version already fetched (:func:`hfcast.registry.fetch_version`), its export used as it is.
    """
    if fetched is not None and fetched.export is not None:
        return fetched.export
    if fetched is not None and fetched.export_problem:
        raise registry.RegistryError(fetched.export_problem)
    mv = registry.resolve(settings, ref)
    bundle_dir = registry.download_bundle(settings, f"{mv.name}/{mv.version}")
    folder = registry.fetch_export(settings, mv, bundle_dir)
    if folder is None:
        log.warning("%s version %s has no stored export (registered before exports were stored): exporting it "
                    "once and storing it with the version", mv.name, mv.version)
        try:
            store_serving_export(settings, f"{mv.name}/{mv.version}")
        except Exception as exc:  # a read-only identity (a server's) may not write the run: say so in one line
            raise registry.RegistryError(f"cannot store the export of {mv.name} version {mv.version}: "
                                         f"{type(exc).__name__}: {str(exc)[:200]}",
                                         f"store it once as a user who may write the run "
                                         f"(`hfcast export --model {mv.name}/{mv.version}`)") from exc
        folder = registry.fetch_export(settings, registry.resolve(settings, f"{mv.name}/{mv.version}"), bundle_dir)
    return folder


def serving_runner(kind: str, forecaster: Any, settings: Settings | None = None,
                   bundle: str | Path | None = None, fetched: registry.FetchedVersion | None = None) -> Runner | None:
    """The runner a server starts with, over the export stored with its model: nothing is exported at
    start when it was exported before.

    A registered version (``bundle`` None) runs its stored, checksummed export
    (:func:`registered_export`); a local bundle its export cached in ``<bundle>/exports/`` (exported
    on its first start). ``auto`` on CPU takes the int8 model when its quality guard passed, as
    batch prediction does (:func:`hfcast.quantize.cpu_model`). None for a forecaster that runs no
    network: its post-step is the whole forecast. ``fetched``: the version as
    :func:`hfcast.registry.fetch_version` fetched it (its export is not fetched again).
    """
    from hfcast.storage import Lake

    if forecaster.graph() is None:
        return None
    auto = kind == "auto"
    if auto:  # resolved here without resolve_kind's log line: the predictor names the runner it ends with
        import torch

        kind = choose_runner_kind(torch.cuda.is_available(), tensorrt_available())
    if kind not in RUNNER_KINDS:
        raise ValueError(f"unknown runner kind {kind!r}; choose one of {RUNNER_KINDS + ('auto',)}")
    if kind in ("torch", "torch-compiled"):
        return make_runner(kind, forecaster)
    lake = Lake.from_settings(settings) if settings is not None else None
    if bundle is not None:
        bundle_dir = Path(bundle)
        try:
            onnx = cached_export(bundle_dir, "model.onnx", lambda p: export_for_serving(forecaster, p, lake))
        except OSError as exc:
            if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
            log.warning("cannot keep the export in %s (%s): exporting to a temporary folder at every start; "
                        "serve a registered version, or a writable bundle folder, to export once", bundle_dir,
                        exc.strerror)
            onnx = Path(tempfile.mkdtemp(prefix="hfcast-onnx-")) / "model.onnx"
            export_for_serving(forecaster, onnx, lake)
    else:
        ref = f"{forecaster.meta['model_name']}/{forecaster.meta['model_version']}"
        try:
            onnx = registered_export(settings, ref, fetched) / "model.onnx"
            bundle_dir, lake = onnx.parents[2], None  # the stored verdict is the registered one
        except registry.RegistryError as exc:  # e.g. an identity that may load the model, not its run's files
            log.warning("%s: the export stored with the version cannot be fetched (%s); exporting the verified "
                        "bundle here instead (fp32, at every start): let the serving identity read the run's "
                        "artifacts to start from the stored export", ref, exc.problem)
            onnx = Path(tempfile.mkdtemp(prefix="hfcast-onnx-")) / "model.onnx"
            export_onnx(forecaster, onnx)
            bundle_dir, lake = onnx.parent, None  # no guard verdict: auto keeps fp32
    if kind in ("onnxruntime", INT8_KIND):
        kind, path = cpu_model(bundle_dir, kind, onnx, lake, auto=auto)
        return make_runner(kind, forecaster, onnx_path=path)
    plan = onnx.with_suffix(".plan")
    if not plan.exists():
        build_tensorrt_engine(onnx, plan, n_features_of(forecaster))
    return make_runner(kind, forecaster, plan_path=plan)


# --- the whole export ----------------------------------------------------------------------------

@dataclass
class ExportReport:
    """Everything ``hfcast export`` did, written as ``export.json`` beside the artefacts."""

    out_dir: str
    onnx: dict[str, Any]
    tensorrt: dict[str, Any] | str
    triton_repo: str
    model_name: str | None = None
    model_version: str | None = None
    logged_to_mlflow: bool = False
    notes: list[str] = field(default_factory=list)
    quantization: dict[str, Any] | None = None  # hfcast.quantize's report (int8 model + guard)


def export_all(forecaster: Any, out_dir: str | Path, max_batch: int = MAX_BATCH, validation: Any = None,
               validation_dates: list[str] | None = None, market: Any = None) -> ExportReport:
    """ONNX (+ parity), the int8 model (+ its guard on ``validation``, the version's validation
    span with labels), TensorRT plan (+ parity) where possible, and a Triton repository."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_features = n_features_of(forecaster)
    meta = getattr(forecaster, "meta", None) or {}
    if callable(getattr(forecaster, "graph", None)) and forecaster.graph() is None:
        note = (f"the forecaster serves {forecaster.kind}: no network, nothing to compile; every runner computes it "
                "in the post-step (hfcast.forecaster.Forecaster.postprocess)")
        report = ExportReport(out_dir=str(out), onnx={"skipped": note}, tensorrt=note, triton_repo="",
                              model_name=meta.get("model_name"), model_version=_s(meta.get("model_version")),
                              notes=[note])
        (out / "export.json").write_text(json.dumps(asdict(report), indent=2, default=str))
        log.info(note)
        return report
    onnx_res = export_onnx(forecaster, out / "model.onnx")
    onnx_info = {**asdict(onnx_res), "path": str(onnx_res.path)}
    notes = []
    if onnx_res.fallback_reason:
        notes.append(f"dynamo exporter failed, used dynamo=False: {onnx_res.fallback_reason}")
    model_file: Path = onnx_res.path

    quant = quantize_and_guard(forecaster, onnx_res.path, validation, validation_dates, market=market)
    if tensorrt_available():
        trt_info: dict[str, Any] | str = build_tensorrt_engine(onnx_res.path, out / "model.plan", n_features, max_batch)
        trt_runner = TensorRTRunner(out / "model.plan")
        trt_info["parity"] = check_parity(trt_runner.run, TorchRunner(forecaster, device="cuda").run, n_features,
                                          n_outputs=n_outputs_of(forecaster))
        if not trt_info["parity"]["max_rel_err"] < PARITY_TOL_FP16:
            raise ValueError(f"TensorRT FP16 parity failed: max relative error "
                             f"{trt_info['parity']['max_rel_err']:.3g} >= {PARITY_TOL_FP16}")
        model_file = out / "model.plan"
    else:
        trt_info = TENSORRT_ABSENT
        notes.append(TENSORRT_ABSENT + " The Triton repository serves the ONNX model (onnxruntime_onnx).")
        log.warning(TENSORRT_ABSENT)
    name = meta.get("model_name", "hfcast")
    repo = write_triton_repo(out / "triton", model_file, n_features, name=name, max_batch=max_batch,
                             n_outputs=n_outputs_of(forecaster))
    report = ExportReport(out_dir=str(out), onnx=onnx_info, tensorrt=trt_info, triton_repo=str(repo.parent),
                          model_name=meta.get("model_name"), model_version=_s(meta.get("model_version")),
                          notes=notes, quantization=quant)
    (out / "export.json").write_text(json.dumps(asdict(report), indent=2, default=str))
    return report


def _s(v: Any) -> str | None:
    return None if v is None else str(v)


def log_export_to_mlflow(report: ExportReport, settings: Settings) -> str:
    """Attach the artefacts to the run behind the same registered model version (``export/``).

    Returns:
        The artifact URI of the logged folder.
    """
    if not (report.model_name and report.model_version):
        raise ValueError("log_export_to_mlflow: the forecaster carries no model_name/model_version "
                         "(was it loaded from the registry?)")
    report.logged_to_mlflow = True
    Path(report.out_dir, "export.json").write_text(json.dumps(asdict(report), indent=2, default=str))
    uri = registry.log_artifacts_to_version(settings, f"{report.model_name}/{report.model_version}",
                                            report.out_dir, "export")
    if "skipped" in report.onnx:
        tags = {"export.onnx": "none: the forecaster runs no network", "export.artifacts": uri}
        with registry.tracking(settings) as t:
            for key, value in tags.items():
                t.client.set_model_version_tag(report.model_name, report.model_version, key, value)
        return uri
    tags = {"export.onnx_exporter": report.onnx["exporter"],
            "export.onnx_max_rel_err": f"{report.onnx['parity']['max_rel_err']:.3e}",
            "export.tensorrt": "built" if isinstance(report.tensorrt, dict) else "absent",
            "export.artifacts": uri}
    if report.quantization:
        tags.update(mlflow_tags(report.quantization))
    with registry.tracking(settings) as t:
        for key, value in tags.items():
            t.client.set_model_version_tag(report.model_name, report.model_version, key, value)
    _store_for_serving(report, settings)
    return uri


def _store_for_serving(report: ExportReport, settings: Settings) -> None:
    """Make this export the version's stored serving export (what its servers load) when the version
    has none, or when this one's int8 verdict was guarded: an export without the validation span
    (the pipeline's export step) never replaces a guarded verdict stored at registration."""
    ref = f"{report.model_name}/{report.model_version}"
    guarded = "reason" not in ((report.quantization or {}).get("guard") or {"reason": "none"})
    if guarded or integrity.expected_export(registry.resolve(settings, ref).tags) is None:
        registry.store_export(settings, ref, report.out_dir, serving_files(report.out_dir))


def publish(report_or_dir: ExportReport | str | Path, url: str, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """Copy an export folder to ``url`` (e.g. ``s3://hfcast-models/hfcast/champion``), file by file.

    Why: the GPU InferenceService reads ``triton/`` from object storage, not from MLflow.

    Returns:
        The URLs written, in order.
    """
    from hfcast import storage

    root = Path(report_or_dir.out_dir if isinstance(report_or_dir, ExportReport) else report_or_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"nothing to publish: {root} is not an export folder")
    written = []
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        target = storage.join(url, f.relative_to(root).as_posix())
        storage.write_bytes(target, f.read_bytes(), dict(storage_options) if storage_options else None)
        written.append(target)
    log.info("published %d file(s) of %s to %s", len(written), root, url)
    return written


def export_version(settings: Settings, version: str | int, out_dir: str | Path, max_batch: int = MAX_BATCH,
                   publish_url: str = "") -> tuple[ExportReport, str]:
    """Export registered version ``version`` (:func:`export_all`), attach the files to its MLflow run
    (:func:`log_export_to_mlflow`) and, with ``publish_url``, copy them there (:func:`publish`: the
    GPU InferenceService reads ``triton/`` from object storage). The training pipeline's export step.

    Returns:
        (the report, the MLflow artifact URI of the export).
    """
    report = export_all(registry.load_forecaster(settings, f"{settings.model_name}/{version}"), out_dir,
                        max_batch=max_batch)
    uri = log_export_to_mlflow(report, settings)
    if publish_url:
        publish(out_dir, publish_url, settings.storage_options_for(publish_url) or None)
    return report, uri
