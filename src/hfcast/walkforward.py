"""Walk-forward splits: train / validation / test spans that move forward in time.

Like qlib's ``RollingGen``, the splits are an explicit generator configured by dates in
params.yaml (section ``walkforward:``), not by code. Between consecutive spans an embargo of
whole trading days is skipped; it must cover the longest label horizon so that no training or
validation label reads a minute that a later span trains or is scored on. Labels here never
cross the close (a 60-minute return at 15:30 is missing, not taken from the next day), so one
day is already conservative; the check is explicit so a longer label cannot slip through.

Every reported score comes from a test span that the model (and its scaler and calibrator)
never saw; test spans of successive folds never overlap.

``run_walkforward`` runs every architecture and the baselines on identical folds (torch and
the model code are imported inside it, so fold generation stays light).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from hfcast import registry
from hfcast.calibration import Calibrator
from hfcast.config import Settings, checked_section
from hfcast.contracts import INFO_COLUMNS, PRED_COLUMNS
from hfcast.data.schema import LABEL_HORIZONS
from hfcast.features.catalog import feature_names
from hfcast.features.engine import read_feature_set
from hfcast.features.stream import SpanReader, open_training_source
from hfcast.features.windows import (LABEL_COLS, Scaler, WindowArrays, build_windows, label_moments, merge_moments,
                                     nan_moments)
from hfcast.forecaster import Choice, compose
from hfcast.market import Market, resolve
from hfcast.market import default as xnys
from hfcast.models.baselines import (BASELINES, DEPLOYABLE, TRUTH, WINDOW_FEATURES, baseline_inputs, check_features,
                                     context, fit_baselines)
from hfcast.pyfunc import example_windows
from hfcast.registry import load_forecaster
from hfcast.scoring import BottomK, ScoreStream, row_keys, utc_index
from hfcast.selection import SelectOptions, hour_clusters, select_fold
from hfcast.storage import Lake

log = logging.getLogger(__name__)

MODES = ("expanding", "sliding")


@dataclass(frozen=True)
class WalkForwardConfig:
    """Walk-forward schedule, in trading days of the lake's date list.

    ``market`` is the calendar those trading days are sessions of (``Settings.market``, passed by
    :meth:`from_params`; XNYS when built without one): it sets the embargo a label horizon needs and
    the trade dates of the spans. It is a value, not a ``walkforward:`` key (the calendar is
    params.yaml ``market:``).
    """

    mode: str = "expanding"          # expanding: train from the first date; sliding: last train_days
    train_days: int = 10             # minimum (expanding) / exact (sliding) training span
    val_days: int = 3                # early stopping + calibration span
    test_days: int = 3               # scored span
    step_days: int | None = None     # days between fold starts (default test_days; >= test_days)
    embargo_days: int = 1            # whole days skipped between train|val and val|test
    first_test_date: str | None = None  # first day of the first test span (default: earliest possible)
    last_date: str | None = None     # ignore dates after this one
    max_folds: int | None = None     # keep at most this many folds (the LAST ones)
    label_horizon_minutes: int = max(LABEL_HORIZONS.values())  # longest label look-ahead
    eval_stride: int = 1             # window stride on val/test spans (1 = every minute)
    train_stride: int = 1            # window stride on train spans (10 = sparse, every 10th minute)
    # memory: what a fold holds at once, whatever the number of days (docs/SCALE.md)
    chunk_rows: int | None = 1_000_000       # feature rows read at once (whole dates) to fit baselines / score tests
    baseline_fit_windows: int | None = 500_000  # seeded sample of training windows the baselines fit on
    select_max_windows: int | None = 500_000    # seeded sample of validation windows the choice reads
    max_prediction_rows: int | None = 250_000   # test rows per model kept in the predictions table
    sample_seed: int = 0                     # seed of those samples
    market: Market = field(default_factory=xnys, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("first_test_date", "last_date"):  # YAML reads 2024-01-02 as a date: dates compare as ISO text
            if getattr(self, name) is not None:
                object.__setattr__(self, name, str(getattr(self, name)))
        if self.mode not in MODES:
            raise ValueError(f"walkforward.mode must be one of {MODES}, got {self.mode!r}")
        for name in ("train_days", "val_days", "test_days", "eval_stride", "train_stride"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"walkforward.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("chunk_rows", "baseline_fit_windows", "select_max_windows", "max_prediction_rows"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise ValueError(f"walkforward.{name} must be >= 1 or null (no limit), got {getattr(self, name)}")
        if self.step < self.test_days:
            raise ValueError(f"walkforward.step_days ({self.step}) < test_days ({self.test_days}): "
                             "test spans would overlap and a day would be scored twice")
        object.__setattr__(self, "market", resolve(self.market))
        need = min_embargo_days(self.label_horizon_minutes, self.market)
        if self.embargo_days < need:
            raise ValueError(f"walkforward.embargo_days={self.embargo_days} is shorter than the label "
                             f"horizon ({self.label_horizon_minutes} min needs >= {need} day(s))")
        if self.max_folds is not None and self.max_folds < 1:
            raise ValueError(f"walkforward.max_folds must be >= 1 or null, got {self.max_folds}")

    @property
    def step(self) -> int:
        return int(self.step_days if self.step_days is not None else self.test_days)

    @classmethod
    def from_params(cls, section: Mapping[str, Any] | None, market: Market | None = None) -> "WalkForwardConfig":
        """Build from the ``walkforward:`` mapping of params.yaml; unknown keys are an error.

        The ``models`` key (per-architecture config overrides) is read by :func:`model_configs`;
        ``market`` is the settings' calendar (None: XNYS).
        """
        section = {k: v for k, v in (section or {}).items() if k != "models"}
        if "market" in section:
            raise ValueError("walkforward.market is not a walk-forward setting: set the calendar in params.yaml market:")
        return cls(**checked_section(cls, section, "walkforward parameter(s)"), market=market)

    def to_dict(self) -> dict[str, Any]:
        """The ``walkforward:`` settings (:meth:`from_params` takes them back; the calendar is ``market:``)."""
        return {f: getattr(self, f) for f in self.__dataclass_fields__ if f != "market"}


def model_configs(section: Mapping[str, Any] | None) -> dict[str, dict]:
    """Per-architecture config overrides from ``walkforward.models`` (empty when absent)."""
    models = dict((section or {}).get("models") or {})
    bad = [k for k, v in models.items() if not isinstance(v, Mapping)]
    if bad:
        raise ValueError(f"walkforward.models.{bad[0]} must be a mapping of config fields")
    return {k: dict(v) for k, v in models.items()}


def min_embargo_days(horizon_minutes: int, market: Market | None = None) -> int:
    """Whole trading days of ``market`` (None: XNYS) needed so a label of this horizon cannot reach the next span."""
    return max(1, math.ceil(horizon_minutes / resolve(market).regular_minutes()))


@dataclass(frozen=True)
class Fold:
    """One split: ISO date lists, chronological, with the embargo days left out between them."""

    index: int
    train: list[str]
    val: list[str]
    test: list[str]
    embargo: list[str] = field(default_factory=list)

    @property
    def all_dates(self) -> list[str]:
        return [*self.train, *self.val, *self.test]

    def describe(self) -> str:
        return (f"fold {self.index}: train {self.train[0]}..{self.train[-1]} ({len(self.train)}d), "
                f"val {self.val[0]}..{self.val[-1]} ({len(self.val)}d), "
                f"test {self.test[0]}..{self.test[-1]} ({len(self.test)}d)")


def generate_folds(dates: Sequence[str], cfg: WalkForwardConfig) -> Iterator[Fold]:
    """Yield the walk-forward folds over ``dates`` (ISO trading dates; sorted and de-duplicated here).

    Without ``first_test_date`` the folds are laid out from the END: the last fold's test span ends
    on the last date and every fold has ``test_days`` test days (a model chosen today is tested on
    the most recent days, and no fold is cut short). With ``first_test_date`` they run forward from
    it, and a final fold with fewer than ``test_days`` test days is dropped (logged; refused when it
    would be the only one).

    Raises:
        ValueError: too few dates for one fold, or ``first_test_date`` leaves too little history
            (the message says how many days were needed and available).
    """
    days = sorted({str(d) for d in dates})
    if cfg.last_date is not None:
        days = [d for d in days if d <= cfg.last_date]
    emb = cfg.embargo_days
    need_before = cfg.train_days + emb + cfg.val_days + emb
    if cfg.first_test_date is None:
        if len(days) < need_before + cfg.test_days:
            raise ValueError(f"walkforward needs at least {need_before + cfg.test_days} trading dates for one fold "
                             f"(train {cfg.train_days} + val {cfg.val_days} + 2 x embargo {emb} + test "
                             f"{cfg.test_days}); got {len(days)}")
        starts = list(range(len(days) - cfg.test_days, need_before - 1, -cfg.step))[::-1]
    else:
        t0 = next((i for i, d in enumerate(days) if d >= cfg.first_test_date), len(days))
        if t0 < need_before:
            raise ValueError(f"walkforward.first_test_date={cfg.first_test_date} leaves {t0} earlier "
                             f"day(s); train+val+2*embargo needs {need_before}")
        starts = list(range(t0, len(days), cfg.step))
        if starts and len(days) - starts[-1] < cfg.test_days:
            if len(starts) == 1:
                raise ValueError(f"the only fold would have {len(days) - starts[-1]} test day(s) after "
                                 f"walkforward.first_test_date={cfg.first_test_date}, fewer than test_days="
                                 f"{cfg.test_days}: move first_test_date earlier or lower test_days")
            log.warning("dropping the final fold: only %d test day(s) from %s (test_days=%d)",
                        len(days) - starts[-1], days[starts[-1]], cfg.test_days)
            starts = starts[:-1]
        if not starts:
            raise ValueError(f"walkforward.first_test_date={cfg.first_test_date} is after the last date {days[-1]}")
    if cfg.max_folds is not None:
        starts = starts[-cfg.max_folds:]
    for k, ts in enumerate(starts):
        test = days[ts:ts + cfg.test_days]
        val_end = ts - emb
        val = days[val_end - cfg.val_days:val_end]
        train_end = val_end - cfg.val_days - emb
        train_start = 0 if cfg.mode == "expanding" else train_end - cfg.train_days
        train = days[train_start:train_end]
        embargo = days[train_end:train_end + emb] + days[val_end:ts]
        yield Fold(index=k, train=train, val=val, test=test, embargo=embargo)


def folds_from_settings(dates: Sequence[str], params: Mapping[str, Any], market: Market | None = None) -> list[Fold]:
    """Folds for the ``walkforward:`` section of a params mapping, in sessions of ``market`` (None: XNYS)."""
    return list(generate_folds(dates, WalkForwardConfig.from_params(params.get("walkforward"), market)))


# -- orchestration: every architecture and baseline on identical folds -------------------------

SERVED = "forecaster"  # the ``model`` of the predictions rows of the forecaster each fold chose


@dataclass
class WalkForwardResult:
    """What a walk-forward run produced; every score is from test spans.

    Attributes:
        predictions: long frame, one row per (model, test window): ``model``, ``fold``, ``symbol``,
            ``ts``, PRED_COLUMNS, INFO_COLUMNS, labels and truth when present. ``model`` is
            ``forecaster`` (what each fold chose on validation: the served forecaster), each bare
            network (``lstm``...), each floored network (``lstm+floor``), ``ensemble`` and the baselines.
            Every test window while they number at most ``walkforward.max_prediction_rows`` per
            model, else the same seeded sample of them for every model (``sampled``).
        per_fold: scores per (model, fold). aggregate: scores pooled over all test rows, by model
            (both over EVERY test row, sampled table or not: :mod:`hfcast.scoring`).
        forecaster: the last fold's chosen :class:`hfcast.forecaster.Forecaster` (what is registered).
        choices: each fold's :class:`hfcast.forecaster.Choice` (what it served and why).
        nets: per architecture, the trained network of every fold.
        histories: per architecture, the training history of each fold.
        throughput: per architecture, median over folds of training windows per second.
    """

    folds: list[Fold]
    predictions: Any
    per_fold: Any
    aggregate: Any
    forecaster: Any
    choices: list[Any]
    nets: dict[str, list[Any]]
    histories: dict[str, list]
    throughput: dict[str, float]
    feature_names: list[str]
    sampled: bool = False  # predictions holds a sample of the test rows (the scores do not)

    def test_spans(self) -> list[tuple[str, str]]:
        return [(f.test[0], f.test[-1]) for f in self.folds]

    def scores(self, model: str = SERVED) -> dict[str, float]:
        """Pooled test scores of one model (default: the served forecaster)."""
        return {str(k): float(v) for k, v in self.aggregate.loc[model].items()}

    def baseline_scores(self) -> dict[str, dict[str, float]]:
        """Pooled test scores of every baseline the gate compares with (the oracle is the ceiling,
        not a baseline a model can be required to beat)."""
        return {m: self.scores(m) for m in self.aggregate.index if m in BASELINES and m != "oracle"}


def _feature_names(lake, reader) -> list[str]:
    """The feature list written by the feature engine, else the catalogue's (present columns only)."""
    try:
        return list(read_feature_set(lake)["features"])
    except (FileNotFoundError, KeyError, OSError) as exc:
        columns = set(reader.columns())
        names = [n for n in feature_names(True) if n in columns]
        log.warning("no feature set file (%s); using %d catalogue features found in the frame", exc, len(names))
        return names


