"""One prepared GPU check: training and inference throughput on a CUDA machine, in under 8 minutes.

Run: ``python -m bench.device_check [--budget-s 400] [--out FILE]`` (imports and the last
measurement add well under a minute: the whole command stays under 8 minutes).

On a CUDA GPU it measures, writing ``bench/results/device_check.json`` after every section (a
run cut short still leaves what it measured):

* **inference** windows/s of the default transformer at several batch sizes: eager fp32, eager
  AMP, ``torch.compile`` AMP, a captured CUDA graph of the eager AMP forward, ``torch.compile``
  in ``reduce-overhead`` mode (CUDA graphs + Inductor), and TensorRT FP16 when ``tensorrt``
  is importable (through :mod:`hfcast.export`);
* the best variant again with host<->device copies from pinned memory, and from it the
  extrapolated **dense year of 1000 symbols** (98.28 M stock-minutes; featurization and I/O
  excluded);
* last (the budget skips what no longer fits), **training** windows/s of every architecture
  (default configs, the real loss, fused AdamW, gradient clipping, as ``hfcast.train`` steps)
  with AMP (bf16 where supported, else fp16), eager and ``torch.compile``-d, at the configured
  batch (256) and a large one (4096);
* **data-parallel training**: the same AMP step with the model in DistributedDataParallel
  (NCCL, one process on the one GPU; the loss normalised by the global batch's label counts as
  ``hfcast.train`` does under torchrun), beside the plain step: what DDP's gradient all-reduce
  hooks cost per step before a second GPU is added.

Without a CUDA GPU it says so, runs the same code paths on the CPU at tiny sizes (compile with
the ``eager`` backend, no CUDA graphs / TensorRT, DDP over gloo), writes ``device_check_dryrun.json`` and exits 0:
this is what ``tests/code/test_device_check.py`` runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch._dynamo

from bench._common import RESULTS, machine
from hfcast.losses import TwoTargetLoss
from hfcast.models import ARCHITECTURES, build_model

log = logging.getLogger("device_check")

LOOKBACK = 30
N_FEATURES = 59
YEAR_STOCK_MINUTES = 1000 * 252 * 390  # 98.28 M

GPU_PLAN = {"train_batches": (256, 4096), "infer_batches": (1024, 8192, 65536), "seconds": 2.0,
            "min_iters": 5, "warmup": 2, "compile_backend": "inductor", "budget_s": 400, "small": False,
            "start_margin_s": 40}  # no measurement starts with less left (a compile can take that long)
# the dry run: same calls, tiny nets (one layer, width 8-16) and batches, one timed call each
DRY_PLAN = {"train_batches": (4,), "infer_batches": (2, 4), "seconds": 0.0, "min_iters": 1, "warmup": 1,
            "compile_backend": "eager", "budget_s": 120, "small": True, "start_margin_s": 0}
SMALL = {"transformer": {"d_model": 16, "n_layers": 1, "n_heads": 2, "head_hidden": 8},
         "lstm": {"hidden": 16, "n_layers": 1, "head_hidden": 8},
         "tcn": {"channels": 8, "n_levels": 2, "head_hidden": 8},
         "hybrid": {"channels": 8, "tcn_levels": 1, "n_layers": 1, "n_heads": 2, "head_hidden": 8}}


def _net(arch: str, plan: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(arch, N_FEATURES, SMALL[arch] if plan["small"] else None)


class Budget:
    """Wall-clock budget: sections that would start after it are skipped and say so."""

    def __init__(self, seconds: float, margin: float = 0.0):
        self.deadline = time.monotonic() + seconds
        self.margin = margin

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def check(self, what: str, need_s: float = 0.0) -> None:
        if self.left() < need_s:
            raise TimeoutError(f"skipped {what}: time budget spent")


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 on GPUs that have it (no loss scaling), fp16 on older ones, bf16 autocast on CPU."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(step: Callable[[], Any], items: int, device: torch.device, seconds: float, min_iters: int,
         warmup: int = 2) -> dict:
    """Items/s of ``step`` after warm-up calls: as many calls as fit in ``seconds`` (>= min_iters)."""
    for _ in range(warmup):
        step()
    sync(device)
    n, t0 = 0, time.perf_counter()
    while n < min_iters or time.perf_counter() - t0 < seconds:
        step()
        n += 1
        if n % 8 == 0:
            sync(device)
    sync(device)
    dt = time.perf_counter() - t0
    return {"items_per_s": round(items * n / dt, 1), "iters": n, "seconds": round(dt, 3)}


def _batch(b: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(b)
    x = torch.randn(b, LOOKBACK, N_FEATURES, generator=g).to(device)
    y = torch.randn(b, 2, generator=g).to(device)
    y[::7, 0] = float("nan")  # missing labels, as near the close
    return x, y


def train_rate(arch: str, batch: int, compiled: bool, device: torch.device, plan: dict, ddp: bool = False) -> dict:
    """Training windows/s of one architecture: AMP forward, loss, backward, clip, fused AdamW step
    (``ddp``: the model in DistributedDataParallel of the process group :func:`section_ddp` opened)."""
    net = _net(arch, plan).to(device).train()
    fwd = net
    if ddp:
        from hfcast.distributed import data_parallel

        fwd = data_parallel(net, device)
    fwd = torch.compile(fwd, backend=plan["compile_backend"]) if compiled else fwd
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, fused=device.type == "cuda")
    dtype = amp_dtype(device)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    loss_fn = TwoTargetLoss()
    x, y = _batch(batch, device)
    counts = torch.isfinite(y).sum(0).float() if ddp else None  # the global batch's labels (one rank here)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype):
            out = fwd(x)
        loss, _ = loss_fn(out.float(), y, counts, 1)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()

    t0 = time.perf_counter()
    step()  # the first call compiles
    sync(device)
    first = time.perf_counter() - t0
    res = rate(step, batch, device, plan["seconds"], plan["min_iters"], plan["warmup"])
    return {**res, "first_step_s": round(first, 2), "amp": str(dtype).replace("torch.", "")}


def section_training(device: torch.device, plan: dict, budget: Budget) -> dict:
    out: dict[str, Any] = {}
    for arch in ARCHITECTURES:
        for compiled in (False, True):
            for b in plan["train_batches"]:
                key = f"{arch}/{'compiled' if compiled else 'eager'}_amp/batch_{b}"
                out[key] = _guarded(lambda: train_rate(arch, b, compiled, device, plan), key, budget)
    return out


def section_ddp(device: torch.device, plan: dict, budget: Budget) -> dict:
    """DDP (NCCL on the GPU, gloo on the CPU dry run) with one process vs the plain step, AMP, eager."""
    import torch.distributed as dist

    from hfcast.testing.servers import free_port

    backend = "nccl" if device.type == "cuda" else "gloo"
    out: dict[str, Any] = {"backend": backend, "world_size": 1}
    try:
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    except Exception as exc:  # no NCCL in this build: say so, keep the rest of the run
        return {**out, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    try:
        for arch in ARCHITECTURES:
            b = max(plan["train_batches"])
            plain = _guarded(lambda: train_rate(arch, b, False, device, plan), f"{arch}/plain", budget)
            wrapped = _guarded(lambda: train_rate(arch, b, False, device, plan, ddp=True), f"{arch}/ddp", budget)
            entry = {"batch": b, "plain_amp": plain, "ddp_amp": wrapped}
            if "items_per_s" in plain and "items_per_s" in wrapped:
                entry["ddp_over_plain"] = round(wrapped["items_per_s"] / plain["items_per_s"], 3)
            out[arch] = entry
    finally:
        dist.destroy_process_group()
    return out


# --- inference -----------------------------------------------------------------------------------

def _inference_net(device: torch.device, plan: dict) -> torch.nn.Module:
    return _net("transformer", plan).to(device).eval()


def cuda_graph_forward(net: torch.nn.Module, batch: int, device: torch.device,
                       dtype: torch.dtype | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Capture ``net``'s AMP forward at a fixed batch once; each call copies in and replays."""
    static_x = torch.zeros(batch, LOOKBACK, N_FEATURES, device=device)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    # autocast's weight-cast cache must be off around a capture (PyTorch's CUDA graphs notes)
    with torch.cuda.stream(side), torch.inference_mode(), torch.autocast("cuda", dtype=dtype, cache_enabled=False):
        for _ in range(3):  # warm up kernels (and cuBLAS workspaces) outside the capture
            net(static_x)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(graph), torch.autocast("cuda", dtype=dtype, cache_enabled=False):
        static_y = net(static_x)

    def run(x: torch.Tensor) -> torch.Tensor:
        static_x.copy_(x)
        graph.replay()
        return static_y

    return run


