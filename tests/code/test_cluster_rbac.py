"""The pipeline's Role grants exactly what is called: the Kubernetes and KFP API calls are read from
the code (AST), KFP's authorization of each call from KFP's source (cluster_reference/), and the
step pod's own needs (Argo executor, KFP launcher) from the same reference.

Why derive instead of listing: a verb added to the code without the Role is a 403 on the cluster
(the recurring-run Job met one: KFP checks `jobs`, not `recurringruns`), and a verb left in the Role
after the code stopped calling it is privilege nobody uses.
"""

from __future__ import annotations

import ast
import copy
import re
from pathlib import Path

import pytest
import yaml

from _cluster import ROOT, find, render
from serving import manifests as serving_manifests

REFERENCE = yaml.safe_load((Path(__file__).parent / "cluster_reference" / "kfp_api_authorization.yaml").read_text())
CODE = sorted([*(ROOT / "components").glob("*.py"), *(ROOT / "pipelines").glob("*.py"), *(ROOT / "serving").glob("*.py")])
K8S_CALL = re.compile(r"^(get|list|create|patch|replace|delete)_namespaced_custom_object$")
K8S_VERB = {"get": "get", "list": "list", "create": "create", "patch": "patch", "replace": "update", "delete": "delete"}

Grant = tuple[str, str, str]  # (apiGroup, resource, verb)


def _constants(tree: ast.Module) -> dict[str, str]:
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets = node.targets[0].elts if isinstance(node.targets[0], ast.Tuple) else node.targets
            values = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
            for t, v in zip(targets, values):
                if isinstance(t, ast.Name) and isinstance(v, ast.Constant) and isinstance(v.value, str):
                    out[t.id] = v.value
    return out


def _value(node: ast.AST, constants: dict[str, str]) -> str:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name) and node.id in constants:
        return constants[node.id]
    raise AssertionError(f"cannot resolve {ast.dump(node)} statically: name the group/plural as a module constant")


def code_calls(files=CODE) -> dict[Grant, set[str]]:
    """(group, resource, verb) -> the files whose code makes a call KFP or Kubernetes authorizes so."""
    out: dict[Grant, set[str]] = {}
    kfp_methods = REFERENCE["client_methods"]
    for path in files:
        source = path.read_text()
        tree = ast.parse(source)
        constants = _constants(tree)
        kfp_module = "kfp.Client" in source or "pipelines.submit" in source  # the modules that hold a kfp.Client
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            method = node.func.attr
            grants: list[Grant] = []
            m = K8S_CALL.match(method)
            if m:
                group, _version, _ns, plural = (_value(a, constants) if i != 2 else None for i, a in enumerate(node.args[:4]))
                grants = [(group, plural, K8S_VERB[m.group(1)])]
            elif kfp_module and method in kfp_methods:
                grants = [(REFERENCE["group"], g["resource"], g["verb"]) for g in kfp_methods[method]]
            for grant in grants:
                out.setdefault(grant, set()).add(str(path.relative_to(ROOT)))
    return out


def step_pod_needs() -> set[Grant]:
    return {(n["group"], n["resource"], v) for n in REFERENCE["step_pod"] for v in n["verbs"]}


def granted(role: dict) -> set[Grant]:
    return {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def compare(role: dict, needed: set[Grant]) -> tuple[set[Grant], set[Grant]]:
    """(missing, unused): what the code needs and the Role lacks, what the Role grants and nobody calls."""
    have = granted(role)
    return needed - have, have - needed


@pytest.fixture(scope="module")
def role():
    return find(render("dev"), "Role", "hfcast-pipeline")


def test_the_code_makes_the_calls_this_test_knows_about():
    """The scan finds what the code does (a broken scan would make every comparison vacuous)."""
    calls = code_calls()
    assert calls[("serving.kserve.io", "inferenceservices", "create")] == {"serving/deploy.py"}
    assert ("serving.kserve.io", "inferenceservices", "patch") in calls
    assert calls[("pipelines.kubeflow.org", "jobs", "create")] == {"pipelines/submit.py"}
    assert calls[("pipelines.kubeflow.org", "runs", "get")] == {"pipelines/starters.py"}
    assert {"pipelines/submit.py", "pipelines/starters.py"} <= calls[("pipelines.kubeflow.org", "runs", "create")]


def test_the_role_grants_exactly_what_the_code_and_the_step_pod_call(role):
    missing, unused = compare(role, set(code_calls()) | step_pod_needs())
    assert not missing, f"the code calls, the Role does not grant (a 403 on the cluster): {sorted(missing)}"
    assert not unused, f"the Role grants, nothing calls: {sorted(unused)}"


def test_a_role_granting_recurringruns_instead_of_jobs_is_caught(role):
    old = copy.deepcopy(role)
    for rule in old["rules"]:
        rule["resources"] = ["recurringruns" if r == "jobs" else r for r in rule["resources"]]
    missing, unused = compare(old, set(code_calls()) | step_pod_needs())
    assert ("pipelines.kubeflow.org", "jobs", "create") in missing
    assert ("pipelines.kubeflow.org", "recurringruns", "create") in unused


def test_reads_of_named_objects_are_limited_to_those_names(role):
    """Secrets and ConfigMaps by name only; the deploy step may get and patch only the services it builds."""
    needs = {(n["resource"], v): set(n["resourceNames"]) for n in REFERENCE["step_pod"] if "resourceNames" in n
             for v in n["verbs"]}
    for rule in role["rules"]:
        for resource in rule["resources"]:
            if resource in ("secrets", "configmaps"):
                assert set(rule.get("resourceNames", [])) == needs[(resource, "get")], rule
            if resource == "inferenceservices" and set(rule["verbs"]) & {"get", "patch"}:
                names = {isvc.metadata.name for isvc in serving_manifests.build_all().values()}
                assert set(rule["resourceNames"]) == names, rule
    secrets_rules = [r for r in role["rules"] if "secrets" in r["resources"]]
    assert secrets_rules and all(r.get("resourceNames") for r in secrets_rules)


def test_the_accounts_that_call_no_api_mount_no_token():
    objects = render("dev")
    for sa in (o for o in objects if o["kind"] == "ServiceAccount"):
        name = sa["metadata"]["name"]
        # hfcast-pipeline: Argo's executor in each step pod uses the pod's token (KFP sets the pods up)
        assert sa.get("automountServiceAccountToken") is (None if name == "hfcast-pipeline" else False), name
    binding = find(objects, "RoleBinding", "hfcast-pipeline")
    assert {s["name"] for s in binding["subjects"]} == {"hfcast-pipeline", "default-editor"}
