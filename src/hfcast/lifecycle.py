"""The one path from data to champion: train -> log -> register -> gate -> promote.

Why one module: the command line, the Kubeflow components and the monitor's retraining used to
carry their own copies of this sequence, and the copies drifted apart (one re-scored the champion,
one did not). Each caller now picks the steps it needs:

* ``hfcast train`` trains and logs (:func:`log_trained`); the ``train_model`` component calls
  :func:`train_and_log` once per architecture;
* the ``compare_models`` component ranks the runs with :func:`best_run` (the gate's own rules);
* the ``gate_register`` component calls :func:`register_and_gate`;
* a retraining (:class:`hfcast.monitoring.retraining.InProcessStarter`) calls :func:`retrain`,
  which is all of the above in one process.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from hfcast import journal, promotion, registry
from hfcast.contracts import finite
from hfcast.gate import GateConfig, GateDecision, MetricRule, config_from_settings

log = logging.getLogger(__name__)

# a retraining's identity (its data's last date, architectures, dataset version): a run tag copied onto
# the registered version, so a retraining cut off after registering resumes that version, not a new one
RETRAIN_KEY_TAG = "hfcast.retrain_key"


@dataclass
class TrainedRun:
    """One architecture trained on the walk-forward folds and logged to MLflow."""

    arch: str
    run_id: str
    forecaster: Any  # the last fold's hfcast.models.base.Forecaster
    aggregate: dict[str, float]  # pooled test scores (finite values only)
    test_spans: list[tuple[str, str]]
    result: Any = field(repr=False, default=None)  # the full hfcast.walkforward.WalkForwardResult

    def summary(self) -> dict[str, Any]:
        """``{arch, run_id, <metric>: value...}``: what :func:`best_run` ranks."""
        return {"arch": self.arch, "run_id": self.run_id, **self.aggregate}


@dataclass
class GateOutcome:
    """What :func:`register_and_gate` did with a run."""

    version: int
    decision: GateDecision
    promoted: bool


def walkforward_config(settings: Any, last_date: str | None = None, max_folds: int | None = None):
    """params.yaml ``walkforward`` with the given overrides (``None`` = as configured)."""
    from hfcast.walkforward import WalkForwardConfig

    section = {k: v for k, v in dict(settings.param("walkforward", {}) or {}).items() if k != "models"}
    if last_date is not None:
        section["last_date"] = str(last_date)
    if max_folds is not None:
        section["max_folds"] = int(max_folds)
    return WalkForwardConfig.from_params(section)


LINEAGE_TAGS = tuple(f"hfcast.{span}_{end}" for span in ("train", "val", "test") for end in ("first", "last"))


def data_lineage(folds: Sequence[Any]) -> dict[str, str]:
    """First and last date of the train, validation and test data over all folds (MLflow tags).

    Why: a model's time lineage is what proves it never saw the future of a decision; the tags
    travel from the run to the registered version (:func:`hfcast.registry.register`).
    """
    out: dict[str, str] = {}
    for span in ("train", "val", "test"):
        dates = sorted(d for f in folds for d in getattr(f, span))
        if dates:
            out[f"hfcast.{span}_first"], out[f"hfcast.{span}_last"] = dates[0], dates[-1]
    return out


def data_last_date(tags: Mapping[str, str]) -> str | None:
    """The latest date of any data the version used (None when it carries no lineage tags)."""
    ends = [str(tags[k]) for k in LINEAGE_TAGS if k.endswith("_last") and tags.get(k)]
    return max(ends) if ends else None


def check_decision_date(tags: Mapping[str, str], decision_date: str | None) -> str | None:
    """Why a version may not be judged at ``decision_date`` (its data extends past it), else None."""
    if decision_date is None:
        return None
    last = data_last_date(tags)
    if last is None:
        return f"the version has no data lineage tags ({', '.join(LINEAGE_TAGS)}): cannot prove it saw no later data"
    if last > str(decision_date):
        return f"its data extends to {last}, after the decision date {decision_date} (look-ahead)"
    return None


def log_trained(settings: Any, result: Any, arch: str, *, out_dir: Any, dataset_version: str = "",
                reason: str = "", drifted_dates: Sequence[str] = (), plots: Sequence[Any] = (),
                live: Any = None, reports: Sequence[Any] = (), tags: Mapping[str, str] | None = None) -> str:
    """Log one architecture of a walk-forward result, with its lineage and trigger tags; the run id.

    ``live``: the :class:`hfcast.registry.LiveTraining` opened when training started (its parent
    run is filled, its fold runs get their test scores); None = a new run. Without ``plots``, the
    evaluation plots and HTML report of this architecture against the baselines are made here.
    ``tags``: more run tags (e.g. :data:`RETRAIN_KEY_TAG`).
    """
    from pathlib import Path

    from hfcast.storage import Lake
    from hfcast.walkforward import dataset_info

    if not plots:
        plots, reports = evaluation_artifacts(result, arch, Path(out_dir) / f"eval-{arch}")
    tags = dict(tags or {})
    if reason:
        tags["hfcast.trigger_reason"] = reason[:5000]
    if drifted_dates:
        tags["hfcast.drifted_dates"] = ",".join(drifted_dates)[:5000]
    tags.update(data_lineage(result.folds))
    params = {"walkforward": dict(settings.param("walkforward", {}) or {}),
              "train": dict(settings.param("train", {}) or {})}
    from hfcast.walkforward import log_result

    run_id = None
    if live is not None:
        run_id = live.parent(arch)
        pf = result.per_fold
        live.fold_scores(arch, pf[pf["model"] == arch].to_dict(orient="records"))
    try:
        dataset = dataset_info(Lake.from_settings(settings), result)
    except Exception as exc:  # lineage is a courtesy: an unreadable lake URL must not lose the run
        log.info("no dataset input for the run (%s)", exc)
        dataset = None
    return log_result(settings, result, arch, params, out_dir, plots, dataset_version=dataset_version or None,
                      tags=tags, run_id=run_id, dataset=dataset, reports=reports)


def evaluation_artifacts(result: Any, arch: str, out_dir: Any) -> tuple[list[Any], list[Any]]:
    """The evaluation PNGs and HTML report of ``arch`` against the baselines on the same test rows."""
    from hfcast.evaluate import TABLE_COLUMNS, plot_all, write_report

    preds = result.predictions
    frames = {str(m): g for m, g in preds.groupby("model", sort=False) if m != "oracle"}
    plots = plot_all(frames, out_dir)
    agg = result.aggregate
    table = agg[[c for c in TABLE_COLUMNS if c in agg]]
    report = write_report(table, plots, f"{out_dir}/evaluation.html", f"hfcast {arch}: walk-forward evaluation")
    return plots, [report]


def train_and_log(settings: Any, arch: str, *, dataset_version: str = "", reason: str = "",
                  drifted_dates: Sequence[str] = (), last_date: str | None = None,
                  max_folds: int | None = None, tags: Mapping[str, str] | None = None) -> TrainedRun:
    """Walk-forward train ``arch``, score it and the baselines on the same test spans, log the run.

    Args:
        dataset_version: the features' version (DVC hash), copied onto the registered version.
        reason, drifted_dates: why it trained (``manual``, ``drift: ...``); recorded as run tags.
        last_date: no data after this date is used (time is a parameter, not "all of the lake").
        max_folds: keep only the last N folds (a retraining uses 1: the most recent test span).
        tags: more run tags (copied onto the registered version when they are lineage tags).
    """
    from hfcast.storage import Lake
    from hfcast.train import TrainConfig
    from hfcast.walkforward import model_configs, run_walkforward

    title = f"until {last_date}" if last_date else ""
    # the retrain key is on the runs from their first second: a killed training's runs are found and closed
    opened = {**(tags or {}), **({"hfcast.trigger_reason": reason[:5000]} if reason else {})}
    with registry.training_runs(settings, opened or None, title) as live:
        live.parent(arch)  # the run exists (RUNNING) from the first second of training
        result = run_walkforward(Lake.from_settings(settings), [arch],
                                 walkforward_config(settings, last_date, max_folds),
                                 TrainConfig.from_params(settings.param("train", {})), progress=False,
                                 model_configs=model_configs(settings.param("walkforward", {})),
                                 on_epoch=live.on_epoch)
        with tempfile.TemporaryDirectory(prefix=f"hfcast-{arch}-") as tmp:
            run_id = log_trained(settings, result, arch, out_dir=tmp, dataset_version=dataset_version, reason=reason,
                                 drifted_dates=drifted_dates, live=live, tags=tags)
    aggregate = {str(k): float(v) for k, v in result.aggregate.loc[arch].items() if finite(v)}
    return TrainedRun(arch, run_id, result.forecasters[arch], aggregate, result.test_spans(), result)


def _rank_key(rules: Sequence[MetricRule]):
    def key(m: Mapping[str, Any]) -> tuple:  # smaller sorts first; a missing score sorts last
        return tuple(float("inf") if m.get(r.name) is None else
                     (-float(m[r.name]) if r.higher_is_better else float(m[r.name])) for r in rules)
    return key


def rank_runs(results: Sequence[Mapping[str, Any]], settings: Any = None) -> list[Mapping[str, Any]]:
    """Runs best first, by the gate's primary metrics (each in its direction, the first as main key).

    Ranking by the gate's own rules sends the gate the run with the best chance to pass it.
    ``settings`` gives the rules (params.yaml ``registry.gate``); None = the default rules.
    """
    if not results:
        raise ValueError("no training results to compare (did every train step fail?)")
    rules = (config_from_settings(settings) if settings is not None else GateConfig.from_mapping(None)).rules
    return sorted(results, key=_rank_key(rules))


def best_run(results: Sequence[Mapping[str, Any]], settings: Any = None) -> Mapping[str, Any]:
    """The run the gate should judge (see :func:`rank_runs`); each mapping has ``arch``, ``run_id``, scores."""
    return rank_runs(results, settings)[0]


def _decide(settings: Any, version: int, force_reason: str, margin: Any) -> GateDecision:
    """The gate on logged scores; both re-scored on the challenger's spans when the champion's differ."""
    if force_reason.strip():
        return GateDecision.force(force_reason)
    try:
        return promotion.run_gate(settings, version, margin=margin)
    except registry.RegistryError as exc:  # the champion was scored on other spans (the lake grew)
        from hfcast.walkforward import span_evaluator

        log.info("%s; re-scoring champion and challenger on the challenger's spans", exc)
        return promotion.run_gate(settings, version, margin=margin, evaluate_on_spans=span_evaluator(settings))


def _build_reference(settings: Any, version: int, trained: TrainedRun | None) -> None:
    """The new champion's monitoring reference (its last fold's training dates), so drift is measured
    against what it learned from."""
    from hfcast.monitoring.decision import MonitorConfig
    from hfcast.monitoring.reference import build_reference, reference_from_registry

    cfg = MonitorConfig.from_params(settings.param("monitor", {}))
    if trained is None or trained.result is None:
        reference_from_registry(settings, f"{settings.model_name}/{version}", cfg)
        return
    build_reference(settings, trained.forecaster, trained.result.folds[-1].train,
                    model=(settings.model_name, str(version)),
                    test_scores={k: trained.aggregate[k] for k in ("vol_qlike", "ret_ic") if k in trained.aggregate},
                    n_rows=cfg.reference_sample_rows, seed=cfg.seed)


def register_and_gate(settings: Any, run_id: str, *, force_reason: str = "", margin: Any = None,
                      trained: TrainedRun | None = None, decision_date: str | None = None) -> GateOutcome:
    """Register ``run_id`` (alias ``challenger``), run the gate, promote only if it passes.

    Champion and challenger are compared on the same test spans: the logged scores when both runs
    cover the same spans, else both re-scored on the challenger's spans. When promoted, the new
    champion's monitoring reference is built (from ``trained`` when given, else from its run).

    Args:
        force_reason: non-empty = promote without the gate; the reason is recorded on the version.
        margin: one margin for every primary metric, or per metric (None = params.yaml).
        decision_date: the date the retraining was decided (a replay): a version whose train,
            validation or test data extends past it is refused, forced or not.
    """
    with journal.step("register", run_id=run_id) as rec:
        rec["version"] = version = registry.register(settings, run_id)
    return gate_version(settings, version, force_reason=force_reason, margin=margin, trained=trained,
                        decision_date=decision_date)


def gate_version(settings: Any, version: int, *, force_reason: str = "", margin: Any = None,
                 trained: TrainedRun | None = None, decision_date: str | None = None,
                 recorded: GateDecision | None = None) -> GateOutcome:
    """The gate of :func:`register_and_gate` on a registered version (``recorded``: a decision
    already taken and tagged, applied again: promotion is idempotent)."""
    with journal.step("gate", version=int(version)) as rec:
        refusal = check_decision_date(registry.resolve(settings, f"{settings.model_name}/{version}").tags, decision_date)
        decision = GateDecision(False, [f"refused: {refusal}"]) if refusal else \
            (recorded or _decide(settings, version, force_reason, margin))
        rec.update(promote=decision.promote, summary=decision.summary()[:2000])
    with journal.step("promote", version=int(version)) as rec:
        rec["promoted"] = promoted = promotion.promote(settings, version, decision)  # refused: reasons recorded only
    if promoted:
        _build_reference(settings, version, trained)
    return GateOutcome(int(version), decision, bool(promoted))


def recorded_decision(tags: Mapping[str, str]) -> GateDecision | None:
    """The gate decision tagged on a version by :func:`hfcast.promotion.promote`, or None."""
    kind = tags.get("gate.decision")
    if kind not in ("promote", "reject", "forced"):
        return None
    try:
        reasons = [str(r) for r in json.loads(tags.get("gate.reasons") or "[]")]
    except ValueError:  # cut at 5000 characters: keep the text as one reason
        reasons = [tags.get("gate.reasons", "")]
    return GateDecision(kind != "reject", reasons, forced=kind == "forced")


def _registered_retraining(settings: Any, key: str) -> dict[str, Any] | None:
    """The version an earlier, interrupted attempt of this retraining registered, or None.

    An unreachable registry raises: "nothing registered yet" is what an empty listing says, never
    what an outage says (a retraining must not register a second version because a request failed).
    """
    found = [r for r in registry.list_versions(settings) if r["tags"].get(RETRAIN_KEY_TAG) == key]
    return found[-1] if found else None


def close_interrupted_runs(settings: Any, key: str) -> list[str]:
    """End as FAILED, with the reason in the tag ``hfcast.interrupted``, the runs (and their fold runs)
    that an earlier attempt of this retraining left behind; the ids closed.

    Called only when no version carries ``key``, so every such run belongs to an attempt that died
    before registering: RUNNING ones were killed mid-training; FINISHED ones were logged, then the
    process died before registering them (the retraining runs again, so they are superseded).
    Why: a SIGKILL skips every ``finally``; without this the MLflow UI would show a training that
    runs forever, or two trainings of one retraining, beside the retry that replaced them.
    """
    why = {"RUNNING": "interrupted: the process died during this training; a later attempt of the same "
                      "retraining replaced it",
           "FINISHED": "superseded: logged by an attempt that died before registering it; the retraining ran again"}
    closed = []
    with registry.tracking(settings) as t:
        for parent in t.client.search_runs([t.experiment_id], f"tags.`{RETRAIN_KEY_TAG}` = '{key}'"):
            if parent.info.status not in why or "hfcast.interrupted" in parent.data.tags:
                continue
            children = t.client.search_runs([t.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
            for rid in [c.info.run_id for c in children] + [parent.info.run_id]:
                t.client.set_tag(rid, "hfcast.interrupted", why[parent.info.status])
                t.client.set_terminated(rid, "FAILED")
                closed.append(rid)
    if closed:
        log.warning("retraining %s: closed %d run(s) an attempt killed before registering left behind", key, len(closed))
    return closed


def champion_arch(settings: Any) -> str | None:
    """The current champion's architecture, or None when the registry has no champion (an outage raises)."""
    mv = registry.champion(settings)
    return None if mv is None else mv.tags.get("arch")


