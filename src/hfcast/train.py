"""The one trainer for every architecture (as in neuralforecast: no training loop per model).

``train_forecaster`` fits the scaler on the training span, trains with AdamW, warmup + cosine
learning rate, gradient clipping and early stopping on the validation span (restoring the best
weights), then fits the calibrator on the validation span. Mixed precision and ``torch.compile``
switch on only on CUDA; on CPU the same seed gives bit-identical weights.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from hfcast.config import checked_section
from hfcast.features.windows import WindowArrays, WindowDataset, fit_scaler, make_loader
from hfcast.journal import killpoint
from hfcast.losses import TwoTargetLoss
from hfcast.models import build_model
from hfcast.models.base import TrainedNet

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Training settings (params.yaml section ``train:``)."""

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


def _train_epoch(net, fwd, loader, opt, sched, grad_scaler, loss_fn: TwoTargetLoss, grad_clip: float | None,
                 device: torch.device, amp: torch.dtype | None,
                 tick: Callable[[], None]) -> tuple[dict[str, float], int]:
    """One pass over ``loader``: returns mean {"loss", "ret", "vol"} and the number of windows seen.

    ``net`` owns the parameters (clipping); ``fwd`` is what runs the forward (maybe compiled).
    Losses accumulate on the device, so there is one host sync per epoch, not per step.
    """
    net.train()
    sums = {"loss": torch.zeros((), device=device), "ret": torch.zeros((), device=device),
            "vol": torch.zeros((), device=device)}
    n_batches = n_seen = 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with _autocast(device, amp):
            out = fwd(x)
        loss, parts = loss_fn(out, y)
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
        sums["loss"] += loss.detach()
        sums["ret"] += parts["ret"]
        sums["vol"] += parts["vol"]
        n_batches, n_seen = n_batches + 1, n_seen + len(x)
        tick()
    return {k: float(v) / max(1, n_batches) for k, v in sums.items()}, n_seen


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeRemainingColumn(), disable=not enabled, transient=True)


def train_forecaster(arch: str, train_wa: WindowArrays, val_wa: WindowArrays, model_config: dict | None = None,
                     cfg: TrainConfig | None = None, calibrate: bool = True, progress: bool = True,
                     on_epoch: Callable[[dict[str, Any]], None] | None = None) -> tuple[TrainedNet, dict[str, Any]]:
    """Train one architecture on the training windows, early-stopped and calibrated on validation.

    Args:
        arch: one of ``hfcast.models.ARCHITECTURES``.
        train_wa: training-span windows (with labels); the scaler sees only the rows they cover.
        val_wa: validation-span windows (with labels); used for early stopping and calibration.
        model_config: architecture config overrides (dict of its config dataclass fields).
        cfg: training settings.
        calibrate: fit ``hfcast.calibration.Calibrator`` on validation forecasts.
        progress: show rich progress bars.
        on_epoch: called with each epoch's record (e.g. to log metrics to MLflow).

    Returns:
        (forecaster with the best weights on CPU, history dict).
    """
    cfg = cfg or TrainConfig()
    if train_wa.feature_names != val_wa.feature_names:
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


