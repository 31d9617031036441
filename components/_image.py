"""The container images of the hfcast components, named in exactly one place.

Both are built from this repository (``docker/Dockerfile`` and ``docker/Dockerfile.gpu``) and
already contain hfcast, ``components/`` and ``pipelines/``, so no component installs packages at
run time. Tags are pinned: a compiled pipeline always runs the code it was compiled against.
Bump ``VERSION`` together with ``pyproject.toml`` and ``docker/images.env``.
"""

VERSION = "0.1.0"
REGISTRY = "ghcr.io/hfcast"
IMAGE = f"{REGISTRY}/hfcast:{VERSION}"          # CPU: data, features, registry, export, batch, drift
GPU_IMAGE = f"{REGISTRY}/hfcast-gpu:{VERSION}"  # CUDA variant for the training step (and TensorRT export)
