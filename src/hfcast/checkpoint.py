"""Per-epoch training checkpoints, so a killed training resumes at the next epoch instead of epoch 0.

One file per training, ``<dir>/<arch>-<key>/checkpoint.safetensors``: the weights, the best
weights so far, the optimizer's tensors and the torch RNG as safetensors tensors, and everything
else (epoch records, early-stopping state, the scheduler and the optimizer's hyper-parameters) as
JSON in the file's metadata. One file makes each save atomic (``hfcast.storage.write_bytes``: a
reader sees the previous epoch or the new one, never half of each) and there is no pickle. A
``progress.json`` beside it says the same for people and dashboards; it is never read back.

The key is a digest of what determines the result (architecture, configs, feature list, the fitted
scaler as a fingerprint of the data, the dates and window counts), never of the number of
processes: the global batches do not depend on it, so a job may resume with another world size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from typing import Any, Mapping

import torch

from hfcast import storage
from hfcast.config import s3_storage_options

log = logging.getLogger(__name__)

FILE = "checkpoint.safetensors"
PROGRESS = "progress.json"


def run_key(identity: Mapping[str, Any]) -> str:
    """16 hex digits of the SHA-256 of ``identity`` as canonical JSON."""
    text = json.dumps(identity, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _header_metadata(blob: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors blob (8-byte little-endian header size, then JSON)."""
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + n]).get("__metadata__", {})


class Checkpointer:
    """Saves and loads one training's checkpoint under ``url`` (a folder: local path, file:// or s3://)."""

    def __init__(self, url: str, storage_options: dict | None = None):
        """``storage_options`` None on an ``s3://`` URL: the endpoint and credentials of the environment
        (``HFCAST_S3_ENDPOINT``, ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``), as Settings reads them."""
        if storage_options is None and url.startswith("s3://"):
            storage_options = s3_storage_options(os.environ.get("HFCAST_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL"),
                                                 os.environ.get("AWS_ACCESS_KEY_ID", ""),
                                                 os.environ.get("AWS_SECRET_ACCESS_KEY", ""))
        self.url, self.storage_options = url.rstrip("/"), storage_options

    @property
    def file(self) -> str:
        return storage.join(self.url, FILE)

    def save(self, tensors: Mapping[str, torch.Tensor], state: Mapping[str, Any]) -> None:
        from safetensors.torch import save as st_save

        flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        doc = json.dumps(state, default=float)
        storage.write_bytes(self.file, st_save(flat, metadata={"hfcast": doc}), self.storage_options)
        progress = {k: state[k] for k in ("epoch", "finished", "best_epoch", "best_loss") if k in state}
        storage.write_text(storage.join(self.url, PROGRESS), json.dumps(progress, indent=1, default=float),
                           self.storage_options)

    def load(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """(tensors, state) of the last saved epoch, or None when there is none yet."""
        from safetensors.torch import load as st_load

        if not storage.exists(self.file, self.storage_options):
            return None
        blob = storage.read_bytes(self.file, self.storage_options)
        return st_load(blob), json.loads(_header_metadata(blob)["hfcast"])


def optimizer_parts(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state as (tensors, JSON-able rest)."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{pid}.{k}"] = v
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer(opt: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], rest: Mapping[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    for key, v in rest["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": rest["param_groups"]})
