"""The one training loop: :func:`fit`, used by every stage.

A stage passes a *task* (``timm.task.ClassificationTask``, ``LogitDistillationTask``, ...):
a module that turns ``(input, target)`` into ``{"loss", "output"}``; the loop knows nothing
about distillation or pruning. It owns the optimiser (AdamW), ReduceLROnPlateau on the
validation loss, early stopping, AMP, gradient clipping (norm, value, AGC via
``timm.utils.dispatch_clip_grad``), channels_last, torch.compile, DDP-aware metrics, a tqdm
bar, one JSON line per epoch, a curves PNG, and atomic checkpoints with exact resume.
"""
from __future__ import annotations

import json
import logging
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
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
    val_logits: np.ndarray | None = None  # logits of the best epoch, in validation-set order


# ----------------------------------------------------------------------------- helpers
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


# ----------------------------------------------------------------------------- fit
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
    """Train ``task.trainable_module`` with early stopping on validation loss.

    Args:
        task: a timm ``TrainingTask``-like module: ``task(x, y) -> {"loss", "output"}``, the
            trained network in ``task.trainable_module``.
        train_loader, val_loader: loaders from :func:`sonokit.data.create_loader`.
        cfg: the stage's :class:`TrainConfig`.
        run_dir: where best.pt, last.pt, metrics.jsonl and curves.png go (rank 0 only).
        batch_transform: applied to each training batch (CutMix/MixUp), ``(x, y) -> (x, y)``.
        meta: plain data saved with best.pt (model name, classes, ...), needed to rebuild it.
        callbacks: called with each batch's event dict (``{"event": "batch", "epoch", "step"}``)
            and each epoch's record (``{"event": "epoch", ...}``).
        resume: continue from last.pt (model, optimiser, scheduler, scaler, early-stopping
            state, RNG states, epoch); a finished run is not trained again.
    """
    device = torch.device(device)
    run_dir = Path(run_dir)
    env = dist_utils.current()
    main = env.is_main
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    callbacks = callbacks or []
    amp = amp_dtype(cfg.amp, device)
    if cfg.clip_mode not in ("none", "norm", "value", "agc"):
        raise ValueError(f"train.clip_mode must be none, norm, value or agc, not {cfg.clip_mode!r}")

    task.to(device)
    if cfg.channels_last:
        task.trainable_module.to(memory_format=torch.channels_last)
    model = task.trainable_module
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience, min_lr=cfg.min_lr
    )
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None

    state = {"epoch": -1, "best_loss": math.inf, "best_acc": 0.0, "best_epoch": -1, "bad_epochs": 0, "done": False, "stopped_early": False}
    history: list[dict] = []
    last_path, best_path = run_dir / LAST, run_dir / BEST
    if resume and last_path.is_file():
        ck = torch_load_safe(last_path)
        bare_model(model).load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        if scaler is not None and ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        state.update(ck["state"])
        history = list(ck["history"])
        set_rng_state(ck["rng"])
        if main:
            _logger.info(f"{desc}: resumed from {last_path} after epoch {state['epoch']}")
    else:
        seed_everything(seed)

    if cfg.compile and hasattr(task, "compile"):
        task.compile()
        model = task.trainable_module
    if env.enabled and hasattr(task, "prepare_distributed") and not isinstance(task.trainable_module, nn.parallel.DistributedDataParallel):
        if device.type == "cuda":  # batch statistics over the global batch, as one process would see them
            task.trainable_module = nn.SyncBatchNorm.convert_sync_batchnorm(task.trainable_module, dist_utils.train_group())
        task.prepare_distributed(device_ids=[device.index] if device.type == "cuda" else None, process_group=dist_utils.train_group())
        model = task.trainable_module
    eval_model = bare_model(model)

    val_logits = None
    if main and history:
        _write_metrics(run_dir, history, desc)
    epoch = state["epoch"] + 1
    while not state["done"] and epoch < cfg.epochs:
        set_epoch(train_loader, epoch)
        train_mode(task)
        t0 = time.perf_counter()
        loss_sum, seen = 0.0, 0
        n_batches = len(train_loader) if not cfg.max_batches else min(cfg.max_batches, len(train_loader))
        bar = tqdm(total=n_batches, desc=f"{desc} epoch {epoch + 1}/{cfg.epochs}", unit="batch", disable=not main, leave=False)
        for step, (x, y) in enumerate(train_loader):
            if step >= n_batches:
                break
            if batch_transform is not None:
                x, y = batch_transform(x, y)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp):
                out = task(x, y)
            loss = out["loss"]
            if not torch.isfinite(loss.detach()).all():
                bar.close()
                raise NonFiniteLossError(
                    f"{desc}: non-finite loss ({loss.item()}) at epoch {epoch + 1}, batch {step + 1}; "
                    f"stopping. Try a lower lr, train.clip_mode=agc or train.amp=off. "
                    f"The last good checkpoint is {last_path}."
                )
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                if cfg.clip_mode != "none":
                    scaler.unscale_(optimizer)
                    dispatch_clip_grad(_clip_parameters(task, cfg.clip_mode == "agc"), cfg.clip_value, mode=cfg.clip_mode)
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                if cfg.clip_mode != "none":
                    dispatch_clip_grad(_clip_parameters(task, cfg.clip_mode == "agc"), cfg.clip_value, mode=cfg.clip_mode)
                optimizer.step()
            bs = x.shape[0]
            loss_sum += loss.item() * bs
            seen += bs
            elapsed = time.perf_counter() - t0
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}", ips=f"{seen / elapsed:.0f}")
            bar.update()
            for cb in callbacks:
                cb({"event": "batch", "epoch": epoch, "step": step})
        bar.close()
        train_seconds = time.perf_counter() - t0
        loss_sum, seen = dist_utils.all_reduce_sum([loss_sum, float(seen)], device)
        val_loss, val_acc, logits = evaluate(eval_model, val_loader, device, amp, cfg.channels_last)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step(val_loss)
        record = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / max(seen, 1),
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr": lr,
            "seconds": round(time.perf_counter() - t0, 3),
            "images_per_s": round(seen / max(train_seconds, 1e-9), 2),
        }
        history.append(record)
        improved = val_loss < state["best_loss"]
        if improved:
            state.update(best_loss=val_loss, best_acc=val_acc, best_epoch=epoch + 1, bad_epochs=0)
            val_logits = logits
            if main:
                torch_save_atomic(
                    {"model": bare_model(eval_model).state_dict(), "meta": {**(meta or {}), "epoch": epoch + 1, "val_loss": val_loss, "val_acc": val_acc}},
                    best_path,
                )
                if logits is not None:
                    with atomic_path(run_dir / "best_val_logits.npy") as tmp:
                        with open(tmp, "wb") as f:
                            np.save(f, logits)
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch
        if state["bad_epochs"] >= cfg.patience:
            state.update(done=True, stopped_early=True)
        elif epoch + 1 >= cfg.epochs:
            state["done"] = True
        if main:
            torch_save_atomic(
                {
                    "model": bare_model(eval_model).state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else {},
                    "state": dict(state),
                    "history": history,
                    "rng": rng_state(),
                },
                last_path,
            )
            _write_metrics(run_dir, history, desc)
            tag = " *" if improved else ""
            tqdm.write(
                f"{desc} epoch {epoch + 1}: train {record['train_loss']:.4f}  val {val_loss:.4f}  "
                f"acc {val_acc:.4f}  lr {lr:.1e}  {record['images_per_s']:.0f} img/s{tag}"
            )
        for cb in callbacks:
            cb({"event": "epoch", **record})
        epoch += 1
    dist_utils.barrier()
    if val_logits is None and (run_dir / "best_val_logits.npy").is_file():
        val_logits = np.load(run_dir / "best_val_logits.npy")
    if main and state["stopped_early"]:
        _logger.info(f"{desc}: early stop after epoch {state['epoch'] + 1} (best epoch {state['best_epoch']})")
    return FitResult(
        best_epoch=state["best_epoch"],
        best_val_loss=state["best_loss"],
        best_val_acc=state["best_acc"],
        epochs_run=state["epoch"] + 1,
        stopped_early=state["stopped_early"],
        history=history,
        best_path=str(best_path),
        val_logits=val_logits,
    )


def _write_metrics(run_dir: Path, history: list[dict], title: str) -> None:
    atomic_write_text(run_dir / METRICS, "".join(json.dumps(h) + "\n" for h in history))
    plot_curves(history, run_dir / CURVES, title)
