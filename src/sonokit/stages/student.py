"""Student stage: per fold, that fold's teacher distils into the 1-channel student.

loss = w_task * SoftTargetCE(student, mixed targets) + (1 - w_task) * T^2 * KL(teacher/T || student/T)
through ``timm.task.LogitDistillationTask``; the teacher runs in eval mode under no_grad and
the loop's AMP on the same augmented, mixed 3-channel batch, the student sees its grayscale.
``student.kd.enabled=false`` trains the same student without a teacher, for comparison.
"""
from __future__ import annotations

import logging

import torch
import torch.nn as nn
from timm.loss import SoftTargetCrossEntropy
from timm.task import ClassificationTask, DistillationTeacher, LogitDistillationTask

from ..config import KDConfig
from ..engine import fit, seed_everything
from ..mixing import create_mixing
from ..models import create_model
from .common import Context, FoldResults, fold_fingerprint, load_checkpoint_model, model_meta

_logger = logging.getLogger("sonokit")


class FoldLeakError(ValueError):
    """A teacher checkpoint was trained on images that are in the student's validation fold."""


def load_fold_teacher(ctx: Context, fold: int, device) -> nn.Module:
    """The teacher trained on this fold's training images only (checked by fingerprint)."""
    path = ctx.run_dir / "teacher" / f"fold{fold}" / "best.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no teacher for fold {fold} at {path}: run the teacher stage first (--stages teacher,student)")
    model, meta = load_checkpoint_model(path, device)
    if meta.get("fold") != fold or meta.get("train_ids_sha256") != fold_fingerprint(ctx.prep, fold):
        raise FoldLeakError(
            f"teacher {path} was trained on other folds than this run's fold {fold} "
            f"(different folds.csv, seed or data): its training images may be in the student's validation set"
        )
    if meta.get("classes") != ctx.prep.classes:
        raise ValueError(f"teacher {path} has classes {meta.get('classes')}, the data has {ctx.prep.classes}")
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def build_student(ctx: Context, fold: int) -> nn.Module:
    m = ctx.cfg.student.model
    seed_everything(ctx.cfg.run.seed + 1000 + fold)
    model = create_model(m.name, ctx.prep.num_classes, m.in_chans, m.weights, m.drop_rate, assets=ctx.assets(),
                         key="student.model.weights")
    return model


def make_student_task(
    student: nn.Module, teacher: nn.Module | None, kd: KDConfig, mean, std, device, soft_targets: bool
) -> nn.Module:
    """LogitDistillationTask (teacher given) or ClassificationTask, both on the same batches."""
    device = torch.device(device)
    criterion = SoftTargetCrossEntropy() if soft_targets else nn.CrossEntropyLoss()
    if teacher is None:
        return ClassificationTask(student, criterion=criterion, device=device, verbose=False)
    # Both models see the batch the loader normalised (the data set's mean/std); tell timm's
    # task so, or it would re-normalise the teacher's input from the student's pretrained stats.
    norm = {"mean": tuple(mean), "std": tuple(std)}
    student.pretrained_cfg = {**getattr(student, "pretrained_cfg", {}), **norm}
    wrapped = DistillationTeacher(teacher, device=device)
    wrapped.mean_kd = torch.tensor(norm["mean"], device=device).view(1, -1, 1, 1)
    wrapped.std_kd = torch.tensor(norm["std"], device=device).view(1, -1, 1, 1)
    return LogitDistillationTask(
        student, wrapped, criterion=criterion, task_loss_weight=kd.w_task, temperature=kd.temperature,
        device=device, verbose=False,
    )


def _train_students(ctx: Context, kd: bool, stage: str) -> dict:
    cfg = ctx.cfg
    scfg = cfg.student
    results = FoldResults(ctx, stage)
    mixing = create_mixing(scfg.mix, ctx.prep.num_classes)
    for fold in ctx.folds():
        teacher = load_fold_teacher(ctx, fold, ctx.device) if kd else None
        student = build_student(ctx, fold)
        task = make_student_task(student, teacher, scfg.kd, ctx.prep.mean, ctx.prep.std, ctx.device, soft_targets=mixing is not None)
        train_loader, val_loader = ctx.loaders(fold, scfg.train)
        meta = model_meta(scfg.model.name, scfg.model.in_chans, ctx.prep, cfg, fold=fold, stage=stage, kd=kd)
        res = fit(
            task, train_loader, val_loader, scfg.train, results.stage_dir / f"fold{fold}", ctx.device,
            seed=cfg.run.seed + 1000 + fold, resume=ctx.resume, callbacks=ctx.callbacks, batch_transform=ctx.batch_transform(fold, mixing), meta=meta,
            desc=f"student fold {fold}{'' if kd else ' (no KD)'}",
        )
        results.add(fold, res, student, scfg.train)
    return results.finish(kd=kd)


def run_student(ctx: Context) -> dict:
    """Distil every selected fold's teacher into the student; best.pt per fold, oof, CV, confusion.

    With ``student.kd.control`` the same students (same seeds, batches and mixing) are also trained
    without the teacher, into ``student_nokd/``: the control that measures what KD bought.
    Returns the student's summary, with the control's under "control".
    """
    kd = ctx.cfg.student.kd
    summary = _train_students(ctx, kd.enabled, "student")
    if kd.enabled and kd.control:
        control = _train_students(ctx, False, "student_nokd")
        if ctx.main:
            summary["control"] = control
    return summary
