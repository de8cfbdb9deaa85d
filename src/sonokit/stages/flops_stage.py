"""FLOPs stage: the competition's thop number and the true cost of the submission's model."""
from __future__ import annotations

from pathlib import Path

from ..constants import COMPETITION_GFLOPS_TARGET
from ..flops import cost_report
from ..io import atomic_write_json
from .common import Context, load_checkpoint_model
from .infer import parse_list, resolve_members


def flops_for_members(members: list[Path], tta_views: int, target: float = COMPETITION_GFLOPS_TARGET) -> dict:
    """Cost report of the first member (all folds share an architecture) x members x views."""
    model, meta = load_checkpoint_model(members[0])
    size, in_chans = int(meta.get("image_size", 256)), int(meta.get("in_chans", 1))
    report = cost_report(model, size, in_chans, n_models=len(members), tta_views=tta_views)
    return {**report.to_dict(), "model": meta.get("model"), "checkpoint": str(members[0]), "target": target,
            "matches_target": report.competition_gflops == round(target, 7), "lines": report.lines(target)}


def run_flops(ctx: Context) -> dict:
    """Write runs/<name>/flops.json for the members the infer stage uses."""
    if not ctx.main:
        return {}
    views = parse_list(ctx.cfg.infer.tta) or ["orig"]
    out = flops_for_members(resolve_members(ctx), len(views))
    atomic_write_json(ctx.run_dir / "flops.json", out)
    return out
