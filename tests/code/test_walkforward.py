"""Walk-forward folds: chronological, disjoint, embargoed, expanding vs sliding, named errors."""

import numpy as np
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
    assert len(folds) == len(range(40 - 4, 8 + 1 + 3 + 1 - 1, -4))  # laid out from the end
    assert folds[-1].test[-1] == DATES[-1] and all(len(f.test) == 4 for f in folds)  # none cut short
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
    with pytest.raises(ValueError, match="needs at least"):
        list(generate_folds(DATES[:10], WalkForwardConfig(train_days=8)))
    with pytest.raises(ValueError, match="first_test_date"):
        list(generate_folds(DATES, WalkForwardConfig(first_test_date=DATES[3])))
    with pytest.raises(ValueError, match="unknown walkforward parameter"):
        WalkForwardConfig.from_params({"train_dayz": 3})


def test_a_truncated_final_fold_is_dropped_and_a_lone_one_refused(caplog):
    cfg = WalkForwardConfig(train_days=5, val_days=2, test_days=5, step_days=5, first_test_date=DATES[20])
    folds = list(generate_folds(DATES[:33], cfg))  # test spans 20-24, 25-29, then 30-32: 3 days only
    assert [len(f.test) for f in folds] == [5, 5] and "dropping the final fold" in caplog.text
    with pytest.raises(ValueError, match="only fold would have 3 test day"):
        list(generate_folds(DATES[:23], cfg))


def test_a_closed_exchange_date_is_not_a_trading_day():
    """Good Friday 2024-03-29 (an empty partition in a lake) must not count as a fold day."""
    from hfcast.walkforward import trading_dates

    days = trading_days("2024-03-20", 10)
    assert "2024-03-29" not in days
    with_holiday = sorted([*days, "2024-03-29"])
    assert trading_dates(with_holiday) == days
    cfg = WalkForwardConfig(train_days=3, val_days=1, test_days=2, embargo_days=1)
    assert [f.all_dates for f in generate_folds(trading_dates(with_holiday), cfg)] == \
        [f.all_dates for f in generate_folds(days, cfg)]


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


def _names():
    from hfcast.features.windows import synthetic_feature_names

    return synthetic_feature_names(3)


def test_run_walkforward_baselines_score_identical_test_rows(small_frame, tmp_path):
    from hfcast.evaluate import write_comparison
    from hfcast.models.baselines import BASELINES
    from hfcast.walkforward import SERVED, run_walkforward

    cfg = WalkForwardConfig(train_days=3, val_days=1, test_days=1, embargo_days=1, eval_stride=2)
    res = run_walkforward(None, [], cfg, frame=small_frame, feature_names=_names(), progress=False)
    assert len(res.folds) == 2 and set(res.aggregate.index) == {*BASELINES, SERVED}
    assert res.forecaster.graph() is None and res.forecaster.choice.vol in ("har_tod", "har_rv", "ewma")
    p = res.predictions
    keys = {m: set(zip(g["symbol"], g["ts"])) for m, g in p.groupby("model")}
    assert all(k == keys["oracle"] for k in keys.values())  # same rows for every model
    test_days = {d for f in res.folds for d in f.test}
    assert set(p["ts"].dt.strftime("%Y-%m-%d")) == test_days  # scores only from test spans
    assert set(res.per_fold["fold"]) == {0, 1}
    assert res.aggregate.loc["oracle", "ret_ic_truth"] == pytest.approx(1.0)
    served = res.aggregate.loc[SERVED]
    assert served["vol_qlike"] == pytest.approx(res.aggregate.loc[res.choices[-1].vol, "vol_qlike"], rel=0.5)
    paths = write_comparison(res.aggregate, res.per_fold, res.predictions, tmp_path)
    html = paths["report"].read_text()
    assert "calibration" in html and "data:image/png;base64" in html and "vol_qlike" in html


def _two_nets(frame, **kw):
    from hfcast.train import TrainConfig
    from hfcast.walkforward import run_walkforward

    cfg = WalkForwardConfig(train_days=3, val_days=1, test_days=1, embargo_days=1, eval_stride=5, max_folds=1)
    tcfg = TrainConfig(epochs=1, batch_size=64, max_train_windows=300, max_val_windows=500, seed=0, num_threads=1)
    small = {"lstm": {"hidden": 8, "n_layers": 1, "head_hidden": 8}, "tcn": {"channels": 8, "n_levels": 2, "head_hidden": 8}}
    return run_walkforward(None, ["lstm", "tcn"], cfg, tcfg, frame=frame, feature_names=_names(), progress=False,
                           model_configs=small, **kw)


