"""Forecasting networks: one file per architecture, all sharing :class:`~hfcast.models.base.ForecastNet`.

``build_model(arch, n_features, config)`` is the single way to construct one, so a saved bundle
(arch + config dict) rebuilds the exact network.

**Adding an architecture** is one file in this package and one test: the class line registers it
(``class MyNet(ForecastNet, arch="mynet", config=MyConfig)``, see :mod:`hfcast.models.base`), and
every list derives from the registry (:func:`architectures`): the ``--models`` choices of the command
line, ``forecaster.archs`` checks, the training pipeline's default, the test harness. Every module
of this package is imported here once, so a new file needs no import line anywhere.
"""

from __future__ import annotations

import importlib
import pkgutil

from hfcast.contracts import PRED_COLUMNS
from hfcast.models._modules import SelfAttention  # public: explanations read attention maps
from hfcast.models.base import RAW_OUTPUTS, ForecastNet, TrainedNet, architectures, build_model, model_config



def _import_architecture_files() -> None:
    """Import every architecture file of this package: its class line registers it."""
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module.name not in ("base", "baselines") and not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")


_import_architecture_files()

#: the architectures that ship (and any registered before this package finished importing);
#: :func:`architectures` also lists one registered later (a plug-in, a test)
ARCHITECTURES: tuple[str, ...] = architectures()

__all__ = ["ARCHITECTURES", "PRED_COLUMNS", "RAW_OUTPUTS", "ForecastNet", "SelfAttention", "TrainedNet", "architectures",
           "build_model", "model_config"]
