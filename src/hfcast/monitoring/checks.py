"""What the monitor measured for one date: the input every alarm rule (:mod:`hfcast.monitoring.rules`)
judges and the decision (:mod:`hfcast.monitoring.decision`) records.

Apart from both so that a rule and the decision read the same record without importing each other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping


@dataclass
class Checks:
    """The measurements of one date (None = not measured, e.g. labels not matured)."""

    date: str
    version: str
    drift_share: float | None = None
    drifted_features: list[str] = field(default_factory=list)
    pred_drift_share: float | None = None
    drifted_predictions: list[str] = field(default_factory=list)
    live: dict[str, float] | None = None       # vol_qlike, ret_ic, n_labels... of the date (reference.live_scores)
    reference: dict[str, float] | None = None  # the reference spans' test scores
    measures: dict[str, dict[str, Any]] = field(default_factory=dict)  # rule name -> what its measure() returned

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> "Checks":
        """The checks of a stored decision record (keys of older records that are no field are left out)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in known})


@dataclass(frozen=True)
class DayData:
    """What the monitor holds for a date when it asks each rule for its own measurements
    (:meth:`hfcast.monitoring.rules.MonitorRule.measure`); frames are pandas DataFrames.

    ``joined`` is None when the date has no prediction CSV (nothing live to score).
    """

    date: str
    model: str
    version: str
    lake: Any                        # the hfcast.storage.Lake being monitored
    features: Any                    # the date's feature rows (the ones a full window ends on)
    reference: Any                   # the version's sampled reference rows (with its predictions)
    reference_doc: Mapping[str, Any]  # reference.json: training dates, test scores
    predictions: Any = None          # the date's prediction CSV rows, or None
    joined: Any = None               # predictions joined with the matured labels, or None