def test_every_candidate_and_the_served_forecaster_on_the_same_rows(small_frame):
    """Bare, floored and ensembled networks, the baselines and what validation chose: one test row
    set; the choice is the candidate with the lowest VALIDATION QLIKE (baselines win ties)."""
    from hfcast.forecaster import Forecaster
    from hfcast.walkforward import SERVED

    res = _two_nets(small_frame)
    p = res.predictions
    assert {SERVED, "lstm", "tcn", "lstm+floor", "tcn+floor", "ensemble", "har_tod", "har_rv", "ewma"} <= set(p["model"])
    keys = {m: set(zip(g["symbol"], g["ts"])) for m, g in p.groupby("model")}
    assert all(k == keys[SERVED] for k in keys.values())
    assert isinstance(res.forecaster, Forecaster) and len(res.choices) == 1
    ev = res.choices[0].evidence
    # the lowest among har_tod and the candidates whose gain over it is significant on validation
    pool = [q for lab, q in ev["val_qlike"].items() if lab == "har_tod" or ev["val_gain_ub"].get(lab, 1.0) < 0]
    assert ev["chosen_val_qlike"] == pytest.approx(min(pool))
    assert ev["chosen_val_qlike"] <= ev["val_qlike_har_tod"] + 1e-12  # never worse than the floor on validation
    assert ev["val_qlike"][res.choices[0].label] == pytest.approx(ev["chosen_val_qlike"])
    s = p[p["model"] == SERVED]
    assert s["rv_10m_pred"].gt(0).all() and s[["ret_60m_conf_informative", "rv_10m_conf_informative"]].notna().all().all()
    if res.choices[0].ret == "zero":  # no validated return skill: zero forecast, constant 0.5 confidence
        assert (s["ret_60m_pred"] == 0).all() and (s["ret_60m_conf"] == 0.5).all()


def test_the_choice_reads_no_test_label(small_frame):
    """Scrambling the test day's labels changes neither the choice nor the served test forecasts."""
    from hfcast.walkforward import SERVED

    a = _two_nets(small_frame)
    scrambled = small_frame.copy()
    on_test = scrambled["ts"].dt.strftime("%Y-%m-%d").isin(a.folds[0].test)
    scrambled.loc[on_test, ["ret_60m", "rv_10m"]] = scrambled.loc[on_test, ["ret_60m", "rv_10m"]].to_numpy()[::-1] * 3
    b = _two_nets(scrambled)
    import json

    assert json.dumps(a.choices[0].to_dict(), sort_keys=True) == json.dumps(b.choices[0].to_dict(), sort_keys=True)
    cols = ["rv_10m_pred", "rv_10m_conf", "ret_60m_pred", "ret_60m_conf"]
    pa, pb = (r.predictions[r.predictions["model"] == SERVED][cols].to_numpy() for r in (a, b))
    np.testing.assert_array_equal(pa, pb)


@pytest.mark.parametrize("kind", ["ensemble", "floor", "net", "har_tod"])
def test_a_fixed_kind_is_served(small_frame, kind):
    from hfcast.selection import SelectOptions

    res = _two_nets(small_frame, options=SelectOptions(kind=kind, ret="zero"))
    c = res.choices[0]
    assert c.vol == kind and c.ret == "zero"
    assert sorted(res.forecaster.members) == (["lstm", "tcn"] if kind == "ensemble" else [] if kind == "har_tod"
                                              else sorted(c.members))


def test_dates_read_from_yaml_are_iso_text():
    """`--fold last_date=2024-01-30` is parsed by YAML into a date; the spans compare ISO text."""
    import datetime as dt

    cfg = WalkForwardConfig(train_days=5, val_days=2, test_days=2, last_date=dt.date.fromisoformat(DATES[20]),
                            first_test_date=dt.date.fromisoformat(DATES[15]))
    assert cfg.last_date == DATES[20] and cfg.first_test_date == DATES[15]
    assert list(generate_folds(DATES, cfg))[-1].test[-1] <= DATES[20]
