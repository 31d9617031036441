"""Runners: every inference backend behind one call, ``Runner.run(windows_scaled [B,30,F]) -> raw [B,4]``.

Why apart from :mod:`hfcast.export`: the KServe predictor, the batch job and the benchmark only
*run* models; they should not need the exporters to do so. Export depends on runners (it checks
parity with them), never the other way round.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import os
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

log = logging.getLogger(__name__)

INPUT_NAME = "window"
OUTPUT_NAME = "raw"
INT8_KIND = "onnxruntime-int8"  # the dynamically quantized model (hfcast.quantize writes it)
RUNNER_KINDS = ("torch", "torch-compiled", "onnxruntime", INT8_KIND, "tensorrt")
STREAM_CHUNK = 128  # windows per onnxruntime call of StreamedRunner: [128, 30, 48] activations stay in L2
TENSORRT_ABSENT = "TensorRT is not available on this machine (no `tensorrt` module or no CUDA GPU): exported ONNX only."


def tensorrt_available() -> bool:
    """True when a TensorRT engine can be built and run here (the module AND a CUDA device)."""
    if importlib.util.find_spec("tensorrt") is None:
        return False
    import torch

    return torch.cuda.is_available()


def net_of(model: Any):
    """The module a runner executes, in eval mode: a forecaster's graph (its networks side by
    side, :class:`hfcast.forecaster.MemberStack`), a trained network's ``net``, or a module itself.

    Raises:
        ValueError: the forecaster serves a baseline and runs no network (nothing to execute).
    """
    if callable(getattr(model, "graph", None)):
        graph = model.graph()
        if graph is None:
            raise ValueError(f"the forecaster serves {model.kind}: it runs no network, so there is no graph "
                             "for a runner (its post-step computes the whole forecast)")
        return graph.eval()
    net = getattr(model, "net", model)
    return net.eval()


def n_outputs_of(model: Any) -> int:
    """Width of a runner's output for ``model``: 4 per network."""
    return int(getattr(model, "n_outputs", 4))


def n_features_of(model: Any) -> int:
    names = getattr(model, "feature_names", None)
    if names:
        return len(names)
    return int(getattr(model, "n_features"))


class Runner(Protocol):
    """One backend: scaled windows [B,30,F] float32 in, raw outputs [B,4k] float32 out (k networks)."""

    kind: str
    device: str

    def run(self, windows_scaled: np.ndarray) -> np.ndarray: ...


class TorchRunner:
    """PyTorch eager (or ``torch.compile``-d) on CPU or GPU."""

    def __init__(self, model: Any, compiled: bool = False, device: str | None = None):
        import torch

        self._torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.kind = "torch-compiled" if compiled else "torch"
        net = net_of(model)
        if next(net.parameters()).device.type != torch.device(self.device).type:
            net = copy.deepcopy(net).to(self.device)  # never move the caller's Forecaster
        self._net = torch.compile(net, dynamic=True) if compiled else net

    def run(self, windows_scaled: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(windows_scaled, dtype=np.float32)).to(self.device)
            return self._net(x).float().cpu().numpy()


