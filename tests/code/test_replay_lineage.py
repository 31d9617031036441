"""Time lineage and the retraining lease, without training (pure functions and a local lake)."""

from __future__ import annotations

from hfcast.lifecycle import check_decision_date, data_lineage
from hfcast.monitoring import retraining as R
from hfcast.storage import Lake
from hfcast.walkforward import WalkForwardConfig, generate_folds

DATES = [f"2024-02-{d:02d}" for d in range(1, 29)]


def test_last_date_bounds_every_span_and_the_tags_say_so():
    cfg = WalkForwardConfig.from_params({"train_days": 6, "val_days": 2, "test_days": 2, "step_days": 2,
                                         "embargo_days": 1, "max_folds": 1, "last_date": "2024-02-20"})
    folds = list(generate_folds(DATES, cfg))
    tags = data_lineage(folds)
    assert tags["hfcast.test_last"] == "2024-02-20" and tags["hfcast.train_last"] < tags["hfcast.val_first"]
    assert max(d for f in folds for d in f.all_dates) <= "2024-02-20"
    assert check_decision_date(tags, "2024-02-20") is None
    assert "look-ahead" in check_decision_date(tags, "2024-02-19")
    assert "no data lineage" in check_decision_date({}, "2024-02-19")
    assert check_decision_date({}, None) is None


def test_lease_is_exclusive_released_by_its_holder_only_and_broken_when_stale(tmp_path):
    lake = Lake(tmp_path.as_uri())
    a = R.acquire_lease(lake, "hfcast", "2024-02-05", timeout_hours=1.0)
    assert a is not None and R.acquire_lease(lake, "hfcast", "2024-02-06", timeout_hours=1.0) is None
    R.release_lease(lake, "hfcast", {"token": "someone else"})
    assert R.lease_holder(lake, "hfcast")["token"] == a["token"]
    b = R.acquire_lease(lake, "hfcast", "2024-02-06", timeout_hours=0.0)  # a's lease is "stale" at 0 h
    assert b is not None and b["token"] != a["token"]
    R.release_lease(lake, "hfcast", b)
    assert R.lease_holder(lake, "hfcast") is None
