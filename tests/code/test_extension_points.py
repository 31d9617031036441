"""The three extension points take a plug-in from one place: a monitor rule, an ingest format and an
architecture are each defined in THIS module alone, and the monitor, ingest, training and the
command line pick them up from their registries (hfcast.monitoring.rules, hfcast.data.formats,
hfcast.models); each is removed again afterwards."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from hfcast import cliopts, storage
from hfcast.config import get_settings
from hfcast.data import formats
from hfcast.data.ingest import ingest, prepare_table
from hfcast.features.windows import build_windows, synthetic_feature_frame
from hfcast.lifecycle import forecaster_section
from hfcast.models import architectures, build_model
from hfcast.models.base import ForecastNet, NetConfig, unregister
from hfcast.monitoring import rules as monitor_rules
from hfcast.monitoring.checks import Checks, DayData
from hfcast.monitoring.decision import RETRAIN, MonitorConfig, load_history, record_metrics
from hfcast.monitoring.drift import run_monitor
from hfcast.monitoring.reference import reference_urls
from hfcast.monitoring.retraining import RecordOnlyStarter
from hfcast.monitoring.rules import MonitorRule, Verdict
from hfcast.storage import Lake
from hfcast.train import TrainConfig, train_forecaster


# --- a monitor rule ----------------------------------------------------------------------------------

@pytest.fixture
def flag_rule():
    """A rule with its own measurement: the share of the date's rows whose ``a`` is above 2."""

    @dataclass(frozen=True)
    class HighA(MonitorRule, name="high_a"):
        k_field: ClassVar[str] = "high_a_consecutive"
        high_a_share: float = 0.2
        high_a_consecutive: int = 1

        def measure(self, day: DayData) -> dict[str, Any]:
            return {"share": float((day.features["a"] > 2.0).mean())}

        def check(self, checks: Checks) -> Verdict:
            share = (checks.measures.get(self.name) or {}).get("share")
            if share is None:
                return Verdict(None)
            return Verdict(share >= self.high_a_share, (f"share of a > 2 is {share:.2f}",))

        def message(self, checks: Checks, verdict: Verdict, streak: int) -> str | None:
            if streak >= self.consecutive:
                return f"high a on {streak} date(s): {verdict.reasons[0]}"
            return None if verdict.alarm is None else f"high a {'alarm' if streak else 'ok'}"

        def metrics(self, record):
            return {"high_a_share": ((record.get("checks") or {}).get("measures") or {}).get("high_a", {}).get("share")}

    yield HighA
    monitor_rules.unregister("high_a")


def _monitored_lake(tmp_path, date: str):
    """A lake with one features date and a model version's reference: what the monitor reads."""
    settings = get_settings(env={"HFCAST_HOME": str(tmp_path / "home"), "HFCAST_LAKE": (tmp_path / "lake").as_uri()},
                            cwd=tmp_path)
    lake = Lake.from_settings(settings)
    rng = np.random.default_rng(0)
    ts = pd.date_range(f"{date} 15:00", f"{date} 20:59", freq="min", tz="UTC").as_unit("us")
    frame = lambda a_mean: pd.DataFrame({"symbol": "S0", "ts": ts, "a": rng.normal(a_mean, 1.0, len(ts)),  # noqa: E731
                                         "b": rng.normal(0, 1, len(ts)), "ret_60m": 0.0, "rv_10m": 0.001})
    lake.write("features", date, frame(2.0))  # half the rows have a > 2
    ref_url, doc_url = reference_urls(lake, "hfcast", "1")
    storage.write_parquet(frame(0.0), ref_url)
    storage.write_text(doc_url, json.dumps({"model": "hfcast", "version": "1", "train_dates": ["2024-01-02"],
                                            "features": ["a", "b"], "test_scores": {}}))
    return settings, lake


def test_a_rule_defined_here_is_measured_judged_decided_and_logged(tmp_path, flag_rule):
    cfg = MonitorConfig.from_params({"high_a_share": 0.3, "high_a_consecutive": 1, "consecutive": 5})
    assert cfg.rule("high_a").high_a_share == 0.3 and [r.name for r in cfg.rules] == ["drift", "perf", "conf", "high_a"]
    settings, lake = _monitored_lake(tmp_path, "2024-01-03")
    rec = run_monitor(settings, "2024-01-03", "hfcast/1", starter=RecordOnlyStarter(), log_mlflow=False, cfg=cfg)
    assert rec["action"] == RETRAIN and rec["high_a_alarm"] and rec["high_a_streak"] == 1
    assert re.search(r"retrain: high a on 1 date\(s\): share of a > 2 is 0\.[45]\d", rec["explanation"])
    assert "feature drift" not in rec["explanation"].split(";")[0]  # the drift rule: 1 of its K=5 dates
    assert rec["drifted_dates"] == ["2024-01-03"]
    summary = json.loads(storage.read_text(storage.join(lake.monitoring("hfcast", "1", "2024-01-03"), "summary.json")))
    assert summary["alarms"]["high_a"]["alarm"] is True and 0.4 < summary["measures"]["high_a"]["share"] < 0.6
    assert record_metrics(load_history(lake, "hfcast")[0], cfg.rules)["high_a_share"] == pytest.approx(
        summary["measures"]["high_a"]["share"])


