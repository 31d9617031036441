"""Walk-forward folds: chronological, disjoint, embargoed, expanding vs sliding, named errors."""

import pandas as pd
import pytest

from hfcast.data.schema import LABEL_HORIZONS, session_minutes_utc, trading_days
from hfcast.walkforward import Fold, WalkForwardConfig, folds_from_settings, generate_folds

DATES = trading_days("2024-01-02", 40)


def _label_end(dates):
    """Latest minute any label of these dates can read (minute start + horizon)."""
    h = pd.Timedelta(minutes=max(LABEL_HORIZONS.values()))
    return max(session_minutes_utc(d)[-1] + pd.Timedelta(minutes=1) + h for d in dates)


def _first_minute(dates):
    return min(session_minutes_utc(d)[0] for d in dates)


@pytest.mark.parametrize("mode", ["expanding", "sliding"])
def test_folds_chronological_disjoint_embargoed(mode):
    cfg = WalkForwardConfig(mode=mode, train_days=8, val_days=3, test_days=4, embargo_days=1)
    folds = list(generate_folds(DATES, cfg))
    assert len(folds) == len(range(8 + 1 + 3 + 1, 40, 4))  # last test span may be partial
    seen_test = set()
    for f in folds:
        assert f.train == sorted(f.train) and f.val == sorted(f.val) and f.test == sorted(f.test)
        assert f.train[-1] < f.val[0] and f.val[-1] < f.test[0]
        assert not set(f.train) & set(f.val) and not set(f.val) & set(f.test)
        # exactly embargo_days dates skipped between spans
        assert DATES.index(f.val[0]) - DATES.index(f.train[-1]) == 2
        assert DATES.index(f.test[0]) - DATES.index(f.val[-1]) == 2
        # no train/val label interval reaches the next span's first minute
        assert _label_end(f.train) < _first_minute(f.val)
        assert _label_end(f.val) < _first_minute(f.test)
        assert not seen_test & set(f.test)
        seen_test |= set(f.test)
        assert len(f.val) == 3
    assert [f.test[0] for f in folds] == sorted(f.test[0] for f in folds)


def test_expanding_grows_sliding_keeps_length():
    exp = list(generate_folds(DATES, WalkForwardConfig(mode="expanding", train_days=8, val_days=2, test_days=5)))
    sld = list(generate_folds(DATES, WalkForwardConfig(mode="sliding", train_days=8, val_days=2, test_days=5)))
    assert all(f.train[0] == DATES[0] for f in exp)
    assert [len(f.train) for f in exp] == sorted(len(f.train) for f in exp) and len(exp[-1].train) > 8
    assert all(len(f.train) == 8 for f in sld)
    assert [f.test for f in exp] == [f.test for f in sld]


def test_step_first_test_date_last_date_max_folds():
    cfg = WalkForwardConfig(train_days=5, val_days=2, test_days=2, step_days=5,
                            first_test_date=DATES[20], last_date=DATES[34], max_folds=2)
    folds = list(generate_folds(DATES, cfg))
    assert len(folds) == 2
    assert folds[-1].test[0] == DATES[30] and folds[0].test[0] == DATES[25]
    assert all(d <= DATES[34] for f in folds for d in f.all_dates)


