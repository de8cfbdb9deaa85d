"""Teacher stage: per fold, plain cross-entropy (no label smoothing, no CutMix/MixUp)."""
from __future__ import annotations

import logging

import numpy as np
import torch.nn as nn
from timm.task import ClassificationTask

from ..engine import fit, seed_everything
from ..models import create_model
from .common import Context, cv_summary, model_meta, write_oof

_logger = logging.getLogger("sonokit")


def build_teacher(ctx: Context, fold: int) -> nn.Module:
    m = ctx.cfg.teacher.model
    seed_everything(ctx.cfg.run.seed + fold)
    return create_model(m.name, ctx.prep.num_classes, m.in_chans, m.weights or None, m.drop_rate)


def run_teacher(ctx: Context) -> dict:
    """Train the teacher on every selected fold; write best.pt per fold, oof.csv and cv.json.

    Returns the CV summary.
    """
    cfg = ctx.cfg
    stage_dir = ctx.run_dir / "teacher"
    n = len(ctx.prep.index.train_ids)
    oof = np.zeros((n, ctx.prep.num_classes), dtype=np.float32)
    done = np.zeros(n, dtype=bool)
    rows = []
    for fold in ctx.folds():
        model = build_teacher(ctx, fold)
        task = ClassificationTask(model, criterion=nn.CrossEntropyLoss(), device=ctx.device, verbose=False)
        train_loader, val_loader = ctx.loaders(fold, cfg.teacher.train)
        meta = model_meta(cfg.teacher.model.name, cfg.teacher.model.in_chans, ctx.prep, cfg, fold=fold, stage="teacher")
        res = fit(
            task, train_loader, val_loader, cfg.teacher.train, stage_dir / f"fold{fold}", ctx.device,
            seed=cfg.run.seed + fold, resume=ctx.resume, meta=meta, desc=f"teacher fold {fold}",
        )
        _, va = ctx.prep.fold_indices(fold)
        if ctx.main and res.val_logits is not None:
            oof[va] = res.val_logits
            done[va] = True
        rows.append({"fold": fold, "val_loss": res.best_val_loss, "val_acc": res.best_val_acc, "best_epoch": res.best_epoch,
                     "epochs_run": res.epochs_run, "stopped_early": res.stopped_early})
    summary = {}
    if ctx.main:
        write_oof(stage_dir, ctx.prep, oof, done)
        summary = cv_summary(stage_dir, ctx.prep, rows, oof, done)
        _logger.info(f"teacher CV: loss {summary['overall']['loss']:.4f}, acc {summary['overall']['acc']:.4f}")
    return summary
