"""The one trainer for every architecture (as in neuralforecast: no training loop per model).

``train_forecaster`` fits the scaler on the training span, trains with AdamW, warmup + cosine
learning rate, gradient clipping and early stopping on the validation span (restoring the best
weights), then fits the calibrator on the validation span. Mixed precision and ``torch.compile``
switch on only on CUDA; on CPU the same seed gives bit-identical weights.

The training windows come from a :class:`hfcast.features.stream.WindowSource` (in memory, or
streamed from the lake by date). Under ``torchrun`` the model is wrapped in
DistributedDataParallel: rank r trains on rows r::N of the same global batches a single process
would use, and the loss is normalised by the global batch's label counts, so N processes follow
one process's trajectory up to float rounding (:mod:`hfcast.distributed`). With
``train.checkpoint_dir`` every finished epoch is saved (:mod:`hfcast.checkpoint`) and a killed
training resumes at the next epoch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, ClassVar, Mapping

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from hfcast import distributed
from hfcast.calibration import Calibrator
from hfcast.checkpoint import Checkpointer, load_optimizer, optimizer_parts, run_key
from hfcast.config import checked_section
from hfcast.features.stream import InMemorySource, WindowSource, n_batches
from hfcast.features.windows import WindowArrays, WindowDataset, make_loader
from hfcast.losses import TwoTargetLoss
from hfcast.models import build_model
from hfcast.journal import killpoint
from hfcast.models.base import TrainedNet
from hfcast.storage import join

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Training settings (params.yaml section ``train:``)."""

    SECTION: ClassVar[str] = "train"

    epochs: int = 15
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.01             # AdamW decay on weight matrices only (not biases/norms)
    warmup_frac: float = 0.05              # share of all steps with a linear LR warmup
    min_lr_frac: float = 0.05              # cosine decays the LR to lr * min_lr_frac
    grad_clip: float | None = 1.0          # max global grad norm (None = off)
    patience: int = 3                      # epochs without val improvement before stopping
    min_delta: float = 1e-4                # improvement smaller than this does not count
    seed: int = 0
    max_train_windows: int | None = 200_000  # seeded random subsample of train window ends
    max_val_windows: int | None = 100_000    # same for validation (early stopping + calibration)
    beta: float = 0.5                      # beta-NLL exponent (0 = plain Gaussian NLL)
    w_ret: float = 1.0                     # loss weight of the return target
    w_vol: float = 1.0                     # loss weight of the volatility target
    device: str = "auto"                   # auto | cpu | cuda | cuda:N
    amp: str = "auto"                      # auto (bf16/fp16 on CUDA, off on CPU) | bf16 | fp16 | off
    compile: str = "auto"                  # auto (on CUDA only) | on | off
    num_threads: int | None = None         # torch intra-op threads (None = torch default)
    num_workers: int = 0                   # DataLoader workers (batches are one gather: 0 is fine)
    eval_batch_size: int = 2048
    stream_above_rows: int | None = 2_500_000  # training spans with more feature rows stream by date (~3 GB in memory)
    stream_buffer_dates: int = 4           # dates shuffled together when streaming
    stream_cache_dir: str | None = None    # local folder of the stream's memory-mapped cache (None = temp)
    checkpoint_dir: str | None = None      # per-epoch checkpoints (folder or URL); None = off

    @classmethod
    def from_params(cls, section: Mapping[str, Any] | None) -> "TrainConfig":
        """Build from params.yaml's ``train:`` mapping; unknown keys are an error."""
        return cls(**checked_section(cls, section, "train parameter(s)"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name!r} but CUDA is not available")
    return torch.device(name)


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: bf16 where the GPU supports it, else fp16; never on CPU."""
    if amp not in ("auto", "bf16", "fp16", "off"):
        raise ValueError(f"train.amp must be auto|bf16|fp16|off, got {amp!r}")
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def warmup_cosine(total_steps: int, warmup_frac: float, min_lr_frac: float) -> Callable[[int], float]:
    """LR multiplier: linear 0 -> 1 over the warmup steps, then cosine 1 -> min_lr_frac."""
    warm = max(1, int(total_steps * warmup_frac))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, total_steps - warm))
        return min_lr_frac + (1 - min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t))

    return factor


def _optimizer(net: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    decay = [p for p in net.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in net.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=device.type == "cuda")


def _labelled_subset(wa: WindowArrays, limit: int | None, rng: np.random.Generator, span: str) -> WindowArrays:
    """Windows with at least one label, randomly subsampled (seeded) down to ``limit``."""
    if wa.y is None:
        raise ValueError(f"{span} windows carry no labels (ret_60m, rv_10m)")
    keep = np.flatnonzero(np.isfinite(wa.labels()).any(axis=1))
    if keep.size == 0:
        raise ValueError(f"{span} span has no window with a finite label ({len(wa)} windows)")
    if limit is not None and keep.size > limit:
        keep = np.sort(rng.choice(keep, size=limit, replace=False))
    return wa.select(keep)


def _autocast(device: torch.device, amp: torch.dtype | None):
    return torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()


def _predict(net: torch.nn.Module, loader, device: torch.device,
             amp: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw outputs [M, 4] and scaled labels [M, 2] of a whole loader (eval mode, CPU tensors)."""
    net.eval()
    outs, ys = [], []
    with torch.inference_mode():
        for x, y in loader:
            with _autocast(device, amp):
                outs.append(net(x.to(device, non_blocking=True)).float().cpu())
            ys.append(y)
    return torch.cat(outs), torch.cat(ys)


def _train_epoch(net, fwd, batches, opt, sched, grad_scaler, loss_fn: TwoTargetLoss, grad_clip: float | None,
                 device: torch.device, amp: torch.dtype | None, tick: Callable[[], None],
                 dctx: distributed.DistContext) -> tuple[dict[str, float], int]:
    """One pass over ``batches``: returns mean {"loss", "ret", "vol"} and the number of windows seen
    (over all ranks).

    ``net`` owns the parameters (clipping); ``fwd`` is what runs the forward (maybe compiled, maybe
    DDP). Losses accumulate on the device, so there is one host sync per epoch, not per step.
    """
    net.train()
    sums = torch.zeros(3, device=device)  # loss, ret, vol
    n_batches = n_seen = 0
    for x, y, counts in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with _autocast(device, amp):
            out = fwd(x)
        loss, parts = loss_fn(out, y, counts if dctx.active else None, dctx.world)
        opt.zero_grad(set_to_none=True)
        if grad_scaler is not None:  # fp16: scale the loss, unscale before clipping
            grad_scaler.scale(loss).backward()
            grad_scaler.unscale_(opt)
        else:
            loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
        if grad_scaler is not None:
            grad_scaler.step(opt)
            grad_scaler.update()
        else:
            opt.step()
        sched.step()
        sums += torch.stack([loss.detach(), parts["ret"], parts["vol"]])
        n_batches, n_seen = n_batches + 1, n_seen + len(x)
        tick()
    if dctx.active:  # each rank's loss is its share of the global mean: the sum over ranks is the mean
        sums = distributed.all_reduce_sum(sums, dctx) / dctx.world
        n_seen = int(distributed.all_reduce_sum(torch.tensor([n_seen], device=device), dctx).item())
    return {k: float(v) / max(1, n_batches) for k, v in zip(("loss", "ret", "vol"), sums.tolist())}, n_seen


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeRemainingColumn(), disable=not enabled, transient=True)


