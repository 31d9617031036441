"""The pipelines compile, the committed YAML is current, and the components keep the house rules."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components import _settings
from components._image import GPU_IMAGE, IMAGE
from pipelines import compile as pc

ROOT = Path(__file__).resolve().parents[2]
COMPONENT_FILES = sorted(p for p in (ROOT / "components").glob("*.py") if not p.name.startswith("_"))


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    out = tmp_path_factory.mktemp("compiled")
    pc.compile_all(out)
    return out


@pytest.fixture(scope="module")
def specs(fresh):
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted(fresh.glob("*.yaml"))}


def test_committed_yaml_is_up_to_date(fresh):
    committed = sorted(p.name for p in pc.COMPILED.glob("*.yaml"))
    assert committed == sorted(p.name for p in fresh.glob("*.yaml")), "run `make compile-pipelines`"
    for name in committed:
        assert (pc.COMPILED / name).read_text() == (fresh / name).read_text(), \
            f"pipelines/compiled/{name} is stale: run `make compile-pipelines`"


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
    gpu = {n: ex["container"] for n, ex in _executors(specs["training.yaml"]).items()
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
    spec = specs["training.yaml"]
    root = spec["root"]["dag"]["tasks"]
    assert {"prepare-data", "materialize-features", "for-loop-1", "compare-models", "gate-register",
            "condition-2"} <= set(root)
    cond = root["condition-2"]
    assert "gate-register" in cond["dependentTasks"]
    assert "gate-register-Output" in cond["triggerPolicy"]["condition"]  # a plain output: see gate_register
    inner = spec["components"]["comp-condition-2"]["dag"]["tasks"]
    assert set(inner) == {"export-model", "deploy-model"}
    assert inner["deploy-model"]["dependentTasks"] == ["export-model"]
    # compare collects the metrics of every ParallelFor iteration
    assert "for-loop-1" in root["compare-models"]["dependentTasks"]


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


def test_training_run_local_reports_failure_instead_of_raising(monkeypatch, settings):
    import pipelines.local
    from pipelines import training

    seen = {}

    def boom(name, **params):
        seen.update(params, name=name)
        raise RuntimeError("Task train-model failed")

    monkeypatch.setattr(pipelines.local, "run_local", boom)
    out = training.run_local(settings, reason="drift: vol share 0.8", drifted_dates=["2024-02-01"], archs=["lstm"])
    assert out["status"] == "failed" and out["promoted"] is False and "train-model" in out["error"]
    assert seen["name"] == "training" and seen["archs"] == ["lstm"]
    assert seen["reason"] == "drift: vol share 0.8" and seen["drifted_dates"] == "2024-02-01"
    assert json.loads(seen["params_json"]) == dict(settings.params)
    assert seen["lake_url"] == settings.lake_url and "s3_key" not in seen


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
        assert yaml.safe_load(Path(pipeline_file).read_text())["pipelineInfo"]["name"] == "hfcast-training"
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
    res = submit.submit("training", params={"archs": ["lstm"]})
    assert res["kind"] == "run" and fake.calls[-1][1]["arguments"] == {"archs": ["lstm"]}
    with pytest.raises(ValueError, match="unknown pipeline"):
        submit.submit("nope")


def test_cli_pipeline_commands_check_their_input():
    from typer.testing import CliRunner

    from hfcast.cli import app

    r = CliRunner().invoke(app, ["pipeline", "run", "nope"])
    assert r.exit_code == 1 and "unknown pipeline" in r.output
    r = CliRunner().invoke(app, ["pipeline", "run", "batch", "--param", "bogus=1"])
    assert r.exit_code == 1 and "bogus" in r.output
    r = CliRunner().invoke(app, ["pipeline", "run", "batch", "--param", "nokey"])
    assert r.exit_code == 1 and "KEY=VALUE" in r.output
