"""FLOPs stage: the competition's thop number and the true cost of the submission's models.

Every member is costed (a pruned fold's model differs from the others); members with the same
architecture share one measurement.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from ..constants import COMPETITION_GFLOPS_TARGET
from ..flops import cost_report
from ..io import atomic_write_json
from .common import Context, load_checkpoint_model
from .infer import parse_list, resolve_members


def _arch_key(meta: dict) -> str:
    return json.dumps([meta.get("model"), meta.get("in_chans"), meta.get("image_size"), meta.get("num_classes"),
                       meta.get("shape_spec")], sort_keys=True, default=str)


def _member_report(path: Path, cache: dict):
    """(meta, CostReport at the checkpoint's own input size); one measurement per architecture."""
    from ..engine import load_best

    meta = load_best(path)["meta"]
    key = _arch_key(meta)
    if key not in cache:
        model, meta = load_checkpoint_model(path)
        cache[key] = cost_report(model, int(meta.get("image_size", 256)), int(meta.get("in_chans", 1)))
    return meta, cache[key]


def member_cost(path: Path, cache: dict | None = None) -> dict:
    """One checkpoint's cost at its own input size: competition thop GFLOPs, true GFLOPs, params."""
    meta, rep = _member_report(path, {} if cache is None else cache)
    return {"model": meta.get("model"), "image_size": rep.size, "in_chans": rep.in_chans, "competition_gflops": rep.competition_gflops,
            "true_gflops": rep.true_gflops, "thop_full_gflops": rep.thop_full_gflops, "params": rep.params, "thop_params": rep.thop_params}


def flops_for_members(members: list[Path], tta_views: int, target: float = COMPETITION_GFLOPS_TARGET) -> dict:
    """The first member's full report (what the competition checks: one model), every member's cost,
    and the submission's cost: the sum over members x views."""
    cache: dict = {}
    meta, first = _member_report(members[0], cache)
    report = replace(first, n_models=len(members), tta_views=tta_views)
    costs = [{"checkpoint": str(m), **member_cost(m, cache)} for m in members]
    pipeline = sum(c["true_gflops"] for c in costs) * tta_views
    lines = report.lines(target)
    lines[3] = (f"submission pipeline: {len(members)} member(s) x {tta_views} TTA view(s), each member costed = "
                f"{pipeline:.4f} true GFLOPs per image")
    return {**report.to_dict(), "pipeline_gflops": pipeline, "members": costs, "model": meta.get("model"),
            "checkpoint": str(members[0]), "target": target, "matches_target": report.competition_gflops == round(target, 7),
            "lines": lines}


def run_flops(ctx: Context) -> dict:
    """Write runs/<name>/flops.json for the members the infer stage uses."""
    if not ctx.main:
        return {}
    views = parse_list(ctx.cfg.infer.tta) or ["orig"]
    out = flops_for_members(resolve_members(ctx), len(views))
    atomic_write_json(ctx.run_dir / "flops.json", out)
    return out
