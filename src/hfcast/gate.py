"""The champion/challenger gate: a pure decision over scores measured on the same test spans.

Why a separate, pure module: the promotion rule is the one place where a mistake lets a worse
model reach production, so it has no I/O and is tested exhaustively (``tests/code/test_gate.py``).
It imports no registry: :mod:`hfcast.promotion` gathers the scores (from logged runs or from an
evaluation hook) and applies decisions to the MLflow aliases.

Rule: for every primary metric, the challenger must improve on the current champion AND on every
baseline by *more than* that metric's margin (strictly: a tie never promotes). A challenger score
that is missing, NaN or infinite rejects. A champion score that is missing or NaN rejects too
(the comparison cannot be made, so the safe answer is "no"; ``--force`` exists for humans). A
baseline that has no finite value for a metric (e.g. the zero-return baseline has no IC) is not
compared on that metric; this is recorded in the notes.

Per target (a forecaster serves each target on its own, :mod:`hfcast.selection`):

- a RETURN metric (``ret_*``) of a challenger that serves the zero return (``ret_served`` 0: no
  validated return skill) is not compared with the baselines - a volatility skill is never
  rejected because the return head has none; it must only not drop a champion's return skill: it
  fails when the champion's value beats the zero forecast's by more than the margin;
- a challenger whose volatility forecast IS a baseline (``served_baseline``) is not compared with
  that baseline (a tie with itself), and on the volatility it is compared with the champion and
  the floor ``har_tod`` only: validation chose it over the other baselines (their gains over
  ``har_tod`` were not significant there, :mod:`hfcast.selection`), and re-judging baselines
  against one another on a few test days at margin 0 is a coin toss that leaves no champion at
  all (GARCH-t, 16 symbols, seed 3: ``har_tod`` served, ``har_x`` 0.9% better on the 5 test
  days). A learned forecaster (a network, floored or not, an ensemble) chosen on validation is
  compared on the volatility with the champion, ``har_tod`` and every baseline validation did not
  rank below it (the baselines that are not candidates - ``zero``, ``persistence`` - and, for a
  fixed kind, a baseline with a lower validation QLIKE and a significant gain over ``har_tod``): the same
  coin toss otherwise refused a network 15% better than ``har_tod`` on every test day because
  ``har_x``, which it beat on validation, was 2% better on 3 of 5 test days (tick-bound GARCH, 16
  symbols, seed 3). Without validation evidence it must beat every baseline;
- a forecaster whose validation QLIKE is worse than ``har_tod``'s (``validation``) is never
  promoted (only a fixed kind can be: what validation chooses is never worse).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from hfcast.config import Settings
from hfcast.contracts import finite

FLOOR = "har_tod"  # the baseline every served forecaster must beat (hfcast.models.baselines.FLOOR)

DEFAULT_PRIMARY: dict[str, dict[str, Any]] = {
    "vol_qlike": {"direction": "min", "margin": 0.0},
    "ret_ic": {"direction": "max", "margin": 0.0},
}


@dataclass(frozen=True)
class MetricRule:
    """One primary metric of the gate."""

    name: str
    higher_is_better: bool
    margin: float = 0.0  # absolute improvement the challenger must exceed, in the metric's units

    @property
    def target(self) -> str:
        """``ret``, ``vol`` or ``any``: which forecast the metric judges (from its name)."""
        return "ret" if self.name.startswith("ret_") else "vol" if self.name.startswith(("vol_", "rv_")) else "any"

    def improvement(self, challenger: float, reference: float) -> float:
        """How much better the challenger is (positive = better), whatever the direction."""
        return challenger - reference if self.higher_is_better else reference - challenger


@dataclass(frozen=True)
class GateConfig:
    """Which metrics decide, and whether baselines are required."""

    rules: tuple[MetricRule, ...]
    require_baselines: bool = True  # design: every model must beat its baselines

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None,
                     margin: float | Mapping[str, float] | None = None) -> "GateConfig":
        """Build from the ``registry.gate`` section of params.yaml.

        Args:
            cfg: ``{"primary": {metric: {"direction": "min"|"max", "margin": float}}, "require_baselines": bool}``.
            margin: optional override: one margin for every metric, or a per-metric mapping.
        """
        cfg = dict(cfg or {})
        primary = cfg.get("primary") or DEFAULT_PRIMARY
        rules = []
        for name, spec in primary.items():
            direction = str(spec.get("direction", "")).lower()
            if direction not in ("min", "max"):
                raise ValueError(f"registry.gate.primary.{name}.direction must be 'min' or 'max', got {direction!r}")
            m = float(spec.get("margin", 0.0))
            if isinstance(margin, Mapping):
                m = float(margin.get(name, m))
            elif margin is not None:
                m = float(margin)
            if not math.isfinite(m) or m < 0:
                raise ValueError(f"gate margin for {name} must be a finite number >= 0, got {m}")
            rules.append(MetricRule(name, direction == "max", m))
        if not rules:
            raise ValueError("registry.gate.primary names no metric: the gate would promote anything")
        return cls(tuple(rules), bool(cfg.get("require_baselines", True)))


@dataclass
class GateDecision:
    """The answer of the gate, with reasons a human can read in the registry tags."""

    promote: bool
    reasons: list[str]
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    forced: bool = False

    @classmethod
    def force(cls, reason: str) -> "GateDecision":
        """A human override (``hfcast registry promote V --force --reason ...``); the reason is required."""
        if not reason or not reason.strip():
            raise ValueError("a forced promotion needs a reason (it is recorded on the model version)")
        return cls(True, [f"forced: {reason.strip()}"], [], forced=True)

    def summary(self) -> str:
        """One line for tags and logs."""
        head = "promote" if self.promote else "reject"
        return f"{head}: " + "; ".join(self.reasons)


def decide(
    challenger: Mapping[str, float],
    champion: Mapping[str, float] | None,
    baselines: Mapping[str, Mapping[str, float]],
    config: GateConfig,
    served_baseline: str | None = None,
    validation: Mapping[str, Any] | None = None,
) -> GateDecision:
    """Decide whether the challenger may become champion.

    Args:
        challenger: the challenger's scores on the test spans, ``{metric: value}`` (``ret_served``
            0 when it serves the zero return).
        champion: the current champion's scores on the SAME spans, or None when there is no champion.
        baselines: ``{baseline_name: {metric: value}}`` on the same spans.
        config: primary metrics, directions and margins.
        served_baseline: the baseline the challenger's volatility forecast is, if it is one.
        validation: ``{"val_qlike": {label: q}, "chosen_val_qlike": q, "val_qlike_har_tod": q,
            "val_gain_ub": {label: bound}}`` of the challenger's last fold (the module docstring's
            validation rule, and which baselines validation ranked below the challenger).

    Returns:
        GateDecision: ``promote`` is True only if every comparison passed; ``reasons`` names every
        failing metric and reference (or says why it passed), ``comparisons`` holds the numbers.
    """
    failures: list[str] = []
    notes: list[str] = []
    comparisons: list[dict[str, Any]] = []

    refs: list[tuple[str, Mapping[str, float], bool]] = []  # (name, scores, must_have_value)
    if champion is not None:
        refs.append(("champion", champion, True))
    else:
        notes.append("no current champion: compared with baselines only")
    for b, sc in sorted(baselines.items()):
        if b == served_baseline:
            notes.append(f"the challenger serves the {b} baseline's volatility: not compared with itself")
            continue
        refs.append((f"baseline {b}", sc, False))
    if not baselines and config.require_baselines:
        failures.append("no baseline scores were given (every model must beat its baselines)")
    _validation_rule(validation, failures, notes)
    zero_ret = challenger.get("ret_served") == 0
    uncompared: set[str] = set()
    for rule in config.rules:
        c = challenger.get(rule.name)
        if not finite(c):
            failures.append(f"challenger {rule.name} is {c!r}: not a finite score")
            continue
        if rule.target == "ret" and zero_ret:
            _zero_return_rule(rule, float(c), champion, comparisons, failures, notes)
            continue
        rule_refs = refs
        if served_baseline and rule.target == "vol":
            rule_refs = [r for r in refs if r[0] in ("champion", f"baseline {FLOOR}")]
            others = sorted(r[0].removeprefix("baseline ") for r in refs if r not in rule_refs)
            if others:
                kept = [*(["the champion"] if champion is not None else []), *([FLOOR] if served_baseline != FLOOR else [])]
                notes.append(f"{rule.name}: the challenger serves the {served_baseline} baseline, chosen on validation: "
                             f"compared with {' and '.join(kept) or 'nothing else'}, not re-judged against "
                             f"{', '.join(others)}")
        elif rule.target == "vol":
            ranked_below = _ranked_below(validation)
            rule_refs = [r for r in refs if r[0].removeprefix("baseline ") not in ranked_below]
            skipped = sorted(r[0].removeprefix("baseline ") for r in refs if r not in rule_refs)
            if skipped:
                notes.append(f"{rule.name}: validation ranked {', '.join(skipped)} below the challenger (their gain "
                             f"over {FLOOR} lower or not significant there): not re-judged on the test spans; "
                             f"compared with {', '.join(r[0] for r in rule_refs) or 'nothing'}")
        compared = _compare_rule(rule, float(c), rule_refs, comparisons, failures, notes)
        if compared == 0:
            uncompared.add(rule.name)
            notes.append(f"{rule.name}: no reference had a finite value" if rule_refs else
                         f"{rule.name}: the challenger serves the floor {FLOOR} itself and there is no champion: "
                         "nothing to compare")

    if failures:
        return GateDecision(False, failures + notes, comparisons)
    passed = [f"{rule.name} beats every reference it was compared with by > {rule.margin:.3g}" for rule in config.rules
              if not (rule.target == "ret" and zero_ret) and rule.name not in uncompared]
    return GateDecision(True, passed + notes, comparisons)


def _ranked_below(validation: Mapping[str, Any] | None) -> set[str]:
    """The deployable baselines the validation choice ranked below the challenger (see the module
    docstring): a validation QLIKE no lower than the chosen one's, or lower but with a gain over
    ``har_tod`` that was not significant (``val_gain_ub`` not below 0). ``har_tod`` is never among
    them; without validation evidence none is (every baseline is compared)."""
    if not validation:
        return set()
    vq, chosen = validation.get("val_qlike"), validation.get("chosen_val_qlike")
    if not isinstance(vq, Mapping) or not finite(chosen):
        return set()
    ub = validation.get("val_gain_ub")
    out = set()
    for name, q in vq.items():
        if name == FLOOR or not finite(q):
            continue
        significant = True if not isinstance(ub, Mapping) else (finite(ub.get(name)) and float(ub[name]) < 0)
        if not (float(q) < float(chosen) and significant):
            out.add(str(name))
    return out


def _validation_rule(validation: Mapping[str, Any] | None, failures: list[str], notes: list[str]) -> None:
    """Refuse a forecaster whose validation QLIKE is worse than har_tod's (see the module docstring)."""
    if not validation:
        return
    chosen, har = validation.get("chosen_val_qlike"), validation.get("val_qlike_har_tod")
    if finite(chosen) and finite(har):
        if float(chosen) > float(har):
            failures.append(f"vol_qlike on validation {float(chosen):.6g} is worse than har_tod's {float(har):.6g}: "
                            "a forecaster worse than the floor on validation is never promoted")
        else:
            notes.append(f"validation vol_qlike {float(chosen):.6g} <= har_tod {float(har):.6g}")


