"""Starting a retraining: through the Kubeflow API on a cluster, in-process on the embedded default.

Why it looks like this:

* Kubeflow has no event trigger (PLATFORM_NOTES): the monitor starts a run of the compiled
  training pipeline with ``kfp.Client(host).create_run_from_pipeline_package`` and passes the
  reason and the drifted dates as run parameters. ``kfp`` is imported inside that function only:
  the core library never imports it at module level.
* Locally the training pipeline runs in-process: ``pipelines.training.run_local`` when that module
  exists, else :func:`walkforward_retrain` (walk-forward train -> MLflow run -> register -> gate ->
  promote). Any callable ``retrain_fn(reason, drifted_dates) -> {status, new_version, promoted}``
  can stand in.
* Whatever runs, the new model goes through the same champion/challenger gate
  (:mod:`hfcast.gate`): a retraining never replaces a champion by a worse model.
* ``<lake>/monitoring/<model>/retrain.json`` records whether a retraining started by the monitor is
  running (status, started_at, run id), so a second one is never started on top of it.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Mapping, Sequence

from hfcast import storage

log = logging.getLogger(__name__)

RetrainFn = Callable[[str, Sequence[str]], Mapping[str, Any]]
RUNNING, DONE, FAILED = "running", "done", "failed"
KFP_FINAL = {"SUCCEEDED": DONE, "FAILED": FAILED, "CANCELED": FAILED, "SKIPPED": DONE}


def _now() -> datetime:
    return datetime.now(timezone.utc)


def state_url(lake: Any, model: str) -> str:
    return storage.join(lake.url, "monitoring", model, "retrain.json")


def read_state(lake: Any, model: str) -> dict[str, Any] | None:
    url = state_url(lake, model)
    if not storage.exists(url, lake.storage_options):
        return None
    return json.loads(storage.read_text(url, lake.storage_options))


def write_state(lake: Any, model: str, state: Mapping[str, Any]) -> None:
    storage.write_text(state_url(lake, model), json.dumps(dict(state), indent=1, default=str), lake.storage_options)


def running_state(lake: Any, model: str, timeout_hours: float, kfp_client: Any = None) -> dict[str, Any] | None:
    """The retraining state if one started by the monitor is still running, else None.

    A Kubeflow run is asked for its state when a client is given (and the file updated when it
    ended). A "running" entry older than ``timeout_hours`` is treated as lost (the process that
    held it died) and marked failed, so the monitor cannot be blocked forever.
    """
    state = read_state(lake, model)
    if not state or state.get("status") != RUNNING:
        return None
    if state.get("kind") == "kubeflow" and kfp_client is not None and state.get("run_id"):
        kfp_state = str(getattr(kfp_client.get_run(state["run_id"]), "state", "") or "").upper()
        if kfp_state in KFP_FINAL:
            state.update(status=KFP_FINAL[kfp_state], finished_at=_now().isoformat(), kfp_state=kfp_state)
            write_state(lake, model, state)
            return None
    started = datetime.fromisoformat(state["started_at"])
    if _now() - started > timedelta(hours=timeout_hours):
        log.warning("retraining %s started %s is older than %.1f h: treating it as lost", state.get("run_id"),
                    state["started_at"], timeout_hours)
        state.update(status=FAILED, finished_at=_now().isoformat(), error="timed out (no completion recorded)")
        write_state(lake, model, state)
        return None
    return state


def _champion(settings: Any) -> str | None:
    """The champion version now, or None (no registry, no champion)."""
    try:
        from hfcast.registry import resolve

        return str(resolve(settings, f"{settings.model_name}@champion").version)
    except Exception:  # no champion yet / no registry: the caller records "-"
        return None


def trigger_local(settings: Any, lake: Any, model: str, reason: str, drifted_dates: Sequence[str],
                  retrain_fn: RetrainFn) -> dict[str, Any]:
    """Run the retraining in-process; the state file says running, then done or failed.

    A retraining that raises or reports failure leaves the champion as it was (the gate never
    ran, or rejected): the returned dict says so, with the champion before and after.
    """
    run_id = f"local-{_now().strftime('%Y%m%dT%H%M%S')}"
    before = _champion(settings)
    state = {"status": RUNNING, "kind": "local", "run_id": run_id, "started_at": _now().isoformat(),
             "reason": reason, "drifted_dates": list(drifted_dates), "champion_before": before}
    write_state(lake, model, state)
    try:
        result = dict(retrain_fn(reason, list(drifted_dates)) or {})
        status = DONE if str(result.get("status", DONE)) in (DONE, "ok", "succeeded") else FAILED
        error = result.get("error")
    except Exception as exc:  # the failure is the result: recorded, never propagated into the monitor
        log.exception("local retraining failed")
        result, status, error = {}, FAILED, storage.redact(f"{type(exc).__name__}: {exc}")
    after = _champion(settings)
    out = {"kind": "local", "run_id": run_id, "status": status, "new_version": result.get("new_version"),
           "promoted": bool(result.get("promoted", False)), "champion_before": before, "champion_after": after,
           "gate": result.get("gate"), "error": error}
    if status == FAILED:
        out["note"] = f"retraining failed ({error}); champion unchanged (v{before or '-'} -> v{after or '-'})"
    elif not out["promoted"]:
        out["note"] = (f"challenger v{out['new_version']} not promoted by the gate; champion unchanged "
                       f"(v{before or '-'})")
    else:
        out["note"] = f"challenger v{out['new_version']} promoted: champion v{before or '-'} -> v{after or '-'}"
    state.update(status=status, finished_at=_now().isoformat(), result=out)
    write_state(lake, model, state)
    log.info("local retraining %s: %s", status, out["note"])
    return out


def trigger_kubeflow(lake: Any, model: str, reason: str, drifted_dates: Sequence[str], host: str | None,
                     package_path: str, client: Any = None, experiment: str = "hfcast-retraining") -> dict[str, Any]:
    """Start a run of the compiled training pipeline through the Kubeflow Pipelines API.

    Args:
        host: the KFP API URL (ignored when ``client`` is given).
        package_path: the compiled pipeline YAML.
        client: a ``kfp.Client`` (or anything with ``create_run_from_pipeline_package``); built
            from ``host`` when None.

    Returns:
        ``{kind, run_id, status: running, ...}``; the state file records the run id so that the next
        monitor run can ask Kubeflow whether it finished.
    """
    if client is None:
        import kfp  # only here: the core library must not import kfp at module level

        client = kfp.Client(host=host)
    arguments = {"reason": reason, "drifted_dates": ",".join(drifted_dates)}
    started = _now()
    res = client.create_run_from_pipeline_package(
        package_path, arguments=arguments, run_name=f"retrain-{model}-{started.strftime('%Y%m%dT%H%M%S')}",
        experiment_name=experiment)
    run_id = str(getattr(res, "run_id", "") or "")
    state = {"status": RUNNING, "kind": "kubeflow", "run_id": run_id, "started_at": started.isoformat(),
             "reason": reason, "drifted_dates": list(drifted_dates), "host": host, "package": package_path}
    write_state(lake, model, state)
    log.info("started Kubeflow run %s of %s (%s)", run_id, package_path, reason)
    return {"kind": "kubeflow", "run_id": run_id, "status": RUNNING, "arguments": arguments,
            "note": f"Kubeflow run {run_id} started; the gate decides when it finishes"}


def default_retrain_fn(settings: Any) -> RetrainFn:
    """``pipelines.training.run_local`` when it exists, else :func:`walkforward_retrain`."""
    try:
        from pipelines.training import run_local  # written beside, in the repository's pipelines/
    except (ImportError, AttributeError):
        log.info("pipelines.training.run_local not importable: retraining with hfcast.walkforward directly")
        return lambda reason, dates: walkforward_retrain(settings, reason, dates)
    return lambda reason, dates: run_local(settings, reason=reason, drifted_dates=list(dates))


def walkforward_retrain(settings: Any, reason: str, drifted_dates: Sequence[str], arch: str | None = None) -> dict[str, Any]:
    """Walk-forward train on every date in the lake, log, register, gate and promote (or not).

    The last fold only (``max_folds=1``): its test span is the most recent dates, which the
    current champion never trained on, so champion and challenger are scored fairly on it
    (:func:`hfcast.walkforward.span_evaluator`). When promoted, the new champion's monitoring reference is built
    from its training dates.
    """
    import tempfile

    from hfcast import gate, registry
    from hfcast.decision import MonitorConfig
    from hfcast.storage import Lake
    from hfcast.train import TrainConfig
    from hfcast.walkforward import WalkForwardConfig, log_result, model_configs, run_walkforward, span_evaluator

    cfg = MonitorConfig.from_params(settings.param("monitor", {}))
    section = dict(settings.param("walkforward", {}) or {})
    wf = WalkForwardConfig.from_params({**section, "max_folds": 1})
    arch = arch or cfg.retrain_arch or _champion_arch(settings) or "tcn"
    lake = Lake.from_settings(settings)
    result = run_walkforward(lake, [arch], wf, TrainConfig.from_params(settings.param("train", {})),
                             progress=False, model_configs=model_configs(section))
    with tempfile.TemporaryDirectory(prefix="hfcast-retrain-") as tmp:
        run_id = log_result(settings, result, arch, {"walkforward": section, "retrain_reason": reason,
                                                     "drifted_dates": ",".join(drifted_dates)}, tmp)
    version = registry.register(settings, run_id)
    decision = gate.run_gate(settings, version, evaluate_on_spans=span_evaluator(settings))
    promoted = gate.promote(settings, version, decision)
    if promoted:
        from hfcast.drift import build_reference

        fold = result.folds[-1]
        build_reference(settings, result.forecasters[arch], fold.train, model=(settings.model_name, str(version)),
                        test_scores={k: float(result.aggregate.loc[arch, k]) for k in ("vol_qlike", "ret_ic")},
                        n_rows=cfg.reference_sample_rows, seed=cfg.seed)
    return {"status": DONE, "new_version": version, "promoted": promoted, "gate": decision.summary()}


def _champion_arch(settings: Any) -> str | None:
    try:
        from hfcast.registry import resolve

        return resolve(settings, f"{settings.model_name}@champion").tags.get("arch")
    except Exception:  # no champion: the caller falls back to a default architecture
        return None
