"""Secrets: every one a manifest names has a template with the keys it reads; each identity reaches
only the pods that need it; the serving Secret carries the annotations KServe's storage initializer
reads, and they lead KServe to the same S3 endpoint the ConfigMap gives hfcast (both overlays)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from _cluster import MANIFESTS, OVERLAYS, find, pod_spec, render, workloads
from serving import manifests as m

KSERVE = yaml.safe_load((Path(__file__).parent / "cluster_reference" / "kserve.yaml").read_text())["s3"]
TEMPLATES = {d["metadata"]["name"]: d for p in sorted((MANIFESTS / "secrets").glob("*.template.yaml"))
             for d in yaml.safe_load_all(p.read_text()) if d}
README = (MANIFESTS / "secrets" / "README.md").read_text()


def _refs(node, where: str, out: dict[str, dict[str, set[str]]]) -> None:
    """secret name -> {where it is used -> the keys read (empty: all)} for everything under ``node``."""
    if isinstance(node, dict):
        if "secretKeyRef" in node:
            out.setdefault(node["secretKeyRef"]["name"], {}).setdefault(where, set()).add(node["secretKeyRef"]["key"])
        if "secretRef" in node:
            out.setdefault(node["secretRef"]["name"], {}).setdefault(where, set())
        if "secretName" in node:
            keys = {i["key"] for i in node.get("items", [])}
            out.setdefault(node["secretName"], {}).setdefault(where, set()).update(keys)
        for v in node.values():
            _refs(v, where, out)
    elif isinstance(node, list):
        for v in node:
            _refs(v, where, out)


def _all_refs(overlay: str) -> dict[str, dict[str, set[str]]]:
    out: dict[str, dict[str, set[str]]] = {}
    for obj in render(overlay):
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        _refs(obj.get("spec", {}), where, out)
        for s in obj.get("secrets", []):  # a ServiceAccount's list
            out.setdefault(s["name"], {}).setdefault(where, set())
    for name, isvc in m.build_all().items():
        _refs(m.to_dict(isvc)["spec"], f"InferenceService/{isvc.metadata.name}", out)
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_secret_named_has_a_template_with_the_keys_read(overlay):
    for name, uses in _all_refs(overlay).items():
        assert name in TEMPLATES, f"{name} (used by {sorted(uses)}) has no manifests/secrets/{name}.template.yaml"
        keys = set(TEMPLATES[name].get("stringData", {}))
        for where, read in uses.items():
            assert read <= keys, f"{where} reads {read - keys} from {name}, which its template does not have"
        assert name in README, f"manifests/secrets/README.md does not say how to create {name}"


def test_files_the_start_scripts_read_are_keys_of_the_mounted_secrets():
    checked = 0
    for obj in workloads(render("dev")):
        spec = pod_spec(obj)
        secret_mounts = {}
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            for mt in c.get("volumeMounts", []):
                if "secret" in volumes.get(mt["name"], {}):  # (a claim template is no pod volume)
                    secret_mounts[mt["mountPath"]] = volumes[mt["name"]]["secret"]["secretName"]
            text = " ".join(c.get("command", []) + c.get("args", []) + [e.get("value") or "" for e in c.get("env", [])])
            text = text.replace("$s/", "/var/run/secrets/hfcast/")
            read = re.findall(r"(/var/run/secrets/hfcast/[\w-]+)/([\w.-]+)", text)
            read += [(f"/var/run/secrets/hfcast/{d}", k) for d, k in re.findall(r'read\("([\w-]+)/([\w.-]+)"\)', text)]
            for folder, key in read:
                assert folder in secret_mounts, f"{obj['metadata']['name']}: {folder} is not a mounted Secret"
                assert key in TEMPLATES[secret_mounts[folder]]["stringData"], (obj["metadata"]["name"], folder, key)
                checked += 1
    assert checked >= 11  # the MLflow server's 7, the users Job's admin 2, Postgres's 2


def _kserve_endpoint(annotations: dict[str, str]) -> str | None:
    """AWS_ENDPOINT_URL as KServe's BuildS3EnvVars derives it from a Secret's annotations."""
    a = KSERVE["annotations"]
    endpoint = annotations.get(a["endpoint"])
    if endpoint is None:
        return None
    return ("http://" if annotations.get(a["usehttps"]) == "0" else "https://") + endpoint


def _readme_annotations(endpoint_host: str) -> dict[str, str]:
    """The `kubectl annotate secret hfcast-s3-serving ...` command of the secrets README for a host."""
    for command in re.findall(r"kubectl \$NS annotate[^\n]*", README.replace("\\\n", " ")):
        words = shlex.split(command)
        pairs = dict(w.split("=", 1) for w in words if "=" in w and w.startswith("serving.kserve.io/"))
        if "hfcast-s3-serving" in words and pairs.get(KSERVE["annotations"]["endpoint"], "").startswith(endpoint_host):
            return pairs
    raise AssertionError(f"manifests/secrets/README.md has no annotate command for {endpoint_host}")


def test_the_serving_secret_carries_what_kserve_reads():
    secret = TEMPLATES["hfcast-s3-serving"]
    ann = secret["metadata"]["annotations"]
    a = KSERVE["annotations"]
    assert set(KSERVE["secret_keys"]) <= set(secret["stringData"])
    assert {a["endpoint"], a["usehttps"], a["region"]} <= set(ann)
    assert "://" not in ann[a["endpoint"]] and ann[a["usehttps"]] in ("0", "1")
    sa = find(render("dev"), "ServiceAccount", m.MODELS_SA)
    assert sa["secrets"] == [{"name": "hfcast-s3-serving"}]
    # a ServiceAccount's own s3 annotations are read only beside an IRSA role: there, they only mislead
    assert not [k for k in (sa["metadata"].get("annotations") or {}) if k.startswith("serving.kserve.io/s3")]
    for isvc in m.build_all().values():
        for part in (isvc.spec.predictor, isvc.spec.transformer):
            if part is not None:
                assert part.service_account_name == m.MODELS_SA


@pytest.mark.parametrize("overlay, host", [("release", "s3.amazonaws.com"), ("dev", "minio.hfcast.svc.cluster.local")])
def test_kserve_and_hfcast_reach_the_same_s3(overlay, host):
    config = find(render(overlay), "ConfigMap", "hfcast-config")["data"]
    template = TEMPLATES["hfcast-s3-serving"]["metadata"]["annotations"]
    annotations = template if template[KSERVE["annotations"]["endpoint"]].startswith(host) else _readme_annotations(host)
    assert _kserve_endpoint(annotations) == config["HFCAST_S3_ENDPOINT"], overlay
    assert annotations[KSERVE["annotations"]["region"]] == config["AWS_DEFAULT_REGION"]
    assert _readme_annotations(host) == {k: v for k, v in annotations.items() if k in _readme_annotations(host)}


def test_a_secret_without_annotations_would_send_kserve_to_aws():
    assert _kserve_endpoint({}) is None  # what the issue found: the model pulled from AWS's default endpoint


def test_each_identity_reaches_only_its_pods():
    refs = _all_refs("dev")
    users = {name: {w.split("/")[1] for w in uses} for name, uses in refs.items()}
    assert users["hfcast-s3-admin"] == {"hfcast-buckets"}
    assert users["hfcast-mlflow-admin"] == {"mlflow", "hfcast-mlflow-users"}
    assert users["hfcast-s3-pipeline"] == {"hfcast-settings"}  # the PodDefault: pipeline steps only
    # the MLflow users: their clients, and the users Job that sets their passwords
    assert users["hfcast-mlflow-pipeline"] == {"hfcast-settings", "hfcast-mlflow-users"}
    assert users["hfcast-mlflow-serving"] == {"hfcast-cpu", "hfcast-gpu", "hfcast-mlflow-users"}
    assert users["hfcast-s3-serving"] == {"hfcast-models", "hfcast-cpu", "hfcast-gpu"}
    assert users["hfcast-s3-mlflow"] == {"mlflow"}
    assert users["hfcast-postgres"] == {"postgres", "mlflow"}


def test_the_storage_identities_are_least_privilege():
    identities = {i["name"]: set(i["actions"]) for i in
                  yaml.safe_load(TEMPLATES["hfcast-seaweedfs"]["stringData"]["s3.json"].replace("<", "").replace(">", ""))["identities"]}
    assert "Admin" in identities.pop("admin")
    for name, actions in identities.items():
        assert all(":" in a for a in actions), f"{name}: every action limited to a bucket"
        assert not [a for a in actions if a.startswith("Admin")], name
    assert {a.split(":")[0] for a in identities["serving"]} == {"Read", "List"}
    assert {a.split(":")[1] for a in identities["mlflow"]} == {"hfcast-mlflow"}
    assert "hfcast-mlflow" not in {a.split(":")[1] for a in identities["pipeline"] | identities["serving"]}