def _train(arch: str, train_wa: WindowArrays, val_wa: WindowArrays, model_config: dict | None, cfg: TrainConfig,
           calibrate: bool, progress: bool, on_epoch: Callable[[dict[str, Any]], None] | None
           ) -> tuple[TrainedNet, dict[str, Any]]:
    t_start = time.perf_counter()
    seed_everything(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device, scaler = resolve_device(cfg.device), fit_scaler(train_wa)
    amp = resolve_amp(cfg.amp, device)
    train_sel = _labelled_subset(train_wa, cfg.max_train_windows, rng, "training")
    val_sel = _labelled_subset(val_wa, cfg.max_val_windows, rng, "validation")
    train_ds, val_ds = WindowDataset(train_sel, scaler), WindowDataset(val_sel, scaler)
    val_loader = make_loader(val_ds, cfg.eval_batch_size, num_workers=cfg.num_workers)

    net = build_model(arch, len(train_wa.feature_names), model_config).to(device)
    use_compile = cfg.compile == "on" or (cfg.compile == "auto" and device.type == "cuda")
    fwd = torch.compile(net) if use_compile else net
    log.info("training %s (%d params) on %d windows, validating on %d, device=%s amp=%s compile=%s",
             arch, net.n_params(), len(train_ds), len(val_ds), device, amp, use_compile)
    epochs, best, train_seconds, seen = _fit_epochs(arch, net, fwd, train_ds, val_loader, cfg, device, amp,
                                                    progress, on_epoch)

    net.load_state_dict(best["state"])
    net.to("cpu").eval()
    meta = {"arch": arch, "train_config": cfg.to_dict(), "best_epoch": best["epoch"], "val_loss": best["loss"],
            "n_train_windows": len(train_ds), "n_val_windows": len(val_ds),
            "train_dates": sorted(set(train_sel.end_dates().tolist())),
            "val_dates": sorted(set(val_sel.end_dates().tolist()))}
    forecaster = TrainedNet(net, scaler, train_wa.feature_names, None, meta)
    if calibrate:
        forecaster.calibrator = _fit_calibrator(forecaster, val_loader, val_sel)
    history = {"arch": arch, "epochs": epochs, "best_epoch": best["epoch"], "best_val_loss": best["loss"],
               "stopped_early": len(epochs) < cfg.epochs, "seconds": time.perf_counter() - t_start,
               "train_seconds": train_seconds, "windows_per_s": seen / max(train_seconds, 1e-9),
               "n_train_windows": len(train_ds), "n_val_windows": len(val_ds), "n_params": net.n_params(),
               "device": str(device), "amp": str(amp).replace("torch.", "") if amp else "off",
               "compiled": use_compile, "calibrated": forecaster.calibrator is not None}
    return forecaster, history


def _fit_epochs(arch: str, net: torch.nn.Module, fwd: Callable, train_ds: WindowDataset, val_loader, cfg: TrainConfig,
                device: torch.device, amp: torch.dtype | None, progress: bool,
                on_epoch: Callable[[dict[str, Any]], None] | None
                ) -> tuple[list[dict[str, Any]], dict[str, Any], float, int]:
    """The epochs with early stopping on the validation loss.

    Returns:
        The per-epoch records, the best epoch (``loss``, ``epoch``, ``state``: its weights on the
        CPU), the seconds spent in training steps and the number of windows they saw.
    """
    opt = _optimizer(net, cfg, device)
    drop_last = len(train_ds) > cfg.batch_size
    steps_per_epoch = len(train_ds) // cfg.batch_size if drop_last else 1
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.epochs * steps_per_epoch, cfg.warmup_frac,
                                                                 cfg.min_lr_frac))
    grad_scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    loss_fn = TwoTargetLoss(cfg.beta, cfg.w_ret, cfg.w_vol)
    epochs: list[dict[str, Any]] = []
    best = {"loss": math.inf, "epoch": -1, "state": None}
    bad, train_seconds, seen = 0, 0.0, 0
    with _progress(progress) as bar:
        ep_task = bar.add_task(f"{arch} epochs", total=cfg.epochs, info="")
        for epoch in range(cfg.epochs):
            loader = make_loader(train_ds, cfg.batch_size, shuffle=True, seed=cfg.seed * 100_003 + epoch,
                                 drop_last=drop_last, num_workers=cfg.num_workers)
            b_task = bar.add_task(f"epoch {epoch}", total=len(loader), info="")
            t0, c0 = time.perf_counter(), time.process_time()
            train_parts, n_seen = _train_epoch(net, fwd, loader, opt, sched, grad_scaler, loss_fn, cfg.grad_clip,
                                               device, amp, lambda: bar.advance(b_task))
            sec, cpu_sec = time.perf_counter() - t0, time.process_time() - c0
            train_seconds, seen = train_seconds + sec, seen + n_seen
            val_out, val_y = _predict(fwd, val_loader, device, amp)
            val_loss, val_parts = loss_fn(val_out, val_y)
            rec = {"epoch": epoch, **{f"train_{k}": v for k, v in train_parts.items()},
                   "val_loss": float(val_loss), **{f"val_{k}": float(v) for k, v in val_parts.items()},
                   "lr": float(sched.get_last_lr()[0]), "seconds": sec, "cpu_seconds": cpu_sec,
                   "windows_per_s": n_seen / max(sec, 1e-9)}
            epochs.append(rec)
            if on_epoch is not None:
                on_epoch(rec)
            killpoint("train-epoch")  # a test hook; nothing without HFCAST_TEST_KILL_AT (hfcast.journal)
            if rec["val_loss"] < best["loss"] - cfg.min_delta:
                best = {"loss": rec["val_loss"], "epoch": epoch,
                        "state": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}}
                bad = 0
            else:
                bad += 1
            bar.remove_task(b_task)
            bar.update(ep_task, advance=1, info=f"train {rec['train_loss']:.4f} val {rec['val_loss']:.4f} "
                                                f"best {best['loss']:.4f}@{best['epoch']}")
            log.info("%s epoch %d: train %.4f val %.4f (%.0f windows/s)", arch, epoch, rec["train_loss"],
                     rec["val_loss"], rec["windows_per_s"])
            if not math.isfinite(rec["val_loss"]) or bad >= cfg.patience:
                break
    if best["state"] is None:
        raise RuntimeError(f"{arch} training produced no finite validation loss; lower train.lr?")
    return epochs, best, train_seconds, seen


def _fit_calibrator(forecaster: TrainedNet, val_loader, val_wa: WindowArrays) -> Any:
    """Calibrator fitted on the best net's validation forecasts (CPU fp32, as served); None if unavailable."""
    from hfcast.calibration import Calibrator

    raw, _ = _predict(forecaster.net, val_loader, torch.device("cpu"), None)
    labels = val_wa.labels().astype(np.float64)
    try:
        return Calibrator().fit(forecaster.natural(raw.numpy()), labels[:, 0], labels[:, 1])
    except ValueError as exc:
        log.warning("calibration skipped (%s): using the Gaussian fallback", exc)
        return None
