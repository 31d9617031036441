"""The champion/challenger gate: a pure decision over scores measured on the same test spans.

Why a separate, pure module: the promotion rule is the one place where a mistake lets a worse
model reach production, so it has no I/O and is tested exhaustively (``tests/code/test_gate.py``).
:func:`run_gate` gathers the scores (from logged runs or from an evaluation hook) and
:func:`promote` / :func:`rollback` apply decisions to the MLflow aliases (MLflow is imported only
inside those functions, so the decision itself needs nothing but the standard library).

Rule: for every primary metric, the challenger must improve on the current champion AND on every
baseline by *more than* that metric's margin (strictly: a tie never promotes). A challenger score
that is missing, NaN or infinite rejects. A champion score that is missing or NaN rejects too
(the comparison cannot be made, so the safe answer is "no"; ``--force`` exists for humans). A
baseline that has no finite value for a metric (e.g. the zero-return baseline has no IC) is not
compared on that metric; this is recorded in the notes.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

log = logging.getLogger(__name__)

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


def _finite(x: Any) -> bool:
    """A real, finite number (strings and booleans are caller mistakes, not scores)."""
    if isinstance(x, (str, bytes, bool)):
        return False
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def decide(
    challenger: Mapping[str, float],
    champion: Mapping[str, float] | None,
    baselines: Mapping[str, Mapping[str, float]],
    config: GateConfig,
) -> GateDecision:
    """Decide whether the challenger may become champion.

    Args:
        challenger: the challenger's scores on the test spans, ``{metric: value}``.
        champion: the current champion's scores on the SAME spans, or None when there is no champion.
        baselines: ``{baseline_name: {metric: value}}`` on the same spans.
        config: primary metrics, directions and margins.

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
    refs += [(f"baseline {b}", s, False) for b, s in sorted(baselines.items())]
    if not baselines and config.require_baselines:
        failures.append("no baseline scores were given (every model must beat its baselines)")

    for rule in config.rules:
        c = challenger.get(rule.name)
        if not _finite(c):
            failures.append(f"challenger {rule.name} is {c!r}: not a finite score")
            continue
        compared = 0
        for ref_name, scores, must_have in refs:
            r = scores.get(rule.name)
            if not _finite(r):
                if must_have:
                    failures.append(f"{ref_name} {rule.name} is {r!r}: cannot compare, not promoting")
                else:
                    notes.append(f"{ref_name} has no {rule.name}: not compared on it")
                continue
            gain = rule.improvement(float(c), float(r))
            ok = gain > rule.margin
            compared += 1
            comparisons.append({"metric": rule.name, "reference": ref_name, "challenger": float(c),
                                "reference_value": float(r), "improvement": gain, "margin": rule.margin,
                                "passed": ok})
            if not ok:
                word = "higher" if rule.higher_is_better else "lower"
                failures.append(
                    f"{rule.name}: challenger {float(c):.6g} vs {ref_name} {float(r):.6g} "
                    f"(improvement {gain:.3g} <= margin {rule.margin:.3g}; {word} is better)"
                )
        if compared == 0:
            notes.append(f"{rule.name}: no reference had a finite value")

    if failures:
        return GateDecision(False, failures + notes, comparisons)
    passed = [f"{rule.name} beats every reference by > {rule.margin:.3g}" for rule in config.rules]
    return GateDecision(True, passed + notes, comparisons)


# --- applying decisions to the registry (MLflow imported lazily: the decision above stays pure) ---

HISTORY_TAG = "hfcast.champion_history"  # JSON list of champion versions, oldest first
Evaluator = Callable[[str, list[tuple[str, str]]], Mapping[str, float]]


def config_from_settings(settings: Any, margin: float | Mapping[str, float] | None = None) -> GateConfig:
    """The gate configuration from params.yaml ``registry.gate`` (defaults: QLIKE and IC, margin 0)."""
    return GateConfig.from_mapping(settings.param("registry.gate", {}), margin)


def gate(settings: Any, version: int | str, challenger_scores: Mapping[str, float],
         champion_scores: Mapping[str, float] | None, baseline_scores: Mapping[str, Mapping[str, float]],
         margin: float | Mapping[str, float] | None = None) -> GateDecision:
    """The gate with the configured rules; pure (reads settings, writes nothing).

    All scores must be measured on the same test spans; :func:`run_gate` guarantees that.
    """
    decision = decide(challenger_scores, champion_scores, baseline_scores, config_from_settings(settings, margin))
    log.info("gate for version %s: %s", version, decision.summary())
    return decision