def trading_dates(dates: Sequence[str], market: Any = None) -> list[str]:
    """The dates that are sessions of the market calendar (a closed day's empty partition is not a
    trading day: counting it would shift every span by one)."""
    mk = resolve(market)
    kept = [d for d in sorted({str(x) for x in dates}) if mk.is_session(d)]
    dropped = sorted(set(map(str, dates)) - set(kept))
    if dropped:
        log.warning("ignoring %d date(s) that are not %s sessions: %s", len(dropped), getattr(mk, "name", "market"),
                    dropped[:5])
    return kept


def _folds(reader, wf_cfg: WalkForwardConfig, dates: Sequence[str] | None, from_lake: bool) -> list[Fold]:
    """The folds over the trading dates that hold features (a lake partition without rows - a
    closed exchange, a failed day - is not a trading day; the parquet footers tell)."""
    days = trading_dates(dates or reader.dates(), wf_cfg.market)
    folds = list(generate_folds(days, wf_cfg))
    if not from_lake:
        return folds
    needed = sorted({d for f in folds for d in f.all_dates} | {d for d in days if d <= folds[-1].test[-1]})
    counts = reader.rows(needed)
    empty = [d for d in needed if counts[d] == 0]
    if empty:
        log.warning("ignoring %d features date(s) without rows: %s", len(empty), empty[:5])
        folds = list(generate_folds([d for d in days if d not in empty], wf_cfg))
    return folds


