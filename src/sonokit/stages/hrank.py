"""HRank stage: per fold, rank the student's filters, re-initialise or prune the lowest, fine-tune.

mode=reinit is the source's method (the lowest-rank fraction of one layer's filters gets fresh,
seeded weights, then training continues); mode=prune removes the lowest-rank filters of the
chosen stages physically (torch-pruning), so the true FLOPs fall; mode=finetune changes no
filter and runs the same fine-tuning: the control that tells HRank's own effect from the
effect of more epochs (``hrank.control=true`` runs it beside reinit/prune, into
``hrank_finetune/``). Fine-tuning uses the student's distillation task with the fold's own
teacher, and the student's CutMix/MixUp.
"""
from __future__ import annotations

import logging

import torch

from ..engine import evaluate, fit
from ..hrank import collect_ranks, lowest_rank_filters, reinit_filters, resolve_layer, save_rank_figures, shape_spec, stage_convs
from ..io import atomic_write_json
from ..mixing import create_mixing
from .common import Context, FoldResults, load_checkpoint_model, model_meta
from .student import load_fold_teacher, make_student_task

_logger = logging.getLogger("sonokit")
MODES = ("reinit", "prune", "finetune")


def stage_dir_name(mode: str) -> str:
    """Where a mode's fold checkpoints go: hrank/ (reinit, prune: what inference uses) or hrank_finetune/."""
    return "hrank_finetune" if mode == "finetune" else "hrank"


def _cost(model, size: int, in_chans: int) -> dict:
    from ..flops import competition_gflops, count_params, latency_ms, true_gflops  # thop: only runs that prune count FLOPs here

    return {"true_gflops": true_gflops(model, size, in_chans), "competition_gflops": competition_gflops(model, size, in_chans),
            "params": count_params(model), "latency_ms_batch1_cpu": latency_ms(model.cpu(), size, in_chans, repeats=10)}


def _fold_ranks(ctx: Context, model, fold: int, names: list[str], layer: str, fold_dir) -> tuple[dict, dict]:
    """Every rank's copy of rank 0's ranks (the others wait patiently), and the report on them."""
    hcfg = ctx.cfg.hrank
    report: dict = {}
    if ctx.main:
        shapes: dict = {}
        ranks, targets = collect_ranks(model, ctx.rank_loader(fold, hcfg.train.batch_size), names, hcfg.rank_batches, shapes)
        report = save_rank_figures(ranks[layer], targets, ctx.prep.classes, fold_dir, layer, hcfg.ratio, shapes.get(layer))
        if report["warning"]:
            _logger.warning(f"hrank fold {fold}, {layer}: {report['warning']}")
        elif report["chosen_by_tie_rule"]:
            _logger.info(f"hrank fold {fold}: {report['tie_rule']}")
    else:  # pragma: no cover - DDP
        ranks = None
    if ctx.env.enabled:
        from .. import distributed as dist_utils

        ranks = dist_utils.all_gather_objects(ranks, patient=True)[0]
    return ranks, report


