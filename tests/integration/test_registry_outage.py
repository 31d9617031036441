""""No champion" only when the registry says so: against a real MLflow server, an empty registry
answers None, and the same server stopped (connection refused) or a tracking endpoint answering 500
raises, so an outage never changes what gets trained or predicted.

The 500 comes from a stand-in HTTP server (a proxy in front of MLflow failing): a real MLflow server
does not answer 500 on demand.
"""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from hfcast import registry
from hfcast.config import get_settings
from hfcast.errors import explain
from hfcast.lifecycle import DEFAULT_ARCHS, _registered_retraining, retrain_archs
from hfcast.monitoring.retraining import champion_version as retraining_champion
from hfcast.replay import champion_version as replay_champion
from hfcast.testing.servers import MlflowServer, free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
ASKS = {  # every place that used to read any failure as "no champion / nothing registered"
    "registry.champion": lambda s: registry.champion(s),
    # no champion: the configured architectures; an outage must raise, not fall back silently
    "lifecycle.retrain_archs": lambda s: None if retrain_archs(s) == list(DEFAULT_ARCHS) else "?",
    "lifecycle._registered_retraining": lambda s: _registered_retraining(s, "2024-01-19|tcn|x"),
    "retraining.champion_version": retraining_champion,
    "replay.champion_version": replay_champion,
}


def _settings(tmp: Path, uri: str):
    return get_settings(env={"HFCAST_HOME": str(tmp / ".hfcast"), "MLFLOW_TRACKING_URI": uri}, cwd=tmp)


@pytest.fixture
def fail_fast(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


class _Answers500(http.server.BaseHTTPRequestHandler):
    def _fail(self):
        self.send_response(500)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(b"upstream database unavailable")

    do_GET = do_POST = _fail

    def log_message(self, *args):
        pass


def test_empty_registry_is_no_champion_and_an_outage_is_an_error(tmp_path, fail_fast):
    with MlflowServer(tmp_path / "server") as server:
        settings = _settings(tmp_path, server.uri)
        for name, ask in ASKS.items():
            assert ask(settings) is None, name  # the registry answered: nothing there
    # the same server, stopped: connection refused
    for name, ask in ASKS.items():
        with pytest.raises(Exception) as info:
            ask(settings)
        err = explain(info.value)
        assert err is not None and "did not answer" in err.problem and "MLFLOW_TRACKING_URI" in err.fix, (name, info.value)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answers500)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        broken = _settings(tmp_path, f"http://127.0.0.1:{httpd.server_address[1]}")
        for name, ask in ASKS.items():
            with pytest.raises(Exception) as info:
                ask(broken)
            assert "500" in str(info.value), (name, info.value)
    finally:
        httpd.shutdown()


def test_serve_with_the_registry_down_says_so_not_no_champion(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    env = {**os.environ, "HFCAST_HOME": str(tmp_path / ".hfcast"), "MLFLOW_TRACKING_URI": dead,
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-m", "hfcast.cli", "serve", "--port", str(free_port()), "--grpc-port",
                          str(free_port()), "--no-feature-store"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2, res.stderr
    assert lines[-2].startswith("error: the MLflow tracking server did not answer") and dead in lines[-2], res.stderr
    assert lines[-1].startswith("  fix: ") and "no alias" not in res.stderr and "Traceback" not in res.stderr
