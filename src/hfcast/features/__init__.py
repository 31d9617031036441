"""Features: the catalogue of 61 causal features, their computation, labels, sliding windows.

Import the submodules directly (``hfcast.features.catalog``, ``.engine``, ``.labels``,
``.windows``); nothing heavy runs at import time.
"""
