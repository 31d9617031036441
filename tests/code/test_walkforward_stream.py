"""Walk-forward in bounded memory: with tiny thresholds every span is read a date at a time (the
training span streamed), and the choice and the scores are those of the one-frame run - identical
where nothing is sampled, within float rounding where only the predictions table is."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from hfcast.evaluate import score, score_folds
from hfcast.features.windows import synthetic_feature_frame, synthetic_feature_names
from hfcast.scoring import ScoreStream
from hfcast.storage import Lake
from hfcast.train import TrainConfig
from hfcast.walkforward import SERVED, WalkForwardConfig, prepare, run_walkforward, select_folds, train_members

NAMES = synthetic_feature_names(3)
SMALL = {"lstm": {"hidden": 8, "n_layers": 1, "head_hidden": 8}, "tcn": {"channels": 8, "n_levels": 2, "head_hidden": 8}}
TRAIN = TrainConfig(epochs=1, batch_size=64, max_train_windows=300, max_val_windows=500, seed=0, num_threads=1)
WF = {"train_days": 3, "val_days": 1, "test_days": 2, "step_days": 2, "embargo_days": 1, "eval_stride": 5, "max_folds": 2}
# the scores a sample of rows cannot give exactly (every row ranked at once)
FROM_SAMPLE = ("ret_rank_ic", "ret_err_low_conf", "ret_err_high_conf", "rv_err_low_conf", "rv_err_high_conf",
               "ret_miss_low_conf", "ret_miss_high_conf")


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    """4 symbols x 10 dates with the simulator's truth columns, one parquet partition per date."""
    df = synthetic_feature_frame(n_symbols=4, n_days=10, n_features=3, seed=2)
    df["true_ret_60m"] = 0.001 * df["f0"].astype(float)
    df["true_var_10m"] = np.exp(2 * (np.log(1e-3) + 0.6 * df["f1"].astype(float)))
    lk = Lake(tmp_path_factory.mktemp("lake").as_uri())
    day = df["ts"].dt.tz_convert("America/New_York").dt.strftime("%Y-%m-%d")
    for d, part in df.groupby(day):
        lk.write("features", d, part.reset_index(drop=True))
    return lk, int(day.value_counts().max())


@pytest.fixture(scope="module")
def trained(lake):
    """The networks of every fold, trained once from one in-memory matrix per span."""
    lk, _ = lake
    cfg = WalkForwardConfig(**WF)
    prep = prepare(lk, cfg, feature_names=NAMES)
    nets, _, _ = train_members(prep, ["lstm", "tcn"], cfg, TRAIN, SMALL, progress=False)
    return prep, nets, select_folds(prep, nets, cfg, progress=False)


def _same_choices(a, b) -> bool:
    return json.dumps([c.to_dict() for c in a.choices], sort_keys=True) == \
        json.dumps([c.to_dict() for c in b.choices], sort_keys=True)


def test_a_date_at_a_time_gives_the_one_frame_result(trained):
    """chunk_rows=1: each test and training date is read, predicted and scored alone; nothing is
    sampled, so the choice is identical and the scores agree to float rounding (the networks see
    other batch compositions)."""
    prep, nets, ref = trained
    res = select_folds(prep, nets, WalkForwardConfig(**WF, chunk_rows=1), progress=False)
    assert len(ref.folds) == 2 and _same_choices(res, ref) and not res.sampled
    pd.testing.assert_frame_equal(res.aggregate, ref.aggregate, rtol=1e-6)
    pd.testing.assert_frame_equal(res.per_fold, ref.per_fold, rtol=1e-6)
    pd.testing.assert_frame_equal(res.predictions, ref.predictions, rtol=1e-6)


