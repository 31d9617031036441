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
    """Yield the walk-forward folds over ``dates`` (ISO strings; sorted and de-duplicated here).

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
        t0 = need_before
    else:
        t0 = next((i for i, d in enumerate(days) if d >= cfg.first_test_date), len(days))
        if t0 < need_before:
            raise ValueError(f"walkforward.first_test_date={cfg.first_test_date} leaves {t0} earlier "
                             f"day(s); train+val+2*embargo needs {need_before}")
    if t0 >= len(days):
        raise ValueError(f"walkforward needs more than {need_before} dates for one fold "
                         f"(train {cfg.train_days} + val {cfg.val_days} + 2 x embargo {emb} + test); "
                         f"got {len(days)}")
    starts = list(range(t0, len(days), cfg.step))
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

@dataclass
class WalkForwardResult:
    """What a walk-forward run produced; every score is from test spans.

    Attributes:
        predictions: long frame, one row per (model, test window): ``model``, ``fold``, ``symbol``,
            ``ts``, PRED_COLUMNS, labels and truth when present.
        per_fold: scores per (model, fold). aggregate: scores pooled over all test rows, by model.
        forecasters: the last fold's trained Forecaster per architecture (for registration).
        ensemble: with the floor and >= 2 architectures, the last fold's
            :class:`hfcast.models.floor.EnsembleForecaster` (its rows are ``model == "ensemble"``).
        histories: per architecture, the training history of each fold.
        throughput: per architecture, median over folds of training windows per second.
    """

    folds: list[Fold]
    predictions: Any
    per_fold: Any
    aggregate: Any
    forecasters: dict[str, Any]
    histories: dict[str, list]
    throughput: dict[str, float]
    feature_names: list[str]
    ensemble: Any = None

    def test_spans(self) -> list[tuple[str, str]]:
        return [(f.test[0], f.test[-1]) for f in self.folds]


def _stride(wa, stride: int):
    """Keep windows whose end minute satisfies (minute_of_session - (LOOKBACK - 1)) % stride == 0."""
    if stride <= 1:
        return wa
    from hfcast.data.schema import minute_of_session

    m = minute_of_session(wa.keys["ts"].iloc[wa.ends], getattr(wa, "market", None))
    return wa.select(np.flatnonzero((m - (LOOKBACK - 1)) % stride == 0))


def _predict_windows(fc, wa, batch: int = 8192):
    import pandas as pd

    parts = [fc.predict(wa.windows(np.arange(i, min(i + batch, len(wa))))) for i in range(0, len(wa), batch)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(PRED_COLUMNS))


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


def _folds_and_frame(lake, wf_cfg: WalkForwardConfig, dates: Sequence[str] | None, frame):
    """The folds, and the features frame they need (from the lake unless one is given)."""
    if frame is None:
        from hfcast.features.engine import load_features

        dates = list(dates or lake.dates("features"))
        folds = list(generate_folds(dates, wf_cfg))
        needed = sorted({d for f in folds for d in f.all_dates} | {d for d in dates if d <= folds[-1].test[-1]})
        frame = load_features(lake, needed)
    else:
        from hfcast.market import default_market

        day = default_market().trade_date(frame["ts"])  # trade dates of the configured calendar
        folds = list(generate_folds(dates or sorted(set(day)), wf_cfg))
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


def _train_archs(archs, spans, base, train_cfg, model_configs, progress: bool, acc: dict,
                 floor_ctx: tuple | None = None, on_epoch=None, fold: Fold | None = None) -> None:
    """Train every architecture on one fold and predict its test windows (results into ``acc``).

    ``floor_ctx`` = (floor mode, the fold's fitted ``har_tod`` baseline, baseline inputs): each
    network is wrapped by :func:`_floor_arch` (None = bare networks, the default). ``on_epoch``:
    see :func:`run_walkforward`.
    """
    import time

    import pandas as pd

    from hfcast.evaluate import score
    from hfcast.train import train_forecaster

    train_wa, val_wa, test_wa = spans
    for arch in archs:
        t0 = time.perf_counter()
        fc, hist = train_forecaster(arch, train_wa, val_wa, model_config=(model_configs or {}).get(arch),
                                    cfg=train_cfg, progress=progress,
                                    on_epoch=(lambda rec, a=arch: on_epoch(a, fold, rec)) if on_epoch else None)
        secs = time.perf_counter() - t0
        if floor_ctx is not None:
            fc, out = _floor_arch(arch, fc, spans, base, train_cfg, (model_configs or {}).get(arch), floor_ctx, acc)
        else:
            out = _predict_windows(fc, test_wa)
        acc["thr"][arch].append(float(hist.get("windows_per_s", np.nan)))
        acc["histories"][arch].append(hist)
        acc["forecasters"][arch] = fc
        acc["preds"].append(pd.concat([base.assign(model=arch), out], axis=1))
        if progress:
            log.info("  %s trained in %.1fs: %s", arch, secs, _brief(score(acc["preds"][-1])))


def _floor_arch(arch, fc, spans, base, train_cfg, model_config, floor_ctx, acc: dict):
    """Put the ``har_tod`` floor under one trained network (``hfcast.models.floor``).

    Returns the floored forecaster and its test predictions; the bare rows (``<arch>_net``,
    ``<arch>_resid``) go into ``acc["preds"]`` so they are scored on the same test rows.
    """
    import pandas as pd

    from hfcast.models.floor import floor_forecaster

    mode, floor_base, inputs = floor_ctx
    train_wa, val_wa, test_wa = spans
    fc, extra = floor_forecaster(fc, floor_base, train_wa, val_wa, test_wa, inputs, residual=mode == "residual",
                                 train_cfg=train_cfg, model_config=model_config)
    acc["preds"] += [pd.concat([base.assign(model=f"{arch}_{k}"), v], axis=1) for k, v in extra.items()]
    return fc, fc.predict_span(test_wa, inputs)


def _ensemble(archs, spans, base, inputs, acc: dict) -> None:
    """The fold's floored networks averaged (``hfcast.models.floor.fit_ensemble``), scored on the
    same test rows as ``model == "ensemble"``."""
    import pandas as pd

    from hfcast.models.floor import fit_ensemble

    _, val_wa, test_wa = spans
    ens = fit_ensemble({a: acc["forecasters"][a] for a in archs}, val_wa, inputs)
    acc["ensemble"] = ens
    acc["preds"].append(pd.concat([base.assign(model="ensemble"), ens.predict_span(test_wa, inputs)], axis=1))


def _context_calibrate(fitted: dict, inputs, val_wa, test_wa) -> dict:
    """Re-calibrate every baseline with context on the validation span, as the floored networks are,
    so their confidences and intervals are compared like for like; returns the test windows' context."""
    from hfcast.models.floor import calibrate_with_context, context_from_windows

    val_inputs = inputs.loc[val_wa.ends]
    for b in fitted.values():
        b.calibrator = calibrate_with_context(b, val_inputs, val_wa)
    return context_from_windows(test_wa)


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
                    frame=None, feature_names: Sequence[str] | None = None, floor: bool | str = False,
                    on_epoch=None) -> WalkForwardResult:
    """Train and score every architecture and every baseline on the same walk-forward folds.

    Per fold: windows ending on train days train the network (scaler fitted on them), windows on
    val days early-stop and calibrate it, windows on test days are predicted and scored. The
    baselines are fitted on the rows at the same train / val window ends and predict the SAME
    test rows, so every row of the comparison table is measured on identical data.

    Args:
        lake: a ``hfcast.storage.Lake`` with a ``features`` table (ignored when ``frame`` is given).
        archs: architectures (``hfcast.models.ARCHITECTURES``); may be empty (baselines only).
        wf_cfg: the schedule. train_cfg: ``hfcast.train.TrainConfig`` (None = its defaults).
        dates: restrict to these dates (default: every features date in the lake).
        frame, feature_names: an in-memory features frame instead of the lake (tests, benchmarks).
        floor: put the ``har_tod`` floor under every network (``hfcast.models.floor``): the
            architecture's row (and ``forecasters[arch]``, a ``FlooredForecaster``) is the
            validation-chosen floored forecaster, ``<arch>_net`` the bare network on the same rows;
            the baselines are then calibrated with context too (like for like).
            Off by default: the floor needs HAR inputs per row that serving does not send yet. ``"residual"``: also train each network on the residual of
            the floor's log variance and let validation choose (``<arch>_resid`` its bare rows).
        on_epoch: ``f(arch, fold, epoch_record)`` after every epoch (e.g.
            :meth:`hfcast.registry.LiveTraining.on_epoch`, which streams it to MLflow).
    """
    import pandas as pd

    from hfcast.features.windows import build_windows
    from hfcast.models.baselines import baseline_inputs, fit_baselines

    folds, frame = _folds_and_frame(lake, wf_cfg, dates, frame)
    names = list(feature_names) if feature_names is not None else _feature_names(lake, frame)
    wa_all = build_windows(frame, names, stride=1)
    inputs = baseline_inputs(frame)
    truth = [c for c in ("true_ret_60m", "true_var_10m") if c in frame]
    acc = {"preds": [], "forecasters": {}, "histories": {a: [] for a in archs}, "thr": {a: [] for a in archs}}
    floor_base = _floor_cache()
    for fold in folds:
        train_wa, val_wa, test_wa = spans = _fold_windows(wa_all, fold, wf_cfg)
        rows = test_wa.ends
        base = frame.loc[rows, ["symbol", "ts", "ret_60m", "rv_10m", *truth]].reset_index(drop=True)
        base["fold"] = fold.index
        if progress:
            log.info("%s: %d train / %d val / %d test windows", fold.describe(), len(train_wa), len(val_wa), len(test_wa))
        floor_ctx = (floor, floor_base(inputs, train_wa, val_wa, fold.index), inputs) if floor and archs else None
        _train_archs(archs, spans, base, train_cfg, model_configs, progress, acc, floor_ctx, on_epoch, fold)
        if floor_ctx is not None and len(archs) >= 2:
            _ensemble(archs, spans, base, inputs, acc)
        fitted = fit_baselines(inputs.loc[train_wa.ends], inputs.loc[val_wa.ends], tuple(baselines))
        ctx = _context_calibrate(fitted, inputs, val_wa, test_wa) if floor_ctx is not None else None
        for name, b in fitted.items():
            out = b.predict(inputs.loc[rows], ctx).reset_index(drop=True)
            acc["preds"].append(pd.concat([base.assign(model=name), out], axis=1))
    allp = pd.concat(acc["preds"], ignore_index=True)
    per_fold, aggregate = _score_models(allp)
    return WalkForwardResult(folds=folds, predictions=allp, per_fold=per_fold, aggregate=aggregate,
                             forecasters=acc["forecasters"], histories=acc["histories"],
                             throughput={a: float(np.median(v)) for a, v in acc["thr"].items() if v},
                             feature_names=names, ensemble=acc.get("ensemble"))