class OnnxRuntimeRunner:
    """onnxruntime on CPU (threads follow the machine; one session, thread-safe ``run``)."""

    kind = "onnxruntime"
    device = "cpu"

    def __init__(self, onnx_path: str | Path, threads: int | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1  # the graph is a chain: parallel branches would only add threads
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # idle worker threads would spin for the next op and starve the server's event loop on a
        # small CPU; blocking costs microseconds per call instead
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        width = self._sess.get_outputs()[0].shape[-1]
        self.n_outputs = int(width) if isinstance(width, int) else 4  # 4 per network of the forecaster's graph

    def run(self, windows_scaled: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(windows_scaled, dtype=np.float32)
        return self._sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def cores() -> int:
    """CPU cores this process may use (the affinity mask, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_worker(workers: int) -> int:
    """Intra-op threads for each of ``workers`` processes: the cores split evenly, at least 1."""
    return max(1, cores() // max(1, workers))


class StreamedRunner(OnnxRuntimeRunner):
    """onnxruntime on CPU for large batches: chunks of ``chunk`` windows, ``streams`` at a time.

    Why not one call with ``threads`` intra-op threads: the transformer's ops are small (d_model
    48), so splitting each op across threads costs a barrier per op. Measured on the 2-core
    machine (bench/results/predict.json, ``model_only``): one single-threaded session called
    from ``streams`` Python threads at once (onnxruntime releases the GIL, ``run`` is thread-safe)
    on chunks of 128 windows - which stay in cache - was 1.4-1.5x faster than 2 intra-op threads
    on 512-window batches. Small batches (the server's) are one direct call.
    """

    def __init__(self, onnx_path: str | Path, threads: int | None = None, chunk: int = STREAM_CHUNK):
        from concurrent.futures import ThreadPoolExecutor

        super().__init__(onnx_path, threads=1)
        self.streams = max(1, threads or cores())
        self.chunk = chunk
        self._pool = ThreadPoolExecutor(self.streams, thread_name_prefix="ort") if self.streams > 1 else None

    def run(self, windows_scaled: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(windows_scaled, dtype=np.float32)
        if len(x) <= self.chunk:
            return super().run(x)
        return self.run_windows(x.__getitem__, len(x))

    def run_windows(self, gather: Callable[[slice], np.ndarray], n: int) -> np.ndarray:
        """Raw outputs [n, 4k] of windows 0..n-1, each stream gathering its own chunks (``gather(slice)``
        -> [k, 30, F]) right before running them.

        Why: materialising a whole batch first and then running it leaves the other stream idle
        during the gather and at every batch's end; pulling chunks keeps both busy (bench_predict:
        +5-15% model throughput on a whole date against 512-window batches). Chunk boundaries are
        fixed by position, so reruns give the same bytes.
        """
        out = np.empty((n, self.n_outputs), np.float32)

        def one(a: int) -> None:
            x = np.ascontiguousarray(gather(slice(a, min(a + self.chunk, n))), dtype=np.float32)
            out[a:a + len(x)] = self._sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0]

        starts = range(0, n, self.chunk)
        if self._pool is None:
            for a in starts:
                one(a)
        else:
            list(self._pool.map(one, starts))
        return out


def run_windows(runner: Any, gather: Callable[[slice], np.ndarray], n: int, batch: int) -> np.ndarray:
    """Raw outputs [n, 4k] of the windows ``gather`` materialises, ``batch`` at a time (``runner``: a
    Runner or a ``run`` callable); a runner with its own ``run_windows`` (StreamedRunner) takes over."""
    own = getattr(runner, "run_windows", None)
    if own is not None:
        return own(gather, n)
    run = getattr(runner, "run", runner)
    parts = [run(np.ascontiguousarray(gather(slice(a, min(a + batch, n))))) for a in range(0, n, batch)]
    return np.concatenate(parts).astype(np.float32, copy=False) if parts else np.empty((0, 4), np.float32)


class Int8Runner(StreamedRunner):
    """The int8 (dynamically quantized, :mod:`hfcast.quantize`) model, run like :class:`StreamedRunner`.

    Dynamic quantization scales activations per call, so the fixed chunking by position keeps
    reruns byte-stable; the contract is the fp32 runners'.
    """

    kind = INT8_KIND


class TensorRTRunner:
    """A TensorRT plan executed with torch-allocated CUDA buffers (needs TensorRT + GPU).

    A plan is compiled for the GPU model (and TensorRT version) it was built on: loaded on another
    one, TensorRT fails with an opaque error or, across close models, may run with kernels tuned for
    the wrong chip. So the build writes ``<plan>.device.json`` (:meth:`record_device`) and loading
    refuses a plan whose record names another GPU model, compute capability or TensorRT
    (:meth:`check_device`); a plan without a record (built before records existed) loads with a
    warning, TensorRT's own check being the only one left.
    """

    kind = "tensorrt"
    device = "cuda"
    DEVICE_SUFFIX = ".device.json"
    DEVICE_KEYS = ("gpu", "compute_capability", "tensorrt")

    def __init__(self, plan_path: str | Path):
        if not tensorrt_available():
            raise RuntimeError(TENSORRT_ABSENT)
        import tensorrt as trt
        import torch

        self.check_device(plan_path, self.current_device())
        self._torch = torch
        self._engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(
            Path(plan_path).read_bytes())
        self._ctx = self._engine.create_execution_context()

    @staticmethod
    def current_device() -> dict[str, str]:
        """This machine's GPU model, compute capability and TensorRT version (needs both)."""
        import tensorrt as trt
        import torch

        major, minor = torch.cuda.get_device_capability()
        return {"gpu": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}",
                "tensorrt": str(trt.__version__)}

    @classmethod
    def device_file(cls, plan_path: str | Path) -> Path:
        return Path(f"{plan_path}{cls.DEVICE_SUFFIX}")

    @classmethod
    def record_device(cls, plan_path: str | Path, device: dict[str, str]) -> Path:
        """Write what ``plan_path`` was built on beside it; returns the record's path."""
        import json

        missing = [k for k in cls.DEVICE_KEYS if not device.get(k)]
        if missing:
            raise ValueError(f"device record for {plan_path} lacks {missing}")
        path = cls.device_file(plan_path)
        path.write_text(json.dumps({k: str(device[k]) for k in cls.DEVICE_KEYS}, indent=1))
        return path

    @classmethod
    def check_device(cls, plan_path: str | Path, current: dict[str, str]) -> dict[str, str] | None:
        """Refuse a plan built on another GPU model, compute capability or TensorRT; returns its record."""
        import json

        from hfcast.errors import UserError

        path = cls.device_file(plan_path)
        if not path.exists():
            log.warning("%s has no %s record of the GPU it was built on: its GPU cannot be checked", plan_path,
                        cls.DEVICE_SUFFIX)
            return None
        try:
            built = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"{path} is not a readable device record ({exc})",
                            "rebuild the TensorRT plan on this GPU (`hfcast export` on a GPU machine)") from None
        differ = [k for k in cls.DEVICE_KEYS if str(built.get(k)) != str(current.get(k))]
        if differ:
            was = ", ".join(f"{k} {built.get(k)!r}" for k in differ)
            now = ", ".join(f"{k} {current.get(k)!r}" for k in differ)
            raise UserError(f"TensorRT plan {plan_path} was built for {was}; this machine has {now}",
                            "rebuild the plan on this GPU model (`hfcast export` on this machine), or serve the "
                            "ONNX model (runner onnxruntime)")
        return built

    def run(self, windows_scaled: np.ndarray) -> np.ndarray:
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(windows_scaled, dtype=np.float32)).cuda()
        width = int(self._engine.get_tensor_shape(OUTPUT_NAME)[-1])  # 4 per network of the forecaster
        out = torch.empty((x.shape[0], width), dtype=torch.float32, device="cuda")
        self._ctx.set_input_shape(INPUT_NAME, tuple(x.shape))
        self._ctx.set_tensor_address(INPUT_NAME, x.data_ptr())
        self._ctx.set_tensor_address(OUTPUT_NAME, out.data_ptr())
        stream = torch.cuda.current_stream()
        if not self._ctx.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return out.cpu().numpy()


