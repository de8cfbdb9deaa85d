"""What each step of the method bought, measured out of fold: the ablation table of the report stage.

Every row is measured on the same out-of-fold images: each train image predicted by the fold
model that did not train on it. Rows, in the method's order, as far as they were run:

    teacher -> student without KD -> student with KD -> HRank control (same fine-tuning, no filter
    changed) -> HRank (reinit or prune) -> each TTA view of the submitted stage -> their soft vote

Each row is compared with the step before it, fold by fold (paired): the difference of OOF
accuracy and loss, and the fold-to-fold spread of that difference (the standard deviation of
the per-fold differences). A difference no larger than its spread is marked "within fold
spread", not as a gain. The fold ensemble cannot be measured out of fold (every other fold's
model trained on those images); when the data has labels for the test set (the demo's
solution.csv) each member and the vote are scored there.
"""
from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .io import atomic_path, atomic_write_text

#: (stage directory, label, the step it is compared with)
STAGE_ROWS = (
    ("teacher", "teacher", None),
    ("student_nokd", "student, no KD", "teacher"),
    ("student", "student, KD", "student_nokd|teacher"),
    ("hrank_finetune", "HRank control: fine-tune only", "student"),
    ("hrank", "HRank {mode}", "hrank_finetune|student"),
)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def metrics(logp: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(cross-entropy, accuracy) of log-probabilities ``logp`` against targets ``y``."""
    if len(y) == 0:
        return math.nan, math.nan
    return float(-logp[np.arange(len(y)), y].mean()), float((logp.argmax(1) == y).mean())


@dataclass
class Row:
    key: str
    label: str
    loss: float
    acc: float
    per_fold: dict[int, tuple[float, float]]  # fold -> (loss, acc)
    compare: str | None = None  # key of the step before
    cost: dict = field(default_factory=dict)  # competition_gflops, true_gflops, params (one model)
    delta_acc: float = math.nan
    delta_loss: float = math.nan
    spread: float = math.nan  # std of the per-fold accuracy differences
    verdict: str = ""
    note: str = ""

    def compare_with(self, before: "Row") -> None:
        self.compare = before.key
        self.delta_acc, self.delta_loss = self.acc - before.acc, self.loss - before.loss
        folds = sorted(set(self.per_fold) & set(before.per_fold))
        diffs = [self.per_fold[k][1] - before.per_fold[k][1] for k in folds]
        if len(diffs) < 2:
            self.verdict = "one fold: no spread to judge by"
            return
        self.spread = float(np.std(diffs, ddof=1))
        if abs(self.delta_acc) <= self.spread:
            self.verdict = "within fold spread"
        else:
            self.verdict = "gain" if self.delta_acc > 0 else "loss"


def per_fold(logp: np.ndarray, y: np.ndarray, folds: np.ndarray, chosen: list[int]) -> dict[int, tuple[float, float]]:
    return {k: metrics(logp[folds == k], y[folds == k]) for k in chosen}


class RunView:
    """What a run directory holds: folds, targets, each stage's OOF logits and TTA views."""

    def __init__(self, run_dir: Path, classes: list[str], chosen_folds: list[int]):
        self.run_dir = Path(run_dir)
        f = pd.read_csv(self.run_dir / "folds.csv", dtype={"image_id": str, "label": str})
        lookup = {c: i for i, c in enumerate(classes)}
        self.y = f["label"].map(lookup).to_numpy()
        self.fold = f["fold"].to_numpy()
        self.chosen = chosen_folds
        self.mask = np.isin(self.fold, chosen_folds)

    def stage_logp(self, stage: str) -> np.ndarray | None:
        p = self.run_dir / stage / "oof_logits.npy"
        return log_softmax(np.load(p)) if p.is_file() else None

    def row(self, key: str, label: str, logp: np.ndarray) -> Row:
        m = self.mask
        loss, acc = metrics(logp[m], self.y[m])
        return Row(key, label, loss, acc, per_fold(logp, self.y, self.fold, self.chosen))

    def tta(self, stage: str) -> dict[str, np.ndarray]:
        p = self.run_dir / stage / "oof_tta.npz"
        if not p.is_file():
            return {}
        with np.load(p) as z:
            return {k: z[k] for k in z.files}


def build_rows(view: RunView, hrank_mode: str, submitted_stage: str) -> list[Row]:
    """The ablation rows that this run has, each compared with its step before."""
    rows: dict[str, Row] = {}
    for key, label, before in STAGE_ROWS:
        logp = view.stage_logp(key)
        if logp is None:
            continue
        mode = hrank_mode if key == "hrank" else ""
        r = view.row(key, label.format(mode=mode), logp)
        for b in (before or "").split("|"):
            if b and b in rows:
                r.compare_with(rows[b])
                break
        rows[key] = r
    out = list(rows.values())
    views = view.tta(submitted_stage)
    if views:
        names = [v for v in views if v != "vote"]
        base = None
        for name in names:
            r = view.row(f"tta:{name}", f"{submitted_stage} + TTA view {name}", log_softmax(views[name]))
            if base is None:
                base = r
                r.note = "the stage's own OOF prediction"
            else:
                r.compare_with(base)
            out.append(r)
        if len(names) > 1:
            probs = np.mean([np.exp(log_softmax(views[n])) for n in names], axis=0)
            r = view.row("tta:vote", f"{submitted_stage} + soft vote of {'+'.join(names)}", np.log(np.clip(probs, 1e-12, None)))
            r.compare_with(base)
            out.append(r)
    return out


# ----------------------------------------------------------------------------- rendering
def fmt(x: float, spec: str = ".4f", signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return format(x, ("+" if signed else "") + spec)


HEADER = ["step", "OOF loss", "OOF acc", "Δ acc", "Δ loss", "fold spread", "verdict", "GFLOPs (competition)", "GFLOPs (true)", "params (M)"]


def table_cells(r: Row) -> list[str]:
    c = r.cost
    return [r.label, fmt(r.loss), fmt(r.acc), fmt(r.delta_acc, signed=True), fmt(r.delta_loss, signed=True),
            fmt(r.spread, ".4f"), r.verdict or r.note, fmt(c.get("competition_gflops"), ".7f"), fmt(c.get("true_gflops"), ".4f"),
            fmt(c.get("params", math.nan) / 1e6 if c.get("params") else math.nan, ".2f")]


def text_table(rows: list[Row]) -> str:
    cells = [HEADER] + [table_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(len(HEADER))).rstrip() for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: list[Row]) -> str:
    out = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    out += ["| " + " | ".join(table_cells(r)) + " |" for r in rows]
    return "\n".join(out)


def plot_cost_vs_acc(rows: list[Row], path: Path) -> None:
    """GFLOPs (true, one model) against OOF accuracy, one point per step that has a model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [r for r in rows if r.cost.get("true_gflops")]
    fig, ax = plt.subplots(figsize=(9, 5))
    markers = "osD^vP*Xh<>"
    for j, r in enumerate(pts):  # a legend, not labels on the points: steps often share a cost
        ax.scatter(r.cost["true_gflops"], r.acc, s=70, color=f"C{j % 10}", marker=markers[j % len(markers)], alpha=0.85,
                   label=f"{r.label}: {r.acc:.4f}")
    ax.set_xscale("log")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_xlabel("GFLOPs per test image (true, FlopCounterMode; log scale)")
    ax.set_ylabel("out-of-fold accuracy")
    ax.grid(alpha=0.3)
    ax.set_title("cost against accuracy, per step")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def render(report: dict, rows: list[Row], pictures: list[tuple[str, Path]], out_dir: Path) -> tuple[Path, Path]:
    """report.md (pictures linked) and report.html (self-contained: pictures inlined)."""
    md = [f"# sonokit report: {report['run']}", "", report["summary"], "", "## What each step bought (out of fold)", "",
          markdown_table(rows), "", report["legend"], ""]
    md += ["## HRank", "", *[f"- {line}" for line in report["hrank_lines"]], ""] if report["hrank_lines"] else []
    md += ["## Submission cost", "", *[f"- {line}" for line in report["cost_lines"]], ""]
    if report["test_lines"]:
        md += ["## Test set (labels from solution.csv)", "", *[f"- {line}" for line in report["test_lines"]], ""]
    md += ["## Pictures", ""] + [f"![{t}]({p.relative_to(out_dir).as_posix()})" for t, p in pictures]
    md_path = out_dir / "report.md"
    atomic_write_text(md_path, "\n".join(md) + "\n")

    def li(lines):
        return "<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in lines) + "</ul>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADER)
    body = ""
    for r in rows:
        cls = {"gain": "gain", "loss": "worse", "within fold spread": "spread"}.get(r.verdict, "")
        body += f'<tr class="{cls}">' + "".join(f"<td>{html.escape(c)}</td>" for c in table_cells(r)) + "</tr>"
    imgs = ""
    for title, p in pictures:
        b64 = base64.b64encode(p.read_bytes()).decode()
        imgs += f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{b64}"><figcaption>{html.escape(title)}</figcaption></figure>'
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sonokit report: {html.escape(report['run'])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 1200px; }}
table {{ border-collapse: collapse; font-size: 14px; }} th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
td:first-child, th:first-child, td:nth-child(7) {{ text-align: left; }}
tr.gain td:nth-child(7) {{ color: #080; font-weight: bold; }} tr.worse td:nth-child(7) {{ color: #b00; font-weight: bold; }}
tr.spread td:nth-child(7) {{ color: #777; }}
figure {{ display: inline-block; margin: 1em; vertical-align: top; }} img {{ max-width: 560px; border: 1px solid #ddd; }}
</style></head><body>
<h1>sonokit report: {html.escape(report['run'])}</h1>
<p>{html.escape(report['summary'])}</p>
<h2>What each step bought (out of fold)</h2>
<table id="ablation"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<p>{html.escape(report['legend'])}</p>
{"<h2>HRank</h2>" + li(report["hrank_lines"]) if report["hrank_lines"] else ""}
<h2>Submission cost</h2>{li(report["cost_lines"])}
{"<h2>Test set (labels from solution.csv)</h2>" + li(report["test_lines"]) if report["test_lines"] else ""}
<h2>Pictures</h2>{imgs}
</body></html>
"""
    html_path = out_dir / "report.html"
    atomic_write_text(html_path, page)
    return md_path, html_path


def rows_to_json(rows: list[Row]) -> list[dict]:
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.__dict__.items()} for r in rows]


def dumps(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str)
