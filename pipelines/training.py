"""The training pipeline: prepare -> materialize -> train every architecture in parallel ->
compare -> gate (register, promote only if it passes) -> if promoted: export -> deploy.

Also :func:`run_local`, the local retraining trigger used by ``hfcast.drift``.
"""

import json
from typing import Any, List, NamedTuple

from kfp import dsl
from kfp.dsl import Metrics

from components._image import GPU_IMAGE
from components.compare_models import compare_models
from components.deploy_model import deploy_model
from components.export_model import export_model
from components.gate_register import gate_register
from components.materialize_features import materialize_features
from components.prepare_data import prepare_data
from components.train_model import train_model
from pipelines.local import settings_params  # noqa: F401 (re-exported: part of this module's API)

DESCRIPTION = (
    "hfcast training: prepare the data (DVC stages, or simulate/validate/featurize on the lake), load "
    "Feast, train each architecture on identical walk-forward folds (in parallel), pick the best by the "
    "gate's metrics, register it as challenger and promote it to champion only if it beats the champion "
    "and every baseline; a new champion is exported (ONNX, TensorRT on GPU) and deployed. Settings left "
    "empty come from the cluster's hfcast-config (or the local environment); credentials never are "
    "parameters. params_json overrides params.yaml, e.g. {\"train\": {\"epochs\": 1}}."
)


def _tracked(task: dsl.PipelineTask, name: str) -> dsl.PipelineTask:
    """Display name, and no caching: every step reads or writes shared state (lake, registry)."""
    return task.set_display_name(name).set_caching_options(False)


def build(gpu: bool) -> Any:
    """The training pipeline; ``gpu`` runs the train steps on the CUDA image with one GPU each."""

    @dsl.pipeline(name="hfcast-training" if gpu else "hfcast-training-cpu", description=DESCRIPTION)
    def training(
        archs: List[str] = ["transformer", "lstm", "tcn", "hybrid"],
        home: str = "",
        lake_url: str = "",
        mlflow_uri: str = "",
        feast_repo: str = "",
        s3_endpoint: str = "",
        params_json: str = "",
        dvc_repo: str = "",
        synth_symbols: int = 0,
        synth_days: int = 0,
        synth_seed: int = -1,
        synth_shift_day: int = -1,
        gate_margin: float = -1.0,
        force_reason: str = "",
        deploy_target: str = "auto",
        namespace: str = "hfcast",
        publish_url: str = "",
        reason: str = "manual",
        drifted_dates: str = "",
    ) -> NamedTuple("Outputs", [("champion_version", str), ("gate", Metrics)]):
        """Train, gate and (if promoted) export and deploy.

        Args:
            archs: architectures to train (transformer, lstm, tcn, hybrid), one parallel step each.
            home: state folder of embedded defaults ('' = HFCAST_HOME or ./.hfcast).
            lake_url: lake URL, file:///... or s3://bucket/prefix ('' = HFCAST_LAKE).
            mlflow_uri: MLflow tracking URI ('' = MLFLOW_TRACKING_URI or the local sqlite file).
            feast_repo: Feast repository folder ('' = HFCAST_FEAST_REPO or <home>/feature_repo).
            s3_endpoint: S3 endpoint URL ('' = HFCAST_S3_ENDPOINT or AWS).
            params_json: JSON overrides of params.yaml, e.g. {"train": {"epochs": 1}}.
            dvc_repo: a DVC repository checkout: run its stages (dvc repro) instead of the lake steps.
            synth_symbols: > 0 simulates this many symbols when the lake has no raw bars.
            synth_days: simulated trading days (0 = params.yaml synth.n_days).
            synth_seed: simulator seed (-1 = params.yaml).
            synth_shift_day: first day of the shifted regime (-1 = params.yaml, -2 = stationary).
            gate_margin: one gate margin for every metric (< 0 = params.yaml registry.gate margins).
            force_reason: non-empty promotes without the gate (recorded on the version).
            deploy_target: auto (kserve-cpu inside a cluster, local elsewhere) | local (marker file) | kserve-cpu | kserve-gpu.
            namespace: Kubernetes namespace of the InferenceService.
            publish_url: copy the export (ONNX, Triton repository) to this URL, e.g. s3://hfcast-models/hfcast/champion.
            reason: why this run started (manual, drift: ...); recorded on every training run.
            drifted_dates: comma-separated dates that triggered a drift retraining (recorded likewise).
        """
        cfg = dict(home=home, mlflow_uri=mlflow_uri, params_json=params_json)
        prep = _tracked(prepare_data(lake_url=lake_url, feast_repo=feast_repo, s3_endpoint=s3_endpoint,
                                     dvc_repo=dvc_repo, synth_symbols=synth_symbols, synth_days=synth_days,
                                     synth_seed=synth_seed, synth_shift_day=synth_shift_day, **cfg),
                        "Prepare data (DVC / validate / featurize)")
        mat = _tracked(materialize_features(features=prep.outputs["features"], feast_repo=feast_repo,
                                            s3_endpoint=s3_endpoint, **cfg), "Materialize features (Feast)")
        with dsl.ParallelFor(archs, name="architectures") as arch:
            train = _tracked(train_model(arch=arch, features=prep.outputs["features"], feast_repo=feast_repo,
                                         s3_endpoint=s3_endpoint, reason=reason, drifted_dates=drifted_dates,
                                         **cfg),
                             "Train one architecture")
            train.after(mat)
            if gpu:
                train.set_container_image(GPU_IMAGE).set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
        best = _tracked(compare_models(results=dsl.Collected(train.outputs["metrics"]), **cfg),
                        "Compare architectures")
        gate = _tracked(gate_register(run_id=best.outputs["best_run_id"], features=prep.outputs["features"],
                                      s3_endpoint=s3_endpoint,
                                      gate_margin=gate_margin, force_reason=force_reason, **cfg),
                        "Gate and register")
        champion = gate.outputs["Output"]  # the promoted version, '' when the gate rejected
        with dsl.If(champion != "", name="promoted"):
            exp = _tracked(export_model(version=champion, s3_endpoint=s3_endpoint, publish_url=publish_url, **cfg),
                           "Export ONNX / TensorRT")
            if gpu:  # the plan is built with the TensorRT the ServingRuntime's Triton was built with (docker/images.env)
                exp.set_container_image(GPU_IMAGE).set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
            dep = _tracked(deploy_model(version=champion, target=deploy_target, home=home, namespace=namespace),
                           "Deploy champion")
            dep.after(exp)
        outputs = NamedTuple("Outputs", [("champion_version", str), ("gate", Metrics)])
        return outputs(champion, gate.outputs["decision"])

    return training


