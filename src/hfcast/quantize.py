"""The int8 CPU runner: dynamic quantization of the exported ONNX, behind a quality guard.

Why dynamic int8: the default transformer spends most of its CPU time in small fp32 matrix
products (d_model 48); onnxruntime's dynamic quantization stores those weights as int8 and
quantizes activations per batch, which runs the products on the CPU's int8 dot-product units
(VNNI) without a calibration set. Only weight x activation products are quantized
(``MatMulConstBOnly``): attention's activation x activation products stay fp32, because
quantizing both sides of a 30x30 softmax product costs accuracy for little time.

Dynamic quantization scales activations per call (one scale per tensor), so an int8 forecast
depends slightly on which windows share its call: the runner's chunking is fixed by position
(``hfcast.runners.STREAM_CHUNK``), which keeps reruns byte-stable; the fp32 runners have no such effect.

Why a guard: int8 is a lossy change of the model. It is used automatically (``auto`` runner on
CPU) only when, on the version's own validation span (``meta["val_dates"]``), QLIKE of the
volatility forecast and IC of the return forecast each move by less than 0.5% relative against
the fp32 ONNX model. The verdict is computed once, when exporting (or at the first batch
prediction of a bundle that was never exported), and stored beside the model as
``quantization.json``; ``hfcast export`` logs it as ``export.int8*`` tags, which
``hfcast registry show`` lists.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hfcast import quiet
from hfcast.runners import INT8_KIND, Int8Runner, OnnxRuntimeRunner, run_windows

log = logging.getLogger(__name__)

INT8_FILE = "model.int8.onnx"
REPORT_FILE = "quantization.json"
GUARD_REL_TOL = 0.005  # QLIKE and IC may each move by less than 0.5% relative
GUARD_MAX_WINDOWS = 50_000  # evaluation windows (evenly spaced) of the validation span
INT8_ABS_TOL = 0.05  # max |int8 - fp32| on raw outputs (scaled units, order 1) in the parity test
GUARD_BATCH = 2048


# --- quantization --------------------------------------------------------------------------------

def quantize_onnx(src: str | Path, dst: str | Path) -> Path:
    """Write the int8 dynamic quantization of ``src`` to ``dst`` (weights int8 per channel).

    The dynamo exporter leaves ``value_info`` entries that onnx's strict shape inference rejects
    ("Inferred shape and existing shape differ"): they are dropped first (shapes are re-inferred).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(src))
    del model.graph.value_info[:]
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hfcast-int8-") as tmp:
        clean = Path(tmp) / "clean.onnx"
        onnx.save(model, str(clean))
        out = Path(tmp) / "int8.onnx"
        # onnxruntime's quantizer logs through the ROOT logger: a pre-processing hint and a line per
        # tensor it leaves in float (dynamic int8 weights are the choice here; guard() judges them)
        with quiet.held_back(root_from=("onnxruntime",)):
            quantize_dynamic(clean, out, weight_type=QuantType.QInt8, per_channel=True,
                             extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT})
        os.replace(out, dst)
    return dst


def int8_parity(fp32: Callable[[np.ndarray], np.ndarray], int8: Callable[[np.ndarray], np.ndarray],
                windows: np.ndarray) -> dict[str, float]:
    """Max / mean absolute error of int8 raw outputs against fp32 on ``windows``.

    Absolute, not :func:`hfcast.export.rel_err`: int8 error is absolute-sized (scale steps), and
    this module must not import export (export calls it: no import cycle).
    """
    a, b = int8(windows), fp32(windows)
    diff = np.abs(a.astype(np.float64) - b)
    return {"max_abs_err": float(diff.max()), "mean_abs_err": float(diff.mean()), "windows": int(len(windows))}


# --- the guard -----------------------------------------------------------------------------------

def _run_batched(run: Callable[[np.ndarray], np.ndarray], wa: Any, idx: np.ndarray) -> np.ndarray:
    return run_windows(run, lambda s: wa.windows(idx[s]), len(idx), GUARD_BATCH)


def span_scores(forecaster: Any, raw: np.ndarray, y: np.ndarray, side: Any = None) -> dict[str, float]:
    """The guarded scores of the WHOLE forecaster (graph outputs ``raw`` through its post-step, with
    the windows' ``side`` inputs) against labels [M, 2] (ret_60m, rv_10m)."""
    from hfcast import metrics as M

    pred = forecaster.postprocess(raw, side)
    return {"vol_qlike": M.qlike(pred["rv_10m_pred"] ** 2, y[:, 1].astype(np.float64) ** 2),
            "ret_ic": M.ic(pred["ret_60m_pred"], y[:, 0].astype(np.float64))}


