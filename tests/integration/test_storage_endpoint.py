"""One storage client whatever names the lake: with ``HFCAST_S3_ENDPOINT`` pointing nowhere
(http://127.0.0.1:1), naming an ``s3://`` lake by ``--lake``, by ``HFCAST_LAKE`` or by the settings
parameter of a pipeline step ends in the same refusal, and the process contacts no other host (every
lookup and connection is recorded by :mod:`hostspy`, installed in the process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
ENDPOINT = "http://127.0.0.1:1"
LAKE = "s3://hfcast-bucket/lake"
PARAMS_STEP = f"""
import sys
from hfcast.config import settings_from_param
from hfcast.data.ingest import ingest
from hfcast.errors import explain
from hfcast.storage import Lake
try:
    ingest([sys.argv[1]], "bbo", Lake.from_settings(settings_from_param('{{"lake_url": "{LAKE}"}}')), progress=False)
except Exception as exc:
    print("\\n".join(explain(exc).lines()), file=sys.stderr)
    sys.exit(explain(exc).exit_code)
"""


def _bars(tmp: Path) -> Path:
    rows = ["symbol,ts,bid,ask,bid_size,ask_size"]
    rows += [f"AAA,2024-01-02T14:{30 + m:02d}:00Z,{100 + m * 0.01:.2f},{100.02 + m * 0.01:.2f},5,7" for m in range(20)]
    path = tmp / "good.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def _run(tmp: Path, way: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    spy = tmp / f"hosts-{way}.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "HFCAST_"))}
    env.update({"HFCAST_HOME": str(tmp / ".hfcast"), "HFCAST_S3_ENDPOINT": ENDPOINT,
                "AWS_ACCESS_KEY_ID": "hfcast-test-key", "AWS_SECRET_ACCESS_KEY": "hfcast-test-secret",
                "AWS_EC2_METADATA_DISABLED": "true",
                "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT / "src"), str(ROOT), *sys.path])})
    csv = str(_bars(tmp))
    boot = f"import hostspy; hostspy.install({str(spy)!r}); "
    if way == "option":
        cmd = [sys.executable, "-c", boot + "from hfcast.cli import main; main()", "ingest", csv, "-f", "bbo",
               "--lake", LAKE, "--no-progress"]
    elif way == "env":
        env["HFCAST_LAKE"] = LAKE
        cmd = [sys.executable, "-c", boot + "from hfcast.cli import main; main()", "ingest", csv, "-f", "bbo",
               "--no-progress"]
    else:
        cmd = [sys.executable, "-c", boot + PARAMS_STEP, csv]
    res = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    hosts = [json.loads(line) for line in spy.read_text().splitlines()] if spy.exists() else []
    return res, hosts


def test_a_wrong_endpoint_is_refused_the_same_way_and_no_other_host_is_contacted(tmp_path):
    refusals = {}
    for way in ("option", "env", "params"):
        res, hosts = _run(tmp_path, way)
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert res.returncode == 2, (way, res.stderr[-2000:])
        assert lines[-2].startswith("error: ") and lines[-1].startswith("  fix: ") and "Traceback" not in res.stderr
        refusals[way] = lines[-2:]
        assert {(h["host"], h["port"]) for h in hosts if h["kind"] == "connect"} == {("127.0.0.1", 1)}, (way, hosts)
        assert {h["host"] for h in hosts} <= {"127.0.0.1"}, (way, hosts)  # not even a DNS lookup of AWS
    assert refusals["option"] == refusals["env"] == refusals["params"], refusals
    assert f"cannot reach the S3 endpoint {ENDPOINT}" in refusals["option"][0]
    assert "hfcast-test-secret" not in json.dumps(refusals)


def test_an_s3_url_without_the_configured_endpoint_is_refused(monkeypatch):
    """Options built any other way than Settings.storage_options_for never fall back to AWS."""
    from hfcast import storage
    from hfcast.errors import explain

    monkeypatch.setenv("HFCAST_S3_ENDPOINT", ENDPOINT)
    with pytest.raises(storage.StorageError) as info:
        storage.write_bytes(f"{LAKE}/x.bin", b"x", {"key": "k", "secret": "s"})
    assert "refusing to open" in explain(info.value).problem and ENDPOINT in explain(info.value).problem


def test_the_three_ways_build_the_same_client_options(tmp_path):
    from hfcast.config import get_settings, settings_from_param
    from hfcast.storage import Lake

    env = {"HFCAST_HOME": str(tmp_path), "HFCAST_S3_ENDPOINT": ENDPOINT, "AWS_ACCESS_KEY_ID": "k",
           "AWS_SECRET_ACCESS_KEY": "s"}
    by_option = Lake.from_settings(get_settings(env=env, cwd=tmp_path), LAKE)
    by_env = Lake.from_settings(get_settings(env={**env, "HFCAST_LAKE": LAKE}, cwd=tmp_path))
    by_params = Lake.from_settings(settings_from_param(json.dumps({"lake_url": LAKE}), env=env))
    assert by_option == by_env == by_params
    assert by_option.storage_options == {"key": "k", "secret": "s", "client_kwargs": {"endpoint_url": ENDPOINT}}


def test_without_an_endpoint_the_client_says_once_which_it_uses(monkeypatch, caplog):
    import logging

    from hfcast import storage

    for name in ("HFCAST_S3_ENDPOINT", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(storage, "_said_endpoint", set())
    with caplog.at_level(logging.INFO, logger="hfcast.storage"):
        for key in ("a", "b", "c"):
            storage.filesystem(f"s3://hfcast-said/{key}", {"key": "k", "secret": "s"})
    said = [r.getMessage() for r in caplog.records if "s3://hfcast-said" in r.getMessage()]
    assert len(said) == 1 and "no HFCAST_S3_ENDPOINT configured; using AWS S3" in said[0], said
