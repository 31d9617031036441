"""One tiny training, run alone or under ``torchrun`` by tests/code/test_ddp.py: rank 0 writes its
validation loss and QLIKE as JSON to ``argv[1]``; ``argv[2]`` = ``memory`` or ``stream``."""

from __future__ import annotations

import json
import sys
import tempfile

import numpy as np


def main(out: str, kind: str) -> None:
    from hfcast.distributed import env_rank, shutdown
    from hfcast.features.stream import StreamingSource
    from hfcast.features.windows import build_windows, synthetic_feature_frame
    from hfcast.metrics import qlike
    from hfcast.storage import Lake
    from hfcast.train import TrainConfig, train_forecaster

    feats = [f"f{j}" for j in range(6)]
    df = synthetic_feature_frame(3, 4, len(feats), seed=11)
    wa = build_windows(df, feats)
    dates = sorted(set(wa.end_dates().tolist()))
    val = wa.subset_dates(dates[-1:])
    train = wa.subset_dates(dates[:-1])
    cfg = TrainConfig(epochs=3, batch_size=64, lr=3e-3, device="cpu", patience=10, max_train_windows=600,
                      num_threads=1)
    if kind == "stream":
        lake = Lake(tempfile.mkdtemp(prefix=f"hfcast-ddp-{env_rank()}-"))
        day = df["ts"].dt.tz_convert("America/New_York").dt.strftime("%Y-%m-%d")
        for d, part in df.groupby(day):
            lake.write("features", d, part.reset_index(drop=True))
        train = StreamingSource(lake, dates[:-1], feats, max_windows=600, seed=0, buffer_dates=2)
    fc, hist = train_forecaster("lstm", train, val, {"hidden": 8, "n_layers": 1, "head_hidden": 8, "dropout": 0.0}, cfg,
                                calibrate=False, progress=False)
    if env_rank() == 0:
        pred = fc.predict(val.windows(np.arange(len(val))))
        rv = val.labels()[:, 1].astype(np.float64)
        ok = np.isfinite(rv) & (rv > 0)
        doc = {"val_loss": hist["best_val_loss"], "world": hist["world_size"],
               "val_losses": [e["val_loss"] for e in hist["epochs"]],
               "qlike": qlike(pred["rv_10m_pred"].to_numpy()[ok] ** 2, rv[ok] ** 2),
               "windows_per_s": hist["windows_per_s"]}
        with open(out, "w") as fh:
            json.dump(doc, fh)
    shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
