"""The MLflow ``pyfunc`` face of a Forecaster bundle, so MLflow's own tools can load and serve it.

Why: ``mlflow models predict -m models:/hfcast@champion`` and KServe's ``modelFormat: mlflow``
expect an MLflow model (an ``MLmodel`` file and a loader), not a loose folder. The model is logged
"from code" (:data:`ENTRY` is the file MLflow runs on load), so nothing is pickled: the loader
rebuilds the Forecaster from the bundle's JSON + safetensors files, logged as an artifact.

Input: unscaled windows ``[batch, 30, n_features]`` float32, features in the bundle's order.
Output: one row per window with :data:`hfcast.contracts.PRED_COLUMNS` and ``INFO_COLUMNS`` (the
forecaster that walk-forward chose: networks, floor, ensemble or a baseline, as registered).
"""

from __future__ import annotations

import logging
import os
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import numpy as np

log = logging.getLogger(__name__)

#: the file MLflow executes to build the model (models-from-code: no cloudpickle)
ENTRY = Path(__file__).with_name("pyfunc_entry.py")
BUNDLE_KEY = "bundle"


def _base():
    import mlflow.pyfunc

    return mlflow.pyfunc.PythonModel


class HfcastModel(_base()):  # type: ignore[misc]
    """Loads the bundle from the logged artifacts and predicts windows; see the module docstring."""

    def load_context(self, context):
        from hfcast.forecaster import Forecaster

        self.forecaster = Forecaster.load(context.artifacts[BUNDLE_KEY])

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would read them as a schema
        x = model_input.to_numpy() if hasattr(model_input, "to_numpy") else np.asarray(model_input)
        return self.forecaster.predict(np.asarray(x, dtype=np.float32))


def pip_requirements() -> list[str]:
    """Pinned requirements of the loader (hfcast itself must be installed where it is served)."""
    out = []
    for name in ("hfcast", "torch", "safetensors", "numpy", "pandas", "mlflow"):
        try:
            out.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(name)
    return out


def example_windows(feature_names: Sequence[str], lookback: int, n: int = 2, seed: int = 0) -> np.ndarray:
    """A small input example (random windows of the right shape; MLflow only needs the shape)."""
    return np.random.default_rng(seed).normal(size=(n, lookback, len(feature_names))).astype(np.float32)


def log_pyfunc(bundle_dir: str | os.PathLike, feature_names: Sequence[str], lookback: int,
               name: str = "mlflow-model") -> Any:
    """Log the bundle as an MLflow model into the ACTIVE run; returns MLflow's ModelInfo.

    The signature is inferred from a real prediction on the input example, so the schema MLflow
    shows is what the model returns.
    """
    import mlflow
    from mlflow.models import infer_signature

    from hfcast.forecaster import Forecaster

    example = example_windows(feature_names, lookback)
    signature = infer_signature(example, Forecaster.load(str(bundle_dir)).predict(example))
    return mlflow.pyfunc.log_model(name=name, python_model=str(ENTRY), artifacts={BUNDLE_KEY: str(bundle_dir)},
                                   signature=signature, input_example=example, pip_requirements=pip_requirements())