def _zero_return_rule(rule: MetricRule, c: float, champion: Mapping[str, float] | None,
                      comparisons: list[dict[str, Any]], failures: list[str], notes: list[str]) -> None:
    """A challenger serving the zero return: not compared with baselines; it must not drop more
    than ``margin`` of a champion's return skill on this metric."""
    what = f"{rule.name}: the challenger serves the zero return (no validated return skill)"
    r = None if champion is None else champion.get(rule.name)
    if champion is None or champion.get("ret_served") == 0 or not finite(r):
        notes.append(f"{what}; not compared (" + ("no champion" if champion is None else
                     "the champion serves no return either" if champion.get("ret_served") == 0 else
                     f"champion {rule.name} is {r!r}") + ")")
        return
    gain = rule.improvement(c, float(r))
    ok = gain >= -rule.margin
    comparisons.append({"metric": rule.name, "reference": "champion", "challenger": c, "reference_value": float(r),
                        "improvement": gain, "margin": rule.margin, "passed": ok, "zero_return": True})
    if ok:
        notes.append(f"{what}; the champion's {float(r):.6g} is no better than the zero return's {c:.6g} by more "
                     f"than {rule.margin:.3g}: nothing is lost")
    else:
        failures.append(f"{what}, while the champion's return forecast has {rule.name} {float(r):.6g} on these spans "
                        f"(zero return {c:.6g}, margin {rule.margin:.3g}): promoting would drop a return skill")


