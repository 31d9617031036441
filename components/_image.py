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


def hfcast_component(func):
    """``@dsl.component`` on the hfcast image. The image already holds hfcast and kfp, so nothing is
    pip-installed when a step starts (a cluster without internet access still runs it)."""
    from kfp import dsl

    return dsl.component(func, base_image=IMAGE, install_kfp_package=False)