@dataclass
class Prepared:
    """What every fold reads: the folds, the feature list and where whole dates of features come
    from. It holds no span's data: each step reads the dates it needs, a bounded chunk at a time
    (a training span above ``train.stream_above_rows`` streams), so memory does not grow with the days.
    """

    folds: list[Fold]
    feature_names: list[str]
    reader: Any        # hfcast.features.stream.SpanReader over the lake or the given frame
    lake: Any = None   # the lake a large training span streams from (None when a frame was given)


def prepare(lake, wf_cfg: WalkForwardConfig, dates: Sequence[str] | None = None, frame=None,
            feature_names: Sequence[str] | None = None) -> Prepared:
    """Folds and features for :func:`train_members` and :func:`select_folds` (reads parquet footers
    and the feature-set file only)."""
    reader = SpanReader(lake=lake, market=wf_cfg.market) if frame is None else SpanReader(frame=frame, market=wf_cfg.market)
    folds = _folds(reader, wf_cfg, dates, frame is None)
    names = list(feature_names) if feature_names is not None else _feature_names(lake, reader)
    check_features(names)
    return Prepared(folds, names, reader, lake if frame is None else None)


def _windows(prep: Prepared, frame, stride: int, fold: Fold | None = None, span: str | None = None,
             feature_names: Sequence[str] | None = None):
    """Windows of a frame of whole dates at a stride; with ``span`` (a whole span), none is an error."""
    wa = build_windows(frame, list(feature_names or prep.feature_names), stride=stride, market=prep.reader.market)
    if span is not None and not len(wa):
        raise ValueError(f"{fold.describe()} has no {span} windows ({len(frame)} feature rows)")
    return wa