def retrain(settings: Any, archs: Sequence[str], *, reason: str, drifted_dates: Sequence[str] = (),
            last_date: str | None = None, force_reason: str = "", margin: Any = None,
            decision_date: str | None = None, dataset_version: str = "") -> dict[str, Any]:
    """Train every architecture on the most recent fold, log them, gate the best one, promote or not.

    The last fold only (``max_folds=1``): its test span is the most recent dates, which the current
    champion never trained on, so champion and challenger are scored fairly on it. ``archs`` empty
    = params.yaml ``monitor.retrain_arch``, else the champion's architecture, else ``tcn``.

    Resumable: with ``last_date`` the runs carry :data:`RETRAIN_KEY_TAG` (last date, architectures,
    dataset version), and a retraining whose earlier attempt was cut off after registering gates that
    version (or re-applies its recorded decision) instead of registering a second one.

    Returns:
        ``{status: done, new_version, promoted, gate: summary, run_ids: {arch: run_id}}`` (and
        ``resumed: True`` when an earlier attempt's version was finished).
    """
    if not archs:
        from hfcast.monitoring.decision import MonitorConfig

        cfg = MonitorConfig.from_params(settings.param("monitor", {}))
        archs = [cfg.retrain_arch or champion_arch(settings) or "tcn"]
    key = f"{last_date}|{','.join(archs)}|{dataset_version}" if last_date else ""
    earlier = _registered_retraining(settings, key) if key else None
    if earlier is not None:  # an interrupted attempt got as far as registering: finish that version
        log.warning("retraining %s was registered as v%s before an interruption; gating that version",
                    key, earlier["version"])
        outcome = gate_version(settings, earlier["version"], force_reason=force_reason, margin=margin,
                               decision_date=decision_date, recorded=recorded_decision(earlier["tags"]))
        return {"status": "done", "new_version": outcome.version, "promoted": outcome.promoted,
                "gate": outcome.decision.summary(), "run_ids": {earlier["arch"]: earlier["run_id"]}, "resumed": True}
    if key:
        close_interrupted_runs(settings, key)
    runs = {a: train_and_log(settings, a, reason=reason, drifted_dates=drifted_dates, last_date=last_date,
                             max_folds=1, dataset_version=dataset_version,
                             tags={RETRAIN_KEY_TAG: key} if key else None) for a in archs}
    best = best_run([r.summary() for r in runs.values()], settings)
    outcome = register_and_gate(settings, best["run_id"], force_reason=force_reason, margin=margin,
                                trained=runs[best["arch"]], decision_date=decision_date)
    return {"status": "done", "new_version": outcome.version, "promoted": outcome.promoted,
            "gate": outcome.decision.summary(), "run_ids": {a: r.run_id for a, r in runs.items()}}
