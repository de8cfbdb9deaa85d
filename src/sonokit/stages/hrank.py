"""HRank stage: per fold, rank the student's filters, re-initialise or prune the lowest, fine-tune.

mode=reinit is the source's method (the lowest-rank fraction of one layer's filters gets fresh
weights, then training continues); mode=prune removes the lowest-rank filters of the chosen
stages physically (torch-pruning), so the true FLOPs fall. Fine-tuning uses the student's
distillation task with the fold's own teacher, and the student's CutMix/MixUp.
"""
from __future__ import annotations

import logging

import torch

from ..engine import evaluate, fit
from ..hrank import (
    collect_ranks,
    lowest_rank_filters,
    reinit_filters,
    resolve_layer,
    save_rank_figures,
    shape_spec,
    stage_convs,
)
from ..io import atomic_write_json
from ..mixing import create_mixing
from .common import Context, FoldResults, load_checkpoint_model, model_meta
from .student import load_fold_teacher, make_student_task

_logger = logging.getLogger("sonokit")


def _cost(model, size: int, in_chans: int) -> dict:
    from ..flops import competition_gflops, count_params, latency_ms, true_gflops  # thop: only runs that prune count FLOPs here

    return {"true_gflops": true_gflops(model, size, in_chans), "competition_gflops": competition_gflops(model, size, in_chans),
            "params": count_params(model), "latency_ms_batch1_cpu": latency_ms(model.cpu(), size, in_chans, repeats=10)}


def run_hrank(ctx: Context) -> dict:
    """HRank on every selected fold's student; best.pt per fold (loadable even when pruned)."""
    cfg, hcfg = ctx.cfg, ctx.cfg.hrank
    if hcfg.mode not in ("reinit", "prune"):
        raise ValueError(f"hrank.mode must be reinit or prune, not {hcfg.mode!r}")
    results = FoldResults(ctx, "hrank")
    stage_dir = results.stage_dir
    reports = []
    mixing = create_mixing(cfg.student.mix, ctx.prep.num_classes)
    size = cfg.data.image_size
    for fold in ctx.folds():
        fold_dir = stage_dir / f"fold{fold}"
        student_path = ctx.run_dir / "student" / f"fold{fold}" / "best.pt"
        if not student_path.is_file():
            raise FileNotFoundError(f"no student for fold {fold} at {student_path}: run the student stage first")
        model, smeta = load_checkpoint_model(student_path, ctx.device)
        in_chans = int(smeta["in_chans"])
        _, val_loader = ctx.loaders(fold, cfg.hrank.train)
        before_loss, before_acc, _ = evaluate(model, val_loader, ctx.device)
        report = {"fold": fold, "mode": hcfg.mode, "ratio": hcfg.ratio, "before": {"val_loss": before_loss, "val_acc": before_acc}}
        rank_loader = ctx.rank_loader(fold, cfg.hrank.train.batch_size)
        layer = resolve_layer(model, hcfg.layer)
        names = [layer]
        if hcfg.mode == "prune":
            names = sorted(set(names) | set(stage_convs(model, [int(s) for s in hcfg.prune_stages.split(",") if s.strip()])))
        if ctx.main:
            ranks, targets = collect_ranks(model, rank_loader, names, hcfg.rank_batches)
            report["ranks"] = save_rank_figures(ranks[layer], targets, ctx.prep.classes, fold_dir, layer)
        else:  # pragma: no cover - DDP: every rank needs the same ranks; rank 0's are broadcast
            ranks = None
        if ctx.env.enabled:  # rank 0's ranks, however long they took (the others wait patiently)
            from .. import distributed as dist_utils

            ranks = dist_utils.all_gather_objects(ranks, patient=True)[0]
        mean_ranks = {k: v.mean(0) for k, v in ranks.items()}
        meta_extra = {}
        if hcfg.mode == "reinit":
            chosen = lowest_rank_filters(mean_ranks[layer], hcfg.ratio)
            reinit_filters(model.get_submodule(layer), chosen)
            report["reinitialised"] = {"layer": layer, "filters": chosen.tolist()}
        else:
            report["cost_before"] = _cost(model, size, in_chans)
            model.to("cpu")
            from ..pruning import prune  # torch-pruning: imported only when pruning

            prune(model, mean_ranks, hcfg.ratio, torch.randn(1, 3, size, size))
            report["cost_after"] = _cost(model, size, in_chans)
            meta_extra["shape_spec"] = shape_spec(model)
            model.to(ctx.device)
        right_after = evaluate(model, val_loader, ctx.device)
        report["right_after"] = {"val_loss": right_after[0], "val_acc": right_after[1]}
        teacher = load_fold_teacher(ctx, fold, ctx.device) if cfg.student.kd.enabled else None
        task = make_student_task(model, teacher, cfg.student.kd, ctx.prep.mean, ctx.prep.std, ctx.device, soft_targets=mixing is not None)
        train_loader, val_loader = ctx.loaders(fold, cfg.hrank.train)
        meta = model_meta(smeta["model"], in_chans, ctx.prep, cfg, fold=fold, stage="hrank", hrank_mode=hcfg.mode,
                          hrank_ratio=hcfg.ratio, pruned=hcfg.mode == "prune", **meta_extra)
        res = fit(task, train_loader, val_loader, cfg.hrank.train, fold_dir, ctx.device, seed=cfg.run.seed + 2000 + fold,
                  resume=ctx.resume, batch_transform=mixing, meta=meta, desc=f"hrank-{hcfg.mode} fold {fold}")
        report["after"] = {"val_loss": res.best_val_loss, "val_acc": res.best_val_acc, "best_epoch": res.best_epoch}
        results.add(fold, res, before_val_acc=before_acc, before_val_loss=before_loss)
        if ctx.main:
            atomic_write_json(fold_dir / "report.json", report)
            _logger.info(f"hrank fold {fold}: accuracy {before_acc:.4f} before, {right_after[1]:.4f} right after "
                         f"{hcfg.mode}, {res.best_val_acc:.4f} after fine-tuning")
        reports.append(report)
    summary = results.finish(mode=hcfg.mode, ratio=hcfg.ratio)
    if ctx.main:
        atomic_write_json(stage_dir / "report.json", {"folds": reports})
        summary["reports"] = reports
    return summary