def _train_data(prep: Prepared, fold: Fold, wf_cfg: WalkForwardConfig, train_cfg: Any):
    """The fold's training windows: streamed from the lake date by date when the span has more than
    ``train.stream_above_rows`` feature rows (:func:`hfcast.features.stream.open_training_source`),
    else one in-memory WindowArrays."""
    if prep.lake is not None:
        from hfcast.train import TrainConfig

        data = open_training_source(prep.lake, fold.train, prep.feature_names, train_cfg or TrainConfig(),
                                    wf_cfg.train_stride, wf_cfg.market)
    else:
        data = _windows(prep, prep.reader.read(fold.train, [*prep.feature_names, *LABEL_COLS]), wf_cfg.train_stride,
                        fold, "training")
    if isinstance(data, WindowArrays) and not len(data):
        raise ValueError(f"{fold.describe()} has no training windows")
    return data


def train_members(prep: Prepared, archs: Sequence[str], wf_cfg: WalkForwardConfig, train_cfg: Any = None,
                  model_configs: Mapping[str, dict] | None = None, progress: bool = True,
                  on_epoch=None) -> tuple[dict[str, list[Any]], dict[str, list], dict[str, float]]:
    """Train every architecture on every fold (training span; early stopping and its bare
    calibration on validation). Returns (nets per arch per fold, histories, throughput).

    Per fold the training windows come from :func:`_train_data` (shared by the architectures: a
    stream's scaler pass and cache are made once), the validation span is read whole (the trainer
    caps it at ``train.max_val_windows``)."""
    from hfcast.train import train_forecaster

    nets: dict[str, list[Any]] = {a: [] for a in archs}
    hists: dict[str, list] = {a: [] for a in archs}
    for fold in prep.folds:
        if not archs:
            continue
        train = _train_data(prep, fold, wf_cfg, train_cfg)
        val_wa = _windows(prep, prep.reader.read(fold.val, [*prep.feature_names, *LABEL_COLS]), wf_cfg.eval_stride,
                          fold, "validation")
        if progress:
            n = len(train) if hasattr(train, "__len__") else train.n_windows()
            log.info("%s: %d train / %d val windows", fold.describe(), n, len(val_wa))
        for arch in archs:
            t0 = time.perf_counter()
            net, hist = train_forecaster(arch, train, val_wa, model_config=(model_configs or {}).get(arch),
                                         cfg=train_cfg, progress=progress,
                                         on_epoch=(lambda rec, a=arch, f=fold: on_epoch(a, f, rec)) if on_epoch else None)
            nets[arch].append(net)
            hists[arch].append(hist)
            if progress:
                log.info("  %s trained in %.1fs", arch, time.perf_counter() - t0)
        del train, val_wa  # a stream's local cache goes with it
    thr = {a: float(np.median([h.get("windows_per_s", np.nan) for h in hs])) for a, hs in hists.items() if hs}
    return nets, hists, thr


