"""Kubeflow Pipelines components of hfcast: thin, typed wrappers over the ``hfcast`` library.

One component per file. Each function imports what it needs inside its body (kfp ships the
function source to the container), runs one hfcast call and records typed artifacts with metadata.
Business logic stays in ``hfcast``, where it is tested without Kubeflow.
"""

from components._image import GPU_IMAGE, IMAGE  # the images, public: the pipelines place GPU steps on GPU_IMAGE

__all__ = ["GPU_IMAGE", "IMAGE"]
