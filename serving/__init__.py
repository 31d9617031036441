"""hfcast on KServe: the predictor (CPU/GPU runners), the Feast feature transformer, manifests.

This package imports ``hfcast``; ``hfcast`` never imports it (``hfcast serve`` imports it lazily).
Nothing heavy is imported here: ``kserve`` parses ``sys.argv`` when it is first imported, so the
entry points (``python -m serving``, ``hfcast serve``) control when that happens.
"""
