"""Executed by MLflow when it loads an hfcast model (models-from-code); see :mod:`hfcast.pyfunc`."""

import mlflow.models

from hfcast.pyfunc import HfcastModel

mlflow.models.set_model(HfcastModel())