def _natural(net, wa, batch: int = 8192) -> dict[str, np.ndarray]:
    parts = [net.natural_windows(wa.windows(np.arange(i, min(i + batch, len(wa))))) for i in range(0, len(wa), batch)]
    if not parts:
        return {k: np.empty(0) for k in ("ret_mu", "ret_sigma", "rv_hat", "lrv_sigma")}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _frame_of(cal, nat: dict[str, np.ndarray], ctx: dict | None) -> Any:
    out = cal.apply(nat, ctx)
    return pd.DataFrame({**{c: out[c] for c in PRED_COLUMNS}, **cal.info_columns(len(nat["rv_hat"]))},
                        columns=[*PRED_COLUMNS, *INFO_COLUMNS])


def _keys_at_ends(wa) -> tuple[np.ndarray, np.ndarray]:
    """(symbol, end time as UTC datetime64) of every window."""
    return wa.keys["symbol"].to_numpy()[wa.ends], utc_index(wa.keys["ts"]).tz_localize(None)[wa.ends].to_numpy()


def _sample_windows(wa, k: int | None, seed: int):
    """At most ``k`` windows (a seeded sample by row identity, in their order); all when fewer."""
    if k is None or len(wa) <= k:
        return wa

    keys = row_keys(*_keys_at_ends(wa), seed)
    log.info("sampling %d of %d validation windows for the choice (walkforward.select_max_windows)", k, len(wa))
    return wa.select(np.sort(np.argpartition(keys, k - 1)[:k]))


def _side_features(names: Sequence[str]) -> list[str]:
    """The features the baselines' window inputs read (hfcast.models.baselines)."""
    return [n for n in names if n in WINDOW_FEATURES]


def _train_inputs(prep: Prepared, fold: Fold, wf_cfg: WalkForwardConfig, need_scaler: bool):
    """The training span's window inputs the baselines are fitted on, and (for a forecaster without
    networks) the span's scaler.

    Why a sample: the baselines are a few OLS coefficients and residual scales (har_tod has 7 per
    regime), which ``walkforward.baseline_fit_windows`` windows (default 500 000) pin down as well
    as a year's 10^8 would; they are the windows with the smallest seeded hash of (symbol, ts) over
    the span (uniform over dates and symbols), in (symbol, ts) order - every window, in the same
    order as one frame of the span, when there are fewer. The span is read ``walkforward.chunk_rows``
    feature rows at a time; the scaler's moments are merged over the chunks.
    """
    feats = list(prep.feature_names) if need_scaler else _side_features(prep.feature_names)
    present = set(prep.reader.columns(fold.train[0]))
    cols = [*feats, *[c for c in (*LABEL_COLS, *TRUTH) if c in present]]
    sample = BottomK(wf_cfg.baseline_fit_windows)
    moments = None
    for _, frame in prep.reader.chunks(fold.train, wf_cfg.chunk_rows, cols):
        wa = _windows(prep, frame, wf_cfg.train_stride, feature_names=feats)
        if not len(wa):
            continue
        sym, ts = _keys_at_ends(wa)
        sample.add(baseline_inputs(wa, frame).reset_index(drop=True).assign(_symbol=sym, _ts=ts),
                   row_keys(sym, ts, wf_cfg.sample_seed))
        if need_scaler:
            m = (nan_moments(wa.X, np.flatnonzero(wa.rows_covered())), *label_moments(wa.labels()))
            moments = m if moments is None else tuple(merge_moments(a, b) for a, b in zip(moments, m))
    if not sample.seen:
        raise ValueError(f"{fold.describe()} has no training windows")
    if len(sample) < sample.seen:
        log.info("%s: baselines fitted on a sample of %d of %d training windows (walkforward.baseline_fit_windows)",
                 fold.describe(), len(sample), sample.seen)
    inputs = sample.frame(["_symbol", "_ts"]).drop(columns=["_symbol", "_ts"])
    scaler = Scaler().set_moments(*moments, feature_names=prep.feature_names) if need_scaler else None
    return inputs, scaler


@dataclass
class _FoldChoice:
    """What a fold chose on validation, and what its test span is predicted with."""

    selection: Any          # hfcast.selection.FoldSelection
    baselines: dict         # fitted baselines by name
    candidates: dict        # name -> (Choice or None for a bare network, its validation calibrator)


