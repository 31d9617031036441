"""What several parts of hfcast must agree on, defined once.

Why one module: the features engine, the windows, the models, the export, the feature store, the
predictor and the monitor all read these values; a copy in each would drift apart silently (a
31-minute window in the server would still "work" and give other numbers). This module imports
only the standard library, so anything may import it without pulling in torch or pandas.
"""

from __future__ import annotations

import math
from typing import Any

#: minutes of features one forecast reads (the window is [t - LOOKBACK + 1, t])
LOOKBACK = 30

#: the best bid and offer of a bar: what ingest formats that carry quotes must provide (the bar
#: contract of hfcast.data.schema; here so format modules can name them without pandas)
QUOTE_COLUMNS = ("bid", "ask", "bid_size", "ask_size")

#: output columns of every forecaster, in this order (the prediction CSV, the server's answer)
PRED_COLUMNS = ("ret_60m_pred", "ret_60m_conf", "ret_60m_lo", "ret_60m_hi",
                "rv_10m_pred", "rv_10m_conf", "rv_10m_lo", "rv_10m_hi")

#: extra output columns beside PRED_COLUMNS (the prediction CSV, the server's answer): 1.0 when this
#: model version's confidence is informative (``Forecaster.confidence_info``), else 0.0; constant
#: per version. A downstream system should ignore a confidence flagged 0.
INFO_COLUMNS = ("ret_60m_conf_informative", "rv_10m_conf_informative")

#: vol confidence = P(|rv / rv_hat - 1| <= VOL_TOLERANCE): "realized vol within +-25% of the forecast"
VOL_TOLERANCE = 0.25

#: what each target is and its unit, stated once for the README, the server's metadata, the CSV
#: manifest, the MLflow signature and the report (a volatility in percent or annualised would be
#: a 100x or 20x misreading, so every output names its unit)
TARGET_UNITS = {
    "ret_60m": "log return of the mid over the next 60 minutes, log(mid[t+60] / mid[t]); a plain "
               "number (0.001 = 0.1% = 10 bp), not annualised",
    "rv_10m": "realized volatility of the next 10 minutes, sqrt of the sum of squared one-minute log "
              "mid returns over minutes t+1..t+10; a plain number per 10 minutes (0.001 = 0.1%), not "
              "annualised",
}

#: unit of every output column (PRED_COLUMNS + INFO_COLUMNS)
COLUMN_UNITS = {
    "ret_60m_pred": "log return over 60 minutes (dimensionless)",
    "ret_60m_conf": "probability in [0, 1] that the sign of ret_60m_pred is right",
    "ret_60m_lo": "log return over 60 minutes, lower end of the 80% interval",
    "ret_60m_hi": "log return over 60 minutes, upper end of the 80% interval",
    "rv_10m_pred": "realized volatility per 10 minutes (dimensionless, not annualised)",
    "rv_10m_conf": "probability in [0, 1] that realized rv_10m lands within +-25% of rv_10m_pred",
    "rv_10m_lo": "realized volatility per 10 minutes, lower end of the 80% interval",
    "rv_10m_hi": "realized volatility per 10 minutes, upper end of the 80% interval",
    "ret_60m_conf_informative": "1.0 if this version's return confidence ranked outcomes on validation, else 0.0",
    "rv_10m_conf_informative": "1.0 if this version's volatility confidence ranked errors on validation, else 0.0",
}

#: the files of a forecaster bundle (hfcast.forecaster; JSON, never pickle); each network it runs
#: lies beside them in ``members/<arch>/`` (weights as safetensors), and ``checksums.json`` records
#: the SHA-256 of every file
BUNDLE_FILES = ("model.json", "scaler.json", "calibration.json", "baselines.json")

#: the feature list actually written by the features engine, beside the ``features/`` partitions
FEATURE_SET_FILE = "_feature_set.json"


def finite(x: Any) -> bool:
    """True for a real, finite number (NumPy scalars included).

    Booleans (Python or NumPy), strings and bytes are NOT numbers here, even though ``float(True)``
    works: a score of ``True`` is a caller's mistake, and treating it as 1.0 could let the gate
    promote a model on a flag. None, NaN and infinities are not finite.
    """
    if isinstance(x, (str, bytes, bool)) or type(x).__name__ == "bool_":
        return False
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError, OverflowError):
        return False
