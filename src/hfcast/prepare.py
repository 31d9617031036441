"""Bring the features table up to date and name its version: the first stage of every training.

Why a core function: the training pipeline's first step, the demo and a notebook all need the same
sequence (simulate if the lake is empty, validate, featurize, version, open the MLflow store), and
it should be testable without Kubeflow. The ``prepare_data`` component is one call to
:func:`prepare_data`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from hfcast.config import Settings
from hfcast import registry, versioning
from hfcast.storage import Lake

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SynthRequest:
    """A simulated universe for an empty lake (the component's ``synth_*`` parameters)."""

    n_symbols: int = 0  # > 0: simulate when the lake has no raw bars; 0 = never simulate
    n_days: int = 0     # 0 = params.yaml ``synth.n_days``
    seed: int = -1      # < 0 = params.yaml ``synth.seed``
    shift_day: int = -1  # first day of the shifted regime; -1 = params.yaml, -2 = stationary (no shift)


@dataclass
class PreparedData:
    """Where the features are and which version they are (what the training steps receive)."""

    lake_url: str
    features_url: str
    dataset_version: str  # DVC hash of the features, '<md5>.dir[@<commit>]' (hfcast.versioning.features_version)
    dates: list[str] = field(default_factory=list)

    @property
    def first_date(self) -> str:
        return self.dates[0] if self.dates else ""

    @property
    def last_date(self) -> str:
        return self.dates[-1] if self.dates else ""

    def to_dict(self) -> dict[str, Any]:
        """The artifact metadata: everything but the date list, plus its length and ends."""
        out = {k: v for k, v in asdict(self).items() if k != "dates"}
        return {**out, "n_dates": len(self.dates), "first_date": self.first_date, "last_date": self.last_date}


def _synth_if_empty(settings: Settings, lake: Lake, synth: SynthRequest) -> None:
    from hfcast.data.simulator import SimConfig, write_synth

    if synth.n_symbols <= 0 or lake.dates("raw"):
        return
    cfg = SimConfig.from_params(settings.param("synth", {}), n_symbols=synth.n_symbols, n_days=synth.n_days or None,
                                seed=None if synth.seed < 0 else synth.seed,
                                regime_shift_day=synth.shift_day if synth.shift_day >= 0 else None)
    if synth.shift_day == -2:
        cfg.regime_shift_day = None
    write_synth(cfg, lake, progress=False, market=settings.market)


def _validate_and_featurize(settings: Settings, lake: Lake) -> str:
    """Validate and featurize every raw date; the features' version."""
    from hfcast.data.validate import ValidateConfig, run_validate
    from hfcast.features.engine import run_featurize

    run_validate(lake, progress=False, jump_limit=settings.section(ValidateConfig).jump_limit,
                 market=settings.market)
    done = run_featurize(lake, dates=settings.param("featurize.dates", None), progress=False,
                         market=settings.market)
    return versioning.features_version(settings, message=f"features {done['first']}..{done['last']}")


def prepare_data(settings: Settings, *, dvc_repo: str = "",
                 synth: SynthRequest | Mapping[str, int] | None = None) -> PreparedData:
    """Bring the features table up to date and return where it is and its dataset version.

    With ``dvc_repo`` (a DVC repository checkout): ``dvc repro`` (:func:`hfcast.versioning.prepare`);
    the lake is ``<dvc_repo>/data/lake`` and the version is the DVC hash of its features. Otherwise,
    on the settings' lake: simulate a market when ``synth.n_symbols`` > 0 and the lake has no raw
    bars yet, then validate and featurize every raw date. It also opens the MLflow store once, so
    parallel training steps do not race to create its schema.
    """
    if dvc_repo:
        settings = settings.with_(lake_url=(Path(dvc_repo).resolve() / versioning.LAKE_DIR).as_uri())
    lake = Lake.from_settings(settings)
    if dvc_repo:
        version = versioning.prepare(dvc_repo)
    else:
        _synth_if_empty(settings, lake, synth if isinstance(synth, SynthRequest) else SynthRequest(**dict(synth or {})))
        version = _validate_and_featurize(settings, lake)
    with registry.tracking(settings) as t:  # schema + experiment now: parallel train steps would race on them
        t.experiment_id  # noqa: B018 (the property creates the experiment)
    prepared = PreparedData(lake.url, lake.table("features"), version, list(lake.dates("features")))
    log.info("features %s: %d date(s) %s..%s, version %s", prepared.features_url, len(prepared.dates),
             prepared.first_date, prepared.last_date, version)
    return prepared
