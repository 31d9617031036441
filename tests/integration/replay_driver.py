"""A replay in its own process, for the kill-point test (``test_replay_kill.py``).

Why a script and not the ``hfcast replay`` command: a tiny training rarely beats the EWMA baseline,
so the retraining here is promoted by force (the decision-date refusal still applies), as in
``test_replay.py``; the next day is then predicted by the new champion, which is what a kill must
not lose. Everything else is the replay of the command line.

Usage: ``python replay_driver.py run ROOT FIRST LAST`` (the settings of ``lake_settings.project_settings(ROOT)``);
``python replay_driver.py state ROOT`` prints what an interruption must not change, as JSON. The state
is read in a process of its own because MLflow keeps one store per tracking URI per process: a test
that replaces the SQLite file under the same path would read the old one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from pathlib import Path


def settings_of(root: Path):
    from hfcast.config import get_settings

    return get_settings(env={"HFCAST_HOME": str(root / ".hfcast"), "HFCAST_LAKE": (root / "lake").as_uri(),
                             "HFCAST_PARAMS": str(root / "params.yaml"),
                             "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}, cwd=root)


def drive(root: Path, first: str, last: str) -> None:
    from hfcast.lifecycle import retrain
    from hfcast.monitoring.retraining import InProcessStarter
    from hfcast.replay import run_replay

    settings = settings_of(root)

    def forced(d, version):
        return InProcessStarter(lambda reason, drifted: retrain(
            settings, ["tcn"], reason=reason, drifted_dates=drifted, last_date=d, decision_date=d,
            dataset_version=version, force_reason="test: follow the new champion"))

    run_replay(settings, first, last, archs=["tcn"], starter_for=forced)


def runs(settings) -> dict[str, list]:
    """Per experiment: (run name, status) of every run, apart from those closed as interrupted."""
    from mlflow import MlflowClient

    from hfcast import registry

    client = MlflowClient(tracking_uri=registry.tracking_uri(settings))
    kept, interrupted, running = [], [], []
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id], max_results=10000):
            row = [exp.name, run.info.run_name, run.info.status]
            (interrupted if "hfcast.interrupted" in run.data.tags else kept).append(row)
            if run.info.status == "RUNNING":
                running.append(row)
    return {"kept": sorted(kept), "interrupted": sorted(interrupted), "running": running}


def state(root: Path) -> dict:
    """What an interruption must not change (ids, clocks and seconds left out); files by sha256."""
    from hfcast import registry
    from hfcast.monitoring.decision import load_history
    from hfcast.storage import Lake, local_path

    settings = settings_of(root)
    lake = Lake.from_settings(settings)
    top = local_path(lake.url)
    keep = ("arch", "dataset_version", "gate.decision", "gate.reasons", "hfcast.retrain_key", "hfcast.train_first",
            "hfcast.train_last", "hfcast.test_last", "hfcast.bundle_sha256")
    versions = [{"version": v["version"], "aliases": v["aliases"], **{k: v["tags"].get(k) for k in keep}}
                for v in registry.list_versions(settings)]
    trigger_keys = ("kind", "status", "new_version", "promoted", "champion_before", "champion_after", "gate", "error")
    decisions = [{k: r.get(k) for k in ("date", "version", "action", "explanation", "drifted_dates", "drift_streak")}
                 | {"trigger": {k: (r.get("trigger") or {}).get(k) for k in trigger_keys},
                    "logged": bool(r.get("mlflow_run_id"))} for r in load_history(lake, "hfcast")]
    files = {}
    for p in sorted((top / "predictions").rglob("*.csv")) + sorted((top / "monitoring").rglob("reference.parquet")):
        files[str(p.relative_to(top))] = hashlib.sha256(p.read_bytes()).hexdigest()
    for p in sorted((top / "monitoring").rglob("reference.json")):
        files[str(p.relative_to(top))] = {k: v for k, v in json.loads(p.read_text()).items() if k != "built_at"}
    manifests = sorted(str(p.relative_to(top)) for p in (top / "predictions").rglob("*.manifest.json"))
    retrain = json.loads((top / "monitoring" / "hfcast" / "retrain.json").read_text())
    journals = {p.stem: json.loads(p.read_text()) for p in sorted((top / "replay" / "hfcast" / "journal").glob("*.json"))}
    return {"versions": versions, "decisions": decisions, "files": files, "manifests": manifests,
            "runs": runs(settings), "lease": (top / "monitoring" / "hfcast" / "retrain.lease").exists(),
            "retrain_state": {k: retrain.get(k) for k in ("status", "kind", "reason", "drifted_dates",
                                                          "champion_before")},
            "unfinished_steps": sorted(f"{d}:{s}" for d, j in journals.items()
                                       for s, e in j["steps"].items() if not e.get("finished_at")),
            "attempts": {d: [a["step"] for a in j["attempts"]] for d, j in journals.items() if j["attempts"]}}


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if sys.argv[1] == "run":
        drive(Path(sys.argv[2]), sys.argv[3], sys.argv[4])
    else:
        print(json.dumps(state(Path(sys.argv[2]))))
