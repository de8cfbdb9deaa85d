"""Report stage: what each step bought on this run's data (report.md, report.html, a printed table).

Reads what the other stages wrote (out-of-fold logits, TTA views, HRank reports, members); it
trains and predicts nothing. See :mod:`sonokit.ablation` for the rows and how a difference is
judged against the fold-to-fold spread.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from ..ablation import RunView, build_rows, dumps, plot_cost_vs_acc, render, rows_to_json, text_table
from ..io import atomic_write_text
from .common import Context

_logger = logging.getLogger("sonokit")


def _classes(run_dir: Path) -> list[str]:
    for stage in ("teacher", "student", "student_nokd", "hrank", "hrank_finetune"):
        p = run_dir / stage / "cv.json"
        if p.is_file():
            return json.loads(p.read_text())["classes"]
    raise FileNotFoundError(f"nothing to report in {run_dir}: run a training stage first (teacher, student, hrank)")


def stage_cost(run_dir: Path, stage: str, folds: list[int], cache: dict) -> dict:
    """Cost of the stage's first fold model (folds of one stage share an architecture unless pruned)."""
    from .flops_stage import member_cost

    for k in folds:
        p = run_dir / stage / f"fold{k}" / "best.pt"
        if p.is_file():
            return member_cost(p, cache)
    return {}


def hrank_lines(run_dir: Path) -> list[str]:
    p = run_dir / "hrank" / "report.json"
    if not p.is_file():
        return []
    lines = []
    control = run_dir / "hrank_finetune" / "report.json"
    ctrl = {r["fold"]: r for r in json.loads(control.read_text())["folds"]} if control.is_file() else {}
    for r in json.loads(p.read_text())["folds"]:
        line = (f"fold {r['fold']} ({r['mode']}, ratio {r['ratio']}): accuracy {r['before']['val_acc']:.4f} before, "
                f"{r['right_after']['val_acc']:.4f} right after, {r['after']['val_acc']:.4f} after fine-tuning")
        if r["fold"] in ctrl:
            c = ctrl[r["fold"]]["after"]["val_acc"]
            line += f"; the same fine-tuning without changing a filter: {c:.4f} (HRank's own effect {r['after']['val_acc'] - c:+.4f})"
        lines.append(line)
        ranks = r.get("ranks", {})
        if ranks.get("warning"):
            lines.append(f"fold {r['fold']}: {ranks['warning']}")
        if ranks.get("tie_rule"):
            lines.append(f"fold {r['fold']}: {ranks['tie_rule']}")
    return lines


def cost_lines(run_dir: Path, views: list[str], cache: dict) -> list[str]:
    from .flops_stage import member_cost

    p = run_dir / "infer" / "members.json"
    if not p.is_file():
        return ["the infer stage has not run: no submission to cost"]
    members = json.loads(p.read_text())["members"]
    costs = [member_cost(Path(m["path"]), cache) for m in members]
    n_views = len(json.loads(p.read_text()).get("tta_views") or views or ["orig"])
    total_true = sum(c["true_gflops"] for c in costs) * n_views
    total_comp = sum(c["competition_gflops"] for c in costs) * n_views
    out = [f"{len(members)} member(s) x {n_views} TTA view(s): {total_true:.4f} true GFLOPs per test image "
           f"({total_comp:.7f} by the competition's thop count)"]
    for m, c in zip(members, costs):
        out.append(f"{Path(m['path']).parent.parent.name}/{Path(m['path']).parent.name}: {c['model']}, "
                   f"{c['competition_gflops']:.7f} GFLOPs (competition), {c['true_gflops']:.4f} true, {c['params'] / 1e6:.2f}M params")
    return out


def test_lines(run_dir: Path) -> list[str]:
    p = run_dir / "infer" / "members.json"
    if not p.is_file():
        return []
    info = json.loads(p.read_text())
    if "test_acc_on_solution_csv" not in info:
        return []
    out = [f"{Path(m['path']).parent.parent.name}/{Path(m['path']).parent.name} alone: accuracy {m['test_acc']:.4f}"
           for m in info["members"] if "test_acc" in m]
    out.append(f"soft vote of {len(info['members'])} member(s) x {len(info['tta_views'])} view(s): accuracy "
               f"{info['test_acc_on_solution_csv']:.4f}")
    return out


def run_report(ctx: Context) -> dict:
    """Write report.md, report.html and report.json into the run directory; return them and the table."""
    if not ctx.main:
        return {}
    from ..stages.infer import parse_list

    cfg, run_dir = ctx.cfg, ctx.run_dir
    classes = _classes(run_dir)
    folds = ctx.folds()
    view = RunView(run_dir, classes, folds)
    rows = build_rows(view, cfg.hrank.mode, cfg.infer.stage)
    cache: dict = {}
    n_views = len([r for r in rows if r.key.startswith("tta:") and r.key != "tta:vote"])
    for r in rows:
        stage = r.key.split(":")[0] if not r.key.startswith("tta:") else cfg.infer.stage
        r.cost = stage_cost(run_dir, stage, folds, cache)
        if r.key == "tta:vote" and r.cost:  # the vote runs the model once per view
            r.cost = {**r.cost, "true_gflops": r.cost["true_gflops"] * n_views,
                      "competition_gflops": r.cost["competition_gflops"] * n_views}
            r.note = f"cost: {n_views} views"
    pictures = []
    plot_cost_vs_acc(rows, run_dir / "report_cost_vs_acc.png")
    pictures.append(("GFLOPs against out-of-fold accuracy", run_dir / "report_cost_vs_acc.png"))
    for stage in ("teacher", "student_nokd", "student", "hrank_finetune", "hrank"):
        for name, title in (("confusion.png", f"{stage}: out-of-fold confusion matrix"),):
            if (run_dir / stage / name).is_file():
                pictures.append((title, run_dir / stage / name))
        curves = run_dir / stage / f"fold{folds[0]}" / "curves.png"
        if curves.is_file():
            pictures.append((f"{stage}: training curves, fold {folds[0]}", curves))
    heat = run_dir / "hrank" / f"fold{folds[0]}" / "ranks_heatmap.png"
    if heat.is_file():
        pictures.append((f"HRank: feature-map ranks, fold {folds[0]}", heat))
    views = parse_list(cfg.infer.tta) or ["orig"]
    report = {
        "run": run_dir.name,
        "summary": (f"{len(folds)} fold(s) of {len(view.y)} train images ({int(view.mask.sum())} predicted out of fold), "
                    f"{len(classes)} classes. Every row is measured on the same out-of-fold images."),
        "legend": ("Δ: the difference from the step before (the row it is compared with). fold spread: the standard "
                   "deviation over folds of the per-fold accuracy differences; a difference no larger than it is "
                   "'within fold spread', not a gain. The fold ensemble cannot be measured out of fold (every other "
                   "fold's model trained on those images): see the test set section when the data has its labels."),
        "hrank_lines": hrank_lines(run_dir),
        "cost_lines": cost_lines(run_dir, views, cache),
        "test_lines": test_lines(run_dir),
    }
    md, page = render(report, rows, pictures, run_dir)
    atomic_write_text(run_dir / "report.json", dumps({**report, "rows": rows_to_json(rows)}) + "\n")
    table = text_table(rows)
    return {"table": table, "markdown": str(md), "html": str(page), "rows": rows_to_json(rows), **report}
