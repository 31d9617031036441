"""Models that cannot be swapped silently: checksums recorded at registration, checked at every load.

Tampering is done the way it would happen: other valid weights copied over the registry's
artifact, over the local bundle cache, and bytes changed in the cached ONNX export.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest

from hfcast import integrity, registry
from hfcast.integrity import IntegrityError
from serving_fixtures import tiny_bundle

pytestmark = pytest.mark.integration
F = 8
WEIGHTS = "members/tcn/weights.safetensors"  # the one network of a tiny forecaster bundle


@pytest.fixture
def registered(settings, tmp_path):
    bundle = tiny_bundle(tmp_path / "bundle", "tcn", F, seed=0)
    other = tiny_bundle(tmp_path / "other", "tcn", F, seed=1)  # valid weights of the same shape
    run_id = registry.log_training_run(settings, registry.TrainingRecord(
        bundle, arch="tcn", params={}, epoch_metrics=None, fold_metrics=[],
        aggregate_metrics={"vol_qlike": 0.3}, test_spans=[("2024-01-02", "2024-01-02")], dataset_version=None,
        feature_names=[f"f{j}" for j in range(F)]))
    version = registry.register(settings, run_id)
    return {"bundle": bundle, "other": other, "run_id": run_id, "version": version}


def _artifact_dir(settings, run_id: str) -> Path:
    from mlflow import MlflowClient

    uri = MlflowClient(tracking_uri=registry.tracking_uri(settings)).get_run(run_id).info.artifact_uri
    return Path(urlparse(uri).path if uri.startswith("file:") else uri) / registry.MODEL_ARTIFACT


def test_registration_records_the_checksum_of_each_file(settings, registered):
    mv = registry.resolve(settings, f"hfcast/{registered['version']}")
    want = integrity.bundle_digests(registered["bundle"])
    assert {k: mv.tags[integrity.TAG_PREFIX + k] for k in want} == want
    assert mv.tags[integrity.BUNDLE_TAG] == integrity.combined(want)
    fc = registry.load_forecaster(settings, f"hfcast/{registered['version']}")
    assert fc.meta["bundle_sha256"] == integrity.combined(want)


def _stored_copies(settings, name: str, sha: str) -> list[Path]:
    """Every stored copy of a registered file (the run's bundle and the MLflow model's artifacts)."""
    return [p for p in Path(settings.home).rglob(name) if integrity.file_sha256(p) == sha]  # embedded store


def test_weights_swapped_in_the_registry_are_refused(settings, registered, tmp_path):
    sha = integrity.file_sha256(Path(registered["bundle"]) / WEIGHTS)
    copies = _stored_copies(settings, "weights.safetensors", sha)
    assert _artifact_dir(settings, registered["run_id"]) / WEIGHTS in copies
    for stored in copies:  # whichever copy the version's source names, it is now other valid weights
        shutil.copy(Path(registered["other"]) / WEIGHTS, stored)
    with pytest.raises(IntegrityError, match=r"checksum mismatch .*weights\.safetensors") as exc:
        registry.load_forecaster(settings, f"hfcast/{registered['version']}", dst=tmp_path / "fresh")
    assert "registry recorded" in str(exc.value)


def test_weights_swapped_in_the_cache_are_refused(settings, registered):
    ref = f"hfcast/{registered['version']}"
    cached = registry.download_bundle(settings, ref)
    assert registry.download_bundle(settings, ref) == cached  # untouched: reused
    shutil.copy(Path(registered["other"]) / WEIGHTS, cached / WEIGHTS)
    with pytest.raises(IntegrityError, match=r"checksum mismatch .*\(cached\).*weights\.safetensors"):
        registry.download_bundle(settings, ref)
    (cached / "calibration.json").unlink()
    shutil.copy(Path(registered["bundle"]) / WEIGHTS, cached / WEIGHTS)
    with pytest.raises(IntegrityError, match=r"calibration\.json .* sha256 absent"):
        registry.download_bundle(settings, ref)


def test_onnx_export_is_keyed_by_the_weights_and_a_changed_export_is_refused(tmp_path):
    from hfcast.runners import OnnxRuntimeRunner
    from hfcast.forecaster import Forecaster
    from hfcast.predict import choose_runner

    bundle = tiny_bundle(tmp_path / "b", "tcn", F, seed=0)
    kind, onnx = choose_runner(str(bundle), "onnxruntime")
    folder = Path(onnx).parent
    assert kind == "onnxruntime" and folder.parent.name == "exports"
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx", "sha256.json"]  # no temp-like side file
    assert choose_runner(str(bundle), "onnxruntime")[1] == onnx  # cached

    x = np.random.default_rng(0).standard_normal((3, 30, F)).astype(np.float32)
    Forecaster.load(str(tiny_bundle(tmp_path / "other", "tcn", F, seed=1))).save(str(bundle))  # retrained, saved again
    _, onnx2 = choose_runner(str(bundle), "onnxruntime")
    assert onnx2 != onnx  # new weights: a new export, never the stale one
    fc = Forecaster.load(str(bundle))
    got = OnnxRuntimeRunner(onnx2).run(fc.scaler.transform(x))
    np.testing.assert_allclose(got, fc.predict_raw(fc.scaler.transform(x)), rtol=1e-4, atol=1e-5)

    data = bytearray(Path(onnx2).read_bytes())
    data[-1] ^= 0xFF
    Path(onnx2).write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"checksum mismatch for the ONNX export: .*model\.onnx"):
        choose_runner(str(bundle), "onnxruntime")
    Path(onnx2).unlink()
    with pytest.raises(IntegrityError, match="changed or was deleted"):
        choose_runner(str(bundle), "onnxruntime")


def test_versions_without_recorded_checksums_still_load_with_a_warning(tmp_path, caplog):
    bundle = tiny_bundle(tmp_path / "b", "tcn", F)
    assert integrity.verify_bundle(bundle, {"arch": "tcn"}, "v1") == integrity.combined(integrity.bundle_digests(bundle))
    assert "no recorded checksums" in caplog.text


def test_a_local_bundle_with_changed_bytes_is_refused_and_one_without_a_manifest_warns(tmp_path, caplog):
    from hfcast.forecaster import Forecaster

    bundle = tiny_bundle(tmp_path / "b", "tcn", F)
    data = bytearray((bundle / WEIGHTS).read_bytes())
    data[-3] ^= 0x01  # one bit of the weights
    (bundle / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"checksum mismatch in bundle .*members/tcn/weights\.safetensors"):
        Forecaster.load(str(bundle))
    fresh = tiny_bundle(tmp_path / "c", "tcn", F)
    (fresh / integrity.MANIFEST).unlink()
    Forecaster.load(str(fresh))
    assert "has no checksums.json" in caplog.text


def test_a_demoted_confidence_is_served_by_every_later_load_and_the_bundle_still_verifies(settings, registered):
    """hfcast.monitoring.rules.confidence demotes through a version tag: the next load (server,
    batch prediction) serves that confidence as uninformative; the registered files are untouched."""
    ref = f"hfcast/{registered['version']}"
    windows = np.random.default_rng(0).standard_normal((16, 30, F)).astype(np.float32)
    before = registry.load_forecaster(settings, ref)
    assert before.confidence_info()["ret_conf_informative"] and np.ptp(before.predict(windows)["ret_60m_conf"]) > 0
    merged = registry.demote_confidences(settings, "hfcast", registered["version"],
                                         {"ret": "live top/bottom-decile error ratio 1.3 on 3 dates"})
    assert list(merged) == ["ret"]
    after = registry.load_forecaster(settings, ref)  # checksums verified again at this load
    out = after.predict(windows)
    assert (out["ret_60m_conf"] == 0.5).all() and (out["ret_60m_conf_informative"] == 0).all()
    assert (out["rv_10m_conf_informative"] == 1).all()  # the other flag stands
    np.testing.assert_allclose(out["rv_10m_pred"], before.predict(windows)["rv_10m_pred"])
    assert "1.3" in after.meta["conf_demoted"]["ret"]
    assert after.meta["bundle_sha256"] == before.meta["bundle_sha256"]


def test_the_monitor_demotes_on_its_third_contradicted_date_and_logs_why(settings, registered):
    from hfcast.monitoring.decision import Checks, MonitorConfig, load_history
    from hfcast.monitoring.drift import run_monitor
    from hfcast.monitoring.retraining import RecordOnlyStarter
    from hfcast.storage import Lake

    cfg = MonitorConfig.of(conf_consecutive=3, conf_min_labels=100)
    ref = f"hfcast/{registered['version']}"
    for i, date in enumerate(["2024-01-02", "2024-01-03", "2024-01-04"]):
        checks = Checks(date=date, version=str(registered["version"]), drift_share=0.0,
                        live={"n_labels": 1000, "ret_decile_ratio": 1.4, "rv_decile_ratio": 0.8},
                        measures={"conf": {"ret_flag": 1.0, "rv_flag": 1.0}})
        rec = run_monitor(settings, date, ref, starter=RecordOnlyStarter(), log_mlflow=False, cfg=cfg, checks=checks)
        assert rec["action"] == "none"
        assert bool(registry.load_forecaster(settings, ref).meta.get("conf_demoted")) == (i == 2)
    (last,) = [r for r in load_history(Lake.from_settings(settings), "hfcast") if r["date"] == "2024-01-04"]
    assert list(last["demote"]) == ["ret"] and "1.400" in last["explanation"]