def _compare_rule(rule: MetricRule, c: float, refs: list[tuple[str, Mapping[str, float], bool]],
                  comparisons: list[dict[str, Any]], failures: list[str], notes: list[str]) -> int:
    """The challenger's score ``c`` on one metric against every reference that has it.

    Appends to ``comparisons``, ``failures`` and ``notes``; returns how many references were compared.
    """
    compared = 0
    for ref_name, scores, must_have in refs:
        r = scores.get(rule.name)
        if not finite(r):
            if must_have:
                failures.append(f"{ref_name} {rule.name} is {r!r}: cannot compare, not promoting")
            else:
                notes.append(f"{ref_name} has no {rule.name}: not compared on it")
            continue
        gain = rule.improvement(c, float(r))
        ok = gain > rule.margin
        compared += 1
        comparisons.append({"metric": rule.name, "reference": ref_name, "challenger": c,
                            "reference_value": float(r), "improvement": gain, "margin": rule.margin,
                            "passed": ok})
        if not ok:
            word = "higher" if rule.higher_is_better else "lower"
            failures.append(
                f"{rule.name}: challenger {c:.6g} vs {ref_name} {float(r):.6g} "
                f"(improvement {gain:.3g} <= margin {rule.margin:.3g}; {word} is better)"
            )
    return compared


def config_from_settings(settings: Settings, margin: float | Mapping[str, float] | None = None) -> GateConfig:
    """The gate configuration from params.yaml ``registry.gate`` (defaults: QLIKE and IC, margin 0)."""
    return GateConfig.from_mapping(settings.param("registry.gate", {}), margin)