def _run_mode(ctx: Context, mode: str) -> dict:
    cfg, hcfg = ctx.cfg, ctx.cfg.hrank
    results = FoldResults(ctx, stage_dir_name(mode))
    reports = []
    mixing = create_mixing(cfg.student.mix, ctx.prep.num_classes)
    size = cfg.data.image_size
    for fold in ctx.folds():
        fold_dir = results.stage_dir / f"fold{fold}"
        student_path = ctx.run_dir / "student" / f"fold{fold}" / "best.pt"
        if not student_path.is_file():
            raise FileNotFoundError(f"no student for fold {fold} at {student_path}: run the student stage first")
        model, smeta = load_checkpoint_model(student_path, ctx.device)
        in_chans = int(smeta["in_chans"])
        _, val_loader = ctx.loaders(fold, hcfg.train)
        before_loss, before_acc, _ = evaluate(model, val_loader, ctx.device)
        report = {"fold": fold, "mode": mode, "ratio": hcfg.ratio, "before": {"val_loss": before_loss, "val_acc": before_acc}}
        meta_extra = {}
        if mode != "finetune":
            layer = resolve_layer(model, hcfg.layer)
            names = [layer]
            if mode == "prune":
                names = sorted(set(names) | set(stage_convs(model, [int(s) for s in hcfg.prune_stages.split(",") if s.strip()])))
            ranks, report["ranks"] = _fold_ranks(ctx, model, fold, names, layer, fold_dir)
            mean_ranks = {k: v.mean(0) for k, v in ranks.items()}
            if mode == "reinit":
                chosen = lowest_rank_filters(mean_ranks[layer], hcfg.ratio)
                seed = cfg.run.seed + 3000 + fold  # the fold's own seed: the same weights whatever ran before
                reinit_filters(model.get_submodule(layer), chosen, seed=seed)
                report["reinitialised"] = {"layer": layer, "filters": chosen.tolist(), "seed": seed}
            else:
                from ..pruning import prune  # torch-pruning: imported only when pruning

                report["cost_before"] = _cost(model, size, in_chans)
                model.to("cpu")
                prune(model, mean_ranks, hcfg.ratio, torch.randn(1, 3, size, size))
                report["cost_after"] = _cost(model, size, in_chans)
                meta_extra["shape_spec"] = shape_spec(model)
                model.to(ctx.device)
        right_after = evaluate(model, val_loader, ctx.device)
        report["right_after"] = {"val_loss": right_after[0], "val_acc": right_after[1]}
        teacher = load_fold_teacher(ctx, fold, ctx.device) if cfg.student.kd.enabled else None
        task = make_student_task(model, teacher, cfg.student.kd, ctx.prep.mean, ctx.prep.std, ctx.device, soft_targets=mixing is not None)
        train_loader, val_loader = ctx.loaders(fold, hcfg.train)
        meta = model_meta(smeta["model"], in_chans, ctx.prep, cfg, fold=fold, stage=results.stage, hrank_mode=mode,
                          hrank_ratio=hcfg.ratio, pruned=mode == "prune", **meta_extra)
        res = fit(task, train_loader, val_loader, hcfg.train, fold_dir, ctx.device, seed=cfg.run.seed + 2000 + fold,
                  resume=ctx.resume, callbacks=ctx.callbacks, batch_transform=ctx.batch_transform(fold, mixing), meta=meta, desc=f"hrank-{mode} fold {fold}")
        report["after"] = {"val_loss": res.best_val_loss, "val_acc": res.best_val_acc, "best_epoch": res.best_epoch}
        results.add(fold, res, model, hcfg.train, before_val_acc=before_acc, before_val_loss=before_loss)
        if ctx.main:
            atomic_write_json(fold_dir / "report.json", report)
            _logger.info(f"hrank-{mode} fold {fold}: accuracy {before_acc:.4f} before, {right_after[1]:.4f} right after "
                         f"{mode}, {res.best_val_acc:.4f} after fine-tuning")
        reports.append(report)
    summary = results.finish(mode=mode, ratio=hcfg.ratio)
    if ctx.main:
        atomic_write_json(results.stage_dir / "report.json", {"folds": reports})
        summary["reports"] = reports
    return summary


def run_hrank(ctx: Context) -> dict:
    """HRank on every selected fold's student (and the fine-tune-only control when asked); best.pt per fold
    (loadable even when pruned). Returns the mode's summary, with the control's under "control"."""
    hcfg = ctx.cfg.hrank
    if hcfg.mode not in MODES:
        raise ValueError(f"hrank.mode must be one of {', '.join(MODES)}, not {hcfg.mode!r}")
    summary = _run_mode(ctx, hcfg.mode)
    if hcfg.control and hcfg.mode != "finetune":
        control = _run_mode(ctx, "finetune")
        if ctx.main:
            summary["control"] = control
    return summary
