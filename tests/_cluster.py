"""The manifests as a cluster receives them: overlays rendered by ``kubectl kustomize`` (test-only helpers).

Why kubectl and not a re-implementation of kustomize: the label transformer, patches and the
`images:` digests are kustomize's semantics; Debian's kubectl renders overlays client-side (no API
server). A missing kubectl or checkov fails with what to install, never a skip (`make test` installs both: .ci/test-deps).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import yaml

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
OVERLAYS = sorted(p.parent.name for p in (MANIFESTS / "overlays").glob("*/kustomization.yaml"))
WORKLOADS = ("Deployment", "StatefulSet", "Job", "DaemonSet", "ReplicaSet")
CHECKOV_VERSION = "3.3.30"
CHECKOV_VENV = Path(os.environ.get("HFCAST_TOOLS", Path.home() / ".cache" / "hfcast-tools")) / "checkov"


def kubectl() -> str:
    found = shutil.which("kubectl")
    if not found:
        raise RuntimeError("`kubectl` not found: install Debian's kubectl (apt-get install -y kubectl; `make test` does "
                           "this) - it renders kustomize overlays without a cluster")
    return found


def render_dir(path: Path) -> list[dict]:
    """``kubectl kustomize path`` as a list of objects."""
    out = subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True, text=True)
    if out.returncode:
        raise AssertionError(f"kubectl kustomize {path} failed: {out.stderr.strip()[-2000:]}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@functools.lru_cache(maxsize=None)
def _rendered(overlay: str) -> str:
    return json.dumps(render_dir(MANIFESTS / "overlays" / overlay))


def render(overlay: str) -> list[dict]:
    """The objects of ``manifests/overlays/<overlay>`` (rendered once per test session; a fresh copy)."""
    return json.loads(_rendered(overlay))


def find(objects: list[dict], kind: str, name: str) -> dict:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def pod_spec(obj: dict) -> dict | None:
    """The pod template's spec of a workload (None for other kinds)."""
    if obj["kind"] in WORKLOADS:
        return obj["spec"]["template"]["spec"]
    if obj["kind"] == "Pod":
        return obj["spec"]
    return None


def pod_labels(obj: dict) -> dict[str, str]:
    return dict(obj["spec"]["template"]["metadata"].get("labels") or {}) if obj["kind"] in WORKLOADS else {}


def workloads(objects: list[dict]) -> Iterator[dict]:
    return (o for o in objects if pod_spec(o) is not None)


def checkov() -> str:
    """The checkov binary: $HFCAST_CHECKOV, the cached tools venv .ci/test-deps makes, or PATH."""
    for candidate in (os.environ.get("HFCAST_CHECKOV"), str(CHECKOV_VENV / "bin" / "checkov"), shutil.which("checkov")):
        if candidate and Path(candidate).exists():
            return candidate
    raise RuntimeError(f"checkov not found: python3 -m venv {CHECKOV_VENV} && {CHECKOV_VENV}/bin/pip install "
                       f"checkov=={CHECKOV_VERSION} (.ci/test-deps does this; its pins clash with the project's venv)")


def run_checkov(objects: list[dict], workdir: Path) -> dict:
    """checkov's Kubernetes checks over ``objects``; returns its JSON report (summary, failed, skipped)."""
    path = workdir / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(objects, sort_keys=False))
    out = subprocess.run([checkov(), "-f", str(path), "--framework", "kubernetes", "-o", "json", "--skip-download"],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "LOG_LEVEL": "ERROR"})
    if not out.stdout.strip().startswith(("{", "[")):
        raise AssertionError(f"checkov gave no report (exit {out.returncode}): {out.stderr[-2000:]}")
    report = json.loads(out.stdout)
    report = report[0] if isinstance(report, list) else report
    assert report["summary"]["parsing_errors"] == 0, report["summary"]
    return report
