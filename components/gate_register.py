"""Register the best run as the challenger and let the champion/challenger gate decide."""

from kfp.dsl import Dataset, Input, Metrics, Output

from components._image import hfcast_component


@hfcast_component
def gate_register(
    run_id: str,
    features: Input[Dataset],
    decision: Output[Metrics],
    home: str = "",
    mlflow_uri: str = "",
    s3_endpoint: str = "",
    params_json: str = "",
    gate_margin: float = -1.0,
    force_reason: str = "",
) -> str:
    """Register ``run_id`` (alias ``challenger``), run the gate, move ``champion`` only if it passes.

    ``features`` names the lake (re-scoring reads it). Champion and challenger are compared on
    the same test spans: the logged scores when both runs cover the same spans, else both
    re-scored on the challenger's spans (``hfcast.walkforward.span_evaluator``).

    Args:
        gate_margin: one margin for every primary metric (< 0: the margins in params.yaml).
        force_reason: non-empty = promote without the gate; the reason is recorded on the version.

    Returns:
        The version if it is now the champion, else '' (one plain output: the kfp local runner
        cannot evaluate a dsl.If on a NamedTuple field). The registered version, the decision and
        its reasons are in ``decision``'s metadata either way.
    """
    import logging

    from components._settings import make_settings
    from hfcast import registry
    from hfcast.gate import GateDecision

    logging.basicConfig(level=logging.INFO)
    s = make_settings(home, features.metadata["lake_url"], mlflow_uri, "", s3_endpoint, params_json)
    version = registry.register(s, run_id)
    if force_reason.strip():
        verdict = GateDecision.force(force_reason)
    else:
        margin = None if gate_margin < 0 else gate_margin
        try:
            verdict = registry.run_gate(s, version, margin=margin)
        except registry.RegistryError as exc:  # the champion was scored on other spans (the lake grew):
            logging.info("%s; re-scoring champion and challenger on the challenger's spans", exc)
            from hfcast.walkforward import span_evaluator

            verdict = registry.run_gate(s, version, margin=margin, evaluate_on_spans=span_evaluator(s))
    promoted = registry.promote(s, version, verdict)
    decision.log_metric("promoted", int(promoted))
    decision.log_metric("version", version)
    decision.metadata.update({"version": str(version), "promoted": promoted, "summary": verdict.summary()[:2000],
                              "reasons": list(verdict.reasons), "forced": verdict.forced, "run_id": run_id})
    return str(version) if promoted else ""
