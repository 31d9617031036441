"""The pipelines compile, the committed YAML is current, and the components keep the house rules."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components._image import GPU_IMAGE, IMAGE
from hfcast import config as _settings
from pipelines import compile as pc
from pipelines.names import COMPILED, PIPELINES

ROOT = Path(__file__).resolve().parents[2]
COMPONENT_FILES = sorted(p for p in (ROOT / "components").glob("*.py") if not p.name.startswith("_"))


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    out = tmp_path_factory.mktemp("compiled")
    pc.compile_all(out)
    return out


@pytest.fixture(scope="module")
def specs(fresh):
    # the first document is the PipelineSpec; a second one (GPU pipelines: tolerations) is the platform spec
    return {p.name: next(yaml.safe_load_all(p.read_text())) for p in sorted(fresh.glob("*.yaml"))}


def test_committed_yaml_is_up_to_date(fresh):
    committed = sorted(p.name for p in COMPILED.glob("*.yaml"))
    assert committed == sorted(p.name for p in fresh.glob("*.yaml")), "run `make compile-pipelines`"
    for name in committed:
        assert (COMPILED / name).read_text() == (fresh / name).read_text(), \
            f"pipelines/compiled/{name} is stale: run `make compile-pipelines`"


def test_one_map_of_pipeline_names(specs):
    assert sorted(p.compiled for p in PIPELINES.values()) == sorted(specs)
    for name, p in PIPELINES.items():
        assert specs[p.compiled]["pipelineInfo"]["name"] == p.display, name
    assert "training" not in PIPELINES  # one meaning per name: training-cpu or training-gpu


def test_every_pipeline_parameter_has_a_default_and_a_description(specs):
    for name, spec in specs.items():
        params = spec["root"]["inputDefinitions"]["parameters"]
        assert params, name
        for pname, p in params.items():
            assert p.get("isOptional") and "defaultValue" in p, f"{name}: {pname} has no default"
            assert len(p.get("description", "")) > 10, f"{name}: {pname} has no description"
        assert len(spec["pipelineInfo"].get("description", "")) > 100, name


def test_no_parameter_carries_a_credential(specs):
    for name, spec in specs.items():
        for pname in spec["root"]["inputDefinitions"]["parameters"]:
            assert not any(w in pname.lower() for w in ("secret", "password", "key", "token")), (name, pname)


def _executors(spec):
    return spec["deploymentSpec"]["executors"]


def test_images_are_the_pinned_hfcast_images_and_nothing_is_pip_installed(specs):
    assert IMAGE.rsplit(":", 1)[1] == GPU_IMAGE.rsplit(":", 1)[1] != "latest"
    for name, spec in specs.items():
        for ex_name, ex in _executors(spec).items():
            c = ex["container"]
            assert c["image"] in (IMAGE, GPU_IMAGE), (name, ex_name)
            assert "pip install" not in " ".join(c["command"] + c.get("args", [])), (name, ex_name)


def test_gpu_only_on_training_steps_of_the_gpu_pipeline(specs):
    gpu = {n: ex["container"] for n, ex in _executors(specs["training_gpu.yaml"]).items()
           if ex["container"].get("resources", {}).get("accelerator")}
    assert sorted(gpu) == ["exec-export-model", "exec-train-model"]  # export: TensorRT runs on the GPU image
    for step in gpu.values():
        res = step["resources"]["accelerator"]
        assert res["resourceType"] == "nvidia.com/gpu" and int(res["resourceCount"]) == 1
        assert step["image"] == GPU_IMAGE
    for name in ("training_cpu.yaml", "batch_inference.yaml", "monitoring.yaml"):
        for ex in _executors(specs[name]).values():
            assert "accelerator" not in ex["container"].get("resources", {}), name
            assert ex["container"]["image"] == IMAGE, name


def test_training_dag_shape(specs):
    spec = specs["training_gpu.yaml"]
    root = spec["root"]["dag"]["tasks"]
    assert {"prepare-data", "materialize-features", "condition-branches-1", "gate-register", "condition-6"} <= set(root)
    cond = root["condition-6"]
    assert "gate-register" in cond["dependentTasks"]
    assert "gate-register-Output" in cond["triggerPolicy"]["condition"]  # a plain output: see gate_register
    inner = spec["components"]["comp-condition-6"]["dag"]["tasks"]
    assert set(inner) == {"export-model", "deploy-model"}
    assert inner["deploy-model"]["dependentTasks"] == ["export-model"]
    # distributed_workers == 0: train in the step; else one PyTorchJob per architecture; the gate
    # judges the best run of whichever branch ran (dsl.OneOf)
    branches = spec["components"]["comp-condition-branches-1"]["dag"]["tasks"]
    local, job = (spec["components"][f"comp-condition-{i}"]["dag"]["tasks"] for i in (3, 4))
    assert "== 0" in branches["condition-3"]["triggerPolicy"]["condition"]
    # the select step collects the metrics of every ParallelFor iteration, in both branches
    assert "for-loop-2" in local["select-forecaster"]["dependentTasks"]
    assert "for-loop-5" in job["select-forecaster-2"]["dependentTasks"]
    loop = spec["components"]["comp-for-loop-5"]["dag"]["tasks"]
    assert loop["train-distributed"]["componentRef"]["name"] == "comp-train-distributed"


def test_batch_backtest_is_an_optional_step_after_every_prediction(specs):
    spec = specs["batch_inference.yaml"]
    assert spec["root"]["inputDefinitions"]["parameters"]["backtest"]["defaultValue"] is False
    root = spec["root"]["dag"]["tasks"]
    cond = root["condition-2"]
    assert cond["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--backtest'] == true"
    assert "for-loop-1" in cond["dependentTasks"]  # fan-in: after every date's CSV
    inner = spec["components"]["comp-condition-2"]["dag"]["tasks"]
    assert set(inner) == {"backtest"}
    # the model version pinned by plan_batch, not the alias (the champion may move during the run)
    assert "plan" in inner["backtest"]["inputs"]["artifacts"]
    assert "model_ref" not in inner["backtest"]["inputs"].get("parameters", {})


@pytest.mark.parametrize("path", COMPONENT_FILES, ids=lambda p: p.name)
def test_component_file_is_thin_one_component_imports_inside(path):
    tree = ast.parse(path.read_text())
    funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert len(funcs) == 1, f"{path.name}: one component per file"
    assert any(getattr(d, "id", None) == "hfcast_component" for d in funcs[0].decorator_list)
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mod = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
            assert mod.split(".")[0] in ("kfp", "typing", "components"), f"{path.name}: top-level import of {mod}"
    assert ast.get_docstring(funcs[0]), path.name
    assert len(path.read_text().splitlines()) < 120, f"{path.name}: keep components thin"


def test_hfcast_never_imports_kfp():
    code = ("import sys, hfcast.cli, hfcast.config, hfcast.registry, hfcast.predict, hfcast.storage; "
            "bad = [m for m in sys.modules if m == 'kfp' or m.startswith('kfp.')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_settings_parameters_override_environment_and_params_merge(tmp_path):
    env = {"HFCAST_HOME": str(tmp_path / "h"), "HFCAST_LAKE": "s3://from-env/lake", "AWS_ACCESS_KEY_ID": "k",
           "AWS_SECRET_ACCESS_KEY": "s"}
    s = _settings.make_settings(lake_url="s3://param/lake", s3_endpoint="http://127.0.0.1:9",
                                params_json='{"train": {"epochs": 1}}', env=env)
    assert s.lake_url == "s3://param/lake" and s.s3_endpoint == "http://127.0.0.1:9"
    assert s.home == (tmp_path / "h").resolve()
    assert s.param("train.epochs") == 1
    assert s.s3_key.reveal() == "k"  # credentials: environment only
    assert _settings.make_settings(env=env).lake_url == "s3://from-env/lake"
    assert _settings.deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}
    with pytest.raises(ValueError, match="not valid JSON"):
        _settings.parse_overrides("{train: 1}")
    with pytest.raises(ValueError, match="JSON object"):
        _settings.parse_overrides("[1]")


def test_settings_travel_as_one_parameter_without_credentials(tmp_path):
    env = {"HFCAST_HOME": str(tmp_path / "h"), "HFCAST_LAKE": "s3://from-env/lake", "AWS_ACCESS_KEY_ID": "k",
           "AWS_SECRET_ACCESS_KEY": "s"}
    s = _settings.make_settings(lake_url="s3://param/lake", params_json='{"train": {"epochs": 1}}', env=env)
    text = s.to_param()
    assert "k" not in json.loads(text).values() and "AWS" not in text and '"s"' not in text
    back = _settings.settings_from_param(text, env={**env, "HFCAST_LAKE": "s3://other/lake"})
    assert back.lake_url == "s3://param/lake" and back.param("train.epochs") == 1
    assert back.s3_key.reveal() == "k"  # from the receiving side's environment
    for path in COMPONENT_FILES:  # one `settings` parameter, none of the six it replaced
        fn = next(n for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef))
        names = [a.arg for a in fn.args.args]
        assert not {"home", "lake_url", "mlflow_uri", "feast_repo", "s3_endpoint", "params_json"} & set(names), path
        assert "settings" in names, path.name


def test_every_step_has_cpu_and_memory_requests_and_limits(specs):
    for name, spec in specs.items():
        for ex_name, ex in _executors(spec).items():
            res = ex["container"].get("resources", {})
            for key in ("resourceCpuRequest", "resourceCpuLimit", "resourceMemoryRequest", "resourceMemoryLimit"):
                assert res.get(key), (name, ex_name, key)
            assert res["cpuRequest"] <= res["cpuLimit"] and res["memoryRequest"] <= res["memoryLimit"], (name, ex_name)
    train = _executors(specs["training_gpu.yaml"])["exec-train-model"]["container"]["resources"]
    deploy = _executors(specs["training_gpu.yaml"])["exec-deploy-model"]["container"]["resources"]
    assert train["memoryRequest"] > deploy["memoryRequest"]  # sized by what the step loads


def test_local_retraining_reports_failure_instead_of_raising(monkeypatch, settings):
    import pipelines.local
    from pipelines import starters

    seen = {}

    def boom(name, **params):
        seen.update(params, name=name)
        raise RuntimeError("Task train-model failed")

    monkeypatch.setattr(pipelines.local, "run_local", boom)
    out = starters.retrain_with_local_runner(settings, reason="drift: vol share 0.8", drifted_dates=["2024-02-01"],
                                             archs=["lstm"])
    assert out["status"] == "failed" and out["promoted"] is False and "train-model" in out["error"]
    assert seen["name"] == "training-cpu" and seen["archs"] == ["lstm"]
    assert seen["reason"] == "drift: vol share 0.8" and seen["drifted_dates"] == "2024-02-01"
    sent = json.loads(seen["settings"])  # Settings.to_param(): what every component decodes
    assert sent["params"] == dict(settings.params) and sent["lake_url"] == settings.lake_url
    assert "s3_key" not in seen and "s3_key" not in seen["settings"]


class _FakeKfp:
    """What KubeflowStarter asks of kfp.Client: start a run, then its state."""

    def __init__(self, fail=False):
        self.calls, self.state, self.fail = [], "RUNNING", fail

    def create_run_from_pipeline_package(self, pipeline_file, arguments=None, run_name=None, experiment_name=None):
        if self.fail:
            raise ConnectionError("ml-pipeline unreachable")
        self.calls.append({"package": pipeline_file, "arguments": arguments, "experiment": experiment_name})
        return type("R", (), {"run_id": f"kfp-{len(self.calls)}"})()

    def get_run(self, run_id):
        return type("Run", (), {"state": self.state})()


def test_kubeflow_starter_starts_the_configured_pipeline_and_polls_it(settings):
    from hfcast.monitoring.retraining import RetrainStarter, read_state, running_state
    from hfcast.storage import Lake
    from pipelines.starters import KubeflowStarter

    lake, kfp = Lake.from_settings(settings), _FakeKfp()
    starter = KubeflowStarter(client=kfp)
    assert isinstance(starter, RetrainStarter)
    out = starter.start(settings, "hfcast", "drift: share 0.8", ["2024-02-01", "2024-02-02"])
    assert out["status"] == "running" and out["run_id"] == "kfp-1" and out["pipeline"] == "training-gpu"
    assert kfp.calls[0]["package"] == str(COMPILED / "training_gpu.yaml")
    assert kfp.calls[0]["arguments"] == {"reason": "drift: share 0.8", "drifted_dates": "2024-02-01,2024-02-02"}
    assert read_state(lake, "hfcast")["run_id"] == "kfp-1"
    assert running_state(lake, "hfcast", 24.0, starter)["status"] == "running"  # Kubeflow says RUNNING
    kfp.state = "SUCCEEDED"
    assert running_state(lake, "hfcast", 24.0, starter) is None and read_state(lake, "hfcast")["status"] == "done"

    cpu = settings.with_(params={**settings.params, "retrain": {**settings.param("retrain", {}),
                                                                 "pipeline": "training-cpu"}})
    KubeflowStarter(client=kfp).start(cpu, "hfcast", "why", [])
    assert kfp.calls[-1]["package"] == str(COMPILED / "training_cpu.yaml")
    failed = KubeflowStarter(client=_FakeKfp(fail=True)).start(settings, "hfcast", "why", [])
    assert failed["status"] == "failed" and "unreachable" in failed["error"]  # reported, not raised


def test_local_starter_runs_the_pipeline_in_a_child_and_records_it(monkeypatch, settings):
    from hfcast.monitoring.retraining import read_state
    from hfcast.storage import Lake
    from pipelines import starters

    calls = []

    def child(s, reason, dates, params):
        calls.append((reason, list(dates), params))
        return {"status": "succeeded", "new_version": 2, "promoted": False, "gate": "rejected: margin"}

    monkeypatch.setattr(starters, "retrain_in_subprocess", child)
    out = starters.LocalPipelineStarter(archs=["lstm"]).start(settings, "hfcast", "drift", ["2024-02-01"])
    assert calls == [("drift", ["2024-02-01"], {"archs": ["lstm"]})]
    assert out["kind"] == "local" and out["status"] == "done" and "v2 not promoted" in out["note"]
    assert read_state(Lake.from_settings(settings), "hfcast")["status"] == "done"
    from hfcast.lifecycle import load_starter

    assert isinstance(load_starter("auto"), starters.LocalPipelineStarter)  # not inside a pod here
    assert load_starter("kubeflow", host="http://kfp").host == "http://kfp"
    with pytest.raises(ValueError, match="unknown retraining starter"):
        load_starter("nope")


def test_starters_and_commands_are_entry_points():
    from importlib.metadata import entry_points

    from pipelines.starters import KubeflowStarter, LocalPipelineStarter

    found = {ep.name: ep.load() for ep in entry_points(group="hfcast.starters")}
    assert found["local"] is LocalPipelineStarter and found["kubeflow"] is KubeflowStarter
    assert {"serve", "pipeline"} <= {ep.name for ep in entry_points(group="hfcast.cli")}


class _FakeClient:
    """Records what ``pipelines.submit`` asks of kfp.Client (no cluster here)."""

    def __init__(self):
        self.calls = []

    def create_experiment(self, name, namespace=None):
        self.calls.append(("experiment", name))
        return type("E", (), {"experiment_id": "exp-1"})()

    def create_recurring_run(self, **kw):
        assert Path(kw["pipeline_package_path"]).is_file()  # compiled before the call
        self.calls.append(("recurring", kw))
        return type("R", (), {"recurring_run_id": "rr-1"})()

    def create_run_from_pipeline_package(self, pipeline_file, **kw):
        first = next(yaml.safe_load_all(Path(pipeline_file).read_text()))  # then, for GPU steps, the platform spec
        assert first["pipelineInfo"]["name"] == "hfcast-training-gpu"
        self.calls.append(("run", kw))
        return type("R", (), {"run_id": "run-1"})()


def test_submit_recurring_run_has_max_concurrency_one(monkeypatch):
    from pipelines import submit

    fake = _FakeClient()
    monkeypatch.setattr(submit, "client", lambda host=None, namespace=None: fake)
    res = submit.submit("monitoring", host="http://kfp", params={"date": ""}, recurring_cron="0 30 21 * * 1-5")
    assert res == {"kind": "recurring_run", "id": "rr-1", "experiment_id": "exp-1"}
    kw = fake.calls[-1][1]
    assert kw["max_concurrency"] == 1 and kw["cron_expression"] == "0 30 21 * * 1-5" and kw["params"] == {"date": ""}
    res = submit.submit("training-gpu", params={"archs": ["lstm"]})
    assert res["kind"] == "run" and fake.calls[-1][1]["arguments"] == {"archs": ["lstm"]}
    with pytest.raises(ValueError, match="unknown pipeline"):
        submit.submit("nope")


def test_cli_pipeline_commands_check_their_input():
    from typer.testing import CliRunner

    from hfcast.cli import build_app

    app = build_app()
    r = CliRunner().invoke(app, ["pipeline", "run", "nope"])
    assert r.exit_code == 2 and "unknown pipeline" in r.output
    r = CliRunner().invoke(app, ["pipeline", "run", "batch", "--param", "bogus=1"])
    assert r.exit_code == 2 and "bogus" in r.output
    r = CliRunner().invoke(app, ["pipeline", "run", "batch", "--param", "nokey"])
    assert r.exit_code == 2 and "KEY=VALUE" in r.output


def test_kfp_namespace_is_the_given_one_else_the_pods_else_kubeflow(tmp_path):
    from pipelines.submit import default_namespace

    pod_file = tmp_path / "namespace"
    assert default_namespace(None, pod_file) == "kubeflow"  # outside a pod: kfp's default
    pod_file.write_text("hfcast\n")
    assert default_namespace(None, pod_file) == "hfcast"  # a step or the schedule Job: its profile namespace
    assert default_namespace("team-a", pod_file) == "team-a"