def choose_runner_kind(cuda: bool, tensorrt: bool) -> str:
    """The rule behind ``make_runner("auto")``: TensorRT > compiled torch on GPU > onnxruntime on CPU.

    The CPU half is measured (bench/results/serving.json: onnxruntime is about 2x faster than
    torch eager at batch 1 and 5x at batch 64, with a far smaller p99). The GPU order is
    NVIDIA's usual ranking and has not been measured by this project: run the benchmark on a GPU.
    """
    if cuda and tensorrt:
        return "tensorrt"
    if cuda:
        return "torch-compiled"
    return "onnxruntime"


def resolve_kind(kind: str) -> str:
    """``auto`` -> the fastest kind available here (:func:`choose_runner_kind`); others unchanged."""
    if kind != "auto":
        return kind
    import torch

    kind = choose_runner_kind(torch.cuda.is_available(), tensorrt_available())
    log.info("runner auto-choice: %s", kind)
    return kind


def make_runner(kind: str, forecaster: Any, onnx_path: str | Path | None = None,
                plan_path: str | Path | None = None) -> Runner:
    """A runner of the given kind (or the fastest available for ``"auto"``) over existing files.

    ONNX and TensorRT runners need the exported file (``onnx_path`` / ``plan_path``); to export on
    demand from a forecaster, use :func:`hfcast.export.runner_for`.
    """
    kind = resolve_kind(kind)
    if kind not in RUNNER_KINDS:
        raise ValueError(f"unknown runner kind {kind!r}; choose one of {RUNNER_KINDS + ('auto',)}")
    if kind in ("torch", "torch-compiled"):
        return TorchRunner(forecaster, compiled=kind == "torch-compiled")
    if kind == "onnxruntime":
        if onnx_path is None:
            raise ValueError("the onnxruntime runner needs onnx_path (hfcast.export.runner_for exports one)")
        return OnnxRuntimeRunner(onnx_path)
    if kind == INT8_KIND:
        if onnx_path is None:
            raise ValueError("the int8 runner needs onnx_path, the int8 model (hfcast.export.runner_for quantizes one)")
        return Int8Runner(onnx_path)
    if plan_path is None:
        if not tensorrt_available():
            raise RuntimeError(TENSORRT_ABSENT)
        raise ValueError("the TensorRT runner needs plan_path (hfcast.export.runner_for builds one)")
    return TensorRTRunner(plan_path)
