"""Server start-up: seconds from launching `hfcast serve` to /v2/health/ready answering 200, and lines printed.

Why: the server exported its model to ONNX at every start (8-17 s for a default-size model and about
105 lines of exporter output). It now loads the ONNX and int8 model exported once, at registration,
and stored checksummed with the version (``hfcast.export.serving_runner``). Measured in one run on
one machine, rounds interleaved so that both sides see the same load:

- before: the code of ``--before`` (the commit before the stored export), run from a ``git archive``
  of it against the same registry, version and feature store;
- after: this tree, serving a version registered the platform's way (``lifecycle.register_version``:
  registration exports and stores; the time it adds to a registration is reported too); the server
  fetches the version (MLflow import, resolve, download, verify) in a forked child process while it
  imports KServe, torch and Feast (``serving.cli.prefetch``), so two cores overlap the two halves;
- after, first demand: a version registered without a stored export (as older releases did): the one
  start that exports and stores it;
- image entry: the cluster image's ``python -m serving --model_ref`` on the same version (the same
  child fetch, started once KServe's parser is imported);
- after with ``--verbose``: the line count with every library's output shown;
- where the remaining start-up goes: the imports a server needs, each timed in a fresh interpreter
  (Feast with typeguard's import-time instrumentation, and without it as hfcast imports it).

The model is the design's default transformer on 59 features (untrained: start-up does not depend on
skill); the Feast online store (SQLite) and MLflow (SQLite) are the embedded defaults.
Goals (2 CPU cores): < 5 s to ready for the registered default transformer, < 10 lines without -v.

Run: ``python bench/bench_startup.py [--rounds 3] [--before REF]`` -> bench/results/startup.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src"), str(ROOT / "tests")]

from bench._common import write_result  # noqa: E402

F, ARCH = 59, "transformer"
BEFORE_REF = "b37e6ba"  # main before #27 item 3: `hfcast serve` exported the graph at every start
SETTLE_S = 0.5  # after ready, let the last start-up lines reach the log before counting them

IMPORTS = {
    "kserve": "import kserve",
    "torch": "import torch",
    "mlflow": "import mlflow",
    "onnxruntime": "import onnxruntime",
    "feast (plain import)": "import feast",
    "feast (hfcast.feature_store.import_feast)": "from hfcast.feature_store import import_feast; import_feast()",
}


def archive(ref: str, dest: Path) -> str:
    """The tree of ``ref`` (src/, serving/, feature_repo/) under ``dest``; its full commit hash."""
    full = subprocess.run(["git", "-C", str(ROOT), "rev-parse", ref], capture_output=True, text=True,
                          check=True).stdout.strip()
    dest.mkdir(parents=True)
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", full, "src", "serving", "feature_repo"],
                         capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=tar, check=True)
    return full


def one_start(args: list[str], env: dict, cwd: Path, tree: Path, log: Path, image_entry: bool = False) -> dict:
    """Start (``hfcast serve``, or the image's ``python -m serving``), wait for ready, count the
    lines printed by then, stop."""
    from serving_fixtures import start_serve, stop_serve

    load = os.getloadavg()[0]
    proc, _, seconds = start_serve(args, env, cwd, log, timeout=300, pythonpath=f"{tree / 'src'}{os.pathsep}{tree}",
                                   image_entry=image_entry)
    time.sleep(SETTLE_S)
    lines = len(log.read_text(errors="replace").splitlines())
    stop_serve(proc)
    return {"ready_s": round(seconds, 3), "lines": lines, "load_1m": round(load, 2)}


def summary(runs: list[dict]) -> dict:
    ready = [r["ready_s"] for r in runs]
    return {"median_ready_s": round(statistics.median(ready), 3), "min_ready_s": min(ready),
            "max_ready_s": max(ready), "lines": max(r["lines"] for r in runs), "runs": runs}


def import_seconds(env: dict, repeats: int = 2) -> dict[str, float]:
    """Seconds each import takes in a fresh interpreter (the best of ``repeats``)."""
    out = {}
    for name, stmt in IMPORTS.items():
        code = f"import time; t = time.perf_counter(); {stmt}; print(time.perf_counter() - t)"
        best = min(float(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                        check=True).stdout.strip().splitlines()[-1]) for _ in range(repeats))
        out[name] = round(best, 3)
    return out


def setup(tmp: Path) -> dict:
    """A feature store, the default transformer registered with its export, and the same bundle
    registered bare (no stored export)."""
    from hfcast import registry
    from hfcast.config import get_settings
    from hfcast.lifecycle import export_version
    from serving_fixtures import feast_repo, tiny_forecaster

    env = {**os.environ, "HFCAST_HOME": str(tmp / ".hfcast")}
    settings = get_settings(env=env, cwd=tmp)
    env["MLFLOW_TRACKING_URI"] = settings.mlflow_uri
    feast_repo(settings, F, n_symbols=3)
    fc = tiny_forecaster(ARCH, F, small=False)
    fc.save(str(tmp / "bundle"))
    run_id = registry.log_training_run(settings, registry.TrainingRecord(
        tmp / "bundle", arch=fc.arch, params={}, epoch_metrics=None, fold_metrics=[],
        aggregate_metrics={"vol_qlike": 0.3}, test_spans=[("2024-01-02", "2024-01-02")], dataset_version=None,
        feature_names=fc.feature_names))
    # the platform's registration (lifecycle.register_version) is these two steps, timed apart
    t0 = time.perf_counter()
    version = registry.register(settings, run_id)
    t_register = time.perf_counter() - t0
    export_version(settings, version)
    t_export = time.perf_counter() - t0 - t_register
    bare = registry.register(settings, run_id)  # as older releases registered: no stored export
    n_params = sum(p.numel() for p in fc.graph().parameters())
    return {"env": env, "version": version, "bare": bare, "register_s": round(t_register, 2),
            "export_at_registration_s": round(t_export, 2), "n_params": int(n_params)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--before", default=BEFORE_REF, help="the commit to compare with (export at every start)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    load_start = os.getloadavg()
    s = setup(tmp)
    env = s["env"]
    before_tree = tmp / "before"
    before_ref = archive(args.before, before_tree)
    serve = ["--model", f"hfcast/{s['version']}", "--max-staleness-s", "-1"]
    image = ["--model_ref", f"hfcast/{s['version']}", "--max_staleness_s", "-1"]
    runs: dict[str, list[dict]] = {"before": [], "after": [], "image_entry": []}
    for i in range(args.rounds):
        order = ("before", "after", "image_entry") if i % 2 == 0 else ("image_entry", "after", "before")
        for side in order:
            tree = before_tree if side == "before" else ROOT
            entry = side == "image_entry"
            runs[side].append(one_start(image if entry else serve, env, tmp, tree, tmp / f"{side}-{i}.log", entry))
            print(side, runs[side][-1], flush=True)
    first = one_start(["--model", f"hfcast/{s['bare']}", "--max-staleness-s", "-1"], env, tmp, ROOT,
                      tmp / "first-demand.log")
    verbose = one_start(["-v", *serve], env, tmp, ROOT, tmp / "verbose.log")
    imports = import_seconds({**env, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"})
    after, before, image_entry = summary(runs["after"]), summary(runs["before"]), summary(runs["image_entry"])
    write_result("startup", {
        "load_average_start_end": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],
        "model": {"arch": ARCH, "n_features": F, "parameters": s["n_params"], "registry": "MLflow (SQLite)",
                  "feature_store": "Feast (SQLite online store)"},
        "registration": {"register_s": s["register_s"], "export_at_registration_s": s["export_at_registration_s"],
                         "note": "ONNX export + parity, int8 quantization + guard, stored and tagged: paid once"},
        "before": {"ref": before_ref, "what": "exports the graph to ONNX at every start", **before},
        "after": {"what": "loads the stored, checksummed ONNX (int8 when auto picks it), fetched by a child process "
                  "while the server imports its stack", **after},
        "image_entry": {"what": "the predictor image's `python -m serving --model_ref` (the InferenceServices' "
                        "command): the same child fetch, started after KServe's option parser imports", **image_entry},
        "after_first_demand": {"what": "a version registered without a stored export: exported and stored "
                               "at this start, fetched at the next", **first},
        "after_verbose": {"what": "the same start with -v (every library's output)", **verbose},
        "speedup_median": round(before["median_ready_s"] / after["median_ready_s"], 2),
        "imports_s": imports,
        "goals": {"ready_s": 5.0, "lines": 10, "ready_met": after["median_ready_s"] < 5.0,
                  "lines_met": after["lines"] < 10},
        "last_lines_after": (tmp / f"after-{args.rounds - 1}.log").read_text(errors="replace").splitlines()[-12:],
    })


if __name__ == "__main__":
    main()