training_pipeline = build(gpu=True)       # the cluster default: training steps on a GPU node
training_cpu_pipeline = build(gpu=False)  # CPU-only clusters and the local runner


def _champion_arch(settings: Any) -> str | None:
    from hfcast.registry import RegistryError, resolve

    try:
        return resolve(settings, f"{settings.model_name}@champion").tags.get("arch") or None
    except RegistryError:
        return None


def run_local(settings: Any, reason: str | None = None, drifted_dates: list[str] | None = None,
              **params: Any) -> dict[str, Any]:
    """Run the training pipeline on this machine (kfp local runner); the drift monitor's retrain trigger.

    Args:
        settings: :class:`hfcast.config.Settings` of the deployment being retrained.
        reason: why (recorded on the training runs as ``hfcast.trigger_reason``).
        drifted_dates: the dates that triggered it (``hfcast.drifted_dates``).
        params: other pipeline parameters (``gate_margin``, ...). ``archs`` defaults to
            ``monitor.retrain_arch`` of params.yaml, else the champion's architecture, else all.

    Returns:
        ``{"status": "succeeded"|"failed", "new_version": str|None, "promoted": bool, "error": str}``.
    """
    from pipelines.local import run_local as run_pipeline

    if "archs" not in params:
        arch = settings.param("monitor.retrain_arch") or _champion_arch(settings)
        if arch:
            params["archs"] = [arch]
    args = {**settings_params(settings), "reason": reason or "manual",
            "drifted_dates": ",".join(drifted_dates or []), **params}
    try:
        out = run_pipeline("training", **args)
    except Exception as exc:  # a failed retrain is reported to the monitor, not raised into it
        return {"status": "failed", "new_version": None, "promoted": False, "error": str(exc)[-2000:]}
    gate = out["gate"].metadata
    return {"status": "succeeded", "new_version": gate.get("version"), "promoted": bool(gate.get("promoted")),
            "gate": gate.get("summary"), "error": ""}


if __name__ == "__main__":
    from pipelines.compile import compile_all

    compile_all(only=["training"])