def test_a_sampled_predictions_table_keeps_every_score_over_all_rows(trained):
    prep, nets, ref = trained
    k = 400
    res = select_folds(prep, nets, WalkForwardConfig(**WF, chunk_rows=1, max_prediction_rows=k), progress=False)
    assert _same_choices(res, ref) and res.sampled
    p = res.predictions
    assert p.groupby("model").size().max() == k < ref.predictions.groupby("model").size().min()
    rows = {m: set(zip(g["symbol"], g["ts"])) for m, g in p.groupby("model")}
    assert all(r == rows[SERVED] for r in rows.values())  # the same sampled rows for every model
    cols = ["model", "symbol", "ts", "rv_10m_pred", "ret_60m_conf"]
    joined = p[cols].merge(ref.predictions[cols], on=["model", "symbol", "ts"], suffixes=("", "_ref"))
    assert len(joined) == len(p)
    np.testing.assert_allclose(joined["rv_10m_pred"], joined["rv_10m_pred_ref"], rtol=1e-6)
    exact = [c for c in ref.aggregate.columns if c not in FROM_SAMPLE]
    assert "vol_qlike" in exact and "ret_ic_cs" in exact and "rv_ece" in exact
    assert (res.aggregate["n"] == ref.aggregate["n"]).all()  # every test row is scored
    pd.testing.assert_frame_equal(res.aggregate[exact], ref.aggregate[exact], rtol=1e-6)
    pd.testing.assert_frame_equal(res.per_fold[exact + ["model"]], ref.per_fold[exact + ["model"]], rtol=1e-6)


@pytest.mark.parametrize("kind", ["ensemble", "floor", "net", "har_tod"])
def test_every_forecaster_kind_is_served_the_same_a_date_at_a_time(trained, kind):
    """Each kind hfcast.selection can serve (the ensemble of both networks, a floored network, a
    bare one, a baseline alone) chosen and predicted from chunks of one date: the same choice and
    served forecasts as from one frame of each span."""
    from hfcast.selection import SelectOptions

    prep, nets, _ = trained
    opts = SelectOptions(kind=kind, ret="zero")
    ref = select_folds(prep, nets, WalkForwardConfig(**WF), options=opts, progress=False)
    res = select_folds(prep, nets, WalkForwardConfig(**WF, chunk_rows=1), options=opts, progress=False)
    assert [c.vol for c in res.choices] == [kind] * 2 and _same_choices(res, ref)
    served = [p[p["model"] == SERVED].reset_index(drop=True) for p in (res.predictions, ref.predictions)]
    assert len(served[0]) > 0
    # the networks see other batch compositions (float32 rounding ~1e-7); a confidence read off the
    # calibrator's slope of that forecast moves by up to a few 1e-6
    pd.testing.assert_frame_equal(*served, rtol=1e-5)


def test_the_streamed_walkforward_runs_end_to_end_holding_one_date(lake, monkeypatch):
    """Tiny thresholds: the training span streams from the lake, every other span is read one date
    at a time, the baselines and the choice read samples; no read ever holds more than one date."""
    from hfcast.features import engine

    lk, rows_per_date = lake
    held: list[int] = []
    load = engine.load_features

    def counting(*a, **kw):
        df = load(*a, **kw)
        held.append(len(df))
        return df

    monkeypatch.setattr(engine, "load_features", counting)
    cfg = WalkForwardConfig(**WF, chunk_rows=1, baseline_fit_windows=600, select_max_windows=150,
                            max_prediction_rows=300)
    tcfg = TrainConfig(**{**TRAIN.to_dict(), "stream_above_rows": 1, "stream_buffer_dates": 1})
    res = run_walkforward(lk, ["lstm"], cfg, tcfg, progress=False, model_configs=SMALL, feature_names=NAMES)
    assert [h["source"] for h in res.histories["lstm"]] == ["StreamingSource"] * 2
    assert held and max(held) <= rows_per_date  # never two dates in one frame
    assert res.predictions.groupby("model").size().max() <= 300 and res.sampled
    n_test = res.aggregate.loc[SERVED, "n"]
    assert n_test > 300 and (res.aggregate["n"] == n_test).all()
    assert np.isfinite(res.aggregate.loc[SERVED, ["vol_qlike", "ret_coverage", "rv_coverage"]].astype(float)).all()
    ev = res.choices[-1].evidence
    assert ev["chosen_val_qlike"] <= ev["val_qlike_har_tod"]


