"""The training pipeline: prepare -> materialize -> train every architecture in parallel -> select
the forecaster on validation (networks, floor, ensemble or a baseline) -> gate (register, promote
only if it passes) -> if promoted: export -> deploy.

Two variants, named in :mod:`pipelines.names`: ``training-gpu`` (the training steps on the CUDA
image with one GPU each, the cluster default) and ``training-cpu`` (CPU-only clusters, the local
runner and a local retraining).
"""

from typing import List, NamedTuple

from kfp import dsl
from kfp.dsl import Metrics

from components.deploy_model import deploy_model
from components.export_model import export_model
from components.gate_register import gate_register
from components.materialize_features import materialize_features
from components.prepare_data import prepare_data
from components.select_forecaster import select_forecaster
from components.train_distributed import train_distributed
from components.train_model import train_model
from hfcast.models import architectures
from pipelines.names import PIPELINES
from pipelines.steps import LARGE, MEDIUM, SMALL, TINY, step

DESCRIPTION = (
    "hfcast training: prepare the data (DVC stages, or simulate/validate/featurize on the lake), load "
    "Feast, train each architecture on identical walk-forward folds (in parallel), choose per fold on "
    "validation what is served (a network, a floored network, an ensemble or a baseline; a return head "
    "only with validated skill), register that forecaster as challenger and promote it to champion only "
    "if it beats the champion and every baseline; a new champion is exported (ONNX, TensorRT on GPU) and "
    "deployed. Settings left "
    "empty come from the cluster's hfcast-config (or the local environment); credentials never are "
    "parameters. settings is Settings.to_param() JSON, e.g. {\"params\": {\"train\": {\"epochs\": 1}}}."
)


def build(gpu: bool):
    """The training pipeline; ``gpu`` runs the train steps on the CUDA image with one GPU each."""
    name = PIPELINES["training-gpu" if gpu else "training-cpu"].display

    @dsl.pipeline(name=name, description=DESCRIPTION)
    def training(
        archs: List[str] = list(architectures()),
        settings: str = "",
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
        distributed_workers: int = 0,
        distributed_gpus_per_worker: int = 1,
    ) -> NamedTuple("Outputs", [("champion_version", str), ("gate", Metrics)]):
        """Train, gate and (if promoted) export and deploy.

        Args:
            archs: architectures to choose from (default: every architecture of hfcast.models), one parallel step each.
            settings: Settings.to_param() JSON: home, lake_url, mlflow_uri, feast_repo, s3_endpoint, model_name, params ('' = hfcast-config / the environment; params merge over params.yaml).
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
            distributed_workers: 0 = train each architecture in its step (as before); N > 0 = as a Kubeflow PyTorchJob on N pods (data-parallel, torchrun), the step only waits for it.
            distributed_gpus_per_worker: GPUs (and torchrun processes) per PyTorchJob pod in training-gpu (training-cpu: CPU pods, 0).
        """
        prep = step(prepare_data(settings=settings, dvc_repo=dvc_repo, synth_symbols=synth_symbols,
                                 synth_days=synth_days, synth_seed=synth_seed, synth_shift_day=synth_shift_day),
                    "Prepare data (DVC / validate / featurize)", MEDIUM)
        mat = step(materialize_features(features=prep.outputs["features"], settings=settings),
                   "Materialize features (Feast)", MEDIUM)
        with dsl.If(distributed_workers == 0, name="train in the step"):
            with dsl.ParallelFor(archs, name="architectures") as arch:
                train = step(train_model(arch=arch, features=prep.outputs["features"], settings=settings,
                                         reason=reason, drifted_dates=drifted_dates),
                             "Train one architecture", LARGE, gpu=gpu)
                train.after(mat)
            best = step(select_forecaster(results=dsl.Collected(train.outputs["metrics"]),
                                          features=prep.outputs["features"], settings=settings, reason=reason,
                                          drifted_dates=drifted_dates),
                        "Select the forecaster", MEDIUM)
        with dsl.Else(name="train as PyTorchJobs"):  # the step only creates and awaits the job: no GPU here
            with dsl.ParallelFor(archs, name="architectures (PyTorchJob)") as arch:
                job = step(train_distributed(arch=arch, features=prep.outputs["features"], workers=distributed_workers,
                                             gpus_per_worker=distributed_gpus_per_worker if gpu else 0,
                                             settings=settings), "Train one architecture (PyTorchJob)", TINY)
                job.after(mat)
            best_job = step(select_forecaster(results=dsl.Collected(job.outputs["metrics"]),
                                              features=prep.outputs["features"], settings=settings, reason=reason,
                                              drifted_dates=drifted_dates),
                            "Select the forecaster", MEDIUM)
        best_run_id = dsl.OneOf(best.outputs["run_id"], best_job.outputs["run_id"])
        gate = step(gate_register(run_id=best_run_id, features=prep.outputs["features"],
                                  settings=settings, gate_margin=gate_margin, force_reason=force_reason),
                    "Gate and register", SMALL)
        champion = gate.outputs["Output"]  # the promoted version, '' when the gate rejected
        with dsl.If(champion != "", name="promoted"):
            # on the GPU image the plan is built with the TensorRT the ServingRuntime's Triton was built with
            # (docker/images.env)
            exp = step(export_model(version=champion, settings=settings, publish_url=publish_url),
                       "Export ONNX / TensorRT", SMALL, gpu=gpu)
            dep = step(deploy_model(version=champion, settings=settings, target=deploy_target, namespace=namespace),
                       "Deploy champion", TINY)
            dep.after(exp)
        outputs = NamedTuple("Outputs", [("champion_version", str), ("gate", Metrics)])
        return outputs(champion, gate.outputs["decision"])

    return training


training_gpu_pipeline = build(gpu=True)   # the cluster default: training steps on a GPU node
training_cpu_pipeline = build(gpu=False)  # CPU-only clusters and the local runner
