"""A return head that validated but fails on the test spans is replaced by the zero forecast before
anything is logged (hfcast.lifecycle.return_on_test); a volatility skill is never refused with it."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from hfcast.forecaster import Choice
from hfcast.lifecycle import return_on_test
from hfcast.selection import SelectOptions


class _Settings:
    def param(self, key, default=None):
        return default  # registry.gate defaults: vol_qlike and ret_ic, margin 0


@dataclass
class _Result:
    ret_ic: float
    ret: str = "lstm"
    choices: list = field(default_factory=list)
    nets: dict = field(default_factory=dict)
    histories: dict = field(default_factory=dict)
    throughput: dict = field(default_factory=dict)

    def __post_init__(self):
        self.choices = [Choice(vol="har_x", ret=self.ret), Choice(vol="har_x", ret=self.ret)]

    def scores(self):
        return {"vol_qlike": 0.139, "ret_ic": self.ret_ic, "ret_served": float(self.ret != "zero")}

    def baseline_scores(self):
        return {"har_tod": {"vol_qlike": 0.145, "ret_ic": float("nan")},
                "persistence": {"vol_qlike": 0.2, "ret_ic": 0.035}, "zero": {"vol_qlike": 0.2, "ret_ic": float("nan")}}


@pytest.fixture
def reselected(monkeypatch):
    calls = []

    def select_folds(prep, nets, wf_cfg, options=None, **kw):
        calls.append(options)
        return _Result(0.0, ret=options.ret)

    monkeypatch.setattr("hfcast.walkforward.select_folds", select_folds)
    monkeypatch.setattr("hfcast.walkforward.prepare", lambda lake, wf_cfg: None)
    return calls


def test_a_head_that_fails_the_test_spans_is_replaced_by_zero(reselected):
    out = return_on_test(_Settings(), _Result(0.015), SelectOptions(), None, None)
    assert [o.ret for o in reselected] == ["zero"] and reselected[0].kind == "auto"  # volatility chosen as before
    assert all(c.ret == "zero" for c in out.choices)
    why = out.choices[-1].evidence["return_replaced"]
    assert "lstm return head failed" in why and "persistence 0.035" in why
    assert "a validated head failed on the test spans" in out.choices[-1].describe()


@pytest.mark.parametrize("result, options", [(_Result(0.05), SelectOptions()),            # it holds: kept
                                             (_Result(0.015), SelectOptions(ret="net")),  # fixed by the user
                                             (_Result(0.0, ret="zero"), SelectOptions())])  # nothing to take away
def test_a_head_that_holds_or_was_fixed_is_kept(reselected, result, options):
    assert return_on_test(_Settings(), result, options, None, None) is result and not reselected