def _rel_change(new: float, old: float) -> float:
    if not (np.isfinite(new) and np.isfinite(old)):
        return float("inf")
    return abs(new - old) / max(abs(old), 1e-12)


def guard(forecaster: Any, fp32: Callable, int8: Callable, frame: Any, dates: list[str] | None = None,
          max_windows: int = GUARD_MAX_WINDOWS, tol: float = GUARD_REL_TOL, market: Any = None) -> dict[str, Any]:
    """Score fp32 and int8 on the same labelled windows of ``frame``; pass iff both scores move < tol.

    Args:
        frame: features with labels (``ret_60m``, ``rv_10m``) of the validation span.
        max_windows: evenly spaced labelled windows kept (the verdict's cost stays bounded).
    """
    from hfcast.features.windows import build_windows

    wa = build_windows(frame, forecaster.feature_names, market=market)
    if wa.y is None:
        raise ValueError("quantization guard: the validation frame has no labels (ret_60m, rv_10m)")
    y = wa.labels()
    idx = np.flatnonzero(np.isfinite(y).all(axis=1))
    if len(idx) == 0:
        raise ValueError("quantization guard: no labelled windows in the validation span")
    idx = idx[np.linspace(0, len(idx) - 1, min(max_windows, len(idx))).astype(int)]
    side = forecaster.side_inputs_arrays(wa.select(idx))
    wa = forecaster_scaled(forecaster, wa)
    raw32, raw8 = _run_batched(fp32, wa, idx), _run_batched(int8, wa, idx)
    s32, s8 = span_scores(forecaster, raw32, y[idx], side), span_scores(forecaster, raw8, y[idx], side)
    change = {k: _rel_change(s8[k], s32[k]) for k in s32}
    passed = all(v < tol for v in change.values())
    return {"passed": bool(passed), "tolerance_rel": tol, "fp32": s32, "int8": s8, "rel_change": change,
            "windows": int(len(idx)), "dates": list(dates or []),
            "raw_parity": {"max_abs_err": float(np.abs(raw8 - raw32).max()),
                           "mean_abs_err": float(np.abs(raw8 - raw32).mean())}}


def forecaster_scaled(forecaster: Any, wa: Any) -> Any:
    """``wa`` with its matrix scaled once by the forecaster's scaler (windows stay views)."""
    return dataclasses.replace(wa, X=np.ascontiguousarray(forecaster.scaler.transform(wa.X)), _view=None)


def quantize_and_guard(forecaster: Any, onnx_path: str | Path, frame: Any = None,
                       dates: list[str] | None = None, threads: int | None = None, market: Any = None) -> dict[str, Any]:
    """Write ``model.int8.onnx`` and ``quantization.json`` beside ``onnx_path``; return the report.

    Without a validation frame the int8 model is still written, but the report says it was not
    guarded, and ``auto`` will not pick it.
    """
    onnx_path = Path(onnx_path)
    int8_path = quantize_onnx(onnx_path, onnx_path.parent / INT8_FILE)
    fp32, int8 = OnnxRuntimeRunner(onnx_path, threads=threads), Int8Runner(int8_path, threads=threads)
    rng = np.random.default_rng(0)
    n_features = len(forecaster.feature_names)
    report: dict[str, Any] = {
        "int8_model": INT8_FILE, "fp32_model": onnx_path.name, "kind": INT8_KIND,
        "parity_random": int8_parity(fp32.run, int8.run, rng.standard_normal((256, 30, n_features)).astype(np.float32)),
    }
    if frame is None or len(frame) == 0:
        report["guard"] = {"passed": False,
                           "reason": "no validation span available: int8 not guarded, not used by auto"}
    else:
        report["guard"] = guard(forecaster, fp32.run, int8.run, frame, dates, market=market)
    report["use_int8"] = bool(report["guard"]["passed"])
    write_report(onnx_path.parent, report)
    log.info("int8 quantization: guard %s (%s)", "passed" if report["use_int8"] else "failed", guard_summary(report["guard"]))
    return report