@pytest.mark.parametrize("kwargs, msg", [
    ({"mode": "rolling"}, "mode"),
    ({"embargo_days": 0}, "embargo_days"),
    ({"label_horizon_minutes": 500, "embargo_days": 1}, "label horizon"),
    ({"test_days": 3, "step_days": 2}, "overlap"),
    ({"val_days": 0}, "val_days"),
])
def test_config_errors_are_named(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        WalkForwardConfig(**kwargs)


def test_too_few_dates_and_unknown_keys():
    with pytest.raises(ValueError, match="needs more than"):
        list(generate_folds(DATES[:10], WalkForwardConfig(train_days=8)))
    with pytest.raises(ValueError, match="first_test_date"):
        list(generate_folds(DATES, WalkForwardConfig(first_test_date=DATES[3])))
    with pytest.raises(ValueError, match="unknown walkforward parameter"):
        WalkForwardConfig.from_params({"train_dayz": 3})


def test_from_params_section():
    folds = folds_from_settings(DATES, {"walkforward": {"mode": "sliding", "train_days": 6, "val_days": 2,
                                                        "test_days": 3}})
    assert isinstance(folds[0], Fold) and len(folds[0].train) == 6


@pytest.fixture(scope="module")
def small_frame():
    import numpy as np

    from hfcast.features.windows import synthetic_feature_frame

    df = synthetic_feature_frame(n_symbols=4, n_days=8, n_features=3, seed=2)
    df["true_ret_60m"] = 0.001 * df["f0"].astype(float)
    df["true_var_10m"] = np.exp(2 * (np.log(1e-3) + 0.6 * df["f1"].astype(float)))
    return df


def test_run_walkforward_baselines_score_identical_test_rows(small_frame, tmp_path):
    from hfcast.evaluate import write_comparison
    from hfcast.models.baselines import BASELINES
    from hfcast.walkforward import run_walkforward

    cfg = WalkForwardConfig(train_days=3, val_days=1, test_days=1, embargo_days=1, eval_stride=2)
    res = run_walkforward(None, [], cfg, frame=small_frame, feature_names=["f0", "f1", "f2"], progress=False)
    assert len(res.folds) == 2 and set(res.aggregate.index) == set(BASELINES)
    p = res.predictions
    keys = {m: set(zip(g["symbol"], g["ts"])) for m, g in p.groupby("model")}
    assert all(k == keys["oracle"] for k in keys.values())  # same rows for every model
    test_days = {d for f in res.folds for d in f.test}
    assert set(p["ts"].dt.strftime("%Y-%m-%d")) == test_days  # scores only from test spans
    assert set(res.per_fold["fold"]) == {0, 1}
    assert res.aggregate.loc["oracle", "ret_ic_truth"] == pytest.approx(1.0)
    paths = write_comparison(res.aggregate, res.per_fold, res.predictions, tmp_path)
    html = paths["report"].read_text()
    assert "calibration" in html and "data:image/png;base64" in html and "vol_qlike" in html


def test_run_walkforward_floor_hook_scores_floored_and_bare_network_on_the_same_rows(small_frame):
    from hfcast.models.floor import FlooredForecaster
    from hfcast.train import TrainConfig
    from hfcast.walkforward import run_walkforward

    cfg = WalkForwardConfig(train_days=3, val_days=1, test_days=1, embargo_days=1, eval_stride=5, max_folds=1)
    tcfg = TrainConfig(epochs=1, batch_size=64, max_train_windows=300, max_val_windows=500, seed=0, num_threads=1)
    res = run_walkforward(None, ["lstm"], cfg, tcfg, frame=small_frame, feature_names=["f0", "f1", "f2"],
                          progress=False, baselines=("har_tod",),
                          model_configs={"lstm": {"hidden": 8, "n_layers": 1, "head_hidden": 8}}, floor=True)
    assert isinstance(res.forecasters["lstm"], FlooredForecaster)
    p = res.predictions
    assert {"lstm", "lstm_net", "har_tod"} <= set(p["model"])
    keys = {m: set(zip(g["symbol"], g["ts"])) for m, g in p.groupby("model")}
    assert keys["lstm"] == keys["lstm_net"] == keys["har_tod"]
    assert p.loc[p["model"] == "lstm", "rv_10m_pred"].gt(0).all()
    assert {"lstm", "lstm_net"} <= set(res.aggregate.index)


def test_run_walkforward_ensembles_the_floored_networks_on_validation_only(small_frame):
    import numpy as np

    from hfcast.models.floor import EnsembleForecaster
    from hfcast.train import TrainConfig
    from hfcast.walkforward import run_walkforward

    cfg = WalkForwardConfig(train_days=3, val_days=1, test_days=1, embargo_days=1, eval_stride=5, max_folds=1)
    tcfg = TrainConfig(epochs=1, batch_size=64, max_train_windows=300, max_val_windows=500, seed=0, num_threads=1)
    small = {"hidden": 8, "n_layers": 1, "head_hidden": 8}
    res = run_walkforward(None, ["lstm", "tcn"], cfg, tcfg, frame=small_frame, feature_names=["f0", "f1", "f2"],
                          progress=False, baselines=("har_tod",),
                          model_configs={"lstm": small, "tcn": {"channels": 8, "n_levels": 2, "head_hidden": 8}},
                          floor=True)
    ens = res.ensemble
    assert isinstance(ens, EnsembleForecaster) and ens.choice.members == ["lstm", "tcn"]
    assert set(res.forecasters) == {"lstm", "tcn"}  # the ensemble is not an architecture
    p = res.predictions
    keys = {m: set(zip(g["symbol"], g["ts"])) for m, g in p.groupby("model")}
    assert keys["ensemble"] == keys["lstm"] == keys["har_tod"]
    # its variance is the members' geometric mean times the validation scale (before calibration)
    fold = res.folds[0]
    from hfcast.features.windows import build_windows
    from hfcast.models.baselines import baseline_inputs

    frame = small_frame.sort_values(["symbol", "ts"], kind="stable").reset_index(drop=True)
    wa = build_windows(frame, ["f0", "f1", "f2"]).subset_dates(fold.test)
    inputs = baseline_inputs(frame)
    nat = ens.natural(wa, inputs)
    members = [m.natural(wa, inputs) for m in ens.members.values()]
    expect = np.sqrt(ens.choice.scale * np.exp(np.mean([2 * np.log(m["rv_hat"]) for m in members], axis=0)))
    assert np.allclose(nat["rv_hat"], expect)
    assert np.isfinite(ens.choice.val_qlike) and set(ens.choice.val_qlike_members) == {"lstm", "tcn"}


def test_floor_calibrates_the_baselines_with_context_on_validation_rows_only(small_frame):
    """With the floor on, baselines get context calibrators like the floored networks: their point
    forecasts are unchanged, and the calibrator reads validation rows only (test labels scrambled:
    the same calibrator)."""
    import json

    import numpy as np

    from hfcast.features.windows import build_windows
    from hfcast.models.baselines import baseline_inputs, fit_baselines
    from hfcast.walkforward import _context_calibrate, _fold_windows, _folds_and_frame

    cfg = WalkForwardConfig(train_days=3, val_days=1, test_days=1, embargo_days=1, eval_stride=2, max_folds=1)

    def calibrated(frame):
        folds, frame = _folds_and_frame(None, cfg, None, frame)
        wa, inputs = build_windows(frame, ["f0", "f1", "f2"], stride=1), baseline_inputs(frame)
        tr, va, te = _fold_windows(wa, folds[0], cfg)
        fitted = fit_baselines(inputs.loc[tr.ends], inputs.loc[va.ends], ("har_tod", "ewma"))
        plain = {n: b.predict(inputs.loc[te.ends]) for n, b in fitted.items()}
        ctx = _context_calibrate(fitted, inputs, va, te)
        return folds[0], fitted, plain, {n: b.predict(inputs.loc[te.ends], ctx) for n, b in fitted.items()}, len(va)

    fold, fitted, plain, with_ctx, n_val = calibrated(small_frame)
    for name, b in fitted.items():
        cal = b.calibrator
        assert cal.vol_ctx is not None and cal.vol_ctx.fitted and len(cal.q_rv_tod) == 390 // 30 + 1
        assert 0 < cal.n_fit <= n_val
        np.testing.assert_array_equal(with_ctx[name]["rv_10m_pred"], plain[name]["rv_10m_pred"])
        assert with_ctx[name]["rv_10m_conf"].between(0, 1).all()
    scrambled = small_frame.copy()
    on_test = scrambled["ts"].dt.strftime("%Y-%m-%d").isin(fold.test)
    scrambled.loc[on_test, ["ret_60m", "rv_10m"]] = scrambled.loc[on_test, ["ret_60m", "rv_10m"]].to_numpy()[::-1] * 3
    _, refitted, *_ = calibrated(scrambled)
    state = lambda fb: json.dumps({n: b.calibrator.to_dict() for n, b in fb.items()})  # noqa: E731
    assert state(refitted) == state(fitted)
