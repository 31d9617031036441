"""The one map of pipeline names: what ``hfcast pipeline run|submit NAME``, the compiler and the
retraining starters call each pipeline, which function builds it and which file it compiles to.

Why explicit ``training-cpu`` / ``training-gpu`` and no bare ``training``: the two differ only in
where the training steps run (the CUDA image with one GPU each, or the CPU image), and a name that
meant the CPU pipeline on this machine and the GPU YAML on a cluster was a trap. The kfp local
runner runs either (it ignores images and accelerators); the CPU one is what runs here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COMPILED = Path(__file__).resolve().parent / "compiled"


@dataclass(frozen=True)
class PipelineName:
    """Where one pipeline lives and what it is called in Kubeflow."""

    module: str    # the module that defines it
    function: str  # the ``@dsl.pipeline`` function in that module
    compiled: str  # file name under pipelines/compiled/
    display: str   # the pipeline's name in Kubeflow (``pipelineInfo.name``)

    def load(self) -> Any:
        """The pipeline function (imports kfp and the components)."""
        return getattr(importlib.import_module(self.module), self.function)


PIPELINES: dict[str, PipelineName] = {
    "training-cpu": PipelineName("pipelines.training", "training_cpu_pipeline", "training_cpu.yaml",
                                 "hfcast-training-cpu"),
    "training-gpu": PipelineName("pipelines.training", "training_gpu_pipeline", "training_gpu.yaml",
                                 "hfcast-training-gpu"),
    "batch": PipelineName("pipelines.batch", "batch_pipeline", "batch_inference.yaml", "hfcast-batch-inference"),
    "monitoring": PipelineName("pipelines.monitoring", "monitoring_pipeline", "monitoring.yaml", "hfcast-monitoring"),
}
LOCAL_TRAINING = "training-cpu"  # the training pipeline the kfp local runner (and a local retraining) runs


def get(name: str) -> PipelineName:
    """The entry for ``name``; a ValueError naming the choices otherwise."""
    try:
        return PIPELINES[name]
    except KeyError:
        raise ValueError(f"unknown pipeline {name!r}: choose one of {', '.join(sorted(PIPELINES))}") from None


def pipeline_function(name: str) -> Any:
    """The ``@dsl.pipeline`` function of pipeline ``name``."""
    return get(name).load()


def compiled_path(name: str) -> Path:
    """The committed compiled YAML of pipeline ``name``."""
    return COMPILED / get(name).compiled
