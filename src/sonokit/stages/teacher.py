"""Teacher stage: per fold, plain cross-entropy (no label smoothing, no CutMix/MixUp)."""
from __future__ import annotations

import torch.nn as nn
from timm.task import ClassificationTask

from ..engine import fit, seed_everything
from ..models import create_model
from .common import Context, FoldResults, model_meta


def build_teacher(ctx: Context, fold: int) -> nn.Module:
    m = ctx.cfg.teacher.model
    seed_everything(ctx.cfg.run.seed + fold)
    return create_model(m.name, ctx.prep.num_classes, m.in_chans, m.weights, m.drop_rate, assets=ctx.assets(),
                        key="teacher.model.weights")


def run_teacher(ctx: Context) -> dict:
    """Train the teacher on every selected fold; write best.pt per fold, oof.csv and cv.json.

    Returns the CV summary.
    """
    cfg = ctx.cfg
    results = FoldResults(ctx, "teacher")
    for fold in ctx.folds():
        model = build_teacher(ctx, fold)
        task = ClassificationTask(model, criterion=nn.CrossEntropyLoss(), device=ctx.device, verbose=False)
        train_loader, val_loader = ctx.loaders(fold, cfg.teacher.train)
        meta = model_meta(cfg.teacher.model.name, cfg.teacher.model.in_chans, ctx.prep, cfg, fold=fold, stage="teacher")
        res = fit(
            task, train_loader, val_loader, cfg.teacher.train, results.stage_dir / f"fold{fold}", ctx.device,
            seed=cfg.run.seed + fold, resume=ctx.resume, callbacks=ctx.callbacks, batch_transform=ctx.batch_transform(fold),
            meta=meta, desc=f"teacher fold {fold}",
        )
        results.add(fold, res, model, cfg.teacher.train)
    return results.finish()