def train_forecaster(arch: str, train_wa: WindowArrays | WindowSource, val_wa: WindowArrays,
                     model_config: dict | None = None, cfg: TrainConfig | None = None, calibrate: bool = True,
                     progress: bool = True, on_epoch: Callable[[dict[str, Any]], None] | None = None
                     ) -> tuple[TrainedNet, dict[str, Any]]:
    """Train one architecture on the training windows, early-stopped and calibrated on validation.

    Args:
        arch: one of ``hfcast.models.ARCHITECTURES``.
        train_wa: training-span windows (with labels): a WindowArrays (subsampled here to
            ``cfg.max_train_windows``) or any :class:`hfcast.features.stream.WindowSource`, e.g.
            a StreamingSource over the lake; the scaler sees only the rows their windows cover.
        val_wa: validation-span windows (with labels), in memory (capped to ``cfg.max_val_windows``);
            used for early stopping and calibration.
        model_config: architecture config overrides (dict of its config dataclass fields).
        cfg: training settings.
        calibrate: fit ``hfcast.calibration.Calibrator`` on validation forecasts.
        progress: show rich progress bars.
        on_epoch: called with each epoch's record (e.g. to log metrics to MLflow); after a resume,
            also with the records of the epochs restored from the checkpoint.

    Returns:
        (forecaster with the best weights on CPU, history dict).
    """
    cfg = cfg or TrainConfig()
    if list(train_wa.feature_names) != list(val_wa.feature_names):
        raise ValueError("train and validation windows have different feature lists")
    with _num_threads(cfg.num_threads):
        return _train(arch, train_wa, val_wa, model_config, cfg, calibrate, progress, on_epoch)