def guard_summary(g: dict[str, Any]) -> str:
    """The guard in words: each score's relative change int8 vs fp32 against the tolerance, or why it did not run."""
    if "rel_change" not in g:
        return str(g.get("reason", "not run"))
    changes = ", ".join(f"{k} {v:.3%}" if np.isfinite(v) else f"{k} not finite" for k, v in g["rel_change"].items())
    return f"relative change int8 vs fp32: {changes}; tolerance {g['tolerance_rel']:.1%} on {g['windows']} windows"


def write_report(folder: str | Path, report: dict[str, Any]) -> Path:
    path = Path(folder) / REPORT_FILE
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(report, indent=2, default=float))
    os.replace(tmp, path)
    return path


def read_report(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder) / REPORT_FILE
    if not path.exists():
        return None
    return json.loads(path.read_text())


def mlflow_tags(report: dict[str, Any]) -> dict[str, str]:
    """The ``export.int8*`` tags (what ``hfcast registry show`` lists for a version)."""
    g = report.get("guard", {})
    tags = {"export.int8": "used by auto" if report.get("use_int8") else "not used (guard failed)"}
    for k, v in (g.get("rel_change") or {}).items():
        tags[f"export.int8_{k}_rel_change"] = f"{v:.3e}"
    if "reason" in g:
        tags["export.int8"] = f"not used: {g['reason']}"
    return tags


# --- what batch prediction picks -------------------------------------------------------------------

def validation_frame(lake: Any, forecaster: Any) -> tuple[Any, list[str]]:
    """The labelled features of the version's validation span (``meta['val_dates']``) in ``lake``."""
    from hfcast.features.engine import load_features

    wanted = list((getattr(forecaster, "meta", None) or {}).get("val_dates") or [])
    try:
        have = set(lake.dates("features")) if wanted else set()
    except Exception as exc:  # an unreachable lake must not stop an export: int8 stays unguarded
        log.warning("int8 guard: cannot list the lake's features (%s); int8 will not be used by auto", exc)
        return None, []
    dates = [d for d in wanted if d in have]
    if not dates:
        return None, []
    return load_features(lake, dates), dates


def cpu_choice(bundle_dir: str | Path, onnx_path: str | Path, lake: Any = None) -> tuple[str, str]:
    """``auto`` on CPU: the int8 model when its guard passed, else fp32 onnxruntime.

    The verdict is read from ``quantization.json`` beside the ONNX model, or computed once (and
    stored there) from ``lake``'s copy of the version's validation span.
    """
    folder = Path(onnx_path).parent
    report = read_report(folder)
    if report is None and lake is not None:
        from hfcast.forecaster import Forecaster

        fc = Forecaster.load(str(bundle_dir))
        frame, dates = validation_frame(lake, fc)
        if frame is None:  # nothing to guard with: fp32, and nothing cached (the lake may gain the span)
            log.info("int8 not considered: the lake lacks this version's validation span %s", fc.meta.get("val_dates"))
            return "onnxruntime", str(onnx_path)
        report = quantize_and_guard(fc, onnx_path, frame, dates, market=lake.market)
    if report and report.get("use_int8") and (folder / INT8_FILE).exists():
        return INT8_KIND, str(folder / INT8_FILE)
    return "onnxruntime", str(onnx_path)


def cpu_model(bundle_dir: str | Path, kind: str, onnx_path: str | Path, lake: Any = None,
              auto: bool = False) -> tuple[str, str]:
    """Batch prediction's CPU model: int8 when asked for, or for ``auto`` when its guard passed."""
    if kind == INT8_KIND:
        return INT8_KIND, ensure_int8(onnx_path)
    if auto:
        return cpu_choice(bundle_dir, onnx_path, lake)
    return kind, str(onnx_path)


def ensure_int8(onnx_path: str | Path) -> str:
    """The int8 model beside ``onnx_path`` (quantized now if missing) for an explicit int8 choice."""
    path = Path(onnx_path).parent / INT8_FILE
    if not path.exists():
        tmp = path.with_name(f".{INT8_FILE}.tmp-{os.getpid()}")
        quantize_onnx(onnx_path, tmp)
        os.replace(tmp, path)
    report = read_report(path.parent)
    if not (report and report.get("use_int8")):
        log.warning("using the int8 runner although its quality guard did not pass (or never ran); "
                    "'auto' would have chosen fp32 onnxruntime")
    return str(path)
