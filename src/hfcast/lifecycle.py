"""The one path from data to champion: train -> log -> register -> gate -> promote.

Why one module: the command line, the Kubeflow components and the monitor's retraining used to
carry their own copies of this sequence, and the copies drifted apart (one re-scored the champion,
one did not). Each caller now picks the steps it needs:

* ``hfcast train`` and a retraining (:func:`retrain`) call :func:`train_and_log` (every architecture,
  then the per-fold choice of the served forecaster, one MLflow run) and :func:`register_and_gate`;
* the training pipeline runs the same two halves in separate steps: the ``train_model`` component
  calls :func:`train_members_and_log` once per architecture (in parallel), the
  ``select_forecaster`` component :func:`select_and_log` (the choice on validation over all of
  them: one forecaster run), the ``gate_register`` component :func:`register_and_gate`.

What is registered is always ONE :class:`hfcast.forecaster.Forecaster`: the networks, floor,
ensemble or baseline that walk-forward chose per target, never a bare network picked by hand.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field, replace
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Mapping, Sequence

from hfcast import integrity, journal, promotion, registry
from hfcast.config import Settings
from hfcast.contracts import finite
from hfcast.gate import GateConfig, GateDecision, config_from_settings, decide
from hfcast.monitoring.retraining import (STARTERS_GROUP, InProcessStarter, RecordOnlyStarter, RetrainStarter,
                                          RetrainTarget)
from hfcast.storage import Lake

log = logging.getLogger(__name__)

# a retraining's identity (its data's last date, architectures, dataset version): a run tag copied onto
# the registered version, so a retraining cut off after registering resumes that version, not a new one
RETRAIN_KEY_TAG = "hfcast.retrain_key"


@dataclass
class ForecasterRun:
    """The served forecaster of a walk-forward run, logged to MLflow."""

    run_id: str
    forecaster: Any  # the last fold's hfcast.forecaster.Forecaster
    aggregate: dict[str, float]  # its pooled test scores (finite values only)
    test_spans: list[tuple[str, str]]
    result: Any = field(repr=False, default=None)  # the full hfcast.walkforward.WalkForwardResult

    @property
    def kind(self) -> str:
        return self.forecaster.kind


@dataclass
class GateOutcome:
    """What :func:`register_and_gate` did with a run."""

    version: int
    decision: GateDecision
    promoted: bool


def walkforward_config(settings: Settings, last_date: str | None = None, max_folds: int | None = None,
                       overrides: Mapping[str, Any] | None = None):
    """params.yaml ``walkforward`` with the given overrides (``None`` = as configured)."""
    from hfcast.walkforward import WalkForwardConfig

    section = {k: v for k, v in dict(settings.param("walkforward", {}) or {}).items() if k != "models"}
    section.update({k: v for k, v in dict(overrides or {}).items() if v is not None})
    if last_date is not None:
        section["last_date"] = str(last_date)
    if max_folds is not None:
        section["max_folds"] = int(max_folds)
    return WalkForwardConfig.from_params(section, settings.market)


#: the architectures a forecaster is chosen from when nothing says otherwise (params.yaml forecaster.archs)
DEFAULT_ARCHS = ("transformer", "lstm")


def forecaster_section(settings: Settings) -> dict[str, Any]:
    """params.yaml ``forecaster:`` (``archs``, ``kind``, ``return``), checked."""
    from hfcast.models import architectures

    known = architectures()
    sec = dict(settings.param("forecaster", {}) or {})
    unknown = sorted(set(sec) - {"archs", "kind", "return"})
    if unknown:
        raise ValueError(f"unknown forecaster parameter(s) {unknown}; known: archs, kind, return")
    archs = sec.get("archs", list(DEFAULT_ARCHS))
    archs = [archs] if isinstance(archs, str) else list(archs or [])
    bad = [a for a in archs if a not in known]
    if bad:
        raise ValueError(f"forecaster.archs names unknown architecture(s) {bad}; choose from {known}")
    return {"archs": archs, "kind": str(sec.get("kind", "auto")), "return": str(sec.get("return", "auto"))}


def select_options(settings: Settings, kind: str | None = None, ret: str | None = None):
    """The :class:`hfcast.selection.SelectOptions` of params.yaml ``forecaster:`` and the overrides."""
    from hfcast.selection import SelectOptions

    sec = forecaster_section(settings)
    return SelectOptions(kind=kind or sec["kind"], ret=ret or sec["return"])


def default_archs(settings: Settings) -> list[str]:
    """params.yaml ``forecaster.archs`` (default: transformer and lstm)."""
    return forecaster_section(settings)["archs"]


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


def _run_tags(result: Any, reason: str, drifted_dates: Sequence[str], tags: Mapping[str, str] | None) -> dict[str, str]:
    out = dict(tags or {})
    if reason:
        out["hfcast.trigger_reason"] = reason[:5000]
    if drifted_dates:
        out["hfcast.drifted_dates"] = ",".join(drifted_dates)[:5000]
    out.update(data_lineage(result.folds))
    return out


def _params(settings: Settings) -> dict[str, Any]:
    return {"walkforward": dict(settings.param("walkforward", {}) or {}),
            "train": dict(settings.param("train", {}) or {}), "forecaster": forecaster_section(settings)}


def log_trained(settings: Settings, result: Any, *, out_dir: Any, dataset_version: str = "", reason: str = "",
                drifted_dates: Sequence[str] = (), plots: Sequence[Any] = (), live: Any = None,
                reports: Sequence[Any] = (), tags: Mapping[str, str] | None = None) -> str:
    """Log the served forecaster of a walk-forward result with its lineage and trigger tags; the run id.

    ``live``: the :class:`hfcast.registry.LiveTraining` opened when training started (its root run
    is filled, its fold runs get their test scores); None = a new run. Without ``plots``, the
    evaluation plots and HTML report of the forecaster against the baselines are made here.
    ``tags``: more run tags (e.g. :data:`RETRAIN_KEY_TAG`).
    """
    from hfcast.walkforward import dataset_info, log_result

    if not plots:
        plots, reports = evaluation_artifacts(result, Path(out_dir) / "eval")
    run_id = None
    if live is not None:
        run_id = live.parent(live.root or "forecaster")
        pf = result.per_fold
        for arch in result.nets:
            live.fold_scores(arch, pf[pf["model"] == arch].to_dict(orient="records"))
    try:
        dataset = dataset_info(Lake.from_settings(settings), result)
    except Exception as exc:  # lineage is a courtesy: an unreadable lake URL must not lose the run
        log.info("no dataset input for the run (%s)", exc)
        dataset = None
    return log_result(settings, result, _params(settings), out_dir, plots, dataset_version=dataset_version or None,
                      tags=_run_tags(result, reason, drifted_dates, tags), run_id=run_id, dataset=dataset,
                      reports=reports)


def evaluation_artifacts(result: Any, out_dir: Any) -> tuple[list[Any], list[Any]]:
    """The evaluation PNGs and HTML report of the served forecaster against the baselines and the
    candidates it was chosen from, on the same test rows."""
    from hfcast.evaluate import TABLE_COLUMNS, plot_all, write_report

    preds = result.predictions
    frames = {str(m): g for m, g in preds.groupby("model", sort=False) if m != "oracle"}
    plots = plot_all(frames, out_dir)
    agg = result.aggregate
    table = agg[[c for c in TABLE_COLUMNS if c in agg]]
    title = f"hfcast forecaster ({result.forecaster.kind}): walk-forward evaluation"
    report = write_report(table, plots, f"{out_dir}/evaluation.html", title)
    return plots, [report]


def _walkforward_inputs(settings: Settings, last_date: str | None, max_folds: int | None,
                        wf_overrides: Mapping[str, Any] | None):
    from hfcast.train import TrainConfig
    from hfcast.walkforward import model_configs

    return (Lake.from_settings(settings), walkforward_config(settings, last_date, max_folds, wf_overrides),
            settings.section(TrainConfig), model_configs(settings.param("walkforward", {})))


def train_and_log(settings: Settings, archs: Sequence[str] | None = None, *, dataset_version: str = "", reason: str = "",
                  drifted_dates: Sequence[str] = (), last_date: str | None = None, max_folds: int | None = None,
                  tags: Mapping[str, str] | None = None, kind: str | None = None, ret: str | None = None,
                  wf_overrides: Mapping[str, Any] | None = None, out_dir: Any = None) -> ForecasterRun:
    """Walk-forward train every architecture, choose the served forecaster per fold on validation,
    score it and the baselines on the same test spans, and log ONE run.

    Args:
        archs: architectures to choose from (None = params.yaml ``forecaster.archs``; empty = a
            baseline is served).
        dataset_version: the features' version (DVC hash), copied onto the registered version.
        reason, drifted_dates: why it trained (``manual``, ``drift: ...``); recorded as run tags.
        last_date: no data after this date is used (time is a parameter, not "all of the lake").
        max_folds: keep only the last N folds (a retraining uses 1: the most recent test span).
        tags: more run tags (copied onto the registered version when they are lineage tags).
        kind, ret: a fixed forecaster kind / return choice instead of params.yaml (``auto``).
        wf_overrides: walk-forward keys over params.yaml (``test_days``...).
        out_dir: keep the comparison (tables, plots, predictions) here; None = a temporary folder.
    """
    from hfcast.walkforward import run_walkforward

    archs = default_archs(settings) if archs is None else [archs] if isinstance(archs, str) else list(archs)
    options = select_options(settings, kind, ret)
    lake, wf_cfg, train_cfg, mcfg = _walkforward_inputs(settings, last_date, max_folds, wf_overrides)
    title = f"until {last_date}" if last_date else ""
    # the retrain key is on the runs from their first second: a killed training's runs are found and closed
    opened = {**(tags or {}), **({"hfcast.trigger_reason": reason[:5000]} if reason else {})}
    with registry.training_runs(settings, opened or None, title, root="forecaster") as live:
        live.parent("forecaster")  # the run exists (RUNNING) from the first second of training
        result = run_walkforward(lake, archs, wf_cfg, train_cfg, progress=False, model_configs=mcfg,
                                 options=options, on_epoch=live.on_epoch)
        result = return_on_test(settings, result, options, lake, wf_cfg)
        with tempfile.TemporaryDirectory(prefix="hfcast-forecaster-") as tmp:
            run_id = log_trained(settings, result, out_dir=out_dir or tmp, dataset_version=dataset_version,
                                 reason=reason, drifted_dates=drifted_dates, live=live, tags=tags)
    return _forecaster_run(run_id, result)


def return_on_test(settings: Settings, result: Any, options: Any, lake: Lake, wf_cfg: Any, prep: Any = None) -> Any:
    """The walk-forward result whose served return head is judged on the test spans as the gate
    judges it against the baselines (params.yaml ``registry.gate`` return metrics); a head that
    fails is replaced by the zero forecast, the volatility choice unchanged, BEFORE anything is
    logged or registered - so a volatility skill is never rejected with a return head that
    validated but did not hold (CIR + noise, 16 symbols, seed 3: the LSTM head's IC 0.093 on
    validation, 0.015 on the 5 test days against persistence's 0.035, and the gate refused the
    whole forecaster, ``har_x`` at 0.96x ``har_tod`` with it). The test spans can only take a head
    away here, never choose one, so no score is made better by reading them. A fixed
    ``--return net`` keeps the head. ``prep``: the folds' prepared data where the caller has them
    (else read again from the lake). Returns ``result`` itself or the re-selected result."""
    from hfcast.walkforward import prepare, select_folds

    if options.ret != "auto" or all(c.ret == "zero" for c in result.choices):
        return result
    cfg = config_from_settings(settings)
    rules = tuple(r for r in cfg.rules if r.target == "ret")
    if not rules:
        return result
    verdict = decide(result.scores(), None, result.baseline_scores(), GateConfig(rules, cfg.require_baselines))
    if verdict.promote:
        return result
    failed = "; ".join(r for r in verdict.reasons if r.startswith("ret_") and "challenger" in r) or verdict.summary()
    why = f"the {result.choices[-1].ret} return head failed on the test spans ({failed}): replaced by the zero forecast"
    log.info("%s", why)
    out = select_folds(prep if prep is not None else prepare(lake, wf_cfg), result.nets, wf_cfg,
                       options=replace(options, ret="zero"), progress=False,
                       histories=result.histories, throughput=result.throughput)
    for choice in out.choices:
        choice.evidence["return_replaced"] = why
    return out


def _forecaster_run(run_id: str, result: Any) -> ForecasterRun:
    aggregate = {k: v for k, v in result.scores().items() if finite(v)}
    return ForecasterRun(run_id, result.forecaster, aggregate, result.test_spans(), result)


MEMBERS_ARTIFACT = "members"  # a member run's networks, one folder per fold
FOLDS_TAG = "hfcast.folds"    # the fold dates a member run trained on (the selection checks them)


def train_members_and_log(settings: Settings, arch: str, *, reason: str = "", drifted_dates: Sequence[str] = (),
                          last_date: str | None = None, max_folds: int | None = None,
                          wf_overrides: Mapping[str, Any] | None = None, tags: Mapping[str, str] | None = None,
                          log: bool = True) -> str:
    """Train one architecture on every walk-forward fold and log its networks (one folder per fold)
    as a member run: the parallel half of the training pipeline (one step, or one PyTorchJob whose
    ranks all train and whose rank 0 alone logs: ``log``). Returns the run id ('' without ``log``)."""
    from hfcast.walkforward import prepare, train_members

    lake, wf_cfg, train_cfg, mcfg = _walkforward_inputs(settings, last_date, max_folds, wf_overrides)
    prep = prepare(lake, wf_cfg)
    if not log:
        train_members(prep, [arch], wf_cfg, train_cfg, mcfg, progress=False)
        return ""
    folds_doc = json.dumps([[f.train[0], f.train[-1], f.val[0], f.val[-1], f.test[0], f.test[-1]] for f in prep.folds])
    tags = {**dict(tags or {}), "hfcast.role": "member", FOLDS_TAG: folds_doc[:5000], "hfcast.trigger_reason": reason[:5000],
            **({"hfcast.drifted_dates": ",".join(drifted_dates)[:5000]} if drifted_dates else {}),
            **data_lineage(prep.folds)}
    with registry.training_runs(settings, tags, f"members {prep.folds[0].train[0]}..{prep.folds[-1].test[-1]}") as live:
        run_id = live.parent(arch)
        nets, hists, thr = train_members(prep, [arch], wf_cfg, train_cfg, mcfg, progress=False, on_epoch=live.on_epoch)
        with tempfile.TemporaryDirectory(prefix=f"hfcast-{arch}-members-") as tmp:
            for k, net in enumerate(nets[arch]):
                net.save(f"{tmp}/fold{k}")
            live.t.client.log_artifacts(run_id, tmp, MEMBERS_ARTIFACT)
        live.t.client.log_dict(run_id, {"histories": hists[arch], "windows_per_s": thr.get(arch)},
                               f"{MEMBERS_ARTIFACT}/history.json")
        live.t.client.set_terminated(run_id, "FINISHED")  # no bundle fills it later: it is complete now
    return run_id


def select_and_log(settings: Settings, member_runs: Sequence[str], *, dataset_version: str = "", reason: str = "",
                   drifted_dates: Sequence[str] = (), last_date: str | None = None, max_folds: int | None = None,
                   kind: str | None = None, ret: str | None = None,
                   wf_overrides: Mapping[str, Any] | None = None) -> ForecasterRun:
    """Choose the served forecaster per fold from the networks of ``member_runs`` (each one
    architecture on the same folds: :func:`train_members_and_log`) and the baselines, and log it as
    ONE run (tagged with its member runs): the second half of the training pipeline."""
    import mlflow

    from hfcast.models.base import TrainedNet
    from hfcast.walkforward import prepare, select_folds

    lake, wf_cfg, _, _ = _walkforward_inputs(settings, last_date, max_folds, wf_overrides)
    prep = prepare(lake, wf_cfg)
    nets: dict[str, list[Any]] = {}
    with registry.tracking(settings) as t, tempfile.TemporaryDirectory(prefix="hfcast-select-") as tmp:
        for rid in member_runs:
            run = t.client.get_run(rid)
            arch = run.data.tags.get("arch", "")
            folds = json.loads(run.data.tags.get(FOLDS_TAG, "[]"))
            want = [[f.train[0], f.train[-1], f.val[0], f.val[-1], f.test[0], f.test[-1]] for f in prep.folds]
            if folds != want:
                raise ValueError(f"member run {rid} ({arch}) was trained on other folds than the lake gives now: "
                                 "train the members and select in the same pipeline run")
            got = mlflow.artifacts.download_artifacts(run_id=rid, artifact_path=MEMBERS_ARTIFACT,
                                                      dst_path=f"{tmp}/{rid}", tracking_uri=t.uri)
            nets[arch] = [TrainedNet.load(f"{got}/fold{k}") for k in range(len(prep.folds))]
    options = select_options(settings, kind, ret)
    result = select_folds(prep, nets, wf_cfg, options=options, progress=False)
    result = return_on_test(settings, result, options, lake, wf_cfg, prep)
    with tempfile.TemporaryDirectory(prefix="hfcast-forecaster-") as tmp:
        run_id = log_trained(settings, result, out_dir=tmp, dataset_version=dataset_version, reason=reason,
                             drifted_dates=drifted_dates, tags={"hfcast.member_runs": ",".join(member_runs)})
    return _forecaster_run(run_id, result)


def _decide(settings: Settings, version: int, force_reason: str, margin: Any) -> GateDecision:
    """The gate on logged scores; both re-scored on the challenger's spans when the champion's differ."""
    if force_reason.strip():
        return GateDecision.force(force_reason)
    try:
        return promotion.run_gate(settings, version, margin=margin)
    except registry.RegistryError as exc:  # the champion was scored on other spans (the lake grew)
        from hfcast.walkforward import span_evaluator

        log.info("%s; re-scoring champion and challenger on the challenger's spans", exc)
        return promotion.run_gate(settings, version, margin=margin, evaluate_on_spans=span_evaluator(settings))


def _build_reference(settings: Settings, version: int, trained: ForecasterRun | None) -> None:
    """The new champion's monitoring reference (its last fold's training dates), so drift is measured
    against what it learned from."""
    from hfcast.monitoring.decision import MonitorConfig
    from hfcast.monitoring.reference import build_reference, reference_from_registry

    cfg = settings.section(MonitorConfig)
    if trained is None or trained.result is None:
        reference_from_registry(settings, f"{settings.model_name}/{version}", cfg)
        return
    build_reference(settings, trained.forecaster, trained.result.folds[-1].train,
                    model=(settings.model_name, str(version)),
                    test_scores={k: trained.aggregate[k] for k in ("vol_qlike", "ret_ic") if k in trained.aggregate},
                    n_rows=cfg.reference_sample_rows, seed=cfg.seed)


def register_and_gate(settings: Settings, run_id: str, *, force_reason: str = "", margin: Any = None,
                      trained: ForecasterRun | None = None, decision_date: str | None = None) -> GateOutcome:
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
    version = register_version(settings, run_id)
    return gate_version(settings, version, force_reason=force_reason, margin=margin, trained=trained,
                        decision_date=decision_date)


def register_version(settings: Settings, run_id: str) -> int:
    """Register ``run_id`` (alias ``challenger``) and store its export with it: the ONNX graph, its
    int8 model and the int8 guard's verdict, checksummed (:func:`hfcast.export.store_serving_export`),
    so that no server of the version exports at start.

    An export that fails here does not undo the registration: it is logged and journaled, and the
    first server (or ``hfcast export``) of the version exports it again, failing there with the
    same reason if it must.
    """
    with journal.step("register", run_id=run_id) as rec:
        rec["version"] = version = registry.register(settings, run_id)
    export_version(settings, version)
    return version


def export_version(settings: Settings, version: int) -> None:
    """The ``export`` step of a registration: store the version's export unless it is stored already
    (a registration resumed after a kill runs it again; the version's tags say whether it is done)."""
    from hfcast.export import store_serving_export

    ref = f"{settings.model_name}/{version}"
    if integrity.expected_export(registry.resolve(settings, ref).tags) is not None:
        return
    with journal.step("export", version=int(version)) as rec:
        try:
            rec["stored"] = bool(store_serving_export(settings, ref))
        except Exception as exc:  # export or parity failures of any kind: the version stays registered
            log.warning("%s: export at registration failed (%s: %s); its first server will export it", ref,
                        type(exc).__name__, str(exc)[:300])
            rec.update(stored=False, error=f"{type(exc).__name__}: {str(exc)[:500]}")


def gate_version(settings: Settings, version: int, *, force_reason: str = "", margin: Any = None,
                 trained: ForecasterRun | None = None, decision_date: str | None = None,
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


def _registered_retraining(settings: Settings, key: str) -> dict[str, Any] | None:
    """The version an earlier, interrupted attempt of this retraining registered, or None.

    An unreachable registry raises: "nothing registered yet" is what an empty listing says, never
    what an outage says (a retraining must not register a second version because a request failed).
    """
    found = [r for r in registry.list_versions(settings) if r["tags"].get(RETRAIN_KEY_TAG) == key]
    return found[-1] if found else None


def close_interrupted_runs(settings: Settings, key: str) -> list[str]:
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


def retrain_archs(settings: Settings) -> list[str]:
    """What a retraining chooses from: params.yaml ``retrain.archs`` (one name or a list) when set,
    else the current champion's networks, else ``forecaster.archs``.

    Raises:
        whatever the registry raises when it cannot be reached (an outage is not "no champion").
    """
    fixed = settings.section(RetrainTarget).archs
    if fixed:
        return list(fixed)
    mv = registry.champion(settings)  # None only when the registry answers that there is none
    members = "" if mv is None else mv.tags.get("hfcast.members", "")
    chosen = [m for m in members.split(",") if m and m != "none"]
    return chosen if len(chosen) >= 2 else default_archs(settings)


def retrain(settings: Settings, archs: Sequence[str] = (), *, reason: str, drifted_dates: Sequence[str] = (),
            last_date: str | None = None, force_reason: str = "", margin: Any = None,
            decision_date: str | None = None, dataset_version: str = "") -> dict[str, Any]:
    """Train the architectures on the most recent fold, choose the served forecaster, log, register
    and gate it, promote or not.

    The last fold only (``max_folds=1``): its test span is the most recent dates, which the current
    champion never trained on, so champion and challenger are scored fairly on it. ``archs`` empty
    = :func:`retrain_archs`.

    Resumable: with ``last_date`` the run carries :data:`RETRAIN_KEY_TAG` (last date, architectures,
    dataset version), and a retraining whose earlier attempt was cut off after registering gates that
    version (or re-applies its recorded decision) instead of registering a second one.

    Returns:
        ``{status: done, new_version, promoted, gate: summary, kind, run_ids: {"forecaster": run_id}}``
        (and ``resumed: True`` when an earlier attempt's version was finished).
    """
    archs = list(archs) or retrain_archs(settings)
    key = f"{last_date}|{','.join(archs)}|{dataset_version}" if last_date else ""
    earlier = _registered_retraining(settings, key) if key else None
    if earlier is not None:  # an interrupted attempt got as far as registering: finish that version
        log.warning("retraining %s was registered as v%s before an interruption; gating that version",
                    key, earlier["version"])
        export_version(settings, earlier["version"])
        outcome = gate_version(settings, earlier["version"], force_reason=force_reason, margin=margin,
                               decision_date=decision_date, recorded=recorded_decision(earlier["tags"]))
        return {"status": "done", "new_version": outcome.version, "promoted": outcome.promoted,
                "gate": outcome.decision.summary(), "kind": earlier["tags"].get("hfcast.kind", ""),
                "run_ids": {"forecaster": earlier["run_id"]}, "resumed": True}
    if key:
        close_interrupted_runs(settings, key)
    run = train_and_log(settings, archs, reason=reason, drifted_dates=drifted_dates, last_date=last_date,
                        max_folds=1, dataset_version=dataset_version, tags={RETRAIN_KEY_TAG: key} if key else None)
    outcome = register_and_gate(settings, run.run_id, force_reason=force_reason, margin=margin, trained=run,
                                decision_date=decision_date)
    return {"status": "done", "new_version": outcome.version, "promoted": outcome.promoted,
            "gate": outcome.decision.summary(), "kind": run.kind, "run_ids": {"forecaster": run.run_id}}


class RetrainHere:
    """Retrain in this process with :func:`retrain` (``--starter inprocess``, and ``local`` when the
    outer packages are not installed), recorded like every retraining
    (:func:`hfcast.monitoring.retraining.run_recorded`).

    Args:
        archs: architectures to train (empty = :func:`retrain_archs`).
        last_date: the decision date in a replay: training, validation and test data end on or
            before it, and the gate refuses a model whose data does not.
        dataset_version: the features' version the retraining reads (lineage).
    """

    kind = "local"

    def __init__(self, archs: Sequence[str] = (), last_date: str | None = None, dataset_version: str = "") -> None:
        self.archs = tuple(archs)
        self.last_date = last_date
        self.dataset_version = dataset_version

    def start(self, settings: Settings, model: str, reason: str, drifted_dates: Sequence[str]) -> dict[str, Any]:
        def fn(r: str, d: Sequence[str]) -> Mapping[str, Any]:
            return retrain(settings, self.archs, reason=r, drifted_dates=d, last_date=self.last_date,
                           decision_date=self.last_date, dataset_version=self.dataset_version)

        return InProcessStarter(fn).start(settings, model, reason, drifted_dates)


def starter_name(name: str) -> str:
    """``auto`` resolved: ``kubeflow`` inside a Kubernetes pod, ``local`` elsewhere; other names as given."""
    if name == "auto":
        return "kubeflow" if os.environ.get("KUBERNETES_SERVICE_HOST") else "local"
    return name


def load_starter(name: str, **options: Any) -> RetrainStarter:
    """The starter called ``name``: ``none``, ``inprocess``, ``auto`` (:func:`starter_name`), or an
    entry point of group ``hfcast.starters`` (``local``, ``kubeflow`` from the outer packages).

    ``options`` (e.g. ``host`` for a Kubeflow starter) go to the entry point's class. When no entry
    point has that name and the name is ``local`` (the outer package is not installed),
    :class:`RetrainHere` retrains in this process instead.
    """
    name = starter_name(name)
    if name == "none":
        return RecordOnlyStarter()
    if name == "inprocess":
        return RetrainHere()
    found = {ep.name: ep for ep in entry_points(group=STARTERS_GROUP)}
    if name not in found:
        if name == "local":
            log.info("no '%s' starter installed (group %s): retraining in this process", name, STARTERS_GROUP)
            return RetrainHere()
        raise ValueError(f"unknown retraining starter {name!r}; available: none, inprocess, {', '.join(sorted(found)) or '-'}"
                         f" (install the outer packages for local/kubeflow)")
    cls = found[name].load()
    try:
        return cls(**options)
    except TypeError as exc:
        raise ValueError(f"starter {name!r} does not take the options {sorted(options)}: {exc}") from None


def start_retraining(settings: Settings, starter: str, model: str, reason: str, drifted_dates: str | Sequence[str],
                     host: str | None = None) -> dict[str, Any]:
    """Start the retraining a monitor decided with the starter called ``starter`` (the pipeline's
    ``trigger_training`` step); ``host`` goes to a Kubeflow starter only.

    Returns:
        What the starter answered (``status``, ``run_id``, ``note``...).
    """
    dates = [d for d in drifted_dates.split(",") if d] if isinstance(drifted_dates, str) else list(drifted_dates)
    options = {"host": host} if host and starter_name(starter) == "kubeflow" else {}
    return load_starter(starter, **options).start(settings, model, reason, dates)