def _choose(prep: Prepared, fold: Fold, nets: Mapping[str, Any], wf_cfg: WalkForwardConfig, names: Sequence[str],
            options: Any) -> _FoldChoice:
    """Fit the baselines, choose the forecaster on validation (:mod:`hfcast.selection`) and calibrate
    every candidate there - the bare, floored and ensembled networks - like the served forecaster,
    so the comparison table shows what the choice was made from. Validation is read whole (it is
    ``val_days`` long) and read by at most ``walkforward.select_max_windows`` windows."""
    tr_inp, scaler = _train_inputs(prep, fold, wf_cfg, need_scaler=not nets)
    val_frame = prep.reader.read(fold.val)
    val_wa = _sample_windows(_windows(prep, val_frame, wf_cfg.eval_stride, fold, "validation"),
                             wf_cfg.select_max_windows, wf_cfg.sample_seed)
    val_inp = baseline_inputs(val_wa, val_frame)
    del val_frame
    val_ts = _keys_at_ends(val_wa)[1]
    groups = hour_clusters(val_ts)
    fitted = fit_baselines(tr_inp, val_inp, tuple(names), context_val=context(val_inp), groups_val=groups)
    del tr_inp
    nat_val = {a: _natural(n, val_wa) for a, n in nets.items()}
    scaler = next(iter(nets.values())).scaler if nets else scaler
    meta = {"train_dates": list(fold.train), "val_dates": list(fold.val), "test_dates": list(fold.test),
            "fold": fold.index}
    sel = select_fold(nets, nat_val, fitted, val_inp, val_ts, scaler, prep.feature_names, options, meta)
    cands: dict[str, tuple[Any, Any]] = {a: (None, n.calibrator) for a, n in nets.items() if n.calibrator is not None}
    bases_val = {n: b.natural(val_inp) for n, b in fitted.items() if n in DEPLOYABLE}
    y_ret, y_rv = val_inp["ret_60m"].to_numpy(), val_inp["rv_10m"].to_numpy()
    for cand in sel.candidates:
        c = cand.choice
        if c.vol not in ("floor", "ensemble"):
            continue
        name = "ensemble" if c.vol == "ensemble" else f"{next(iter(c.members))}+floor"
        ch = Choice(vol=c.vol, members=c.members, scale=c.scale, ret=sel.choice.ret)
        cands[name] = (ch, Calibrator().fit(compose(ch, nat_val, bases_val), y_ret, y_rv, groups=groups))
    return _FoldChoice(sel, fitted, cands)


def _test_rows(chosen: _FoldChoice, nets: Mapping[str, Any], wa, frame, baselines: Sequence[str]):
    """(model, PRED+INFO frame) of every model on one chunk of test windows, one model at a time:
    the served forecaster (predicted by the Forecaster object itself, as batch prediction and the
    server run it), every candidate, every baseline."""
    te_inp = baseline_inputs(wa, frame)
    yield SERVED, chosen.selection.forecaster.predict_arrays(wa)
    nat = {a: _natural(n, wa) for a, n in nets.items()}
    bases = {n: b.natural(te_inp) for n, b in chosen.baselines.items() if n in DEPLOYABLE}
    for name, (ch, cal) in chosen.candidates.items():
        yield name, _frame_of(cal, nat[name] if ch is None else compose(ch, nat, bases), None)
    ctx = context(te_inp)
    for n, b in chosen.baselines.items():
        if n in baselines:
            yield n, b.predict(te_inp, ctx)


def _score_test_span(prep: Prepared, fold: Fold, chosen: _FoldChoice, nets: Mapping[str, Any],
                     wf_cfg: WalkForwardConfig, baselines: Sequence[str], streams: dict) -> int:
    """Predict the fold's test span ``walkforward.chunk_rows`` feature rows (whole dates) at a time
    and add every model's rows to its :class:`hfcast.scoring.ScoreStream`; the number of test windows."""
    n = 0
    for _, frame in prep.reader.chunks(fold.test, wf_cfg.chunk_rows):
        wa = _windows(prep, frame, wf_cfg.eval_stride)
        if not len(wa):
            continue
        n += len(wa)
        base = frame.loc[wa.ends, ["symbol", "ts", "ret_60m", "rv_10m", *[c for c in TRUTH if c in frame]]]
        base = base.reset_index(drop=True).assign(fold=fold.index)
        keys = row_keys(base["symbol"], base["ts"], wf_cfg.sample_seed)
        for model, out in _test_rows(chosen, nets, wa, frame, baselines):
            if model not in streams:
                streams[model] = ScoreStream(wf_cfg.max_prediction_rows, wf_cfg.sample_seed)
            streams[model].add(pd.concat([base.assign(model=model), out.reset_index(drop=True)], axis=1), keys)
    if not n:
        raise ValueError(f"{fold.describe()} has no test windows")
    return n


