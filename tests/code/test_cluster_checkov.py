"""checkov, a standard scanner of Kubernetes manifests, over every rendered overlay: no failed check,
and every skip is annotated on its object with a reason (``checkov.io/skip*: CKV_K8S_NN=reason``).

A planted privileged pod shows the scan is live: the same test function fails on it.
"""

from __future__ import annotations

import copy

import pytest

from _cluster import OVERLAYS, find, render, run_checkov

MIN_REASON = 40  # characters: a reason says why, "not needed" is no reason


def _failures(report: dict) -> list[str]:
    return [f"{f['check_id']} {f['resource']}: {f['check_name']}" for f in report["results"].get("failed_checks", [])]


def _assert_clean(report: dict) -> None:
    failed = _failures(report)
    assert not failed, "checkov failed checks:\n" + "\n".join(failed)
    for skip in report["results"].get("skipped_checks", []):
        reason = skip["check_result"].get("suppress_comment") or ""
        assert len(reason) >= MIN_REASON and reason != "No comment provided", \
            f"{skip['check_id']} skipped on {skip['resource']} without a reason: {reason!r}"


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    out = {}
    for overlay in OVERLAYS:
        out[overlay] = run_checkov(render(overlay), tmp_path_factory.mktemp(overlay))
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_checkov_passes_every_overlay(reports, overlay):
    report = reports[overlay]
    assert report["summary"]["resource_count"] >= 20, report["summary"]
    _assert_clean(report)


def test_only_the_dev_overlay_skips_the_digest_check(reports):
    """Digests are what the release overlay is for: it must pass CKV_K8S_43, not skip it."""
    skipped = {o: {s["check_id"] for s in r["results"].get("skipped_checks", [])} for o, r in reports.items()}
    assert "CKV_K8S_43" in skipped["dev"] and "CKV_K8S_43" not in skipped["release"]


def test_a_planted_privileged_pod_fails_the_scan(tmp_path):
    objects = render("dev")
    bad = copy.deepcopy(find(objects, "Deployment", "redis"))
    bad["metadata"]["name"] = "planted"
    bad["metadata"].pop("annotations", None)  # no skip annotation to hide behind
    spec = bad["spec"]["template"]["spec"]
    spec.pop("securityContext")
    spec["containers"][0]["securityContext"] = {"privileged": True, "allowPrivilegeEscalation": True}
    spec["automountServiceAccountToken"] = True
    report = run_checkov([*objects, bad], tmp_path)
    failed = {f["check_id"] for f in report["results"]["failed_checks"] if f["resource"].endswith(".planted")}
    assert {"CKV_K8S_16", "CKV_K8S_20", "CKV_K8S_38"} <= failed, failed  # privileged, escalation, token
    with pytest.raises(AssertionError, match="CKV_K8S_16"):
        _assert_clean(report)
