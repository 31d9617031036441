"""Pin the release overlay's images by digest, and refuse a release that is not pinned.

Why digests: a tag can be pushed again, a digest names one image, so a release deploys exactly what
was tested. The release job pushes the images, asks the registry for their digests, and runs

    python docker/pin_release.py --digests digests.txt   # lines: <image name>@sha256:<64 hex>
    python docker/pin_release.py --check                 # the gate: exit 1 unless every image is pinned

``--digests`` rewrites the ``images:`` block of manifests/overlays/release/kustomization.yaml (the
lines between its BEGIN and END markers); ``--check`` renders the overlay with ``kubectl kustomize``
and fails on any image named by tag only or still carrying the all-zero "unreleased" digest the
repository holds until a first release is pushed. tests/code/test_cluster_render.py runs both.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RELEASE = ROOT / "manifests" / "overlays" / "release"
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
UNRELEASED = "sha256:" + "0" * 64
BEGIN, END = "  # BEGIN digests", "  # END digests"


def images(objects: list[dict]) -> list[str]:
    """Every container image of rendered objects (Pod templates, KServe runtimes: any ``image`` key)."""
    found: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "image" and isinstance(value, str):
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(objects)
    return sorted(set(found))


def problems(objects: list[dict]) -> list[str]:
    """What keeps rendered objects from being a release: tag-only and unreleased images."""
    out = []
    for image in images(objects):
        if not DIGEST.search(image):
            out.append(f"{image}: named by tag only (pin it by digest)")
        elif image.endswith(UNRELEASED):
            out.append(f"{image}: the unreleased placeholder digest (push the image, then --digests)")
    return out


def read_digests(text: str) -> dict[str, str]:
    """``name@sha256:hex`` lines (blank lines and # comments ignored) -> {name: digest}."""
    out = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if not DIGEST.search(line):
            raise ValueError(f"line {n}: {line!r} is not <image name>@sha256:<64 hex digits>")
        name, digest = line.split("@", 1)
        out[name.rsplit(":", 1)[0] if ":" in name.split("/")[-1] else name] = digest
    return out


def pin(kustomization: Path, digests: dict[str, str]) -> str:
    """The kustomization's text with each named image's digest replaced; every name must already be listed."""
    lines = kustomization.read_text().splitlines(keepends=True)
    try:
        begin = next(i for i, line in enumerate(lines) if line.startswith(BEGIN))
        end = next(i for i, line in enumerate(lines) if line.startswith(END))
    except StopIteration:
        raise ValueError(f"{kustomization} has no '{BEGIN.strip()}' ... '{END.strip()}' block") from None
    entries = yaml.safe_load("".join(lines[begin + 1:end])) or []
    names = {e["name"] for e in entries}
    unknown = sorted(set(digests) - names)
    if unknown:
        raise ValueError(f"{unknown} are not images of {kustomization} (listed: {sorted(names)})")
    block = [f"  - name: {e['name']}\n    digest: {digests.get(e['name'], e['digest'])}\n" for e in entries]
    return "".join(lines[:begin + 1] + block + lines[end:])


def render(overlay: Path = RELEASE) -> list[dict]:
    out = subprocess.run(["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, check=True)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digests", type=Path, help="file of <image name>@sha256:<digest> lines")
    parser.add_argument("--check", action="store_true", help="fail unless every image of the release is pinned")
    args = parser.parse_args(argv)
    kustomization = RELEASE / "kustomization.yaml"
    if args.digests:
        kustomization.write_text(pin(kustomization, read_digests(args.digests.read_text())))
    if args.check:
        found = problems(render())
        for line in found:
            print(f"error: {line}", file=sys.stderr)
        return 1 if found else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