def _floor_cache():
    """``f(inputs, train_wa, val_wa, fold) -> Baseline('har_tod')`` fitted once per fold."""
    cache: dict[int, Any] = {}

    def get(inputs, train_wa, val_wa, fold: int):
        if fold not in cache:
            from hfcast.models.baselines import FLOOR, Baseline

            cache.clear()
            cache[fold] = Baseline(FLOOR).fit(inputs.loc[train_wa.ends], inputs.loc[val_wa.ends])
        return cache[fold]

    return get


def _brief(s: Mapping[str, float]) -> str:
    keys = ("vol_qlike", "vol_qlike_truth", "ret_ic", "ret_ic_truth", "ret_coverage", "rv_coverage")
    return " ".join(f"{k}={s[k]:.4f}" for k in keys if k in s)



def log_result(settings, result: WalkForwardResult, arch: str, params: Mapping[str, Any],
               out_dir, plots: Sequence[Any] = (), dataset_version: str | None = None,
               tags: Mapping[str, str] | None = None, run_id: str | None = None,
               dataset: Mapping[str, Any] | None = None, reports: Sequence[Any] = ()) -> str:
    """Hand one architecture's walk-forward result to the registry (MLflow); returns the run id.

    Logs the last fold's bundle, per-fold and pooled test scores, and the baselines' scores on the
    same spans (the oracle is left out: it is the ceiling, not a baseline a model can be required
    to beat; its scores are kept as ``oracle_*`` metrics).
    """
    from pathlib import Path

    from hfcast import registry

    bundle = Path(out_dir) / f"bundle-{arch}"
    result.forecasters[arch].save(str(bundle))
    pf = result.per_fold
    folds = pf[pf["model"] == arch].drop(columns=["model"]).to_dict(orient="records")
    agg = result.aggregate
    baselines = {m: {k: float(v) for k, v in agg.loc[m].items()} for m in agg.index
                 if m in BASELINES and m != "oracle"}
    oracle = ({f"oracle_{k}": float(agg.loc["oracle", k]) for k in ("ret_ic", "vol_qlike", "vol_qlike_truth") if k in agg}
              if "oracle" in agg.index else {})
    epochs = [{"fold": i, **e} for i, h in enumerate(result.histories.get(arch, [])) for e in h.get("epochs", [])]
    return registry.log_training_run(settings, registry.TrainingRecord(
        bundle, arch=arch, params=params, epoch_metrics=epochs, fold_metrics=folds,
        aggregate_metrics={**{k: float(v) for k, v in agg.loc[arch].items()}, **oracle,
                           "train_windows_per_s": result.throughput.get(arch, float("nan"))},
        test_spans=result.test_spans(), dataset_version=dataset_version, feature_names=result.feature_names,
        plots=[str(p) for p in plots], baseline_metrics=baselines, tags=tags, run_id=run_id,
        run_name=run_name(arch, result), dataset=dataset, reports=[str(p) for p in reports]))


def run_name(arch: str, result: WalkForwardResult) -> str:
    """"transformer 2024-01-02..2024-02-01": the architecture and the dates its runs saw."""
    return f"{arch} {result.folds[0].train[0]}..{result.folds[-1].test[-1]}"


def dataset_info(lake, result: WalkForwardResult) -> dict[str, Any]:
    """What trained a result, for the MLflow dataset input: lake URL, date range, windows."""
    days = sorted({d for f in result.folds for d in f.all_dates})
    hist = [h for hs in result.histories.values() for h in hs]
    rows = int(sum(h.get("n_train_windows", 0) for h in hist[-1:]))
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
        scores = score(pd.concat([base, _predict_windows(fc, wa)], axis=1))
        log.info("re-scored %s on %d date(s): %s", model_uri, len(dates), _brief(scores))
        return scores

    return evaluate
