"""The one training loop, :func:`fit`, in small named parts; used by every stage.

A stage passes a *task* (``timm.task.ClassificationTask``, ``LogitDistillationTask``, ...):
a module that turns ``(input, target)`` into ``{"loss", "output"}``; the loop knows nothing
about distillation or pruning. The parts, each small:

* :func:`create_optimizer`: timm's optimizer factory (AdamW), no weight decay on biases, norms
  and gains; :class:`Warmup` (linear, per optimizer step) before ``ReduceLROnPlateau``;
* :func:`train_one_epoch`: AMP, gradient accumulation, clipping (norm, value, AGC through
  ``timm.utils.dispatch_clip_grad``), the model EMA (``timm.utils.ModelEmaV3``), a tqdm bar;
  returns a dict of averages and stops on a non-finite loss;
* :func:`evaluate`: loss, accuracy and logits, DDP-aware;
* :class:`EarlyStopping` on ``train.monitor`` (val_loss or val_acc), which also picks best.pt;
* :class:`TrainState` (typed, plain data) and :class:`Checkpoints` (best.pt: weights + meta;
  last.pt: everything exact resume needs), written atomically.
"""
from __future__ import annotations

import json
import logging
import math
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.utils import dispatch_clip_grad
from tqdm.auto import tqdm

from . import distributed as dist_utils
from .config import TrainConfig
from .data import set_epoch
from .io import atomic_path, atomic_write_text, torch_load_safe, torch_save_atomic
from .models import bare_model

_logger = logging.getLogger("sonokit")

