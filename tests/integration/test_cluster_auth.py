"""The cluster's authentication, started for real: MLflow's basic-auth app, Redis with the ACL file of
the Secret template, SeaweedFS with the dev overlay's identities. Each refuses an unauthenticated (or
under-privileged) call and serves an authenticated one; the keep-out list of the least-privilege
identities is what the templates say (manifests/secrets/)."""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path

import httpx
import pytest
import redis
import yaml
from botocore.exceptions import ClientError

from hfcast.testing.servers import MlflowServer, S3Identity, SeaweedFS
from _servers import RedisServer, redis_acl

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SECRETS = ROOT / "manifests" / "secrets"


# --- MLflow --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mlflow_auth(tmp_path_factory):
    admin = ("admin", secrets.token_hex(12))
    with MlflowServer(root=tmp_path_factory.mktemp("mlflow-auth"), admin=admin) as server:
        users = {"pipeline": ("hfcast-pipeline", secrets.token_hex(12)), "serving": ("hfcast-serving", secrets.token_hex(12))}
        for user, password in users.values():
            server.create_user(user, password)
        yield server, users


def test_mlflow_refuses_an_unauthenticated_call_and_serves_an_authenticated_one(mlflow_auth):
    server, users = mlflow_auth
    search = f"{server.uri}/api/2.0/mlflow/experiments/search"
    assert httpx.get(search, params={"max_results": 5}).status_code == 401
    assert httpx.get(search, params={"max_results": 5}, auth=(users["serving"][0], "wrong-password")).status_code == 401
    assert httpx.get(search, params={"max_results": 5}, auth=users["serving"]).status_code == 200
    assert httpx.get(f"{server.uri}/health").status_code == 200  # probes need no credentials


def test_mlflow_clients_authenticate_from_the_secret_variables(mlflow_auth, monkeypatch):
    """MLFLOW_TRACKING_USERNAME / _PASSWORD, as the PodDefault and the InferenceServices set them: the
    pipeline user writes, the serving user reads and is refused a write."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    server, users = mlflow_auth
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", users["pipeline"][0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", users["pipeline"][1])
    experiment = MlflowClient(server.uri).create_experiment(f"auth-{secrets.token_hex(4)}")
    run = MlflowClient(server.uri).create_run(experiment)
    MlflowClient(server.uri).log_metric(run.info.run_id, "m", 1.0)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", users["serving"][0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", users["serving"][1])
    assert MlflowClient(server.uri).get_run(run.info.run_id).data.metrics == {"m": 1.0}
    with pytest.raises(MlflowException, match="Permission denied|PERMISSION_DENIED"):
        MlflowClient(server.uri).log_metric(run.info.run_id, "m", 2.0)


# --- Redis ---------------------------------------------------------------------------------------------

def test_the_acl_line_is_the_templates():
    template = yaml.safe_load((SECRETS / "hfcast-redis.template.yaml").read_text())["stringData"]["users.acl"]
    assert re.sub(r"#[0-9a-f]{64}", "#<sha256 hex of REDIS_PASSWORD>", redis_acl("pw")) == template


def test_redis_refuses_a_client_without_the_password_and_the_dangerous_commands():
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    password = secrets.token_hex(16)
    once = Retry(NoBackoff(), 0)  # redis-py retries an AuthenticationError (a ConnectionError) with backoff
    with RedisServer(password=password) as server:
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=server.port, retry=once).ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=server.port, password="wrong", retry=once).ping()
        client = redis.Redis(host="127.0.0.1", port=server.port, password=password)
        assert client.ping() and client.set("k", "v") and client.get("k") == b"v"
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.flushall()


# --- S3 identities (SeaweedFS, the dev overlay's s3.json) ----------------------------------------------

def _identities() -> tuple[S3Identity, ...]:
    """The dev template's identities with fresh keys in place of its placeholders."""
    template = yaml.safe_load((SECRETS / "hfcast-seaweedfs.template.yaml").read_text())["stringData"]["s3.json"]
    doc = json.loads(re.sub(r'"<[^">]*>"', '"x"', template))
    return tuple(S3Identity(i["name"], f"{i['name']}-{secrets.token_hex(4)}", secrets.token_hex(12), tuple(i["actions"]))
                 for i in doc["identities"])


def test_each_s3_identity_can_do_what_it_needs_and_nothing_more(tmp_path):
    ids = {i.name: i for i in _identities()}
    with SeaweedFS(identities=tuple(ids.values())) as s3:
        def client(name):
            import boto3

            i = ids[name]
            return boto3.client("s3", endpoint_url=s3.endpoint, aws_access_key_id=i.access_key,
                                aws_secret_access_key=i.secret_key, region_name="us-east-1")

        for bucket in ("hfcast-lake", "hfcast-mlflow", "hfcast-models"):
            client("admin").create_bucket(Bucket=bucket)  # the buckets Job's one call
        client("pipeline").put_object(Bucket="hfcast-lake", Key="features/x", Body=b"1")
        client("pipeline").put_object(Bucket="hfcast-models", Key="hfcast/champion/triton/x", Body=b"1")
        client("mlflow").put_object(Bucket="hfcast-mlflow", Key="artifacts/x", Body=b"1")
        assert client("serving").get_object(Bucket="hfcast-lake", Key="features/x")["Body"].read() == b"1"
        assert client("serving").list_objects_v2(Bucket="hfcast-models")["KeyCount"] == 1
        refused = [("serving", lambda c: c.put_object(Bucket="hfcast-lake", Key="y", Body=b"2")),
                   ("serving", lambda c: c.get_object(Bucket="hfcast-mlflow", Key="artifacts/x")),
                   ("pipeline", lambda c: c.put_object(Bucket="hfcast-mlflow", Key="y", Body=b"2")),
                   ("pipeline", lambda c: c.create_bucket(Bucket="another")),
                   ("mlflow", lambda c: c.get_object(Bucket="hfcast-lake", Key="features/x"))]
        for name, call in refused:
            with pytest.raises(ClientError, match="AccessDenied"):
                call(client(name))