@contextlib.contextmanager
def _num_threads(n: int | None):
    """Set torch's intra-op threads for the duration of a training run, then restore them."""
    prev = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def _train(arch: str, train_data: WindowArrays | WindowSource, val_wa: WindowArrays, model_config: dict | None,
           cfg: TrainConfig, calibrate: bool, progress: bool, on_epoch: Callable[[dict[str, Any]], None] | None
           ) -> tuple[TrainedNet, dict[str, Any]]:
    t_start = time.perf_counter()
    dctx = distributed.init_from_env(cfg.device)
    seed_everything(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = distributed.device_for(dctx, resolve_device(cfg.device))
    amp = resolve_amp(cfg.amp, device)
    if isinstance(train_data, WindowArrays):
        source: WindowSource = InMemorySource(_labelled_subset(train_data, cfg.max_train_windows, rng, "training"),
                                              cfg.seed, scaler_from=train_data)
    else:
        source = train_data
    scaler = source.fit_scaler()
    val_sel = _labelled_subset(val_wa, cfg.max_val_windows, rng, "validation")
    val_loader = make_loader(WindowDataset(val_sel, scaler), cfg.eval_batch_size, num_workers=cfg.num_workers)

    net = build_model(arch, len(source.feature_names), model_config).to(device)
    ddp = net
    if dctx.active:
        ddp = distributed.data_parallel(net, device)
    use_compile = cfg.compile == "on" or (cfg.compile == "auto" and device.type == "cuda")
    fwd = torch.compile(ddp) if use_compile else ddp
    n_train = source.n_windows()
    log.info("training %s (%d params) on %d windows, validating on %d, device=%s amp=%s compile=%s ranks=%d",
             arch, net.n_params(), n_train, len(val_sel), device, amp, use_compile, dctx.world)
    ckpt = _checkpointer(arch, model_config, cfg, source, scaler, n_train, len(val_sel), val_sel)
    run = _EpochRun(arch, net, fwd, source, scaler, val_loader, cfg, device, amp, dctx, ckpt)
    epochs, best, train_seconds, seen = run.fit(progress, on_epoch)

    net.load_state_dict(best["state"])
    net.to("cpu").eval()
    meta = {"arch": arch, "train_config": cfg.to_dict(), "best_epoch": best["epoch"], "val_loss": best["loss"],
            "n_train_windows": n_train, "n_val_windows": len(val_sel),
            "train_dates": source.dates(), "val_dates": sorted(set(val_sel.end_dates().tolist()))}
    forecaster = TrainedNet(net, scaler, list(source.feature_names), None, meta)
    if calibrate:
        forecaster.calibrator = _fit_calibrator(forecaster, val_loader, val_sel)
    history = {"arch": arch, "epochs": epochs, "best_epoch": best["epoch"], "best_val_loss": best["loss"],
               "stopped_early": len(epochs) < cfg.epochs, "seconds": time.perf_counter() - t_start,
               "train_seconds": train_seconds, "windows_per_s": seen / max(train_seconds, 1e-9),
               "n_train_windows": n_train, "n_val_windows": len(val_sel), "n_params": net.n_params(),
               "device": str(device), "amp": str(amp).replace("torch.", "") if amp else "off",
               "compiled": use_compile, "calibrated": forecaster.calibrator is not None,
               "world_size": dctx.world, "source": type(source).__name__, "resumed_at_epoch": run.resumed_at}
    return forecaster, history


def _checkpointer(arch, model_config, cfg: TrainConfig, source, scaler, n_train: int, n_val: int, val_sel):
    """The training's Checkpointer (None when ``train.checkpoint_dir`` is unset)."""
    if not cfg.checkpoint_dir:
        return None

    volatile = ("checkpoint_dir", "num_threads", "num_workers", "eval_batch_size", "device", "compile",
                "stream_above_rows", "stream_cache_dir")
    identity = {"arch": arch, "model_config": model_config or {},
                "cfg": {k: v for k, v in cfg.to_dict().items() if k not in volatile},
                "features": list(source.feature_names), "scaler": scaler.to_dict(), "n_train": n_train,
                "n_val": n_val, "source": type(source).__name__, "train_dates": source.dates(),
                "val_dates": sorted(set(val_sel.end_dates().tolist()))}

    return Checkpointer(join(cfg.checkpoint_dir, f"{arch}-{run_key(identity)}"))


# the fault-injection hook of the resume tests: exit (as a preemption would) after this epoch's checkpoint
EXIT_AFTER_EPOCH_ENV = "HFCAST_TRAIN_EXIT_AFTER_EPOCH"


class _EpochRun:
    """The epochs with early stopping on the validation loss, checkpointed and resumable."""

    def __init__(self, arch, net, fwd, source, scaler, val_loader, cfg: TrainConfig, device, amp, dctx, ckpt):
        self.arch, self.net, self.fwd, self.source, self.scaler = arch, net, fwd, source, scaler
        self.val_loader, self.cfg, self.device, self.amp, self.dctx, self.ckpt = val_loader, cfg, device, amp, dctx, ckpt
        self.opt = _optimizer(net, cfg, device)
        n = source.n_windows()
        self.drop_last = n > cfg.batch_size
        steps_per_epoch = n_batches(n, cfg.batch_size, self.drop_last)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, warmup_cosine(cfg.epochs * steps_per_epoch, cfg.warmup_frac, cfg.min_lr_frac))
        self.grad_scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
        self.loss_fn = TwoTargetLoss(cfg.beta, cfg.w_ret, cfg.w_vol)
        self.epochs: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"loss": math.inf, "epoch": -1, "state": None}
        self.bad, self.train_seconds, self.seen, self.finished = 0, 0.0, 0, False
        self.resumed_at: int | None = None

    def fit(self, progress: bool, on_epoch) -> tuple[list[dict[str, Any]], dict[str, Any], float, int]:
        """Returns the per-epoch records, the best epoch (``loss``, ``epoch``, ``state``: its weights
        on the CPU), the seconds spent in training steps and the number of windows they saw."""
        cfg = self.cfg
        start = self._resume(on_epoch)
        with _progress(progress and self.dctx.is_main) as bar:
            ep_task = bar.add_task(f"{self.arch} epochs", total=cfg.epochs, completed=start, info="")
            for epoch in range(start, cfg.epochs if not self.finished else start):
                total = n_batches(self.source.n_windows(), cfg.batch_size, self.drop_last)
                b_task = bar.add_task(f"epoch {epoch}", total=total, info="")
                rec = self._epoch(epoch, lambda: bar.advance(b_task))
                stop = not math.isfinite(rec["val_loss"]) or self.bad >= cfg.patience or epoch == cfg.epochs - 1
                self.finished = stop
                self._save(epoch)
                if on_epoch is not None:
                    on_epoch(rec)
                killpoint("train-epoch")  # a test hook; nothing without HFCAST_TEST_KILL_AT (hfcast.journal)
                if os.environ.get(EXIT_AFTER_EPOCH_ENV) == str(epoch):
                    log.warning("%s=%d: exiting after the checkpoint of epoch %d", EXIT_AFTER_EPOCH_ENV, epoch, epoch)
                    os._exit(75)
                bar.remove_task(b_task)
                bar.update(ep_task, advance=1, info=f"train {rec['train_loss']:.4f} val {rec['val_loss']:.4f} "
                                                    f"best {self.best['loss']:.4f}@{self.best['epoch']}")
                log.info("%s epoch %d: train %.4f val %.4f (%.0f windows/s)", self.arch, epoch, rec["train_loss"],
                         rec["val_loss"], rec["windows_per_s"])
                if stop:
                    break
        if self.best["state"] is None:
            raise RuntimeError(f"{self.arch} training produced no finite validation loss; lower train.lr?")
        return self.epochs, self.best, self.train_seconds, self.seen

    def _epoch(self, epoch: int, tick) -> dict[str, Any]:
        cfg = self.cfg
        batches = self.source.batches(epoch, cfg.batch_size, self.scaler, self.dctx.rank, self.dctx.world,
                                      self.drop_last, cfg.num_workers)
        t0, c0 = time.perf_counter(), time.process_time()
        train_parts, n_seen = _train_epoch(self.net, self.fwd, batches, self.opt, self.sched, self.grad_scaler,
                                           self.loss_fn, cfg.grad_clip, self.device, self.amp, tick, self.dctx)
        sec, cpu_sec = time.perf_counter() - t0, time.process_time() - c0
        self.train_seconds, self.seen = self.train_seconds + sec, self.seen + n_seen
        val_out, val_y = _predict(self.fwd, self.val_loader, self.device, self.amp)
        val_loss, val_parts = self.loss_fn(val_out, val_y)
        vals = distributed.broadcast_floats([float(val_loss), float(val_parts["ret"]), float(val_parts["vol"])],
                                            self.dctx, self.device)
        rec = {"epoch": epoch, **{f"train_{k}": v for k, v in train_parts.items()},
               "val_loss": vals[0], "val_ret": vals[1], "val_vol": vals[2],
               "lr": float(self.sched.get_last_lr()[0]), "seconds": sec, "cpu_seconds": cpu_sec,
               "windows_per_s": n_seen / max(sec, 1e-9)}
        self.epochs.append(rec)
        if rec["val_loss"] < self.best["loss"] - cfg.min_delta:
            self.best = {"loss": rec["val_loss"], "epoch": epoch,
                         "state": {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()}}
            self.bad = 0
        else:
            self.bad += 1
        return rec

    def _save(self, epoch: int) -> None:
        if self.ckpt is None or not self.dctx.is_main:
            return

        opt_t, opt_rest = optimizer_parts(self.opt)
        tensors = {**{f"model.{k}": v for k, v in self.net.state_dict().items()},
                   **{f"best.{k}": v for k, v in (self.best["state"] or {}).items()},
                   **opt_t, "rng.torch": torch.get_rng_state()}
        sched = {k: v for k, v in self.sched.state_dict().items() if k != "lr_lambdas"}
        state = {"epoch": epoch, "finished": self.finished, "epochs": self.epochs, "best_epoch": self.best["epoch"],
                 "best_loss": self.best["loss"], "bad": self.bad, "train_seconds": self.train_seconds,
                 "seen": self.seen, "optimizer": opt_rest, "scheduler": sched,
                 "grad_scaler": self.grad_scaler.state_dict() if self.grad_scaler is not None else None}
        self.ckpt.save(tensors, state)

    def _resume(self, on_epoch) -> int:
        """The first epoch to run: 0, or the one after the checkpoint's (its state restored)."""
        if self.ckpt is None:
            return 0

        found = self.ckpt.load()
        epochs = distributed.broadcast_floats([-1.0 if found is None else float(found[1]["epoch"])], self.dctx,
                                              self.device)
        if found is None or int(epochs[0]) != int(found[1]["epoch"]):
            if found is not None:
                raise RuntimeError(f"ranks see different checkpoints under {self.ckpt.url}: resume needs one file "
                                   "that every rank reads (a shared volume or the object store)")
            return 0
        tensors, state = found
        self.net.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
        self.best = {"loss": state["best_loss"], "epoch": state["best_epoch"], "state": best or None}
        load_optimizer(self.opt, tensors, state["optimizer"])
        self.sched.load_state_dict({**state["scheduler"], "lr_lambdas": [None] * len(self.opt.param_groups)})
        if self.grad_scaler is not None and state.get("grad_scaler"):
            self.grad_scaler.load_state_dict(state["grad_scaler"])
        torch.set_rng_state(tensors["rng.torch"])
        self.epochs, self.bad, self.finished = list(state["epochs"]), int(state["bad"]), bool(state["finished"])
        self.train_seconds, self.seen = float(state["train_seconds"]), int(state["seen"])
        self.resumed_at = int(state["epoch"]) + 1
        log.warning("%s: resumed from the checkpoint of epoch %d (%s)%s", self.arch, state["epoch"], self.ckpt.url,
                    ": training had finished" if self.finished else "")
        for rec in self.epochs if on_epoch is not None else ():
            on_epoch(rec)
        return self.resumed_at


def _fit_calibrator(forecaster: TrainedNet, val_loader, val_wa: WindowArrays) -> Any:
    """Calibrator fitted on the best net's validation forecasts (CPU fp32, as served); None if unavailable."""
    raw, _ = _predict(forecaster.net, val_loader, torch.device("cpu"), None)
    labels = val_wa.labels().astype(np.float64)
    try:
        return Calibrator().fit(forecaster.natural(raw.numpy()), labels[:, 0], labels[:, 1])
    except ValueError as exc:
        log.warning("calibration skipped (%s): using the Gaussian fallback", exc)
        return None
