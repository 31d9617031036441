"""Register the best run as the challenger and let the champion/challenger gate decide."""

from typing import NamedTuple

from kfp.dsl import Metrics, Output

from components._image import hfcast_component


@hfcast_component
def gate_register(
    run_id: str,
    decision: Output[Metrics],
    home: str = "",
    mlflow_uri: str = "",
    s3_endpoint: str = "",
    params_json: str = "",
    gate_margin: float = -1.0,
    force_reason: str = "",
) -> NamedTuple("Gate", [("promoted", bool), ("version", str), ("summary", str)]):
    """Register ``run_id`` (alias ``challenger``), run the gate, move ``champion`` only if it passes.

    Args:
        gate_margin: one margin for every primary metric (< 0: the margins in params.yaml).
        force_reason: non-empty = promote without the gate; the reason is recorded on the version.

    Returns:
        promoted (the version is now the champion), the version number, the decision in one line.
    """
    import logging
    from collections import namedtuple

    from components._settings import make_settings
    from hfcast import registry
    from hfcast.gate import GateDecision

    logging.basicConfig(level=logging.INFO)
    s = make_settings(home=home, mlflow_uri=mlflow_uri, s3_endpoint=s3_endpoint, params_json=params_json)
    version = registry.register(s, run_id)
    if force_reason.strip():
        verdict = GateDecision.force(force_reason)
    else:
        try:
            verdict = registry.run_gate(s, version, margin=None if gate_margin < 0 else gate_margin)
        except registry.RegistryError as exc:  # e.g. champion scored on other spans: no comparison, no promotion
            verdict = GateDecision(False, [f"gate could not compare: {exc}"])
    promoted = registry.promote(s, version, verdict)
    decision.log_metric("promoted", int(promoted))
    decision.log_metric("version", version)
    decision.metadata.update({"reasons": list(verdict.reasons), "forced": verdict.forced, "run_id": run_id})
    return namedtuple("Gate", ["promoted", "version", "summary"])(promoted, str(version), verdict.summary()[:2000])
