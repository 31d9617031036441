"""hfcast on KServe: the predictor (CPU/GPU runners), the Feast feature transformer, manifests,
the deploy step's create-or-patch (``serving.deploy``) and the ``hfcast serve`` command (``serving.cli``).

This package imports ``hfcast``; ``hfcast`` never imports it (``hfcast serve`` comes in through the
``hfcast.cli`` entry point). Nothing heavy is imported here: ``kserve`` parses ``sys.argv`` when it
is first imported, so the entry points (``python -m serving``, ``hfcast serve``) control when that happens.
"""
