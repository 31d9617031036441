"""Monitoring: drift and live performance (:mod:`.drift`), the retraining decision (:mod:`.decision`),
and the interface through which a retraining is started (:mod:`.retraining`).

Nothing here imports Kubeflow: the starter that talks to a cluster is passed in from outside.
"""