def test_without_the_rule_its_keys_are_unknown(flag_rule):
    assert "high_a" in [r.name for r in monitor_rules.all_rules()]
    monitor_rules.unregister("high_a")
    assert "high_a" not in [r.name for r in monitor_rules.all_rules()]
    with pytest.raises(ValueError, match="unknown monitor parameter.*high_a_share"):
        MonitorConfig.from_params({"high_a_share": 0.3})


# --- an ingest format --------------------------------------------------------------------------------

@pytest.fixture
def jsonl_format():
    """Bars as JSON lines with the vendor's short names (t, b, a, bs, as)."""
    required = ("ts", "bid", "ask", "bid_size", "ask_size")

    def load(req: formats.Request) -> formats.Loaded:
        bars = []
        for path in req.paths:
            df = pd.read_json(path, lines=True, dtype={"t": str})
            df = df.rename(columns={"t": "ts", "b": "bid", "a": "ask", "bs": "bid_size", "as": "ask_size"})
            bars.append(prepare_table(df, path, required, "test_jsonl", {}, req.symbol, req.tz, req.stamp))
        return formats.Loaded(bars=bars)

    fmt = formats.register(formats.IngestFormat("test_jsonl", "bars as JSON lines (t, b, a, bs, as)", required, load))
    yield fmt
    formats.unregister("test_jsonl")


def _jsonl(path, date="2024-01-03"):
    minutes = pd.date_range(f"{date} 09:30", periods=30, freq="min")  # naive: New York time
    mid = 100.0 + np.cumsum(np.full(30, 0.01))
    rows = [{"t": m.isoformat(), "b": p - 0.01, "a": p + 0.01, "bs": 300, "as": 200} for m, p in zip(minutes, mid)]
    rows[5]["b"] = rows[5]["a"] + 1.0  # a crossed quote: quarantined with a reason, never dropped
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_format_defined_here_is_ingested_and_offered_by_the_command_line(tmp_path, jsonl_format):
    lake = Lake(tmp_path.joinpath("lake").as_uri())
    out = ingest([str(_jsonl(tmp_path / "bars.jsonl"))], "test_jsonl", lake, symbol="ABC", progress=False)
    assert out["dates"] == ["2024-01-03"] and out["bars"] == 30 and out["clean_rows"] == 29
    assert out["reasons"]["crossed_quote"] == 1
    assert lake.read("validated", "2024-01-03")["ts"].min() == pd.Timestamp("2024-01-03 14:30", tz="UTC")
    assert "test_jsonl" in formats.help_text()
    lake2 = tmp_path / "lake2"
    res = CliRunner().invoke(__import__("hfcast.cli", fromlist=["app"]).app,
                             ["ingest", str(_jsonl(tmp_path / "b2.jsonl")), "--format", "test_jsonl", "--symbol", "ABC",
                              "--lake", lake2.as_uri(), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert Lake(lake2.as_uri()).dates("validated") == ["2024-01-03"]


def test_an_unregistered_format_is_refused_with_the_list(tmp_path, jsonl_format):
    formats.unregister("test_jsonl")
    with pytest.raises(formats.IngestError, match="unknown format 'test_jsonl'; choose one of bbo"):
        ingest(["x.jsonl"], "test_jsonl", Lake(tmp_path.as_uri()), progress=False)


# --- an architecture -----------------------------------------------------------------------------------

@pytest.fixture
def mlp_arch():
    @dataclass
    class MinuteMLPConfig(NetConfig):
        hidden: int = 8  # width of the per-minute layer

    class MinuteMLP(ForecastNet, arch="test_mlp", config=MinuteMLPConfig):
        def __init__(self, n_features: int, config: MinuteMLPConfig):
            super().__init__(n_features, config)
            self.inp = nn.Sequential(nn.Linear(n_features, config.hidden), nn.Tanh())
            self.add_heads(config.hidden)

        def encode(self, x: torch.Tensor) -> torch.Tensor:
            return self.inp(x)  # [B, T, F] -> [B, T, H]

    yield MinuteMLP
    unregister("test_mlp")


def test_an_architecture_defined_here_trains_and_is_a_choice(tmp_path, mlp_arch):
    assert "test_mlp" in architectures()
    assert cliopts.architecture("test_mlp") == "test_mlp"  # the --models / --arch parser of the command line
    settings = get_settings(env={"HFCAST_HOME": str(tmp_path)}, cwd=tmp_path).with_(
        params={"forecaster": {"archs": ["test_mlp"]}})
    assert forecaster_section(settings)["archs"] == ["test_mlp"]
    net = build_model("test_mlp", 5, {"hidden": 4})
    assert net(torch.randn(3, 30, 5)).shape == (3, 4)
    wa = build_windows(synthetic_feature_frame(n_symbols=2, n_days=3, n_features=5, seed=3), [f"f{j}" for j in range(5)])
    train, val = wa.subset_dates(["2024-01-02", "2024-01-03"]), wa.subset_dates(["2024-01-04"])
    fc, hist = train_forecaster("test_mlp", train, val, {"hidden": 4, "head_hidden": 4},
                                TrainConfig(epochs=1, batch_size=128, max_train_windows=256, num_threads=1),
                                progress=False)
    assert hist["epochs"] and math.isfinite(hist["best_val_loss"])
    fc.save(tmp_path / "bundle")
    assert json.loads((tmp_path / "bundle" / "model.json").read_text())["arch"] == "test_mlp"
    unregister("test_mlp")
    with pytest.raises(cliopts.OptionValueError, match="unknown architecture 'test_mlp'"):
        cliopts.architecture("test_mlp")