def _alias(client: Any, name: str, alias: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def run_gate(settings: Any, version: int | str, evaluate_on_spans: Evaluator | None = None,
             baseline_scores: Mapping[str, Mapping[str, float]] | None = None,
             margin: float | Mapping[str, float] | None = None) -> GateDecision:
    """Score the challenger and the champion on the challenger's test spans, then :func:`gate`.

    Args:
        version: the challenger (any reference :func:`hfcast.registry.resolve` accepts).
        evaluate_on_spans: ``f(model_uri, spans) -> scores``, supplied by the walk-forward code to
            re-score a registered version on given dates. Without it the logged scores are used,
            which is only valid when the champion's run covered the same spans (checked).
        baseline_scores: defaults to the baselines logged with the challenger's run (same spans).
    """
    from hfcast import registry as reg

    mv = reg.resolve(settings, version)
    mine = reg.run_scores(settings, mv.run_id)
    spans = [(str(a), str(b)) for a, b in mine["test_spans"]]
    with reg.tracking(settings) as t:
        champ = _alias(t.client, mv.name, reg.CHAMPION)
    if champ is not None and str(champ.version) == str(mv.version):
        raise reg.RegistryError(f"version {mv.version} is already the champion")
    if evaluate_on_spans is not None:
        challenger = dict(evaluate_on_spans(f"models:/{mv.name}/{mv.version}", spans))
        champion = dict(evaluate_on_spans(f"models:/{champ.name}/{champ.version}", spans)) if champ else None
    else:
        challenger, champion = mine["model"], None
        if champ is not None:
            theirs = reg.run_scores(settings, champ.run_id)
            if theirs.get("test_spans_sha") != mine.get("test_spans_sha"):
                raise reg.RegistryError(
                    f"champion v{champ.version} was scored on other test spans than v{mv.version}; "
                    "pass evaluate_on_spans to re-score both on the same spans")
            champion = theirs["model"]
    baselines = mine.get("baselines", {}) if baseline_scores is None else baseline_scores
    return gate(settings, mv.version, challenger, champion, baselines, margin)


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _history(client: Any, name: str) -> list[str]:
    raw = client.get_registered_model(name).tags.get(HISTORY_TAG, "[]")
    return [str(v) for v in json.loads(raw)]


def promote(settings: Any, version: int | str, decision: GateDecision) -> bool:
    """Apply a gate decision: ``champion`` moves only if ``decision.promote``; reasons are tagged.

    The outgoing champion gets the ``previous-champion`` alias and stays in the champion history,
    so :func:`rollback` restores it.

    Returns:
        True if the version is now the champion.
    """
    from hfcast import registry as reg

    mv = reg.resolve(settings, version)
    name, v = mv.name, str(mv.version)
    with reg.tracking(settings) as t:
        c = t.client
        c.set_model_version_tag(name, v, "gate.decision", "forced" if decision.forced else
                                ("promote" if decision.promote else "reject"))
        c.set_model_version_tag(name, v, "gate.reasons", json.dumps(decision.reasons)[:5000])
        c.set_model_version_tag(name, v, "gate.at", _now())
        if not decision.promote:
            log.warning("%s v%s not promoted: %s", name, v, decision.summary())
            return False
        current = _alias(c, name, reg.CHAMPION)
        if current is not None and str(current.version) == v:
            log.info("%s v%s is already the champion", name, v)
            return True
        history = _history(c, name)
        if current is not None:
            if not history or history[-1] != str(current.version):
                history.append(str(current.version))
            c.set_registered_model_alias(name, reg.PREVIOUS, current.version)
        history = (history + [v])[-100:]
        c.set_registered_model_alias(name, reg.CHAMPION, v)
        challenger = _alias(c, name, reg.CHALLENGER)
        if challenger is not None and str(challenger.version) == v:
            c.delete_registered_model_alias(name, reg.CHALLENGER)
        c.set_model_version_tag(name, v, "promoted_at", _now())
        c.set_model_version_tag(name, v, "promotion_reason", decision.summary()[:5000])
        c.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
        c.set_registered_model_tag(name, "hfcast.last_event",
                                   f"{_now()} promoted v{v} (was v{current.version if current else '-'})")
    log.info("%s v%s is the champion (%s)", name, v, decision.summary())
    return True


def rollback(settings: Any, reason: str = "manual rollback") -> tuple[int, int]:
    """Make the previous champion the champion again; the demoted version is tagged with the reason.

    Returns:
        ``(demoted_version, restored_version)``.
    """
    from hfcast import registry as reg

    with reg.tracking(settings) as t:
        c, name = t.client, t.model_name
        current = _alias(c, name, reg.CHAMPION)
        if current is None:
            raise reg.RegistryError(f"model '{name}' has no champion to roll back from")
        cur = str(current.version)
        history = [h for h in _history(c, name) if h != cur]
        if not history:
            prev = _alias(c, name, reg.PREVIOUS)
            history = [str(prev.version)] if prev is not None and str(prev.version) != cur else []
        if not history:
            raise reg.RegistryError(f"model '{name}' has no previous champion to roll back to")
        restored = history[-1]
        c.set_registered_model_alias(name, reg.CHAMPION, restored)
        if len(history) >= 2:
            c.set_registered_model_alias(name, reg.PREVIOUS, history[-2])
        else:
            c.delete_registered_model_alias(name, reg.PREVIOUS)
        c.set_model_version_tag(name, cur, "rolled_back_at", _now())
        c.set_model_version_tag(name, cur, "rollback_reason", reason[:5000])
        c.set_model_version_tag(name, restored, "restored_at", _now())
        c.set_model_version_tag(name, restored, "restore_reason", reason[:5000])
        c.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
        c.set_registered_model_tag(name, "hfcast.last_event", f"{_now()} rolled back v{cur} -> v{restored}: {reason}")
    log.warning("%s: rolled back v%s -> v%s (%s)", name, cur, restored, reason)
    return int(cur), int(restored)