def test_a_baseline_sample_as_large_as_the_span_changes_nothing(trained):
    """The baselines' training sample is the span itself when it holds every window; a smaller one
    (seeded, uniform over dates and symbols) fits nearly the same baselines."""
    from hfcast.features.windows import build_windows

    prep, nets, ref = trained
    n_train = max(len(build_windows(prep.reader.read(f.train), NAMES)) for f in prep.folds)  # the largest span's
    same = select_folds(prep, nets, WalkForwardConfig(**WF, baseline_fit_windows=n_train), progress=False)
    pd.testing.assert_frame_equal(same.aggregate, ref.aggregate, check_exact=True)
    small = select_folds(prep, nets, WalkForwardConfig(**WF, baseline_fit_windows=5000), progress=False)
    for name in ("har_tod", "har_rv"):
        q, q_ref = small.aggregate.loc[name, "vol_qlike"], ref.aggregate.loc[name, "vol_qlike"]
        assert q != q_ref and q == pytest.approx(q_ref, rel=0.02), name


def _frame(n_days: int = 3, n_sym: int = 40, seed: int = 0) -> pd.DataFrame:
    """A predictions frame with folds, every symbol at every minute, some labels missing, in the
    (fold, symbol, ts) order of a walk-forward's."""
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2024-01-02 14:30", periods=60, freq="min", tz="UTC")
    parts = []
    for d in range(n_days):
        t = np.repeat(ts + pd.Timedelta(days=d), n_sym)
        n = len(t)
        vol = np.exp(rng.normal(-7, 0.3, n))
        p = pd.DataFrame({"symbol": np.tile([f"S{i:02d}" for i in range(n_sym)], len(ts)), "ts": t,
                          "ret_60m": rng.normal(0, 1e-3, n), "rv_10m": vol * np.exp(rng.normal(0, 0.3, n)),
                          "fold": d // 2, "ret_60m_pred": rng.normal(0, 1e-4, n), "rv_10m_pred": vol,
                          "ret_60m_conf": rng.uniform(0.4, 0.7, n), "rv_10m_conf": rng.uniform(0.2, 0.9, n)})
        p["ret_60m_lo"], p["ret_60m_hi"] = -1.3e-3, 1.3e-3
        p["rv_10m_lo"], p["rv_10m_hi"] = vol * 0.6, vol * 1.5
        p.loc[rng.random(n) < 0.05, "ret_60m"] = np.nan
        parts.append(p)
    return pd.concat(parts, ignore_index=True).sort_values(["fold", "symbol", "ts"], kind="stable").reset_index(drop=True)


@pytest.mark.parametrize("sample", [None, 500])
def test_score_stream_merges_chunks_into_the_scores_of_all_rows(sample):
    df = _frame()
    ref_pf, ref = score_folds(df)
    s = ScoreStream(sample)
    for _, chunk in df.groupby(df["ts"].dt.date, sort=True):  # one date at a time, (symbol, ts) within
        s.add(chunk)
    got, pf = s.pooled(), s.per_fold()
    assert s.n_rows == len(df) and s.sampled == (sample is not None)
    if sample is None:  # everything kept: exactly score_folds
        assert got == ref
        pd.testing.assert_frame_equal(pf, ref_pf, check_exact=True)
        return
    assert len(s.frame()) == sample
    for k in ref:
        if k not in FROM_SAMPLE:
            assert got[k] == pytest.approx(ref[k], rel=1e-9, abs=1e-12), k
    assert got["ret_rank_ic"] == pytest.approx(score(s.frame())["ret_rank_ic"])  # the sample's