BEST = "best.pt"
LAST = "last.pt"
METRICS = "metrics.jsonl"
CURVES = "curves.png"
MONITORS = {"val_loss": "min", "val_acc": "max"}
#: parameters that never get weight decay besides biases and 1-d (norm) parameters: the per-filter
#: gains of timm's ScaledStdConv2d (4-d, so the 1-d rule misses them) and layer-scale gammas
NO_WEIGHT_DECAY = ("*.gain", "*.gamma")


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the run stops, the last checkpoint is kept."""


@dataclass
class FitResult:
    best_epoch: int
    best_val_loss: float
    best_val_acc: float
    epochs_run: int
    stopped_early: bool
    history: list[dict] = field(default_factory=list)
    best_path: str = ""
    val_logits: np.ndarray | None = None  # logits of the best epoch, in validation-set order (rank 0)
    best_state: dict | None = None  # the best weights (CPU), on every rank: what later passes (TTA) evaluate


# ----------------------------------------------------------------------------- small helpers
def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """auto: fp16 on CUDA, off on CPU; 'bf16' / 'fp16' / 'off' as asked."""
    if mode == "auto":
        return torch.float16 if device.type == "cuda" else None
    if mode == "off":
        return None
    if mode == "bf16":
        return torch.bfloat16
    if mode == "fp16":
        if device.type != "cuda":
            raise ValueError("fp16 AMP needs CUDA; use amp=bf16 on the CPU")
        return torch.float16
    raise ValueError(f"train.amp must be auto, off, fp16 or bf16, not {mode!r}")


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def rng_state() -> dict[str, Any]:
    """RNG states as tensors and plain lists (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    st = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    n = st["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    p = st["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_best(path: str | Path) -> dict[str, Any]:
    """A best.pt checkpoint: {"model": state_dict, "meta": {...}} (weights_only=True)."""
    return torch_load_safe(path)


def train_mode(task: nn.Module) -> None:
    """Training mode for the trained module only: a frozen teacher (and anything else the task
    holds) stays in eval mode, whatever the installed timm's ``task.train()`` does (timm < 1.0.31
    put the teacher in training mode: its BatchNorm statistics drifted on mixed batches and its
    dropout was on during KD)."""
    task.eval()
    task.trainable_module.train()


def _clip_parameters(task: nn.Module, exclude_head: bool):
    if hasattr(task, "get_clip_parameters"):
        return list(task.get_clip_parameters(exclude_head=exclude_head))
    params = [p for p in task.parameters() if p.requires_grad]
    return params[:-2] if exclude_head else params


def plot_curves(history: list[dict], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    a.plot(ep, [h["val_loss"] for h in history], "o-", label="validation")
    a.set_xlabel("epoch")
    a.set_ylabel("loss")
    a.legend()
    a.grid(alpha=0.3)
    b.plot(ep, [h["val_acc"] for h in history], "o-", color="C2")
    b.set_xlabel("epoch")
    b.set_ylabel("validation accuracy")
    b.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


# ----------------------------------------------------------------------------- optimiser and lr
def create_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW through timm's factory; biases, 1-d (norm) parameters and gains get no weight decay."""
    from timm.optim import create_optimizer_v2, param_groups_weight_decay

    extra = getattr(model, "no_weight_decay", lambda: set())()
    groups = param_groups_weight_decay(model, cfg.weight_decay, no_weight_decay_list=[*NO_WEIGHT_DECAY, *extra])
    return create_optimizer_v2(groups, opt="adamw", lr=cfg.lr, weight_decay=cfg.weight_decay)


def create_plateau(optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode=MONITORS[cfg.monitor], factor=cfg.plateau_factor, patience=cfg.plateau_patience, min_lr=cfg.min_lr)


class Warmup:
    """Linear lr warmup over the first ``warmup_epochs`` epochs, per optimizer step, from
    ``warmup_start`` x lr. Stateless (a function of the step count), so resume is exact.

    Written here because timm's warmup comes with its schedulers, and its plateau scheduler is
    deprecated and does not checkpoint its state; the plateau decay itself stays torch's."""

    def __init__(self, optimizer, cfg: TrainConfig, steps_per_epoch: int):
        self.optimizer = optimizer
        self.total = int(round(cfg.warmup_epochs * steps_per_epoch))
        self.start = cfg.warmup_start
        self.base = [g["lr"] for g in optimizer.param_groups]

    def active(self, step: int) -> bool:
        return step < self.total

    def apply(self, step: int) -> None:
        """Set the lr for optimizer step ``step`` (0-based) while warming up; restore it after."""
        if step > self.total or self.total == 0:
            return
        f = self.start + (1 - self.start) * min(step, self.total) / self.total
        for g, base in zip(self.optimizer.param_groups, self.base):
            g["lr"] = base * f


# ----------------------------------------------------------------------------- state and checkpoints
@dataclass
class TrainState:
    """Everything about the loop's progress, as plain data (saved in last.pt)."""

    epoch: int = -1  # last finished epoch (0-based)
    step: int = 0  # optimizer steps taken
    best: float = math.nan  # best value of the monitored metric
    best_loss: float = math.inf
    best_acc: float = 0.0
    best_epoch: int = -1  # 1-based
    bad_epochs: int = 0
    done: bool = False
    stopped_early: bool = False
    history: list[dict] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainState":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class EarlyStopping:
    """Best-checkpoint choice and early stopping on ``monitor`` (val_loss: lower is better; val_acc: higher)."""

    def __init__(self, monitor: str, patience: int):
        if monitor not in MONITORS:
            raise ValueError(f"train.monitor must be one of {', '.join(MONITORS)}, not {monitor!r}")
        self.monitor, self.mode, self.patience = monitor, MONITORS[monitor], patience

    def improved(self, state: TrainState, record: dict) -> bool:
        v = record[self.monitor]
        if math.isnan(state.best):
            return True
        return v < state.best if self.mode == "min" else v > state.best

    def update(self, state: TrainState, record: dict, epochs: int) -> bool:
        """Fold ``record`` into ``state``; returns whether it is the new best."""
        better = self.improved(state, record)
        if better:
            state.best, state.best_loss, state.best_acc = record[self.monitor], record["val_loss"], record["val_acc"]
            state.best_epoch, state.bad_epochs = record["epoch"], 0
        else:
            state.bad_epochs += 1
        state.epoch = record["epoch"] - 1
        if state.bad_epochs >= self.patience:
            state.done = state.stopped_early = True
        elif record["epoch"] >= epochs:
            state.done = True
        return better


class Checkpoints:
    """best.pt (weights + meta, what inference loads) and last.pt (what exact resume needs)."""

    def __init__(self, run_dir: Path, main: bool):
        self.dir, self.main = run_dir, main
        self.best, self.last = run_dir / BEST, run_dir / LAST

    def save_best(self, weights: dict, meta: dict, logits: np.ndarray | None) -> None:
        if not self.main:
            return
        torch_save_atomic({"model": weights, "meta": meta}, self.best)
        if logits is not None:
            with atomic_path(self.dir / "best_val_logits.npy") as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, logits)

    def save_last(self, model, optimizer, scheduler, scaler, ema, state: TrainState) -> None:
        if not self.main:
            return
        torch_save_atomic({
            "model": bare_model(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else {},
            "ema": ema.state_dict() if ema is not None else {},
            "state": asdict(state),
            "rng": rng_state(),
        }, self.last)

    def resume(self, model, optimizer, scheduler, scaler, ema) -> TrainState | None:
        if not self.last.is_file():
            return None
        ck = torch_load_safe(self.last)
        bare_model(model).load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        if scaler is not None and ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        if ema is not None and ck.get("ema"):
            ema.load_state_dict(ck["ema"])
        set_rng_state(ck["rng"])
        st = ck["state"]
        if "history" not in st:  # a last.pt written before TrainState
            st = {**st, "history": ck.get("history", []), "best": st.get("best_loss", math.nan)}
        return TrainState.from_dict(st)

    def best_logits(self) -> np.ndarray | None:
        f = self.dir / "best_val_logits.npy"
        return np.load(f) if f.is_file() else None


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, amp: torch.dtype | None = None, channels_last: bool = False):
    """Cross-entropy, accuracy and logits over ``loader`` (reduced across DDP ranks).

    Returns (loss, accuracy, logits in dataset order or None on non-main ranks).
    """
    model.eval()
    loss_sum, correct, n = 0.0, 0.0, 0.0
    chunks: list[torch.Tensor] = []
    env = dist_utils.current()
    for x, y in tqdm(loader, desc="validating", unit="batch", leave=False, disable=not env.is_main):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        n += y.numel()
        chunks.append(logits.cpu())
    loss_sum, correct, n = dist_utils.all_reduce_sum([loss_sum, correct, n], device)
    logits = torch.cat(chunks) if chunks else torch.zeros(0)
    if env.enabled:
        sampler = getattr(loader, "sampler", None)
        idx = list(getattr(sampler, "indices", range(len(logits))))
        parts = dist_utils.all_gather_objects((idx, logits.numpy()))
        if env.is_main:
            total = sum(len(i) for i, _ in parts)
            full = np.zeros((total, logits.shape[1] if logits.ndim == 2 else 0), dtype=np.float32)
            for i, lg in parts:
                full[i] = lg
            out = full
        else:
            out = None
    else:
        out = logits.numpy()
    return loss_sum / max(n, 1), correct / max(n, 1), out


# ----------------------------------------------------------------------------- one epoch
def train_one_epoch(task: nn.Module, loader, optimizer, state: TrainState, cfg: TrainConfig, device: torch.device,
                    scaler=None, ema=None, warmup: Warmup | None = None, batch_transform: Callable | None = None,
                    callbacks: list[Callable[[dict], None]] = (), desc: str = "") -> dict:
    """One pass over ``loader``: returns {"train_loss", "images", "seconds"} (summed over DDP ranks).

    Each batch: mixing, forward under AMP, loss / accum_steps backward; every ``accum_steps``
    batches (and at the end) one optimizer step: unscale, clip, step, EMA update, warmup lr.
    """
    amp = amp_dtype(cfg.amp, device)
    train_mode(task)
    accum = max(1, cfg.accum_steps)
    n_batches = len(loader) if not cfg.max_batches else min(cfg.max_batches, len(loader))
    main = dist_utils.current().is_main
    bar = tqdm(total=n_batches, desc=f"{desc} epoch {state.epoch + 2}/{cfg.epochs}", unit="batch", disable=not main, leave=False)
    loss_sum, seen, t0 = 0.0, 0, time.perf_counter()
    for i, (x, y) in enumerate(loader):
        if i >= n_batches:
            break
        if i % accum == 0:
            optimizer.zero_grad(set_to_none=True)  # here, not after the step: callbacks may look at the gradients
        last_micro = (i + 1) % accum == 0 or i + 1 == n_batches
        if batch_transform is not None:
            x, y = batch_transform(x, y)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with (nullcontext() if last_micro or not hasattr(task, "no_sync") else task.no_sync()):  # DDP: sync on the step only
            with autocast(device, amp):
                loss = task(x, y)["loss"]
            if not torch.isfinite(loss.detach()).all():
                bar.close()
                raise NonFiniteLossError(
                    f"{desc}: non-finite loss ({loss.item()}) at epoch {state.epoch + 2}, batch {i + 1}; stopping. "
                    f"Try a lower lr, train.clip_mode=agc or train.amp=off. The last good checkpoint is last.pt.")
            (scaler.scale(loss / accum) if scaler is not None else loss / accum).backward()
        if last_micro:
            _optimizer_step(task, optimizer, scaler, cfg)
            state.step += 1
            if ema is not None:
                ema.update(bare_model(task.trainable_module), step=state.step)
            if warmup is not None:
                warmup.apply(state.step)
        bs = x.shape[0]
        loss_sum += loss.item() * bs
        seen += bs
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}",
                        ips=f"{seen / (time.perf_counter() - t0):.0f}")
        bar.update()
        for cb in callbacks:
            cb({"event": "batch", "epoch": state.epoch + 1, "step": i})
    bar.close()
    seconds = time.perf_counter() - t0
    loss_sum, seen = dist_utils.all_reduce_sum([loss_sum, float(seen)], device)
    return {"train_loss": loss_sum / max(seen, 1), "images": seen, "seconds": seconds}


