"""Does the market calendar slow the featurize hot path? This tree against a reference commit, same run.

The calendar replaced constant arithmetic (a fixed 390-minute grid from one tz conversion per
date) by a per-date cached session lookup, and the window builder's exchange-date conversion by
the calendar's trade dates. Both trees featurize the SAME lake (simulated bars written once), in
alternating child processes (A B A B ...), so machine load hits both alike:

* ``run_featurize`` end to end (parquet read, grid, features, labels, truth join, write);
* ``featurize_frame`` on bars already in memory (the compute alone);
* ``build_windows`` over all the features (trade dates of every row, window ends);
* ``calendar_load_s``: the one-time import and schedule build of the calendar (0 for the
  reference), paid once per process and kept out of the timings above.

Writes bench/results/calendar.json with the medians and the ratio new / reference.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import write_result

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
from hfcast.features.engine import HarState, featurize_frame, run_featurize, load_features, read_feature_set
from hfcast.features.windows import build_windows
from hfcast.storage import Lake
lake = Lake(sys.argv[1])
dates = lake.dates("validated")
out = {}
t0 = time.perf_counter()
try:  # one-time cost of the calendar (import + schedule), kept out of the per-date timings
    from hfcast.market import get_market
    get_market(None).session(dates[0])
except ImportError:
    pass
out["calendar_load_s"] = time.perf_counter() - t0
t0 = time.perf_counter(); run_featurize(lake, progress=False); out["end_to_end_s"] = time.perf_counter() - t0
days = [(d, lake.read("validated", d), lake.read("truth", d)) for d in dates]
state = HarState(); t0 = time.perf_counter()
for d, b, t in days:
    _, state = featurize_frame(b, d, state, t)
out["compute_s"] = time.perf_counter() - t0
frame = load_features(lake, dates)
names = read_feature_set(lake)["features"]
t0 = time.perf_counter(); wa = build_windows(frame, names); out["windows_s"] = time.perf_counter() - t0
out["windows"] = len(wa); out["rows"] = len(frame)
print(json.dumps(out))
"""


def _reference_tree(commit: str, dest: str) -> str:
    """``git archive`` of the reference commit's src/ into ``dest`` (read-only use)."""
    data = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "src"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=data, check=True)
    return str(Path(dest) / "src")


def _child(src: str, lake_url: str) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{src}:{ROOT}"}
    res = subprocess.run([sys.executable, "-c", CHILD, lake_url], env=env, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", default="0eda170", help="commit without the calendar")
    ap.add_argument("--symbols", type=int, default=100)
    ap.add_argument("--days", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from hfcast.data.simulator import SimConfig, iter_days
    from hfcast.storage import Lake

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-cal-") as tmp:
        lake = Lake(f"file://{tmp}/lake")
        for d, bars, truth in iter_days(SimConfig(n_symbols=a.symbols, n_days=a.days, start_date="2024-01-02", seed=3)):
            lake.write("validated", d, bars)
            lake.write("truth", d, truth)
        ref_src = _reference_tree(a.reference, tmp)
        runs: dict[str, list[dict]] = {"reference": [], "calendar": []}
        for _ in range(a.repeats):
            runs["reference"].append(_child(ref_src, lake.url))
            runs["calendar"].append(_child(str(ROOT / "src"), lake.url))
    med = {k: {m: round(statistics.median(r[m] for r in v), 3) for m in ("calendar_load_s", "end_to_end_s", "compute_s", "windows_s")}
           for k, v in runs.items()}
    same = runs["reference"][0]["windows"] == runs["calendar"][0]["windows"]
    ratio_keys = ("end_to_end_s", "compute_s", "windows_s")
    payload = {
        "input": f"hfcast.data.simulator, {a.symbols} symbols x {a.days} days (XNYS, no holiday in the span)",
        "reference_commit": a.reference,
        "repeats_alternating": a.repeats,
        "median_seconds": med,
        "ratio_calendar_over_reference": {m: round(med["calendar"][m] / med["reference"][m], 3) for m in ratio_keys},
        "same_windows": same,
        "rows": runs["calendar"][0]["rows"],
        "runs": runs,
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "notes": "scaled down for a shared 2-core machine; rerun with --symbols 1000 on an idle one",
    }
    write_result("calendar", payload)
    print(json.dumps({"median_seconds": med, "ratio": payload["ratio_calendar_over_reference"], "same_windows": same}))


if __name__ == "__main__":
    main()