def select_folds(prep: Prepared, nets: Mapping[str, Sequence[Any]], wf_cfg: WalkForwardConfig,
                 baselines: Sequence[str] = BASELINES, options: Any = None, progress: bool = True,
                 histories: Mapping[str, list] | None = None, throughput: Mapping[str, float] | None = None
                 ) -> WalkForwardResult:
    """Per fold: fit the baselines, choose the forecaster on validation (:mod:`hfcast.selection`),
    and score it, every network, floored network, ensemble and baseline on the SAME test rows.

    ``nets``: per architecture, one trained network per fold of ``prep.folds`` (:func:`train_members`).
    The served rows (``model == "forecaster"``) are predicted by the fold's :class:`Forecaster`
    object itself (scaler, graph and post-step), exactly as batch prediction and the server run it.
    Test spans are predicted and scored a chunk of dates at a time (:mod:`hfcast.scoring`): every
    score counts every test row; the predictions table keeps at most
    ``walkforward.max_prediction_rows`` rows per model (the same seeded rows for every model).
    """
    options = options or SelectOptions()
    names = tuple(dict.fromkeys([*baselines, *DEPLOYABLE, "persistence"]))  # the choice needs these
    streams: dict[str, Any] = {}
    choices, forecaster = [], None
    for k, fold in enumerate(prep.folds):
        fold_nets = {a: ns[k] for a, ns in nets.items()}
        chosen = _choose(prep, fold, fold_nets, wf_cfg, names, options)
        choices.append(chosen.selection.choice)
        forecaster = chosen.selection.forecaster
        n = _score_test_span(prep, fold, chosen, fold_nets, wf_cfg, baselines, streams)
        if progress:
            log.info("%s: served %s; %d test windows scored", fold.describe(), chosen.selection.choice.describe(), n)
    per_fold = pd.concat([s.per_fold().assign(model=m) for m, s in streams.items()], ignore_index=True)
    aggregate = pd.DataFrame({m: s.pooled() for m, s in streams.items()}).T
    preds = pd.concat([s.frame() for s in streams.values()], ignore_index=True)
    preds = preds.sort_values("fold", kind="stable").reset_index(drop=True)  # fold by fold, models in order
    sampled = any(s.sampled for s in streams.values())
    if sampled:
        log.info("predictions table: a seeded sample of %d of %d test rows per model (walkforward.max_prediction_rows);"
                 " the scores count every row", len(preds) // max(1, len(streams)), streams[SERVED].n_rows)
    return WalkForwardResult(folds=prep.folds, predictions=preds, per_fold=per_fold, aggregate=aggregate,
                             forecaster=forecaster, choices=choices, nets={a: list(v) for a, v in nets.items()},
                             histories=dict(histories or {}), throughput=dict(throughput or {}),
                             feature_names=prep.feature_names, sampled=sampled)


def run_walkforward(lake, archs: Sequence[str], wf_cfg: WalkForwardConfig, train_cfg: Any = None,
                    dates: Sequence[str] | None = None, progress: bool = True,
                    baselines: Sequence[str] = BASELINES, model_configs: Mapping[str, dict] | None = None,
                    frame=None, feature_names: Sequence[str] | None = None, options: Any = None,
                    on_epoch=None) -> WalkForwardResult:
    """Train every architecture, choose the forecaster per fold on validation, and score it, every
    network and every baseline on the same walk-forward folds.

    Per fold: windows ending on train days train each network (scaler fitted on them), windows on
    val days early-stop and calibrate them and CHOOSE what is served (:mod:`hfcast.selection`:
    bare, floored or ensembled networks or a baseline for the volatility; a network's return head
    only with validated skill, else zero), windows on test days are predicted and scored. The
    baselines are fitted on the same train windows and predict the SAME test rows, so every row of
    the comparison table is measured on identical data.

    Args:
        lake: a ``hfcast.storage.Lake`` with a ``features`` table (ignored when ``frame`` is given).
        archs: architectures (``hfcast.models.ARCHITECTURES``); may be empty (a baseline is served).
        wf_cfg: the schedule. train_cfg: ``hfcast.train.TrainConfig`` (None = its defaults).
        dates: restrict to these dates (default: every features date in the lake).
        frame, feature_names: an in-memory features frame instead of the lake (tests, benchmarks).
        options: :class:`hfcast.selection.SelectOptions` (a fixed kind instead of ``auto``).
        on_epoch: ``f(arch, fold, epoch_record)`` after every epoch (e.g.
            :meth:`hfcast.registry.LiveTraining.on_epoch`, which streams it to MLflow).
    """
    prep = prepare(lake, wf_cfg, dates, frame, feature_names)
    nets, hists, thr = train_members(prep, archs, wf_cfg, train_cfg, model_configs, progress, on_epoch)
    return select_folds(prep, nets, wf_cfg, baselines, options, progress, hists, thr)


def _brief(s: Mapping[str, float]) -> str:
    keys = ("vol_qlike", "vol_qlike_truth", "ret_ic", "ret_ic_truth", "ret_coverage", "rv_coverage")
    return " ".join(f"{k}={s[k]:.4f}" for k in keys if k in s)


def log_result(settings: Settings, result: WalkForwardResult, params: Mapping[str, Any], out_dir, plots: Sequence[Any] = (),
               dataset_version: str | None = None, tags: Mapping[str, str] | None = None, run_id: str | None = None,
               dataset: Mapping[str, Any] | None = None, reports: Sequence[Any] = ()) -> str:
    """Hand the served forecaster of a walk-forward result to the registry (MLflow); the run id.

    Logs the last fold's forecaster bundle, its per-fold and pooled test scores, what each fold
    chose and why, the baselines' and every candidate's scores on the same spans (the oracle is
    left out of the baselines: it is the ceiling, not a baseline a model can be required to beat;
    its scores are kept as ``oracle_*`` metrics). A few real windows of the last validation day
    become the MLflow model's input example.
    """
    fc = result.forecaster
    bundle = Path(out_dir) / "bundle"
    fc.save(str(bundle))
    pf = result.per_fold
    folds = pf[pf["model"] == SERVED].drop(columns=["model"]).to_dict(orient="records")
    for row, choice in zip(folds, result.choices):
        row["choice"] = choice.label
        row["return"] = choice.ret
    agg = result.aggregate
    baselines = result.baseline_scores()
    candidates = {m: result.scores(m) for m in agg.index if m not in BASELINES and m != SERVED}
    oracle = ({f"oracle_{k}": float(agg.loc["oracle", k]) for k in ("ret_ic", "vol_qlike", "vol_qlike_truth") if k in agg}
              if "oracle" in agg.index else {})
    epochs = [{"fold": i, "arch": a, **e} for a, hs in result.histories.items() for i, h in enumerate(hs)
              for e in h.get("epochs", [])]
    thr = [v for v in result.throughput.values() if np.isfinite(v)]
    last = result.choices[-1]
    kind_tags = {"hfcast.kind": fc.kind[:5000], "hfcast.vol_kind": last.vol, "hfcast.return": last.ret,
                 "hfcast.members": ",".join(fc.members) or "none"}
    return registry.log_training_run(settings, registry.TrainingRecord(
        bundle, arch=fc.arch, params=params, epoch_metrics=epochs, fold_metrics=folds,
        aggregate_metrics={**result.scores(), **oracle, **({"train_windows_per_s": float(np.median(thr))} if thr else {})},
        test_spans=result.test_spans(), dataset_version=dataset_version, feature_names=result.feature_names,
        plots=[str(p) for p in plots], baseline_metrics=baselines, tags={**kind_tags, **dict(tags or {})},
        run_id=run_id, run_name=run_name(result), dataset=dataset, reports=[str(p) for p in reports],
        extra_scores={"choices": [c.to_dict() for c in result.choices], "candidates": candidates,
                      "validation": {k: v for k, v in last.evidence.items()
                                     if k.startswith(("val_qlike", "chosen_val", "val_gain_ub"))}},
        input_example=example_windows(Lake.from_settings(settings), result.feature_names, result.folds[-1].val[-1])))


def run_name(result: WalkForwardResult) -> str:
    """"forecaster 2024-01-02..2024-02-01": what it is and the dates its runs saw."""
    return f"forecaster {result.folds[0].train[0]}..{result.folds[-1].test[-1]}"


def dataset_info(lake, result: WalkForwardResult) -> dict[str, Any]:
    """What trained a result, for the MLflow dataset input: lake URL, date range, windows."""
    days = sorted({d for f in result.folds for d in f.all_dates})
    rows = int(max((hs[-1].get("n_train_windows", 0) for hs in result.histories.values() if hs), default=0))
    return {"uri": storage_url(lake), "first": days[0], "last": days[-1], "dates": len(days), "rows": rows}


def storage_url(lake) -> str:
    """The lake's features table URL (or its root when the lake has no such attribute)."""
    url = str(getattr(lake, "url", "") or "")
    return f"{url.rstrip('/')}/features" if url else ""


def span_evaluator(settings: Settings, stride: int | None = None):
    """``f(model_uri, spans) -> scores`` for :func:`hfcast.promotion.run_gate`: re-score any registered
    version on the given test spans, so a challenger and the champion are compared on the SAME
    rows even when they were trained (and first scored) on different walk-forward folds.

    The champion may have been trained on dates inside the challenger's test spans; that can only
    flatter the champion, so the gate stays conservative (a worse model is never promoted).

    The spans are read ``walkforward.chunk_rows`` feature rows (whole dates) at a time and scored
    with :class:`hfcast.scoring.ScoreStream`, so a long span is scored whole in bounded memory.

    Args:
        settings: where the lake and the registry are.
        stride: evaluation stride in minutes (default: ``walkforward.eval_stride`` of params.yaml).
    """
    lake = Lake.from_settings(settings)
    wf = WalkForwardConfig.from_params(settings.param("walkforward", {}), settings.market)
    stride = wf.eval_stride if stride is None else stride
    reader = SpanReader(lake=lake, market=wf.market)

    def evaluate(model_uri: str, spans: Sequence[Sequence[str]]) -> dict[str, float]:
        dates = [d for d in lake.dates("features") if any(str(a) <= d <= str(b) for a, b in spans)]
        if not dates:
            raise ValueError(f"no features in the lake for the test spans {list(spans)}")
        fc = load_forecaster(settings, model_uri)
        stream = ScoreStream(wf.max_prediction_rows, wf.sample_seed)
        for _, frame in reader.chunks(dates, wf.chunk_rows):
            wa = build_windows(frame, fc.feature_names, stride=stride, market=wf.market)
            base = frame.loc[wa.ends, ["symbol", "ts", "ret_60m", "rv_10m"]].reset_index(drop=True)
            stream.add(pd.concat([base, fc.predict_arrays(wa)], axis=1))
        scores = stream.pooled()
        log.info("re-scored %s on %d date(s): %s", model_uri, len(dates), _brief(scores))
        return scores

    return evaluate