def _optimizer_step(task, optimizer, scaler, cfg: TrainConfig) -> None:
    """Unscale (AMP), clip (norm, value or AGC with the head excluded), step."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    if cfg.clip_mode != "none":
        dispatch_clip_grad(_clip_parameters(task, cfg.clip_mode == "agc"), cfg.clip_value, mode=cfg.clip_mode)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


# ----------------------------------------------------------------------------- fit
def _prepare_task(task: nn.Module, cfg: TrainConfig, device: torch.device) -> nn.Module:
    """Device, memory format, torch.compile, DDP (SyncBatchNorm on CUDA); returns the bare trained model."""
    task.to(device)
    if cfg.channels_last:
        task.trainable_module.to(memory_format=torch.channels_last)
    if cfg.compile and hasattr(task, "compile"):
        task.compile()
    env = dist_utils.current()
    if env.enabled and hasattr(task, "prepare_distributed") and not isinstance(task.trainable_module, nn.parallel.DistributedDataParallel):
        if device.type == "cuda":  # batch statistics over the global batch, as one process would see them
            task.trainable_module = nn.SyncBatchNorm.convert_sync_batchnorm(task.trainable_module, dist_utils.train_group())
        task.prepare_distributed(device_ids=[device.index] if device.type == "cuda" else None, process_group=dist_utils.train_group())
    return bare_model(task.trainable_module)


def _validate(model, ema, val_loader, device, cfg: TrainConfig) -> tuple[dict, np.ndarray | None]:
    """Validation of the model, and of its EMA when on (then the EMA is what is monitored and kept)."""
    amp = amp_dtype(cfg.amp, device)
    loss, acc, logits = evaluate(model, val_loader, device, amp, cfg.channels_last)
    if ema is None:
        return {"val_loss": loss, "val_acc": acc}, logits
    e_loss, e_acc, e_logits = evaluate(ema.module, val_loader, device, amp, cfg.channels_last)
    return {"val_loss": e_loss, "val_acc": e_acc, "val_loss_raw": loss, "val_acc_raw": acc}, e_logits


def fit(
    task: nn.Module,
    train_loader,
    val_loader,
    cfg: TrainConfig,
    run_dir: str | Path,
    device: torch.device | str = "cpu",
    seed: int = 0,
    resume: bool = False,
    batch_transform: Callable | None = None,
    meta: dict | None = None,
    callbacks: list[Callable[[dict], None]] | None = None,
    desc: str = "",
) -> FitResult:
    """Train ``task.trainable_module``; keep the best epoch by ``cfg.monitor``, stop early on it.

    Args:
        task: a timm ``TrainingTask``-like module: ``task(x, y) -> {"loss", "output"}``, the
            trained network in ``task.trainable_module``.
        train_loader, val_loader: loaders from :func:`sonokit.data.create_loader`.
        cfg: the stage's :class:`TrainConfig` (optimiser, schedule, AMP, clipping, EMA, accumulation).
        run_dir: where best.pt, last.pt, metrics.jsonl and curves.png go (rank 0 only).
        batch_transform: applied to each training batch (CutMix/MixUp), ``(x, y) -> (x, y)``.
        meta: plain data saved with best.pt (model name, classes, ...), needed to rebuild it.
        callbacks: called with each batch's event dict (``{"event": "batch", "epoch", "step"}``)
            and each epoch's record (``{"event": "epoch", ...}``).
        resume: continue from last.pt (model, optimiser, scheduler, scaler, EMA, state, RNG
            states); a finished run is not trained again.
    """
    device, run_dir = torch.device(device), Path(run_dir)
    main = dist_utils.current().is_main
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.clip_mode not in ("none", "norm", "value", "agc"):
        raise ValueError(f"train.clip_mode must be none, norm, value or agc, not {cfg.clip_mode!r}")
    stopper = EarlyStopping(cfg.monitor, cfg.patience)
    model = _prepare_task(task, cfg, device)
    optimizer = create_optimizer(model, cfg)
    scheduler = create_plateau(optimizer, cfg)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype(cfg.amp, device) == torch.float16 else None
    ema = None
    if cfg.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.ema_decay)
    n_batches = len(train_loader) if not cfg.max_batches else min(cfg.max_batches, len(train_loader))
    warmup = Warmup(optimizer, cfg, math.ceil(n_batches / max(1, cfg.accum_steps))) if cfg.warmup_epochs > 0 else None
    ckpt = Checkpoints(run_dir, main)
    state = ckpt.resume(model, optimizer, scheduler, scaler, ema) if resume else None
    if state is None:
        state = TrainState()
        seed_everything(seed)
        if warmup is not None:
            warmup.apply(0)
    elif main:
        _logger.info(f"{desc}: resumed from {ckpt.last} after epoch {state.epoch + 1}")
    best_state, val_logits = None, None
    if main and state.history:
        _write_metrics(run_dir, state.history, desc)
    while not state.done and state.epoch + 1 < cfg.epochs:
        epoch = state.epoch + 1
        set_epoch(train_loader, epoch)
        if hasattr(batch_transform, "set_epoch"):  # device augmentation: its draws are seeded per epoch
            batch_transform.set_epoch(epoch)
        stats = train_one_epoch(task, train_loader, optimizer, state, cfg, device, scaler, ema, warmup, batch_transform,
                                callbacks or [], desc)
        metrics, logits = _validate(model, ema, val_loader, device, cfg)
        lr = optimizer.param_groups[0]["lr"]
        if warmup is None or not warmup.active(state.step):
            scheduler.step(metrics[cfg.monitor])
        record = {"epoch": epoch + 1, "train_loss": stats["train_loss"], **metrics, "lr": lr,
                  "seconds": round(stats["seconds"], 3), "images_per_s": round(stats["images"] / max(stats["seconds"], 1e-9), 2)}
        state.history.append(record)
        kept = ema.module if ema is not None else model
        if stopper.update(state, record, cfg.epochs):
            weights = {k: v.detach().cpu().clone() for k, v in kept.state_dict().items()}
            best_state, val_logits = weights, logits
            ckpt.save_best(weights, {**(meta or {}), "epoch": epoch + 1, "val_loss": record["val_loss"],
                                     "val_acc": record["val_acc"], "monitor": cfg.monitor, "ema": ema is not None}, logits)
        ckpt.save_last(model, optimizer, scheduler, scaler, ema, state)
        if main:
            _write_metrics(run_dir, state.history, desc)
            tqdm.write(f"{desc} epoch {epoch + 1}: train {record['train_loss']:.4f}  val {record['val_loss']:.4f}  "
                       f"acc {record['val_acc']:.4f}  lr {lr:.1e}  {record['images_per_s']:.0f} img/s"
                       + (" *" if state.best_epoch == epoch + 1 else ""))
        for cb in callbacks or []:
            cb({"event": "epoch", **record})
    dist_utils.barrier()
    if best_state is None and ckpt.best.is_file():  # resumed after the best epoch (or a finished run)
        best_state = torch_load_safe(ckpt.best)["model"]
        val_logits = ckpt.best_logits() if main else None
    if main and state.stopped_early:
        _logger.info(f"{desc}: early stop after epoch {state.epoch + 1} (best epoch {state.best_epoch} by {cfg.monitor})")
    return FitResult(
        best_epoch=state.best_epoch,
        best_val_loss=state.best_loss,
        best_val_acc=state.best_acc,
        epochs_run=state.epoch + 1,
        stopped_early=state.stopped_early,
        history=state.history,
        best_path=str(ckpt.best),
        val_logits=val_logits,
        best_state=best_state,
    )


def _write_metrics(run_dir: Path, history: list[dict], title: str) -> None:
    atomic_write_text(run_dir / METRICS, "".join(json.dumps(h) + "\n" for h in history))
    plot_curves(history, run_dir / CURVES, title)


__all__ = ["Checkpoints", "EarlyStopping", "FitResult", "NonFiniteLossError", "TrainState", "Warmup", "amp_dtype", "autocast",
           "create_optimizer", "evaluate", "fit", "load_best", "seed_everything", "train_mode", "train_one_epoch"]
