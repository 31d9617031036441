"""``hfcast demo`` end to end: wall time and peak memory of the whole process tree.

The demo runs every pipeline with the Kubeflow local runner (one subprocess per task), so memory
is sampled over the demo process and all of its children. Goal: under 10 minutes on 2 CPU cores
(installation excluded).

Run: ``python -m bench.bench_demo [--s3]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from bench._common import write_result


def tree_rss_mb(proc: psutil.Process) -> float:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total / 1024**2


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--s3", action="store_true")
    a = ap.parse_args()
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="hfcast-bench-demo-") as tmp:
        home = Path(tmp) / "demo"
        cmd = [sys.executable, "-m", "hfcast.cli", "demo", "--home", str(home), *(["--s3"] if a.s3 else [])]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ps, peak, load = psutil.Process(proc.pid), 0.0, []
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, tree_rss_mb(ps))
                load.append(os.getloadavg()[0])
                time.sleep(0.2)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        rc = proc.wait()
        stop.set()
        th.join()
        seconds = time.perf_counter() - t0
        summary = json.loads((home / "summary.json").read_text()) if (home / "summary.json").exists() else {}
    write_result("demo", {
        "exit_code": rc, "s3": a.s3, "seconds": round(seconds, 1), "minutes": round(seconds / 60, 2),
        "peak_rss_mb_process_tree": round(peak), "mean_load_avg_1m": round(sum(load) / max(len(load), 1), 2),
        "steps_seconds": summary.get("steps_seconds"), "retrainings": summary.get("retrainings"),
        "champion_before": summary.get("champion_before"), "champion_after": summary.get("champion_after"),
        "goal_minutes": 10, "goal_met": rc == 0 and seconds < 600,
    })


if __name__ == "__main__":
    main()
