"""SHA-256 checksums that make a model impossible to swap silently.

Why: the gate promotes one set of weights; what is served must be that set. At registration the
checksum of each bundle file (weights, scaler, calibration, model.json) is recorded as a tag of
the model version; every load, from the registry or from the local bundle cache, recomputes them
and refuses a mismatch, naming the file and both checksums. Exports (ONNX, the TensorRT plan
built from it) are cached in a folder named after the bundle checksum, with the checksums of the
exported files recorded beside them: weights that change get a new export, and an export that
changes after it was written is refused.

A registered version's export (ONNX, its int8 model and the int8 guard's verdict) is built once,
at registration or on first demand, and stored with the version: the checksum of each file is a
tag of the version (:data:`EXPORT_TAG_PREFIX`), and a server or a batch job that fetches it
verifies every file before using it (:func:`verify_export`), so no server exports at start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from hfcast.errors import UserError

log = logging.getLogger(__name__)

TAG_PREFIX = "hfcast.sha256."  # one tag per file: hfcast.sha256.members/lstm/weights.safetensors
BUNDLE_TAG = "hfcast.bundle_sha256"  # all files at once: names the export cache folder
ABSENT = "absent"  # calibration.json is optional: its absence is recorded too
EXPORTS_DIR = "exports"
RECORD = "sha256.json"
MANIFEST = "checksums.json"  # written by a bundle's save, checked by every load
#: an older single-network bundle's files (recorded as absent when missing)
LEGACY_FILES = ("model.json", "weights.safetensors", "scaler.json", "calibration.json")


class IntegrityError(UserError):
    """A model artifact is not the one that was registered (or exported)."""


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def bundle_files(folder: str | os.PathLike) -> list[str]:
    """Relative paths of every file of a bundle folder (exports and the manifest left out: they are
    derived from the bundle, not part of it)."""
    folder = Path(folder)
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and rel != MANIFEST and not rel.startswith(EXPORTS_DIR + "/") and not rel.startswith("."):
            out.append(rel)
    return out


def bundle_digests(folder: str | os.PathLike) -> dict[str, str]:
    """``{relative path: sha256}`` for every file of a bundle folder (an older single-network
    bundle also records its optional files that are absent)."""
    folder = Path(folder)
    got = {rel: file_sha256(folder / rel) for rel in bundle_files(folder)}
    if "weights.safetensors" in got:  # an older single-network bundle
        got.update({name: ABSENT for name in LEGACY_FILES if name not in got})
    return got


def manifest_of(files: Mapping[str, bytes]) -> dict[str, str]:
    """The manifest a bundle's save writes: ``{relative path: sha256}`` of the bytes it wrote."""
    return {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())}


