"""The rendered NetworkPolicies and Istio policies allow exactly the flows hfcast uses, and nothing else.

No CNI or Istio runs here, so both are evaluated by this test, each by its documented semantics:
- NetworkPolicy (kubernetes.io/docs/concepts/services-networking/network-policies): a pod selected
  by a policy of a type accepts only what some policy of that type allows; a peer's podSelector
  matches in the policy's namespace, a namespaceSelector on ``kubernetes.io/metadata.name``, both
  together AND; an ipBlock is taken to match every address, pods included (the conservative reading:
  some CNIs match pod IPs too); a rule without ports allows every port.
- Istio (istio.io/latest/docs/reference/config/security/): a workload selected by an ALLOW
  AuthorizationPolicy accepts a request only when a rule matches (sources OR'ed, fields of one source
  AND'ed; ``namespaces`` and ``principals`` need a mesh identity, ``notPrincipals: ["*"]`` matches a
  request without one); PeerAuthentication STRICT on a port refuses a caller without a sidecar.
  Sidecar-less callers (KFP steps, Jobs) have no principal; Kubeflow's mesh default is STRICT.

The pods are the rendered dev overlay's workloads plus the ones Kubeflow, KServe and Knative create
(labels as they set them). "Every other pair denied": all (caller, server, port) triples are tried.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from _cluster import find, pod_labels, pod_spec, render, workloads

NS = "hfcast"


@dataclass(frozen=True)
class Pod:
    name: str
    namespace: str = NS
    labels: dict = field(default_factory=dict, hash=False, compare=False)
    account: str | None = None  # its ServiceAccount when it has a sidecar (mesh identity); None = plaintext
    ports: tuple[int, ...] = ()  # what it serves

    @property
    def principal(self) -> str | None:
        return f"cluster.local/ns/{self.namespace}/sa/{self.account}" if self.account else None


def _pods(objects: list[dict]) -> dict[str, Pod]:
    serves = {"mlflow": (5000,), "postgres": (5432,), "redis": (6379,), "seaweedfs": (8333,)}
    pods = {}
    for obj in workloads(objects):
        spec, name = pod_spec(obj), obj["metadata"]["name"]
        sidecar = (obj["spec"]["template"]["metadata"].get("annotations") or {}).get("sidecar.istio.io/inject") != "false"
        pods[name] = Pod(name, labels=pod_labels(obj), account=spec.get("serviceAccountName") if sidecar else None,
                         ports=serves.get(name, ()))
    pods.update({
        "kfp-step": Pod("kfp-step", labels={"pipelines.kubeflow.org/v2_component": "true",
                                            "workflows.argoproj.io/workflow": "run-1"}),  # KFP: no sidecar
        "isvc-cpu": Pod("isvc-cpu", labels={"serving.kserve.io/inferenceservice": "hfcast-cpu", "component": "predictor"},
                        account="hfcast-models", ports=(8012,)),
        "isvc-gpu": Pod("isvc-gpu", labels={"serving.kserve.io/inferenceservice": "hfcast-gpu", "component": "transformer"},
                        account="hfcast-models", ports=(8012,)),
        "isvc-gpu-predictor": Pod("isvc-gpu-predictor", account="hfcast-models", ports=(8012,),
                                  labels={"serving.kserve.io/inferenceservice": "hfcast-gpu", "component": "predictor"}),
        "notebook": Pod("notebook", labels={"app": "notebook"}, account="default-editor", ports=(8888,)),
        # Kubeflow's ingress gateway pods also serve knative-local-gateway (its Service: port 80 -> 8081)
        "ingress-gateway": Pod("ingress-gateway", "istio-system", {"app": "istio-ingressgateway"},
                               "istio-ingressgateway-service-account", (8080, 8081)),
        "activator": Pod("activator", "knative-serving", {"app": "activator"}, "controller", (8012,)),
        "kfp-api": Pod("kfp-api", "kubeflow", {"app": "ml-pipeline"}, "ml-pipeline", (8888,)),
        "outside": Pod("outside", "", {}, None, (443, 6443)),  # S3 on AWS, the API server: addresses, not pods
    })
    return pods


# caller -> server:port, the flows hfcast uses (manifests/base/networkpolicies.yaml, dev overlay)
FLOWS = {
    ("kfp-step", "mlflow", 5000), ("kfp-step", "redis", 6379), ("kfp-step", "seaweedfs", 8333),
    ("kfp-step", "kfp-api", 8888), ("kfp-step", "outside", 443), ("kfp-step", "outside", 6443),
    *{(isvc, server, port) for isvc in ("isvc-cpu", "isvc-gpu", "isvc-gpu-predictor") for server, port in
      (("mlflow", 5000), ("redis", 6379), ("seaweedfs", 8333), ("outside", 443), ("ingress-gateway", 8081),
       ("activator", 8012))},
    *{(caller, isvc, 8012) for caller in ("ingress-gateway", "activator") for isvc in ("isvc-cpu", "isvc-gpu",
                                                                                       "isvc-gpu-predictor")},
    ("isvc-gpu", "isvc-gpu-predictor", 8012),  # the transformer to its predictor, pod to pod
    ("ingress-gateway", "mlflow", 5000),
    ("mlflow", "postgres", 5432), ("mlflow", "seaweedfs", 8333), ("mlflow", "outside", 443),
    ("hfcast-mlflow-users", "mlflow", 5000), ("hfcast-buckets", "seaweedfs", 8333),
    ("hfcast-monitoring-schedule", "kfp-api", 8888),
}


# --- NetworkPolicy ---------------------------------------------------------------------------------------

def _selects(selector: dict | None, labels: dict) -> bool:
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        present, value = e["key"] in labels, labels.get(e["key"])
        ok = {"Exists": present, "DoesNotExist": not present, "In": present and value in e.get("values", []),
              "NotIn": not present or value not in e.get("values", [])}[e["operator"]]
        if not ok:
            return False
    return True


def _peer(peer: dict, policy_ns: str, pod: Pod) -> bool:
    if "ipBlock" in peer:
        return True
    ns_sel, pod_sel = peer.get("namespaceSelector"), peer.get("podSelector")
    ns_ok = _selects(ns_sel, {"kubernetes.io/metadata.name": pod.namespace}) if ns_sel is not None \
        else pod.namespace == policy_ns
    return ns_ok and (pod_sel is None or _selects(pod_sel, pod.labels))


def _port_ok(rule: dict, port: int) -> bool:
    ports = rule.get("ports")
    return not ports or any(p.get("port") == port for p in ports)


def _netpol_allows(policies: list[dict], pod: Pod, peer: Pod, port: int, direction: str) -> bool:
    kind, key, peers = ("Ingress", "ingress", "from") if direction == "in" else ("Egress", "egress", "to")
    mine = [p for p in policies if pod.namespace == NS and _selects(p["spec"]["podSelector"], pod.labels)
            and kind in p["spec"].get("policyTypes", ["Ingress"])]
    if not mine:
        return True  # not isolated (pods outside the namespace: their policies are not ours)
    return any(_port_ok(rule, port) and (not rule.get(peers) or any(_peer(x, NS, peer) for x in rule[peers]))
               for p in mine for rule in p["spec"].get(key) or [])


def netpol(objects: list[dict], client: Pod, server: Pod, port: int) -> bool:
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    return _netpol_allows(policies, client, server, port, "out") and _netpol_allows(policies, server, client, port, "in")


# --- Istio -----------------------------------------------------------------------------------------------

def _match(patterns: list[str], value: str | None) -> bool:
    if value is None:
        return False
    return any(p == "*" or p == value or (p.endswith("*") and value.startswith(p[:-1])) for p in patterns)


def _source_ok(source: dict, client: Pod) -> bool:
    if "principals" in source and not _match(source["principals"], client.principal):
        return False
    if "notPrincipals" in source and (client.principal is not None and _match(source["notPrincipals"], client.principal)):
        return False
    if "namespaces" in source and (client.principal is None or client.namespace not in source["namespaces"]):
        return False
    return True


def istio(objects: list[dict], client: Pod, server: Pod, port: int) -> bool:
    if server.namespace != NS or server.account is None:
        return True  # no sidecar on the server, or not ours: Istio does not decide
    peer_auth = [o for o in objects if o["kind"] == "PeerAuthentication" and _selects(o["spec"]["selector"], server.labels)]
    mode = "STRICT"  # Kubeflow's mesh-wide default
    for pa in peer_auth:
        mode = (pa["spec"].get("portLevelMtls") or {}).get(str(port), pa["spec"]["mtls"])["mode"]
    if mode == "STRICT" and client.principal is None:
        return False
    allow = [o for o in objects if o["kind"] == "AuthorizationPolicy" and o["spec"].get("action", "ALLOW") == "ALLOW"
             and _selects(o["spec"].get("selector"), server.labels)]
    if not allow:
        return True
    return any((not rule.get("from") or any(_source_ok(f["source"], client) for f in rule["from"]))
               and (not rule.get("to") or any(str(port) in t["operation"].get("ports", [str(port)]) for t in rule["to"]))
               for policy in allow for rule in policy["spec"].get("rules") or [])


# --- the tests -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dev():
    objects = render("dev")
    return objects, _pods(objects)


def _allowed(objects: list[dict], pods: dict[str, Pod]) -> set[tuple[str, str, int]]:
    return {(c.name, s.name, port) for c in pods.values() for s in pods.values() if c != s for port in s.ports
            if c.name != "outside" and netpol(objects, c, s, port) and istio(objects, c, s, port)}


def test_exactly_the_flows_hfcast_uses_are_allowed(dev):
    objects, pods = dev
    allowed = _allowed(objects, pods)
    allowed -= {t for t in allowed if pods[t[0]].namespace != NS and pods[t[1]].namespace != NS}  # not ours
    assert not FLOWS - allowed, f"flows hfcast needs, denied: {sorted(FLOWS - allowed)}"
    assert not allowed - FLOWS, f"allowed, and hfcast does not use them: {sorted(allowed - FLOWS)}"


def test_every_pod_of_the_namespace_resolves_names_and_reaches_istiod(dev):
    objects, pods = dev
    dns = Pod("kube-dns", "kube-system", {"k8s-app": "kube-dns"}, None, (53,))
    istiod = Pod("istiod", "istio-system", {"app": "istiod"}, "istiod", (15012,))
    for pod in (p for p in pods.values() if p.namespace == NS):
        assert netpol(objects, pod, dns, 53) and netpol(objects, pod, istiod, 15012), pod.name


def test_without_the_plaintext_ports_kfp_steps_could_not_reach_mlflow(dev):
    """The break the issue describes: STRICT mutual TLS refuses a step (no sidecar) at MLflow."""
    objects, pods = dev
    strict = [o for o in objects if not (o["kind"] == "PeerAuthentication" and o["metadata"]["name"] == "mlflow")]
    assert istio(objects, pods["kfp-step"], pods["mlflow"], 5000)
    assert not istio(strict, pods["kfp-step"], pods["mlflow"], 5000)
    assert not istio(objects, pods["kfp-step"], pods["postgres"], 5432)  # still STRICT: steps never call it


def test_each_in_mesh_server_has_an_authorization_policy_on_the_ports_its_service_exposes(dev):
    objects, pods = dev
    for name in ("mlflow", "postgres", "redis", "seaweedfs"):
        service_ports = {p["targetPort"] for o in objects if o["kind"] == "Service"
                         and _selects({"matchLabels": o["spec"]["selector"]}, pods[name].labels) for p in o["spec"]["ports"]}
        policy = next(o for o in objects if o["kind"] == "AuthorizationPolicy"
                      and _selects(o["spec"]["selector"], pods[name].labels))
        ports = {int(p) for rule in policy["spec"]["rules"] for t in rule.get("to", []) for p in t["operation"]["ports"]}
        assert ports == service_ports == set(pods[name].ports), name
    for isvc in ("hfcast-cpu", "hfcast-gpu"):
        find(objects, "AuthorizationPolicy", isvc)


def test_the_release_overlay_has_the_base_policies_without_the_dev_store():
    objects = render("release")
    names = {o["metadata"]["name"] for o in objects if o["kind"] in ("NetworkPolicy", "AuthorizationPolicy")}
    assert {"default-deny", "kfp-runs", "inference-services", "mlflow", "postgres", "redis"} <= names
    assert not [n for n in names if "seaweedfs" in n]
