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
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from hfcast.config import checked_section
from hfcast.contracts import LOOKBACK, PRED_COLUMNS
from hfcast.data.schema import LABEL_HORIZONS
from hfcast.models.baselines import BASELINES

log = logging.getLogger(__name__)

MODES = ("expanding", "sliding")


@dataclass(frozen=True)
class WalkForwardConfig:
    """Walk-forward schedule, in trading days of the lake's date list."""

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

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"walkforward.mode must be one of {MODES}, got {self.mode!r}")
        for name in ("train_days", "val_days", "test_days", "eval_stride", "train_stride"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"walkforward.{name} must be >= 1, got {getattr(self, name)}")
        if self.step < self.test_days:
            raise ValueError(f"walkforward.step_days ({self.step}) < test_days ({self.test_days}): "
                             "test spans would overlap and a day would be scored twice")
        need = min_embargo_days(self.label_horizon_minutes)
        if self.embargo_days < need:
            raise ValueError(f"walkforward.embargo_days={self.embargo_days} is shorter than the label "
                             f"horizon ({self.label_horizon_minutes} min needs >= {need} day(s))")
        if self.max_folds is not None and self.max_folds < 1:
            raise ValueError(f"walkforward.max_folds must be >= 1 or null, got {self.max_folds}")

    @property
    def step(self) -> int:
        return int(self.step_days if self.step_days is not None else self.test_days)

    @classmethod
    def from_params(cls, section: Mapping[str, Any] | None) -> "WalkForwardConfig":
        """Build from the ``walkforward:`` mapping of params.yaml; unknown keys are an error.

        The ``models`` key (per-architecture config overrides) is read by :func:`model_configs`.
        """
        section = {k: v for k, v in (section or {}).items() if k != "models"}
        return cls(**checked_section(cls, section, "walkforward parameter(s)"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_configs(section: Mapping[str, Any] | None) -> dict[str, dict]:
    """Per-architecture config overrides from ``walkforward.models`` (empty when absent)."""
    models = dict((section or {}).get("models") or {})
    bad = [k for k, v in models.items() if not isinstance(v, Mapping)]
    if bad:
        raise ValueError(f"walkforward.models.{bad[0]} must be a mapping of config fields")
    return {k: dict(v) for k, v in models.items()}


def min_embargo_days(horizon_minutes: int) -> int:
    """Whole trading days needed so a label of this horizon cannot reach the next span."""
    from hfcast.market import default_market

    return max(1, math.ceil(horizon_minutes / default_market().regular_minutes()))


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


def folds_from_settings(dates: Sequence[str], params: Mapping[str, Any]) -> list[Fold]:
    """Folds for the ``walkforward:`` section of a params mapping."""
    return list(generate_folds(dates, WalkForwardConfig.from_params(params.get("walkforward"))))


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
        per_fold: scores per (model, fold). aggregate: scores pooled over all test rows, by model.
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

    def test_spans(self) -> list[tuple[str, str]]:
        return [(f.test[0], f.test[-1]) for f in self.folds]

    def scores(self, model: str = SERVED) -> dict[str, float]:
        """Pooled test scores of one model (default: the served forecaster)."""
        return {str(k): float(v) for k, v in self.aggregate.loc[model].items()}


def _stride(wa, stride: int):
    """Keep windows whose end minute satisfies (minute_of_session - (LOOKBACK - 1)) % stride == 0."""
    if stride <= 1:
        return wa
    from hfcast.data.schema import minute_of_session

    m = minute_of_session(wa.keys["ts"].iloc[wa.ends], getattr(wa, "market", None))
    return wa.select(np.flatnonzero((m - (LOOKBACK - 1)) % stride == 0))


def _feature_names(lake, df) -> list[str]:
    """The feature list written by the feature engine, else the catalogue's (present columns only)."""
    try:
        from hfcast.features.engine import read_feature_set

        return list(read_feature_set(lake)["features"])
    except (FileNotFoundError, KeyError, OSError) as exc:
        from hfcast.features.catalog import feature_names

        names = [n for n in feature_names(True) if n in df.columns]
        log.warning("no feature set file (%s); using %d catalogue features found in the frame", exc, len(names))
        return names


def trading_dates(dates: Sequence[str], market: Any = None) -> list[str]:
    """The dates that are sessions of the market calendar (a closed day's empty partition is not a
    trading day: counting it would shift every span by one)."""
    from hfcast.market import resolve

    mk = resolve(market)
    kept = [d for d in sorted({str(x) for x in dates}) if mk.is_session(d)]
    dropped = sorted(set(map(str, dates)) - set(kept))
    if dropped:
        log.warning("ignoring %d date(s) that are not %s sessions: %s", len(dropped), getattr(mk, "name", "market"),
                    dropped[:5])
    return kept


def _folds_and_frame(lake, wf_cfg: WalkForwardConfig, dates: Sequence[str] | None, frame):
    """The folds over the trading dates that hold features, and the features frame they need
    (from the lake unless one is given)."""
    from hfcast.market import default_market

    if frame is None:
        from hfcast.features.engine import load_features

        days = trading_dates(dates or lake.dates("features"))
        folds = list(generate_folds(days, wf_cfg))
        needed = sorted({d for f in folds for d in f.all_dates} | {d for d in days if d <= folds[-1].test[-1]})
        frame = load_features(lake, needed)
        have = set(default_market().trade_date(frame["ts"])) if len(frame) else set()
        empty = [d for d in needed if d not in have]
        if empty:  # a partition without rows (a closed exchange, a failed day): not a trading day
            log.warning("ignoring %d features date(s) without rows: %s", len(empty), empty[:5])
            folds = list(generate_folds([d for d in days if d not in empty], wf_cfg))
    else:
        day = default_market().trade_date(frame["ts"])  # trade dates of the configured calendar
        folds = list(generate_folds(trading_dates(dates or sorted(set(day))), wf_cfg))
    return folds, frame.sort_values(["symbol", "ts"], kind="stable").reset_index(drop=True)


def _fold_windows(wa_all, fold: Fold, wf_cfg: WalkForwardConfig):
    """(train, val, test) windows of one fold, each at its configured stride; never empty."""
    train_wa = _stride(wa_all.subset_dates(fold.train), wf_cfg.train_stride)
    val_wa = _stride(wa_all.subset_dates(fold.val), wf_cfg.eval_stride)
    test_wa = _stride(wa_all.subset_dates(fold.test), wf_cfg.eval_stride)
    if min(len(train_wa), len(val_wa), len(test_wa)) == 0:
        raise ValueError(f"{fold.describe()} has an empty span of windows "
                         f"(train {len(train_wa)}, val {len(val_wa)}, test {len(test_wa)})")
    return train_wa, val_wa, test_wa


@dataclass
class Prepared:
    """The data every fold reads: folds, the sorted frame, windows over it and their inputs."""

    folds: list[Fold]
    frame: Any
    feature_names: list[str]
    windows: Any   # WindowArrays of every window (stride 1)
    inputs: Any    # baseline_inputs of those windows, indexed by end row


def prepare(lake, wf_cfg: WalkForwardConfig, dates: Sequence[str] | None = None, frame=None,
            feature_names: Sequence[str] | None = None) -> Prepared:
    """Folds, features, windows and window inputs for :func:`train_members` and :func:`select_folds`."""
    from hfcast.features.windows import build_windows
    from hfcast.models.baselines import baseline_inputs, check_features

    folds, frame = _folds_and_frame(lake, wf_cfg, dates, frame)
    names = list(feature_names) if feature_names is not None else _feature_names(lake, frame)
    check_features(names)
    wa_all = build_windows(frame, names, stride=1)
    return Prepared(folds, frame, names, wa_all, baseline_inputs(wa_all, frame))


def train_members(prep: Prepared, archs: Sequence[str], wf_cfg: WalkForwardConfig, train_cfg: Any = None,
                  model_configs: Mapping[str, dict] | None = None, progress: bool = True,
                  on_epoch=None) -> tuple[dict[str, list[Any]], dict[str, list], dict[str, float]]:
    """Train every architecture on every fold (training span; early stopping and its bare
    calibration on validation). Returns (nets per arch per fold, histories, throughput)."""
    import time

    from hfcast.train import train_forecaster

    nets: dict[str, list[Any]] = {a: [] for a in archs}
    hists: dict[str, list] = {a: [] for a in archs}
    for fold in prep.folds:
        train_wa, val_wa, _ = _fold_windows(prep.windows, fold, wf_cfg)
        if progress:
            log.info("%s: %d train / %d val windows", fold.describe(), len(train_wa), len(val_wa))
        for arch in archs:
            t0 = time.perf_counter()
            net, hist = train_forecaster(arch, train_wa, val_wa, model_config=(model_configs or {}).get(arch),
                                         cfg=train_cfg, progress=progress,
                                         on_epoch=(lambda rec, a=arch, f=fold: on_epoch(a, f, rec)) if on_epoch else None)
            nets[arch].append(net)
            hists[arch].append(hist)
            if progress:
                log.info("  %s trained in %.1fs", arch, time.perf_counter() - t0)
    thr = {a: float(np.median([h.get("windows_per_s", np.nan) for h in hs])) for a, hs in hists.items() if hs}
    return nets, hists, thr


def _natural(net, wa, batch: int = 8192) -> dict[str, np.ndarray]:
    parts = [net.natural_windows(wa.windows(np.arange(i, min(i + batch, len(wa))))) for i in range(0, len(wa), batch)]
    if not parts:
        return {k: np.empty(0) for k in ("ret_mu", "ret_sigma", "rv_hat", "lrv_sigma")}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _frame_of(cal, nat: dict[str, np.ndarray], ctx: dict | None) -> Any:
    import pandas as pd

    from hfcast.contracts import INFO_COLUMNS

    out = cal.apply(nat, ctx)
    return pd.DataFrame({**{c: out[c] for c in PRED_COLUMNS}, **cal.info_columns(len(nat["rv_hat"]))},
                        columns=[*PRED_COLUMNS, *INFO_COLUMNS])


def _candidate_rows(sel, nets, nat_val, nat_test, bases_val, bases_test, val_inp, groups) -> dict[str, Any]:
    """Test rows of the bare networks, the floored networks and the ensemble, each calibrated on
    validation like the served forecaster (so the table shows what the choice was made from)."""
    from hfcast.calibration import Calibrator
    from hfcast.forecaster import Choice, compose

    rows = {a: _frame_of(n.calibrator, nat_test[a], None) for a, n in nets.items() if n.calibrator is not None}
    y_ret, y_rv = val_inp["ret_60m"].to_numpy(), val_inp["rv_10m"].to_numpy()
    for cand in sel.candidates:
        c = cand.choice
        if c.vol not in ("floor", "ensemble"):
            continue
        name = "ensemble" if c.vol == "ensemble" else f"{next(iter(c.members))}+floor"
        ch = Choice(vol=c.vol, members=c.members, scale=c.scale, ret=sel.choice.ret)
        cal = Calibrator().fit(compose(ch, nat_val, bases_val), y_ret, y_rv, groups=groups)
        rows[name] = _frame_of(cal, compose(ch, nat_test, bases_test), None)
    return rows


def select_folds(prep: Prepared, nets: Mapping[str, Sequence[Any]], wf_cfg: WalkForwardConfig,
                 baselines: Sequence[str] = BASELINES, options: Any = None, progress: bool = True,
                 histories: Mapping[str, list] | None = None, throughput: Mapping[str, float] | None = None
                 ) -> WalkForwardResult:
    """Per fold: fit the baselines, choose the forecaster on validation (:mod:`hfcast.selection`),
    and score it, every network, floored network, ensemble and baseline on the SAME test rows.

    ``nets``: per architecture, one trained network per fold of ``prep.folds`` (:func:`train_members`).
    The served rows (``model == "forecaster"``) are predicted by the fold's :class:`Forecaster`
    object itself (scaler, graph and post-step), exactly as batch prediction and the server run it.
    """
    import pandas as pd

    from hfcast.features.windows import fit_scaler
    from hfcast.models.baselines import DEPLOYABLE, context, fit_baselines
    from hfcast.selection import SelectOptions, hour_clusters, select_fold

    options = options or SelectOptions()
    truth = [c for c in ("true_ret_60m", "true_var_10m") if c in prep.frame]
    names = tuple(dict.fromkeys([*baselines, *DEPLOYABLE, "persistence"]))  # the choice needs these
    preds, choices, forecaster = [], [], None
    for k, fold in enumerate(prep.folds):
        train_wa, val_wa, test_wa = _fold_windows(prep.windows, fold, wf_cfg)
        fold_nets = {a: ns[k] for a, ns in nets.items()}
        tr_inp, val_inp, te_inp = (prep.inputs.loc[w.ends] for w in (train_wa, val_wa, test_wa))
        val_ts = prep.windows.keys["ts"].to_numpy()[val_wa.ends]
        groups = hour_clusters(val_ts)
        fitted = fit_baselines(tr_inp, val_inp, names, context_val=context(val_inp), groups_val=groups)
        nat_val = {a: _natural(n, val_wa) for a, n in fold_nets.items()}
        nat_test = {a: _natural(n, test_wa) for a, n in fold_nets.items()}
        scaler = next(iter(fold_nets.values())).scaler if fold_nets else fit_scaler(train_wa)
        meta = {"train_dates": list(fold.train), "val_dates": list(fold.val), "test_dates": list(fold.test),
                "fold": fold.index}
        sel = select_fold(fold_nets, nat_val, fitted, val_inp, val_ts, scaler, prep.feature_names, options, meta)
        choices.append(sel.choice)
        forecaster = sel.forecaster
        base = prep.frame.loc[test_wa.ends, ["symbol", "ts", "ret_60m", "rv_10m", *truth]].reset_index(drop=True)
        base["fold"] = fold.index
        rows = {SERVED: sel.forecaster.predict_arrays(test_wa)}
        bases_val = {n: b.natural(val_inp) for n, b in fitted.items() if n in DEPLOYABLE}
        bases_test = {n: b.natural(te_inp) for n, b in fitted.items() if n in DEPLOYABLE}
        rows.update(_candidate_rows(sel, fold_nets, nat_val, nat_test, bases_val, bases_test, val_inp, groups))
        ctx = context(te_inp)
        rows.update({n: b.predict(te_inp, ctx).reset_index(drop=True) for n, b in fitted.items() if n in baselines})
        for model, out in rows.items():
            preds.append(pd.concat([base.assign(model=model), out.reset_index(drop=True)], axis=1))
        if progress:
            log.info("%s: served %s", fold.describe(), sel.choice.describe())
    allp = pd.concat(preds, ignore_index=True)
    per_fold, aggregate = _score_models(allp)
    return WalkForwardResult(folds=prep.folds, predictions=allp, per_fold=per_fold, aggregate=aggregate,
                             forecaster=forecaster, choices=choices, nets={a: list(v) for a, v in nets.items()},
                             histories=dict(histories or {}), throughput=dict(throughput or {}),
                             feature_names=prep.feature_names)


def _score_models(allp):
    """Per-fold and pooled test scores of every model in the predictions."""
    import pandas as pd

    from hfcast.evaluate import score_folds

    per_fold, agg = [], {}
    for model, g in allp.groupby("model", sort=False):
        pf, a = score_folds(g)
        per_fold.append(pf.assign(model=model))
        agg[model] = a
    return pd.concat(per_fold, ignore_index=True), pd.DataFrame(agg).T


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


def log_result(settings, result: WalkForwardResult, params: Mapping[str, Any], out_dir, plots: Sequence[Any] = (),
               dataset_version: str | None = None, tags: Mapping[str, str] | None = None, run_id: str | None = None,
               dataset: Mapping[str, Any] | None = None, reports: Sequence[Any] = ()) -> str:
    """Hand the served forecaster of a walk-forward result to the registry (MLflow); the run id.

    Logs the last fold's forecaster bundle, its per-fold and pooled test scores, what each fold
    chose and why, the baselines' and every candidate's scores on the same spans (the oracle is
    left out of the baselines: it is the ceiling, not a baseline a model can be required to beat;
    its scores are kept as ``oracle_*`` metrics). A few real windows of the last validation day
    become the MLflow model's input example.
    """
    from pathlib import Path

    from hfcast import registry
    from hfcast.pyfunc import example_windows
    from hfcast.storage import Lake

    fc = result.forecaster
    bundle = Path(out_dir) / "bundle"
    fc.save(str(bundle))
    pf = result.per_fold
    folds = pf[pf["model"] == SERVED].drop(columns=["model"]).to_dict(orient="records")
    for row, choice in zip(folds, result.choices):
        row["choice"] = choice.label
        row["return"] = choice.ret
    agg = result.aggregate
    baselines = {m: result.scores(m) for m in agg.index if m in BASELINES and m != "oracle"}
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
                      "validation": {k: v for k, v in last.evidence.items() if k.startswith(("val_qlike", "chosen_val"))}},
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


def span_evaluator(settings, stride: int | None = None):
    """``f(model_uri, spans) -> scores`` for :func:`hfcast.promotion.run_gate`: re-score any registered
    version on the given test spans, so a challenger and the champion are compared on the SAME
    rows even when they were trained (and first scored) on different walk-forward folds.

    The champion may have been trained on dates inside the challenger's test spans; that can only
    flatter the champion, so the gate stays conservative (a worse model is never promoted).

    Args:
        settings: where the lake and the registry are.
        stride: evaluation stride in minutes (default: ``walkforward.eval_stride`` of params.yaml).
    """
    import pandas as pd

    from hfcast.evaluate import score
    from hfcast.features.engine import load_features
    from hfcast.features.windows import build_windows
    from hfcast.registry import load_forecaster
    from hfcast.storage import Lake

    lake = Lake.from_settings(settings)
    if stride is None:
        stride = WalkForwardConfig.from_params(settings.param("walkforward", {})).eval_stride
    cache: dict[tuple, Any] = {}

    def evaluate(model_uri: str, spans: Sequence[Sequence[str]]) -> dict[str, float]:
        dates = [d for d in lake.dates("features") if any(str(a) <= d <= str(b) for a, b in spans)]
        if not dates:
            raise ValueError(f"no features in the lake for the test spans {list(spans)}")
        key = tuple(dates)
        if key not in cache:
            cache.clear()
            cache[key] = load_features(lake, dates)
        frame = cache[key]
        fc = load_forecaster(settings, model_uri)
        wa = _stride(build_windows(frame, fc.feature_names, stride=1), stride)
        base = frame.loc[wa.ends, ["symbol", "ts", "ret_60m", "rv_10m"]].reset_index(drop=True)
        scores = score(pd.concat([base, fc.predict_arrays(wa)], axis=1))
        log.info("re-scored %s on %d date(s): %s", model_uri, len(dates), _brief(scores))
        return scores

    return evaluate