class BundleReader:
    """Reads a bundle folder (local or fsspec URL) file by file, checking each against the bundle's
    ``checksums.json``: a bundle whose bytes changed after it was saved is refused, naming the file.
    A bundle without a manifest (written before manifests existed) loads with one warning."""

    def __init__(self, path: str, storage_options: dict | None = None):
        from hfcast import storage

        self.path, self.options, self._storage = str(path), storage_options, storage
        url = storage.join(self.path, MANIFEST)
        try:
            self.manifest = json.loads(storage.read_text(url, storage_options))
        except FileNotFoundError:
            self.manifest = None
            if not storage.exists(storage.join(self.path, "model.json"), storage_options):
                raise FileNotFoundError(f"no model.json in {self.path}: not a forecaster bundle") from None
            log.warning("bundle %s has no %s: its files cannot be checked (saved by an older release)", self.path, MANIFEST)

    def names(self) -> set[str]:
        """The files the bundle holds (from its manifest, else by listing the folder's top level)."""
        if self.manifest is not None:
            return set(self.manifest)
        return {n.rstrip("/").rsplit("/", 1)[-1] for n in self._storage.listdir(self.path, self.options)}

    def read(self, name: str) -> bytes | None:
        """The bytes of ``name``, verified; None when the bundle does not hold it."""
        if self.manifest is not None and name not in self.manifest:
            return None
        url = self._storage.join(self.path, name)
        try:
            data = self._storage.read_bytes(url, self.options)
        except FileNotFoundError:
            if self.manifest is not None:
                raise IntegrityError(f"bundle {self.path} lacks {name}, which its {MANIFEST} lists",
                                     "the bundle is incomplete: copy or download it again") from None
            return None
        if self.manifest is not None:
            got = hashlib.sha256(data).hexdigest()
            if got != self.manifest[name]:
                raise IntegrityError(
                    f"checksum mismatch in bundle {self.path}: {name} has sha256 {got[:16]}..., its {MANIFEST} "
                    f"recorded {self.manifest[name][:16]}...",
                    "the file changed after the bundle was saved: restore it, or train and save the model again")
        return data

    def json(self, name: str) -> Any:
        data = self.read(name)
        if data is None:
            raise FileNotFoundError(f"{self.path} has no {name}")
        return json.loads(data)


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
                  what: str = "ONNX", accept: Callable[[Path], bool] | None = None) -> Path:
    """The export ``filename`` of a bundle, built once per bundle checksum and verified at every use.

    ``build(path)`` writes the export (and any side files, e.g. ONNX external data) into a fresh
    folder; the folder is then published as ``<bundle>/exports/<checksum[:16]>/`` by one rename.
    ``accept(folder)``, when given, decides instead of the folder's own record whether what is
    there may be used; a folder it refuses is built again and replaced (a registered version's
    stored export replaces a local one: :func:`hfcast.registry.fetch_export`).
    """
    bundle_dir = Path(bundle_dir)
    key = combined(bundle_digests(bundle_dir))[:16]
    root = bundle_dir / EXPORTS_DIR
    folder = root / key

    def usable(f: Path) -> bool:
        return accept(f) if accept is not None else _record_ok(f, what)

    if usable(folder):
        return folder / filename
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
    try:
        build(tmp / filename)
        record = {p.name: file_sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / RECORD).write_text(json.dumps(record, indent=1))
        if folder.exists():  # an incomplete folder (no record) left by a crash, or one ``accept`` refused
            shutil.rmtree(folder, ignore_errors=True)
        try:
            tmp.rename(folder)
        except OSError:
            if not usable(folder):  # lost a race to an identical export: fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.debug("%s export of bundle %s cached in %s", what, key, folder)  # the exporter (or fetch) said what it did
    return folder / filename


# --- a registered version's stored export -----------------------------------------------------------

EXPORT_TAG_PREFIX = "hfcast.export_sha256."  # one tag per stored export file: hfcast.export_sha256.model.onnx
EXPORT_PATH_TAG = "hfcast.export_artifacts"  # the run's artifact folder holding them; written after the checksums


def export_tags(folder: str | os.PathLike, names: Sequence[str], artifact_path: str) -> dict[str, str]:
    """The model-version tags that record a stored export: each file's checksum, then where it lives
    (in this order: a reader takes the export as stored only once the path tag exists)."""
    folder = Path(folder)
    return {**{EXPORT_TAG_PREFIX + n: file_sha256(folder / n) for n in names}, EXPORT_PATH_TAG: artifact_path}


def expected_export(tags: Mapping[str, str]) -> tuple[str, dict[str, str]] | None:
    """``(artifact path, {file: sha256})`` of a version's stored export; None for a version that has
    none (registered before exports were stored, or its export never finished)."""
    path = tags.get(EXPORT_PATH_TAG)
    files = {k[len(EXPORT_TAG_PREFIX):]: v for k, v in tags.items() if k.startswith(EXPORT_TAG_PREFIX)}
    return (path, files) if path and files else None


def export_mismatch(folder: str | os.PathLike, want: Mapping[str, str]) -> tuple[str, str] | None:
    """The first file of ``folder`` that differs from ``want``: ``(name, its sha256 or "absent")``;
    None when every file matches."""
    folder = Path(folder)
    for name in sorted(want):
        got = file_sha256(folder / name) if (folder / name).is_file() else ABSENT
        if got != want[name]:
            return name, got
    return None


def verify_export(folder: str | os.PathLike, want: Mapping[str, str], what: str) -> None:
    """Refuse an export whose files are not the ones whose checksums were recorded when it was stored.

    Raises:
        IntegrityError: naming the file and both checksums.
    """
    bad = export_mismatch(folder, want)
    if bad is not None:
        name, got = bad
        raise IntegrityError(
            f"checksum mismatch in the stored export of {what}: {name} has sha256 {got[:16]}..., the registry "
            f"recorded {want[name][:16]}...",
            "the exported file was replaced after it was stored: store the export again (`hfcast export "
            "--model NAME/VERSION`), or register the model again")
