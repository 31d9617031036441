"""Explain latency for one window (integrated gradients, both targets) beside predict latency.

The network is the default-size transformer on the registry's 59 features (untrained weights:
latency does not depend on skill). Measured side by side in one process: plain predict of one
window with today's attention code, with the pre-hook attention forward (the reference: predict
must not have slowed down), and with the attention hook switched on; then ``explain_forecasts``
(what ``:explain`` runs) for one window at 32 and 64 integration steps. Writes
bench/results/explain.json.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from bench._common import time_calls, write_result


def _old_forward(self, x):
    """SelfAttention.forward as it was before the explain hook (the reference)."""
    B, T, D = x.shape
    q, k, v = self.qkv(x).split(D, dim=2)
    q, k, v = (t.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2) for t in (q, k, v))
    y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
    return self.proj(y.transpose(1, 2).reshape(B, T, D))


def median_ms(fn, repeats: int, warmup: int = 3) -> float:
    return float(np.median(time_calls(fn, repeats, warmup)) * 1000)


def main() -> None:
    from hfcast.explain import explain_forecasts, kept_attention
    from hfcast.forecaster import Forecaster as Deployable
    from hfcast.features.catalog import feature_names
    from hfcast.features.windows import Scaler
    from hfcast.models import TrainedNet as Forecaster, build_model
    from hfcast.models._modules import SelfAttention

    torch.manual_seed(0)
    torch.set_num_threads(1)
    names = feature_names()
    net = build_model("transformer", len(names), {"dropout": 0.0}).eval()
    fc = Forecaster(net, Scaler(mean=np.zeros(len(names)), std=np.ones(len(names))), names)
    x = np.random.default_rng(0).standard_normal((1, 30, len(names))).astype(np.float32)
    new_forward = SelfAttention.forward
    predict = {}
    for label, fwd in (("reference_pre_hook", _old_forward), ("current", new_forward),
                       ("reference_pre_hook_again", _old_forward), ("current_again", new_forward)):
        SelfAttention.forward = fwd
        predict[label] = round(median_ms(lambda: fc.predict_raw(x), 300), 3)
    SelfAttention.forward = new_forward
    with kept_attention(fc.net):
        predict["hook_on"] = round(median_ms(lambda: fc.predict_raw(x), 300), 3)
    served = Deployable.from_net(fc)
    explain = {f"ig_{n}_steps_both_targets": round(median_ms(lambda: explain_forecasts(served, x, n_steps=n), 15, 2), 1)
               for n in (32, 64)}
    write_result("explain", {
        "what": "one window [30, 59], default transformer (d_model 48, 2 layers), torch eager on CPU, 1 thread",
        "predict_ms_p50": predict, "explain_ms_p50": explain,
        "explain_over_predict": round(explain["ig_64_steps_both_targets"] / predict["current"], 1),
        "load_avg": os.getloadavg(),
        "note": "shared 2-core machine with other agents: the lead re-runs on an idle machine",
    })


if __name__ == "__main__":
    main()
