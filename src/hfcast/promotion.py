"""Champion/challenger promotion: gather scores, ask the gate, move the MLflow aliases.

Why apart from :mod:`hfcast.gate`: the gate is a pure rule over scores; this module is the I/O
around it (the registry's runs and aliases). Dependencies point one way: promotion -> gate and
promotion -> registry, never back.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

from hfcast.config import Settings
from hfcast import registry as reg
from hfcast.gate import GateDecision, config_from_settings, decide

log = logging.getLogger(__name__)

HISTORY_TAG = "hfcast.champion_history"  # JSON list of champion versions, oldest first
Evaluator = Callable[[str, list[tuple[str, str]]], Mapping[str, float]]


def gate(settings: Settings, version: int | str, challenger_scores: Mapping[str, float],
         champion_scores: Mapping[str, float] | None, baseline_scores: Mapping[str, Mapping[str, float]],
         margin: float | Mapping[str, float] | None = None, served_baseline: str | None = None,
         validation: Mapping[str, Any] | None = None) -> GateDecision:
    """The gate with the configured rules; pure (reads settings, writes nothing).

    All scores must be measured on the same test spans; :func:`run_gate` guarantees that.
    """
    decision = decide(challenger_scores, champion_scores, baseline_scores, config_from_settings(settings, margin),
                      served_baseline=served_baseline, validation=validation)
    log.info("gate for version %s: %s", version, decision.summary())
    return decision


def _alias(client: Any, name: str, alias: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def run_gate(settings: Settings, version: int | str, evaluate_on_spans: Evaluator | None = None,
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
    vol_kind = mv.tags.get("hfcast.vol_kind", "")
    return gate(settings, mv.version, challenger, champion, baselines, margin,
                served_baseline=vol_kind if vol_kind in baselines else None, validation=mine.get("validation"))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


COMPARISONS_TAG = "gate.comparisons"  # JSON: the numbers the gate compared (hfcast.gate.decide's comparisons)
CHAMPION_TAG = "hfcast.champion"      # on the registered model: the version the champion alias points at
LATEST_TAG = "hfcast.latest_version"  # on the registered model: what its newest version is ("v5: rejected by the gate")


def _comparisons_json(comparisons: list[dict[str, Any]], limit: int = 5000) -> str:
    """The gate's comparisons as JSON within an MLflow tag's size (numbers rounded, rows dropped from the end)."""
    rows = [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()} for row in comparisons]
    text = json.dumps(rows)
    while len(text) > limit and rows:
        rows = rows[:-1]
        text = json.dumps(rows + [{"truncated": True}])
    return text


def version_description(decision: GateDecision) -> str:
    """The model version's description (shown in MLflow's version list): what the gate decided and why,
    with the numbers it compared (MLflow renders it as markdown)."""
    # plain capitals, not markdown bold: the versions table shows the description's first line raw
    head = ("FORCED past the gate" if decision.forced else
            "PROMOTED: passed the gate" if decision.promote else "REJECTED by the gate: never served")
    lines = [f"{head} ({_now()}).", ""] + [f"- {r}" for r in decision.reasons]
    if decision.comparisons:
        lines += ["", "| metric | against | challenger | reference | improvement | margin | passed |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {c['metric']} | {c['reference']} | {c['challenger']:.4g} | {c['reference_value']:.4g} | "
                  f"{c['improvement']:+.3g} | {c['margin']:.3g} | {'yes' if c['passed'] else 'NO'} |"
                  for c in decision.comparisons]
    return "\n".join(lines)[:5000]


def describe_champion(client: Any, name: str) -> None:
    """Name the champion in the registered model's description and tags.

    Why: MLflow's model list shows the newest version as "latest version"; when the gate rejected
    it, nothing there said that another version is the one in use.
    """
    champ = _alias(client, name, reg.CHAMPION)
    versions = client.search_model_versions(f"name='{name}'")
    latest = max((int(m.version) for m in versions), default=None)
    if champ is None:
        text = f"hfcast forecaster. No champion yet: no version has passed the gate (latest: v{latest})."
    else:
        text = f"hfcast forecaster. **Champion: v{champ.version}** (alias `champion`, the version that serves)."
        if latest is not None and str(latest) != str(champ.version):
            tags = client.get_model_version(name, str(latest)).tags
            what = {"reject": "was rejected by the gate"}.get(tags.get("gate.decision", ""), "is not the champion")
            text += (f" The latest version, v{latest}, {what}: \"latest version\" is the newest registered, "
                     "not the one in use.")
    client.update_registered_model(name, description=text)
    client.set_registered_model_tag(name, CHAMPION_TAG, str(champ.version) if champ else "none")
    if latest is not None:  # the list page shows tags, not descriptions: say what the "latest version" is
        aliases = [a for a, v in (client.get_registered_model(name).aliases or {}).items() if str(v) == str(latest)]
        status = reg.version_status(client.get_model_version(name, str(latest)).tags, aliases)
        client.set_registered_model_tag(name, LATEST_TAG, f"v{latest}: {status}")


def _history(client: Any, name: str) -> list[str]:
    raw = client.get_registered_model(name).tags.get(HISTORY_TAG, "[]")
    return [str(v) for v in json.loads(raw)]


def promote(settings: Settings, version: int | str, decision: GateDecision) -> bool:
    """Apply a gate decision: ``champion`` moves only if ``decision.promote``; reasons are tagged.

    The outgoing champion gets the ``previous-champion`` alias and stays in the champion history,
    so :func:`rollback` restores it.

    Returns:
        True if the version is now the champion.
    """
    mv = reg.resolve(settings, version)
    name, v = mv.name, str(mv.version)
    with reg.tracking(settings) as t:
        c = t.client
        c.set_model_version_tag(name, v, "gate.decision", "forced" if decision.forced else
                                ("promote" if decision.promote else "reject"))
        c.set_model_version_tag(name, v, "gate.reasons", json.dumps(decision.reasons)[:5000])
        c.set_model_version_tag(name, v, COMPARISONS_TAG, _comparisons_json(decision.comparisons))
        c.set_model_version_tag(name, v, "gate.at", _now())
        c.update_model_version(name, v, description=version_description(decision))
        if not decision.promote:
            log.warning("%s v%s not promoted%s", name, v, _why(decision, v))
            describe_champion(c, name)
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
        describe_champion(c, name)
    log.info("%s v%s is the champion%s", name, v, _why(decision, v))
    return True


def _why(decision: GateDecision, version: str) -> str:
    """The reason on a promotion log line: a forced decision's own; a gated decision's reasons were logged
    once by :func:`gate` and are tagged on the version, so the line points there instead of repeating them."""
    if decision.forced:
        return f" ({decision.summary()})"
    return f" (gate reasons: `hfcast registry show {version}`)"


def rollback(settings: Settings, reason: str = "manual rollback") -> tuple[int, int]:
    """Make the previous champion the champion again; the demoted version is tagged with the reason.

    Returns:
        ``(demoted_version, restored_version)``.
    """
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
        describe_champion(c, name)
    log.warning("%s: rolled back v%s -> v%s (%s)", name, cur, restored, reason)
    return int(cur), int(restored)
