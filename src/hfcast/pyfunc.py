"""The MLflow ``pyfunc`` face of a Forecaster bundle, so MLflow's own tools can load and serve it.

Why: ``mlflow models predict -m models:/hfcast@champion`` and KServe's ``modelFormat: mlflow``
expect an MLflow model (an ``MLmodel`` file and a loader), not a loose folder. The model is logged
"from code" (:data:`ENTRY` is the file MLflow runs on load), so nothing is pickled: the loader
rebuilds the Forecaster from the bundle's JSON + safetensors files, logged as an artifact.

Input: unscaled windows ``[batch, 30, n_features]`` (float32; float64 and integers are cast, a
``[batch, 30 * n_features]`` table of flattened windows is reshaped), features in the order of the
model's ``metadata.feature_names``. Output: one row per window with
:data:`hfcast.contracts.PRED_COLUMNS` and ``INFO_COLUMNS`` (the forecaster that walk-forward chose:
networks, floor, ensemble or a baseline, as registered).

Why the signature declares outputs only: MLflow checks a tensor input schema before the model
sees the data, accepts exactly one dtype and, on a mismatch, prints the whole array in its error.
The model checks its input itself (:func:`as_windows`: one line naming the shape it needs), and
the input's shape, dtype and feature order are in the model's metadata instead. MLflow 3.17's
``ColSpec`` has no description field, so the unit of every output column is in the metadata too
(``metadata.units``, from :data:`hfcast.contracts.COLUMN_UNITS`), where the MLmodel file shows it.
"""

from __future__ import annotations

import logging
import os
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from hfcast.contracts import COLUMN_UNITS, INFO_COLUMNS, LOOKBACK, PRED_COLUMNS, TARGET_UNITS
from hfcast.errors import UserError

log = logging.getLogger(__name__)

#: the file MLflow executes to build the model (models-from-code: no cloudpickle)
ENTRY = Path(__file__).with_name("pyfunc_entry.py")
BUNDLE_KEY = "bundle"
EXAMPLE_WINDOWS = 2  # windows in the logged input example (each is 30 x F numbers of JSON)
OUTPUT_COLUMNS = (*PRED_COLUMNS, *INFO_COLUMNS)


def _base():
    import mlflow.pyfunc

    return mlflow.pyfunc.PythonModel


class HfcastModel(_base()):  # type: ignore[misc]
    """Loads the bundle from the logged artifacts and predicts windows; see the module docstring."""

    # predict checks its input itself (as_windows): MLflow's type-hint wrapper would add nothing but
    # a warning, at import, that predict has no type hints (MLflow 3.17 reads this attribute in
    # PythonModel.__init_subclass__; were it dropped, only that warning would come back)
    _skip_type_hint_validation = True

    def load_context(self, context):
        from hfcast.forecaster import Forecaster

        self.forecaster = Forecaster.load(context.artifacts[BUNDLE_KEY])

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would check them first
        return self.forecaster.predict(as_windows(model_input, len(self.forecaster.feature_names)))


def as_windows(x: Any, n_features: int) -> np.ndarray:
    """The model's input as float32 windows ``[B, 30, n_features]``, or a one-line error.

    Accepts any real dtype (cast to float32), JSON nulls (NaN: a missing value, which the scaler
    serves as the training mean, as in batch prediction) and flattened windows
    ``[B, 30 * n_features]`` (what a DataFrame or a JSON table carries).
    """
    want = f"[batch, {LOOKBACK}, {n_features}]"
    fix = (f"send unscaled windows {want} of numbers, features in the order of the model's "
           "metadata 'feature_names'")
    try:
        arr = x.to_numpy() if hasattr(x, "to_numpy") else np.asarray(x)
        if arr.dtype == object:  # JSON null (a missing value, served as the training mean) -> NaN
            arr = arr.astype(np.float64)
    except (TypeError, ValueError):  # ragged nesting, strings
        raise UserError(f"hfcast model input must be a regular array of numbers, got {type(x).__name__} that "
                        "is not", fix) from None
    if arr.dtype.kind not in "fiub":
        raise UserError(f"hfcast model input must be numbers, got dtype {arr.dtype}", fix)
    if arr.ndim == 2 and arr.shape[1] == LOOKBACK * n_features:
        arr = arr.reshape(len(arr), LOOKBACK, n_features)
    if arr.ndim != 3 or tuple(arr.shape[1:]) != (LOOKBACK, n_features):
        raise UserError(f"hfcast model input has shape {tuple(arr.shape)}, expected windows {want}", fix)
    return np.ascontiguousarray(arr, dtype=np.float32)


