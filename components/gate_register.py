"""Register the best run as the challenger and let the champion/challenger gate decide."""

from kfp.dsl import Dataset, Input, Metrics, Output

from components._image import hfcast_component


@hfcast_component
def gate_register(
    run_id: str,
    features: Input[Dataset],
    decision: Output[Metrics],
    settings: str = "",
    gate_margin: float = -1.0,
    force_reason: str = "",
) -> str:
    """Register ``run_id`` (alias ``challenger``), run the gate, move ``champion`` only if it passes:
    ``hfcast.lifecycle.register_and_gate`` (champion and challenger compared on the same test spans;
    ``features`` names the lake a re-scoring reads).

    Args:
        gate_margin: one margin for every primary metric (< 0: the margins in params.yaml).
        force_reason: non-empty = promote without the gate; the reason is recorded on the version.

    Returns:
        The version if it is now the champion, else '' (one plain output: the kfp local runner
        cannot evaluate a dsl.If on a NamedTuple field). The registered version, the decision and
        its reasons are in ``decision``'s metadata either way.
    """
    from components._common import step_settings
    from hfcast.lifecycle import register_and_gate

    s = step_settings(settings, lake_url=features.metadata["lake_url"])
    out = register_and_gate(s, run_id, force_reason=force_reason, margin=None if gate_margin < 0 else gate_margin)
    verdict = out.decision
    decision.log_metric("promoted", int(out.promoted))
    decision.log_metric("version", int(out.version))
    decision.metadata.update({"version": str(out.version), "promoted": out.promoted, "summary": verdict.summary()[:2000],
                              "reasons": list(verdict.reasons), "forced": verdict.forced, "run_id": run_id})
    return str(out.version) if out.promoted else ""