def _variants(net: torch.nn.Module, device: torch.device, plan: dict) -> dict[str, Callable[[int], Callable]]:
    """name -> (batch -> forward(x)). CUDA-only variants are absent on the CPU."""
    dtype = amp_dtype(device)
    compiled = torch.compile(net, backend=plan["compile_backend"])

    def amp(f: Callable) -> Callable:
        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype):
                return f(x)
        return run

    def fp32(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return net(x)

    variants: dict[str, Callable[[int], Callable]] = {
        "eager_fp32": lambda b: fp32, "eager_amp": lambda b: amp(net), "compiled_amp": lambda b: amp(compiled)}
    if device.type == "cuda":
        reduce = torch.compile(net, mode="reduce-overhead")
        variants["cuda_graph_amp"] = lambda b: cuda_graph_forward(net, b, device, dtype)
        variants["compiled_reduce_overhead_amp"] = lambda b: amp(reduce)
    return variants


_STATE: dict[str, Any] = {}  # the inference section's net and variants, reused (not recompiled) later


def section_inference(device: torch.device, plan: dict, budget: Budget) -> dict:
    net = _inference_net(device, plan)
    variants = _variants(net, device, plan)
    _STATE.update(net=net, variants=variants)
    out: dict[str, Any] = {}
    for name, make in variants.items():
        for b in plan["infer_batches"]:
            key = f"{name}/batch_{b}"

            def measure(make=make, b=b) -> dict:
                fwd = make(b)
                x, _ = _batch(b, device)
                return rate(lambda: fwd(x), b, device, plan["seconds"], plan["min_iters"], plan["warmup"])

            out[key] = _guarded(measure, key, budget)
    out["tensorrt"] = _guarded(lambda: tensorrt_rate(net, device, plan), "tensorrt", budget)
    return out


def tensorrt_rate(net: torch.nn.Module, device: torch.device, plan: dict) -> dict:
    """TensorRT FP16 (normalisation FP32) through hfcast.export, host arrays in and out."""
    import tempfile

    import numpy as np

    from hfcast import export, runners

    if not runners.tensorrt_available():
        return {"skipped": runners.TENSORRT_ABSENT}
    with tempfile.TemporaryDirectory(prefix="hfcast-trt-") as tmp:
        onnx_path = export.export_onnx(net.cpu(), Path(tmp) / "model.onnx").path
        net.to(device)
        big = max(plan["infer_batches"])
        export.build_tensorrt_engine(onnx_path, Path(tmp) / "model.plan", N_FEATURES, max_batch=big)
        runner = runners.TensorRTRunner(Path(tmp) / "model.plan")
        out = {}
        for b in plan["infer_batches"]:
            x = np.random.default_rng(b).standard_normal((b, LOOKBACK, N_FEATURES)).astype(np.float32)
            out[f"batch_{b}_with_copies"] = rate(lambda: runner.run(x), b, device, plan["seconds"],
                                                 plan["min_iters"], plan["warmup"])
        return out


def best_variant(inference: dict) -> tuple[str, int, float] | None:
    """(variant, batch, windows/s) of the fastest measured device-resident inference."""
    best = None
    for key, res in inference.items():
        if "/batch_" not in key or not isinstance(res, dict) or "items_per_s" not in res:
            continue
        name, b = key.split("/batch_")
        if best is None or res["items_per_s"] > best[2]:
            best = (name, int(b), res["items_per_s"])
    return best


def with_copies_rate(name: str, batch: int, device: torch.device, plan: dict) -> dict:
    """The best variant fed from pinned host memory, results copied back (what a batch job sees)."""
    variants = _STATE.get("variants") or _variants(_inference_net(device, plan), device, plan)
    fwd = variants[name](batch)
    x_host, _ = _batch(batch, torch.device("cpu"))
    if device.type == "cuda":
        x_host = x_host.pin_memory()
    out_host = torch.empty(batch, 4, pin_memory=device.type == "cuda")

    def step() -> None:
        out_host.copy_(fwd(x_host.to(device, non_blocking=True)).float(), non_blocking=True)

    return rate(step, batch, device, plan["seconds"], plan["min_iters"], plan["warmup"])


def dense_year(windows_per_s: float) -> dict:
    """Wall time of the model over a dense year of 1000 symbols at a measured rate."""
    seconds = YEAR_STOCK_MINUTES / windows_per_s
    return {"stock_minutes": YEAR_STOCK_MINUTES, "windows_per_s": windows_per_s, "model_seconds": round(seconds, 1),
            "model_minutes": round(seconds / 60, 2), "excludes": "featurization, parquet reads, CSV writes"}


# --- driver --------------------------------------------------------------------------------------

def _guarded(fn: Callable[[], dict], what: str, budget: Budget) -> dict:
    """Run one measurement; a failure or a spent budget is recorded, never fatal."""
    try:
        budget.check(what, budget.margin)
        res = fn()
        log.info("%s: %s", what, res.get("items_per_s", res))
        return res
    except TimeoutError as exc:
        return {"skipped": str(exc)}
    except Exception as exc:  # one broken variant must not cost the whole (device-time-limited) run
        log.exception("%s failed", what)
        return {"error": f"{type(exc).__name__}: {str(exc)[:400]}"}


def device_description(device: torch.device) -> dict:
    if device.type != "cuda":
        return {"type": "cpu", "name": machine().get("cpu_model", "cpu"), "cuda": False}
    p = torch.cuda.get_device_properties(device)
    return {"type": "cuda", "name": torch.cuda.get_device_name(device), "cuda": True,
            "memory_gb": round(p.total_memory / 1024**3, 1), "capability": f"{p.major}.{p.minor}",
            "cuda_version": torch.version.cuda, "count": torch.cuda.device_count()}


def run(out_path: Path | None, budget_s: float | None, force_cpu: bool = False) -> dict:
    cuda = torch.cuda.is_available() and not force_cpu
    device = torch.device("cuda:0" if cuda else "cpu")
    plan = dict(GPU_PLAN if cuda else DRY_PLAN)
    if not cuda:
        log.warning("no CUDA GPU here: CPU dry run of the same code paths at tiny sizes (no figures to quote)")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    # 3 batch sizes x several compiled wrappers of one module: more than the default recompile limit
    for knob in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, 64)
    budget = Budget(budget_s or plan["budget_s"], plan["start_margin_s"])
    out_path = out_path or RESULTS / ("device_check.json" if cuda else "device_check_dryrun.json")
    doc: dict[str, Any] = {"benchmark": "device_check", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "device": device_description(device), "dry_run": not cuda, "plan": plan,
                           "machine": machine(), "load_average_1_5_15m": list(os.getloadavg())}
    t0 = time.perf_counter()
    doc["inference"] = section_inference(device, plan, budget)  # first: the figure the GPU is lent for
    _write(out_path, doc, t0)
    best = best_variant(doc["inference"])
    if best is not None:
        name, b, _ = best
        copies = _guarded(lambda: with_copies_rate(name, b, device, plan), "with_copies", budget)
        doc["best_inference"] = {"variant": name, "batch": b, "device_resident_windows_per_s": best[2],
                                 "with_host_copies": copies}
        rate_ = copies.get("items_per_s", best[2])
        doc["dense_year_1000_symbols"] = dense_year(rate_)
    _write(out_path, doc, t0)
    doc["ddp"] = section_ddp(device, plan, budget)  # before the long training grid: the budget must not skip it
    _write(out_path, doc, t0)
    doc["training"] = section_training(device, plan, budget)
    _write(out_path, doc, t0)
    return doc


def _write(path: Path, doc: dict, t0: float) -> None:
    doc["wall_seconds"] = round(time.perf_counter() - t0, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/device_check*.json)")
    ap.add_argument("--budget-s", type=float, default=None, help="wall-clock budget (GPU default 400 s)")
    ap.add_argument("--cpu", action="store_true", help="force the CPU dry run even with a GPU")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    doc = run(a.out, a.budget_s, a.cpu)
    if doc["dry_run"]:
        print("no CUDA GPU: dry run done (code paths checked, no figures); on a GPU machine run "
              "`python -m bench.device_check`", file=sys.stderr)
    else:
        best = doc.get("best_inference", {})
        print(f"{doc['device']['name']}: best inference {best.get('variant')} "
              f"{best.get('device_resident_windows_per_s')} windows/s; dense year "
              f"{doc.get('dense_year_1000_symbols', {}).get('model_minutes')} min -> "
              f"{a.out or RESULTS / 'device_check.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
