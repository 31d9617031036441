"""Choose, on one fold's validation span only, what the forecaster serves per target.

Why per target: on data the networks were not designed for, a network's volatility forecast can
beat ``har_tod`` while its return head has no skill (a negative IC); judged as a whole, the
model was rejected and the volatility skill was lost. Here each target is decided on its own:

- **volatility**: every candidate's validation QLIKE - each network bare, each network floored on
  ``har_tod`` (blended with it in log variance: weights 0.1..0.9, each with its QLIKE-optimal
  variance scale), the equal-weight ensemble of the floored networks, and the deployable baselines
  ``har_tod``, ``har_rv``, ``har_x``, ``ewma`` as they are (fitted on the training span; a
  network candidate's scale and weight are fitted on validation, so its QLIKE is cross-fitted over
  two halves of the validation days: :func:`vol_candidates`). The lowest wins among ``har_tod`` and
  the candidates whose gain over ``har_tod`` is significant: the one-sided 97.5% upper bound of
  their mean QLIKE difference, clustered by validation hour, is below 0 (a 1.4% gain over 3
  validation days of 3 symbols turned into a 3% loss on the test days). Ties go to the baseline
  (simpler), so a network is served only where it beats the best baseline on validation;
- **return**: a network's head only where it shows validated skill - its validation IC above the
  persistence forecast's AND its one-sided 97.5% lower bound from a bootstrap over hours above 0
  (the returns of all symbols in one hour move together, so a few validation days hold few
  independent outcomes) - the best such head; otherwise the zero forecast, whose honest
  confidence is a constant 0.5.

The chosen forecast is then calibrated on the same validation rows (with context), so its
confidences and intervals are fitted like any model's. Nothing here reads a test label.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import t as student_t

from hfcast import metrics as M
from hfcast.calibration import Calibrator
from hfcast.forecaster import VOL_KINDS, Choice, Forecaster, compose, log_variance
from hfcast.models.baselines import DEPLOYABLE, FLOOR, context

log = logging.getLogger(__name__)

WEIGHTS = tuple(float(w) for w in np.round(np.linspace(0.1, 0.9, 9), 2))  # network weight of a floor blend
IC_BOUND_LEVEL = 0.975  # one-sided level of the return head's IC lower bound
IC_BOOTSTRAP = 400
GAIN_BOUND_LEVEL = 0.975  # one-sided level of a volatility candidate's gain over har_tod
MIN_CLUSTERS = 3  # fewer validation hours: no bound (nothing is significant)
KINDS = ("auto", *VOL_KINDS)
RETURNS = ("auto", "net", "zero")


@dataclass(frozen=True)
class SelectOptions:
    """What a user may fix instead of letting validation choose (``hfcast train --kind ... --return ...``)."""

    kind: str = "auto"     # auto | net | floor | ensemble | har_tod | har_rv | har_x | ewma
    ret: str = "auto"      # auto | net (the best head, skill or not) | zero

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"forecaster kind must be one of {KINDS}, got {self.kind!r}")
        if self.ret not in RETURNS:
            raise ValueError(f"return choice must be one of {RETURNS}, got {self.ret!r}")


@dataclass
class Candidate:
    """One volatility candidate: its choice (return left to the return rule), validation QLIKE and
    the upper bound of its mean QLIKE difference to ``har_tod`` (negative: a significant gain; NaN:
    not measured - no ``har_tod``, or too few validation hours)."""

    choice: Choice
    val_qlike: float
    gain_ub: float = float("nan")

    @property
    def significant(self) -> bool:
        return bool(np.isfinite(self.gain_ub) and self.gain_ub < 0)


@dataclass
class FoldSelection:
    """What one fold chose and the evidence, plus the forecaster it built."""

    forecaster: Forecaster
    choice: Choice
    candidates: list[Candidate] = field(default_factory=list)
    ret_evidence: dict[str, dict[str, float]] = field(default_factory=dict)


def qlike_scale(h: np.ndarray, y2: np.ndarray) -> float:
    """The variance multiplier c minimising QLIKE(c * h, y2) (closed form: mean(y2 / h)) over the
    rows QLIKE scores: a flat 10 minutes (y2 = 0) is left out there, so it is here (kept, half flat
    rows halved the scale of a tick-bound symbol's floored network)."""
    ok = np.isfinite(h) & np.isfinite(y2) & (y2 > 0)
    if not ok.any():
        return 1.0
    return float(np.mean(y2[ok] / np.maximum(h[ok], 1e-18)))


def hour_clusters(ts: pd.Series | np.ndarray) -> np.ndarray:
    """Cluster id per row: the hour of its window's end (shared by all symbols)."""
    return pd.DatetimeIndex(pd.to_datetime(np.asarray(ts), utc=True)).floor("h").asi8


def ic_bound(pred: np.ndarray, y: np.ndarray, clusters: np.ndarray, level: float = IC_BOUND_LEVEL,
             n_boot: int = IC_BOOTSTRAP) -> tuple[float, float]:
    """The pooled IC and its one-sided lower ``level`` bound from a bootstrap over clusters (whole
    hours resampled with replacement; NaN bound with fewer than 10 clusters or 100 rows)."""
    ok = np.isfinite(pred) & np.isfinite(y)
    p, t = np.asarray(pred, np.float64)[ok], np.asarray(y, np.float64)[ok]
    point = M.ic(p, t)
    if p.size < 100 or not np.isfinite(point) or p.std() == 0:
        return point, float("nan")
    cl = np.unique(np.asarray(clusters)[ok], return_inverse=True)[1].ravel()
    n_cl = int(cl.max()) + 1
    if n_cl < 10:
        return point, float("nan")
    S = np.stack([np.bincount(cl, w) for w in (np.ones_like(p), p, t, p * p, t * t, p * t)], axis=1)  # [C, 6]
    W = np.random.default_rng(2).multinomial(n_cl, np.full(n_cl, 1.0 / n_cl), size=n_boot).astype(np.float64)
    n, sp, st, spp, stt, spt = (W @ S).T
    with np.errstate(divide="ignore", invalid="ignore"):
        cov = spt / n - sp * st / n**2
        boot = cov / np.sqrt((spp / n - (sp / n) ** 2) * (stt / n - (st / n) ** 2))
    boot = boot[np.isfinite(boot)]
    return point, float(np.quantile(boot, 1 - level)) if boot.size else float("nan")


def _qlike(lv: np.ndarray, y2: np.ndarray) -> float:
    return M.qlike(np.exp(lv), y2)


class _PairedBound:
    """Upper bounds of mean QLIKE differences to one reference forecast, clustered by hour.

    A cluster-robust standard error with Student's t on G - 1 degrees of freedom (G hours; the
    small-G correction of Cameron & Miller 2015), not a bootstrap: three validation days hold about
    20 hours and one day 6, too few for a cluster bootstrap's quantiles, while the t quantile
    widens the bound honestly as G falls (t(5) = 2.57 at 97.5%)."""

    def __init__(self, lv_ref: np.ndarray, y2: np.ndarray, clusters: np.ndarray | None,
                 level: float = GAIN_BOUND_LEVEL):
        self.y2, self.level = y2, level
        self.ref = M.qlike_rows(np.exp(lv_ref), y2)
        self.cl = None if clusters is None else np.unique(np.asarray(clusters), return_inverse=True)[1].ravel()

    def upper(self, lv: np.ndarray) -> float:
        """The one-sided ``level`` upper bound of mean(QLIKE(lv) - QLIKE(ref)) (NaN: no bound)."""
        if self.cl is None:
            return float("nan")
        d = M.qlike_rows(np.exp(lv), self.y2) - self.ref
        ok = np.isfinite(d)
        cl = np.unique(self.cl[ok], return_inverse=True)[1].ravel()
        g = int(cl.max()) + 1 if cl.size else 0
        if ok.sum() < 100 or g < MIN_CLUSTERS:
            return float("nan")
        d = d[ok]
        mean = d.mean()
        s = np.bincount(cl, d - mean)
        se = np.sqrt(g / (g - 1) * np.sum(s * s)) / d.size
        return float(mean + student_t.ppf(self.level, g - 1) * se)


def crossfit_groups(n: int, clusters: np.ndarray | None) -> np.ndarray:
    """Two halves of the validation rows for cross-fitting: alternate (UTC) days where there are two
    or more, else alternate hours, else the first and second half of the rows (no clusters given)."""
    if clusters is not None and len(clusters) == n and n:
        hours = np.asarray(clusters, np.int64)
        days = np.unique(hours // (86_400 * 10**9), return_inverse=True)[1].ravel()
        if days.max() >= 1:
            return days % 2
        hrs = np.unique(hours, return_inverse=True)[1].ravel()
        if hrs.max() >= 1:
            return hrs % 2
    return (np.arange(n) >= n // 2).astype(np.int64)


def _network_fits(lv_nets: Mapping[str, np.ndarray], lv_har: np.ndarray | None, y2: np.ndarray,
                  fit: np.ndarray) -> list[tuple[Choice, np.ndarray]]:
    """Each network candidate (bare, floored, the ensemble of the floors) with its parameters (the
    variance scale, the floor weight) fitted on the rows ``fit``, and its log variance on ALL rows."""
    out: list[tuple[Choice, np.ndarray]] = []
    floors: dict[str, float] = {}
    for arch, lv_net in lv_nets.items():
        c = qlike_scale(np.exp(lv_net[fit]), y2[fit])
        out.append((Choice(vol="net", members={arch: 1.0}, scale=c), lv_net + np.log(c)))
        if lv_har is None:
            continue
        best = None
        for w in WEIGHTS:
            lv = w * lv_net + (1 - w) * lv_har
            c = qlike_scale(np.exp(lv[fit]), y2[fit])
            q = _qlike(lv[fit] + np.log(c), y2[fit])
            if best is None or q < best[2]:
                best = (w, c, q)
        floors[arch] = best[0]
        out.append((Choice(vol="floor", members={arch: best[0]}, scale=best[1]),
                    best[0] * lv_net + (1 - best[0]) * lv_har + np.log(best[1])))
    if len(floors) >= 2:
        lv = np.mean([w * lv_nets[a] + (1 - w) * lv_har for a, w in floors.items()], axis=0)
        c = qlike_scale(np.exp(lv[fit]), y2[fit])
        out.append((Choice(vol="ensemble", members=dict(floors), scale=c), lv + np.log(c)))
    return out


def vol_candidates(nets: Mapping[str, Mapping[str, np.ndarray]], bases: Mapping[str, Mapping[str, np.ndarray]],
                   y_rv: np.ndarray, kind: str = "auto", clusters: np.ndarray | None = None) -> list[Candidate]:
    """Every volatility candidate of the module docstring with its validation QLIKE, baselines first.

    ``nets``/``bases``: natural-unit validation forecasts of the networks and of the fitted
    baselines (``har_tod`` needed for the floor); ``y_rv``: validation ``rv_10m``; ``clusters``:
    the rows' hours (:func:`hour_clusters`), for each candidate's gain bound over ``har_tod``.

    A network candidate's scale and floor weight are fitted on validation, a baseline's parameters
    on the training span only; scoring both on the rows the first were fitted to would favour the
    network by its own fit (a copy of ``har_tod`` with a scale fitted on 4 validation days with
    day-wide shocks was served in 29 of 100 such markets). So a network candidate is scored
    CROSS-FITTED: its parameters fitted on one half of the validation days, its QLIKE (and its gain
    bound) taken on the other half, both ways (:func:`crossfit_groups`); the forecaster that is
    served carries the parameters fitted on all of validation.
    """
    y2 = np.asarray(y_rv, np.float64) ** 2
    out: list[Candidate] = []
    har = bases.get(FLOOR)
    paired = _PairedBound(log_variance(har), y2, clusters) if har is not None else None

    def cand(choice: Choice, lv: np.ndarray) -> Candidate:
        ub = paired.upper(lv) if paired is not None and choice.vol != FLOOR else float("nan")
        return Candidate(choice, _qlike(lv, y2), ub)

    for name in DEPLOYABLE:
        if name in bases:
            out.append(cand(Choice(vol=name), log_variance(bases[name])))
    lv_nets = {arch: log_variance(nat) for arch, nat in nets.items()}
    lv_har = log_variance(har) if har is not None else None
    served = _network_fits(lv_nets, lv_har, y2, np.ones(y2.size, bool))
    half = crossfit_groups(y2.size, clusters)
    crossed = [np.full(y2.size, np.nan) for _ in served]
    for k in (0, 1):
        if not (half == k).any():
            continue
        for lv_cf, (_, lv) in zip(crossed, _network_fits(lv_nets, lv_har, y2, half != k)):
            lv_cf[half == k] = lv[half == k]
    out += [cand(choice, lv_cf) for (choice, _), lv_cf in zip(served, crossed)]
    if kind != "auto":
        out = [c for c in out if c.choice.vol == kind]
        if not out:
            raise ValueError(f"no {kind!r} candidate: it needs "
                             + ("two or more architectures" if kind == "ensemble" else "a trained network"
                                if kind in ("net", "floor") else f"the {kind} baseline"))
    return out


def choose_return(nets: Mapping[str, Mapping[str, np.ndarray]], y_ret: np.ndarray, clusters: np.ndarray,
                  persistence_ic: float, mode: str = "auto") -> tuple[str, dict[str, dict[str, float]]]:
    """The architecture whose return head is served, or ``zero``, with each head's evidence."""
    evidence = {}
    for arch, nat in nets.items():
        ic, lo = ic_bound(np.asarray(nat["ret_mu"]), y_ret, clusters)
        skill = bool(np.isfinite(lo) and lo > 0 and ic > (persistence_ic if np.isfinite(persistence_ic) else 0.0))
        evidence[arch] = {"ic": float(ic), "ic_lo": float(lo), "skill": skill}
    if mode == "zero" or not evidence:
        return "zero", evidence
    pool = evidence if mode == "net" else {a: e for a, e in evidence.items() if e["skill"]}
    pool = {a: e for a, e in pool.items() if np.isfinite(e["ic"])}
    if not pool:
        return "zero", evidence
    return max(pool, key=lambda a: pool[a]["ic"]), evidence


def choose_vol(cands: Sequence[Candidate], kind: str = "auto") -> tuple[Candidate, str | None]:
    """The served volatility candidate and, where the lowest validation QLIKE was not a
    significant gain over ``har_tod`` (so ``har_tod`` or a significant runner-up is served), why.
    A fixed ``kind`` (or no ``har_tod`` among the candidates) takes the lowest as it is."""
    lowest = min(cands, key=lambda c: c.val_qlike)  # min keeps the first of ties: baselines come first
    ref = next((c for c in cands if c.choice.vol == FLOOR), None)
    if kind != "auto" or ref is None or lowest is ref or lowest.significant:
        return lowest, None
    best = min([ref, *(c for c in cands if c.significant)], key=lambda c: c.val_qlike)
    ub = lowest.gain_ub
    why = (f"{_label(lowest.choice)} had the lowest validation QLIKE ({lowest.val_qlike:.4g} vs har_tod "
           f"{ref.val_qlike:.4g}) but "
           + (f"its gain is not significant (the {GAIN_BOUND_LEVEL:.1%} bound over validation hours "
              f"allows {ub / ref.val_qlike:+.1%})" if np.isfinite(ub) else
              f"validation is too short to bound its gain (fewer than {MIN_CLUSTERS} hours or 100 rows)")
           + f": {_label(best.choice)} served")
    log.info("%s", why)
    return best, why


def select_fold(nets: Mapping[str, Any], nat_val: Mapping[str, Mapping[str, np.ndarray]],
                baselines: Mapping[str, Any], val_inp: pd.DataFrame, val_ts: Any, scaler: Any,
                feature_names: Sequence[str], options: SelectOptions = SelectOptions(),
                meta: Mapping[str, Any] | None = None) -> FoldSelection:
    """Choose and build the fold's forecaster on validation rows only.

    Args:
        nets: trained networks, arch -> :class:`hfcast.models.base.TrainedNet`.
        nat_val: their natural-unit forecasts of the validation windows.
        baselines: fitted baselines, name -> :class:`hfcast.models.baselines.Baseline`.
        val_inp: the validation windows' inputs (:func:`hfcast.models.baselines.baseline_inputs`,
            labels included), same order as ``nat_val``. val_ts: their end timestamps.
        scaler: the graph's input scaling. feature_names: the window's features.
    """
    y_ret = val_inp["ret_60m"].to_numpy(np.float64)
    y_rv = val_inp["rv_10m"].to_numpy(np.float64)
    bases = {n: b.natural(val_inp) for n, b in baselines.items() if n in (*DEPLOYABLE, "persistence")}
    clusters = hour_clusters(val_ts)
    cands = vol_candidates(nat_val, {n: v for n, v in bases.items() if n in DEPLOYABLE}, y_rv, options.kind, clusters)
    best, dropped = choose_vol(cands, options.kind)
    pers_ic = M.ic(bases["persistence"]["ret_mu"], y_ret) if "persistence" in bases else float("nan")
    ret, ret_ev = choose_return(nat_val, y_ret, clusters, pers_ic, options.ret)
    evidence = {"val_qlike": {_label(c.choice): float(c.val_qlike) for c in cands},
                "chosen_val_qlike": float(best.val_qlike),
                "val_gain_ub": {_label(c.choice): float(c.gain_ub) for c in cands if np.isfinite(c.gain_ub)},
                "not_significant": dropped,
                "val_qlike_har_tod": float(_qlike(log_variance(bases[FLOOR]), y_rv ** 2)) if FLOOR in bases else None,
                "return": ret_ev, "persistence_ic": float(pers_ic)}
    choice = Choice(vol=best.choice.vol, members=dict(best.choice.members), scale=best.choice.scale, ret=ret,
                    evidence=evidence)
    kept = {n: b for n, b in baselines.items() if n in (FLOOR, choice.vol)}
    served = compose(choice, nat_val, bases)
    cal = Calibrator().fit(served, y_ret, y_rv, groups=clusters, context=context(val_inp))
    fc = Forecaster(nets, kept, choice, cal, feature_names, scaler, meta)
    log.info("chose %s (val QLIKE %.4f; har_tod %.4f)", choice.describe(), best.val_qlike,
             evidence["val_qlike_har_tod"] or float("nan"))
    return FoldSelection(fc, choice, cands, ret_ev)


def _label(choice: Choice) -> str:
    return choice.label