def pip_requirements() -> list[str]:
    """Pinned requirements of the loader (hfcast itself must be installed where it is served)."""
    out = []
    for name in ("hfcast", "torch", "safetensors", "numpy", "pandas", "mlflow"):
        try:
            out.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(name)
    return out


def signature() -> Any:
    """The outputs MLflow shows: every forecast column and the informative flags, all doubles."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    return ModelSignature(inputs=None, outputs=Schema([ColSpec("double", c) for c in OUTPUT_COLUMNS]))


def model_metadata(forecaster: Any) -> dict[str, Any]:
    """What the MLmodel file says about the input and the units of every output (see module docstring)."""
    names = list(forecaster.feature_names)
    return {"input": {"shape": [-1, LOOKBACK, len(names)], "dtype": "float32 (float64 and integers are cast)",
                      "what": "unscaled feature windows: the last 30 minutes of features, oldest first, as the "
                              "features engine writes them; features in feature_names order"},
            "feature_names": names, "units": {c: COLUMN_UNITS[c] for c in OUTPUT_COLUMNS},
            "target_units": dict(TARGET_UNITS), "forecaster": forecaster.kind}


def example_windows(lake: Any, feature_names: Sequence[str], date: str, n: int = EXAMPLE_WINDOWS) -> np.ndarray | None:
    """``n`` real unscaled windows of one symbol on ``date`` (spread over its session), for the
    input example; None (with a log line) when the lake has no complete, finite window there.

    Why real ones: MLflow shows the example beside the model, and a user copies it to try the
    model; random noise would show nothing of what the features look like.
    """
    from hfcast.features.windows import build_windows

    names = list(feature_names)
    try:
        df = lake.read("features", date, ["symbol", "ts", *names])
        df = df[df["symbol"] == df["symbol"].min()]
        wa = build_windows(df, names, label_cols=None)
        if not len(wa):
            raise ValueError(f"no complete {LOOKBACK}-minute window on {date}")
        w = wa.windows(np.arange(len(wa)))
    except (OSError, KeyError, ValueError) as exc:
        log.warning("the MLflow model is logged without an input example: %s", exc)
        return None
    finite = np.flatnonzero(np.isfinite(w).all(axis=(1, 2)))
    if not finite.size:
        absent = [f for f, has in zip(names, np.isfinite(w).any(axis=(0, 1))) if not has]
        log.warning("the MLflow model is logged without an input example: no window on %s has every feature "
                    "finite%s (the model itself takes missing features)", date,
                    f"; never present there: {', '.join(absent)}" if absent else "")
        return None
    pick = finite[np.unique(np.linspace(0, finite.size - 1, n).round().astype(int))]
    return np.ascontiguousarray(w[pick], dtype=np.float32)


def log_pyfunc(bundle_dir: str | os.PathLike, input_example: np.ndarray | None = None, name: str = "mlflow-model",
               tags: dict[str, str] | None = None, params: dict[str, Any] | None = None) -> Any:
    """Log the bundle as an MLflow model into the ACTIVE run; returns MLflow's ModelInfo.

    The input example (real windows, :func:`example_windows`) is predicted once before logging,
    so a bundle whose answer does not match the signature's columns is refused here, not at
    serving. ``tags`` and ``params`` go to the logged model's page (commit, what it serves).
    """
    import mlflow

    from hfcast.forecaster import Forecaster

    fc = Forecaster.load(str(bundle_dir))
    if input_example is not None:
        input_example = as_windows(input_example, len(fc.feature_names))
        got = list(fc.predict(input_example).columns)
        if got != list(OUTPUT_COLUMNS):
            raise ValueError(f"the forecaster answers columns {got}, the signature declares {list(OUTPUT_COLUMNS)}")
    with warnings.catch_warnings():
        # without an example MLflow warns in colour; example_windows already said why there is none
        warnings.filterwarnings("ignore", message=".*input example was not provided", category=UserWarning)
        return mlflow.pyfunc.log_model(name=name, python_model=str(ENTRY), artifacts={BUNDLE_KEY: str(bundle_dir)},
                                       signature=signature(), input_example=input_example,
                                       metadata=model_metadata(fc), pip_requirements=pip_requirements(), tags=tags,
                                       params=params, model_type="hfcast-forecaster")
