"""Kubeflow pipelines of hfcast, one per file: training, batch inference, monitoring.

``python -m pipelines.compile`` writes ``pipelines/compiled/*.yaml`` (uploadable in the Kubeflow
UI); :func:`pipelines.local.run_local` runs a pipeline on this machine with the kfp local runner.
Importing this package imports kfp; ``hfcast`` itself never does.
"""

PIPELINES = ("training", "batch", "monitoring")
