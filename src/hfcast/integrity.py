"""SHA-256 checksums that make a model impossible to swap silently.

Why: the gate promotes one set of weights; what is served must be that set. At registration the
checksum of each bundle file (weights, scaler, calibration, model.json) is recorded as a tag of
the model version; every load, from the registry or from the local bundle cache, recomputes them
and refuses a mismatch, naming the file and both checksums. Exports (ONNX, the TensorRT plan
built from it) are cached in a folder named after the bundle checksum, with the checksums of the
exported files recorded beside them: weights that change get a new export, and an export that
changes after it was written is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Mapping

from hfcast.contracts import BUNDLE_FILES
from hfcast.errors import UserError

log = logging.getLogger(__name__)

CHECKED_FILES = BUNDLE_FILES  # every file of a bundle
TAG_PREFIX = "hfcast.sha256."  # one tag per file: hfcast.sha256.weights.safetensors
BUNDLE_TAG = "hfcast.bundle_sha256"  # all files at once: names the export cache folder
ABSENT = "absent"  # calibration.json is optional: its absence is recorded too
EXPORTS_DIR = "exports"
RECORD = "sha256.json"


class IntegrityError(UserError):
    """A model artifact is not the one that was registered (or exported)."""


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def bundle_digests(folder: str | os.PathLike) -> dict[str, str]:
    """``{file: sha256 | "absent"}`` for every checked file of a bundle folder."""
    folder = Path(folder)
    return {name: file_sha256(folder / name) if (folder / name).is_file() else ABSENT for name in CHECKED_FILES}


def combined(digests: Mapping[str, str]) -> str:
    """One checksum for the whole bundle (order-independent)."""
    text = "".join(f"{k}:{digests[k]}\n" for k in sorted(digests))
    return hashlib.sha256(text.encode()).hexdigest()


def registry_tags(folder: str | os.PathLike) -> dict[str, str]:
    """The model-version tags that record a bundle folder's checksums."""
    d = bundle_digests(folder)
    return {**{TAG_PREFIX + k: v for k, v in d.items()}, BUNDLE_TAG: combined(d)}


def expected(tags: Mapping[str, str]) -> dict[str, str] | None:
    """The recorded checksums in a version's tags; None for a version registered before checksums."""
    d = {k[len(TAG_PREFIX):]: v for k, v in tags.items() if k.startswith(TAG_PREFIX)}
    return d or None


def verify_bundle(folder: str | os.PathLike, tags: Mapping[str, str], what: str) -> str:
    """Recompute the checksums of ``folder`` and compare them with ``tags``; returns the bundle checksum.

    Raises:
        IntegrityError: a file differs from the registered one (names the file and both checksums).
    """
    got = bundle_digests(folder)
    want = expected(tags)
    if want is None:
        log.warning("%s has no recorded checksums (registered before they existed): cannot verify %s", what, folder)
        return combined(got)
    bad = [k for k in sorted(set(want) | set(got)) if want.get(k, ABSENT) != got.get(k, ABSENT)]
    if bad:
        k = bad[0]
        raise IntegrityError(
            f"checksum mismatch for {what}: {k} in {folder} has sha256 {got.get(k, ABSENT)[:16]}..., "
            f"the registry recorded {want.get(k, ABSENT)[:16]}... ({len(bad)} file(s) differ: {bad})",
            "the artifact was replaced after registration: delete the cached folder and download again, "
            "or register the new bundle as a new version so that it goes through the gate")
    return combined(got)


def _record_ok(folder: Path, what: str) -> bool:
    """True if ``folder`` holds a complete export whose files match its record; IntegrityError if not."""
    rec = folder / RECORD
    if not rec.is_file():
        return False
    recorded = json.loads(rec.read_text())
    for name, sha in recorded.items():
        path = folder / name
        got = file_sha256(path) if path.is_file() else ABSENT
        if got != sha:
            raise IntegrityError(
                f"checksum mismatch for the {what} export: {path} has sha256 {got[:16]}..., "
                f"recorded {sha[:16]}... when it was exported",
                f"the exported file changed or was deleted after export: delete {folder} to export again")
    return True


def cached_export(bundle_dir: str | os.PathLike, filename: str, build: Callable[[Path], None],
                  what: str = "ONNX") -> Path:
    """The export ``filename`` of a bundle, built once per bundle checksum and verified at every use.

    ``build(path)`` writes the export (and any side files, e.g. ONNX external data) into a fresh
    folder; the folder is then published as ``<bundle>/exports/<checksum[:16]>/`` by one rename.
    """
    bundle_dir = Path(bundle_dir)
    key = combined(bundle_digests(bundle_dir))[:16]
    root = bundle_dir / EXPORTS_DIR
    folder = root / key
    if _record_ok(folder, what):
        return folder / filename
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
    try:
        build(tmp / filename)
        record = {p.name: file_sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / RECORD).write_text(json.dumps(record, indent=1))
        if folder.exists():  # an incomplete folder (no record) left by a crash
            shutil.rmtree(folder, ignore_errors=True)
        try:
            tmp.rename(folder)
        except OSError:
            if not _record_ok(folder, what):  # lost a race to an identical export: fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("%s export of bundle %s cached in %s", what, key, folder)
    return folder / filename
