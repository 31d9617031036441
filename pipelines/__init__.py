"""Kubeflow pipelines of hfcast, one per file: training (CPU and GPU), batch inference, monitoring.

``pipelines.names`` maps each pipeline's name to its function and compiled file;
``python -m pipelines.compile`` writes ``pipelines/compiled/*.yaml`` (uploadable in the Kubeflow UI);
:func:`pipelines.local.run_local` runs a pipeline on this machine with the kfp local runner;
:mod:`pipelines.starters` starts a retraining (local runner, or the Kubeflow API);
:mod:`pipelines.cli` adds ``hfcast pipeline ...`` and ``hfcast demo``. Importing the pipeline modules
imports kfp; ``hfcast`` itself never does.
"""
