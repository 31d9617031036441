"""Serving latency: every runner available here side by side, and the KServe server's overhead.

Measures, for a default-size transformer on 59 features (the design's model):
- in-process runner latency (p50/p99) and throughput at batch 1 and 64: torch eager and
  onnxruntime everywhere; compiled torch and TensorRT only where a CUDA GPU (and TensorRT) exist;
- the real ``hfcast serve`` on 127.0.0.1 (one sequential keep-alive client; V2 JSON and binary
  tensors): window requests at batch 1 and 64, and the server's overhead as a ratio to calling its
  runner in-process (with a lean ``http.client`` connection, and with httpx beside it);
- one symbol request end to end, including the Feast online lookup (p50/p99);
- NVIDIA's tritonclient against the same server: gRPC (raw tensors) next to HTTP with binary
  tensors, batch 1 and 64, calls interleaved (what a Triton user's program sees).
Goals (2 CPU cores): symbol p99 < 20 ms; server overhead at batch 64 <= 1.5x (binary) and <= 3x (JSON).

Run: ``python bench/bench_serving.py`` -> bench/results/serving.json
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from bench._common import machine, time_calls, write_result  # noqa: E402

F, ARCH = 59, "transformer"


def stats(times_s: list[float], batch: int) -> dict:
    ms = np.asarray(times_s) * 1000
    return {"batch": batch, "n": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3), "mean_ms": round(float(ms.mean()), 3),
            "rows_per_s": round(batch * len(ms) / float(np.sum(times_s)), 1)}


def runners(fc, onnx_path) -> dict:
    import torch

    from hfcast import export
    from hfcast import runners as runners_mod

    kinds = ["torch", "onnxruntime"]
    if torch.cuda.is_available():
        kinds.append("torch-compiled")
        if runners_mod.tensorrt_available():
            kinds.append("tensorrt")
    res, skipped = {}, {}
    for kind in kinds:
        r = export.runner_for(kind, fc, onnx_path=onnx_path)
        res[kind] = {"device": r.device}
        for b in (1, 64):
            x = np.random.default_rng(b).standard_normal((b, 30, F)).astype(np.float32)
            res[kind][f"batch_{b}"] = stats(time_calls(lambda: r.run(x), 300 if b == 1 else 100), b)
    for kind in ("torch-compiled", "tensorrt"):
        if kind not in res:
            skipped[kind] = "no CUDA GPU" if not torch.cuda.is_available() else "TensorRT not installed"
    return {"results": res, "not_run": skipped}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tmp: Path, bundle: Path, env: dict) -> tuple[subprocess.Popen, str, str]:
    """``hfcast serve`` on free ports: (process, HTTP base URL, gRPC address) once ready."""
    port, grpc_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "hfcast.cli", "serve", "--bundle", str(bundle), "--port", str(port),
           "--grpc-port", str(grpc_port), "--runner", "onnxruntime", "--max-staleness-s", "-1"]
    proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=open(tmp / "server.log", "w"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    for _ in range(400):
        try:
            if httpx.get(f"{base}/v2/health/ready", timeout=1).status_code == 200:
                return proc, base, f"127.0.0.1:{grpc_port}"
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("server did not become ready: " + (tmp / "server.log").read_text()[-2000:])


def tritonclient_latency(base: str, grpc_addr: str, batch: int, n: int) -> dict[str, list[float]]:
    """Seconds per request with tritonclient: gRPC (raw_input_contents in, raw_output_contents out)
    and HTTP with binary tensors both ways, calls interleaved, one channel / connection each; the
    input built and one output read inside each timed call, as a client program does.

    Runs in a process of its own: tritonclient's gRPC protobuf module and KServe's (imported by
    this benchmark's in-process parts) register the same package ``inference`` and cannot share one.
    """
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    x = np.random.default_rng(batch).standard_normal((batch, 30, F)).astype(np.float32)
    clients = {"grpc": (grpcclient, grpcclient.InferenceServerClient(grpc_addr)),
               "http_binary": (httpclient, httpclient.InferenceServerClient(base.split("//")[1]))}

    def call(kind: str) -> None:
        mod, client = clients[kind]
        inp = mod.InferInput("window", list(x.shape), "FP32")
        if kind == "grpc":
            inp.set_data_from_numpy(x)
        else:
            inp.set_data_from_numpy(x, binary_data=True)
        if client.infer("hfcast", [inp]).as_numpy("rv_10m_pred").shape != (batch,):
            raise RuntimeError(f"{kind}: wrong answer shape")

    times: dict[str, list[float]] = {k: [] for k in clients}
    for _ in range(10):
        for k in clients:
            call(k)
    for _ in range(n):
        for k in clients:
            times[k] += time_calls(lambda: call(k), 1, warmup=0)  # noqa: B023 - called at once
    for _, client in clients.values():
        client.close()
    return times


def main() -> None:
    from hfcast.config import get_settings
    from hfcast.export import export_onnx
    from hfcast.runners import make_runner
    from serving.core import ForecastService, Limits, feast_lookup
    from tests.serving_fixtures import feast_repo, tiny_forecaster
    from serving.validation import ParsedRequest

    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    env = {**os.environ, "HFCAST_HOME": str(tmp / ".hfcast"), "PYTHONPATH": f"{ROOT}:{ROOT / 'src'}"}
    settings = get_settings(env=env, cwd=tmp)
    fc = tiny_forecaster(ARCH, F, small=False)
    fc.save(str(tmp / "bundle"))
    onnx = export_onnx(fc, tmp / "model.onnx")
    side_by_side = runners(fc, onnx.path)

    feast_repo(settings, F, n_symbols=4)
    lookup = feast_lookup(settings)
    lookup_s = time_calls(lambda: lookup(["S000"]), 300)
    svc = ForecastService(fc, lookup, Limits(max_staleness_s=None))  # bench data is from 2024
    ort = make_runner("onnxruntime", fc, onnx_path=onnx.path)

    def in_process_symbol():  # what the server does for one symbol, minus HTTP/JSON
        x, ts = svc.windows(ParsedRequest("v2", symbols=["S000"]))
        return svc.v2_outputs(svc.predictions(ort.run(x)), ts)

    load_before = os.getloadavg()
    proc, base, grpc_addr = start_server(tmp, tmp / "bundle", env)
    server, overhead, overhead_httpx, triton = {}, {}, {}, {}
    path = "/v2/models/hfcast/infer"
    port = int(base.rsplit(":", 1)[1])
    try:
        lean = http.client.HTTPConnection("127.0.0.1", port)  # one keep-alive connection, no client framework

        def post_lean(body, headers):
            lean.request("POST", path, body=body, headers=headers)
            r = lean.getresponse()
            r.read()
            if r.status != 200:
                raise RuntimeError(f"server answered {r.status}")

        with httpx.Client() as c:
            for b in (1, 64):
                x = np.random.default_rng(b).standard_normal((b, 30, F)).astype(np.float32)
                bodies = {"json": (json.dumps({"inputs": [{"name": "window", "datatype": "FP32", "shape": [b, 30, F],
                                                           "data": x.ravel().tolist()}]}).encode(),
                                   {"content-type": "application/json"})}
                header = json.dumps({"inputs": [{"name": "window", "datatype": "FP32", "shape": [b, 30, F],
                                                 "parameters": {"binary_data_size": x.nbytes}}]}).encode()
                bodies["binary"] = (header + x.tobytes(), {"content-type": "application/octet-stream",
                                                           "inference-header-content-length": str(len(header))})
                for enc, (body, headers) in bodies.items():
                    calls = {"lean": lambda: post_lean(body, headers),  # noqa: E731
                             "httpx": lambda: c.post(base + path, content=body, headers=headers).raise_for_status(),
                             "local": lambda: ort.run(x)}
                    # interleave the clients and the in-process calls so all see the same machine load
                    times: dict[str, list[float]] = {k: [] for k in calls}
                    for _ in range(10):
                        for f in calls.values():
                            f()
                    for _ in range(200 if b == 1 else 60):
                        for k, f in calls.items():
                            times[k] += time_calls(f, 1, warmup=0)
                    server[f"window_batch_{b}_{enc}"] = stats(times["lean"], b)
                    server[f"window_batch_{b}_{enc}_httpx_client"] = stats(times["httpx"], b)
                    server[f"in_process_runner_batch_{b}_{enc}_interleaved"] = stats(times["local"], b)
                    overhead[f"batch_{b}_{enc}"] = round(float(np.median(times["lean"]) / np.median(times["local"])), 2)
                    overhead_httpx[f"batch_{b}_{enc}"] = round(float(np.median(times["httpx"]) / np.median(times["local"])), 2)
            sym = json.dumps({"inputs": [{"name": "symbol", "datatype": "BYTES", "shape": [1], "data": ["S000"]}]})
            post = lambda: c.post(base + path, content=sym, headers={"content-type": "application/json"}).raise_for_status()  # noqa: E731
            server["symbol_batch_1"] = stats(time_calls(post, 300, warmup=10), 1)
        lean.close()
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            for b, n in ((1, 200), (64, 60)):
                times = pool.apply(tritonclient_latency, (base, grpc_addr, b, n))
                for kind, t in times.items():
                    triton[f"window_batch_{b}_{kind}"] = stats(t, b)
                triton[f"grpc_over_http_binary_p50_batch_{b}"] = round(
                    float(np.median(times["grpc"]) / np.median(times["http_binary"])), 2)
    finally:
        proc.terminate()
        proc.wait(timeout=20)

    sym_p99 = server["symbol_batch_1"]["p99_ms"]
    payload = {
        "model": {"arch": ARCH, "n_features": F, "params": sum(p.numel() for p in fc.net.parameters()),
                  "onnx_exporter": onnx.exporter, "onnx_max_rel_err": onnx.parity["max_rel_err"]},
        "device": (machine().get("gpu") or f"CPU: {machine().get('cpu_model')} ({os.cpu_count()} cores)"),
        "runners_in_process": side_by_side,
        "server_v2_one_client": server,
        "server_v2_tritonclient": triton,
        "server_overhead_ratio_p50": overhead,
        "server_overhead_ratio_p50_httpx_client": overhead_httpx,
        "overhead_definition": "median server request (HTTP + decode + validation + scaling + runner + calibration + "
                               "encode) / median runner.run in-process, calls interleaved; the client is one keep-alive "
                               "http.client connection (what the server costs), the httpx figures add that client's own "
                               "time on the same 2 cores",
        "feast_lookup_one_symbol": stats(lookup_s, 1),
        "in_process_symbol_request": stats(time_calls(in_process_symbol, 300), 1),
        "goals": {"symbol_p99_ms_lt_20": {"value": sym_p99, "met": sym_p99 < 20},
                  "overhead_batch_64": {k: {"value": overhead[f"batch_64_{k}"], "goal_le": goal,
                                            "met": overhead[f"batch_64_{k}"] <= goal}
                                        for k, goal in (("binary", 1.5), ("json", 3.0))}},
        "load_average_1_5_15_min": {"before": [round(v, 2) for v in load_before],
                                    "after": [round(v, 2) for v in os.getloadavg()]},
        "notes": "machine shared with other jobs (load averages above; the server counts as one busy core "
                 "while measured); one sequential client on 127.0.0.1; pandas " + pd.__version__,
    }
    write_result("serving", payload)


if __name__ == "__main__":
    main()
