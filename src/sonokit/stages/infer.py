"""Inference: every member (fold checkpoints, other runs) x TTA views, soft voting, a valid submission."""
from __future__ import annotations

import glob
import logging
from pathlib import Path

import albumentations as A
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..config import AugConfig
from ..data import create_loader
from ..data.transforms import FancyPCA
from ..engine import amp_dtype, autocast
from ..io import atomic_path, atomic_write_json
from ..submission import build_submission, require_valid_submission, sha256_file
from .common import Context, load_checkpoint_model, softmax

_logger = logging.getLogger("sonokit")


def tta_view(name: str, aug: AugConfig) -> list:
    """The extra albumentations transforms of one TTA view (after the resize, before normalising)."""
    views = {
        "orig": [],
        "fancypca": [FancyPCA(alpha=aug.fancy_pca_alpha, p=1.0)],  # the source's second view
        "hflip": [A.HorizontalFlip(p=1.0)],
        "vflip": [A.VerticalFlip(p=1.0)],
    }
    if name not in views:
        raise ValueError(f"unknown TTA view {name!r}; choose from {', '.join(views)}")
    return views[name]


def parse_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def resolve_members(ctx: Context) -> list[Path]:
    """This run's fold checkpoints of ``infer.stage``, then ``infer.checkpoints`` (paths or globs)."""
    icfg = ctx.cfg.infer
    members: list[Path] = []
    if icfg.stage:
        for k in ctx.folds():
            p = ctx.run_dir / icfg.stage / f"fold{k}" / "best.pt"
            if not p.is_file():
                raise FileNotFoundError(f"no {icfg.stage} checkpoint for fold {k} at {p}: run the {icfg.stage} stage first")
            members.append(p)
    for spec in parse_list(icfg.checkpoints):
        hits = sorted(glob.glob(spec)) if any(c in spec for c in "*?[") else [spec]
        if not hits or not all(Path(h).is_file() for h in hits):
            raise FileNotFoundError(f"infer.checkpoints: nothing found for {spec!r}")
        members.extend(Path(h) for h in hits)
    if not members:
        raise ValueError("no members to predict with (set infer.stage or infer.checkpoints)")
    return members


def soft_vote(member_probs: list[np.ndarray], weights: list[float] | None = None) -> np.ndarray:
    """Weighted mean of the members' probabilities (weights normalised to sum to 1)."""
    if not member_probs:
        raise ValueError("nothing to vote on")
    w = np.ones(len(member_probs)) if not weights else np.asarray(weights, dtype=np.float64)
    if len(w) != len(member_probs):
        raise ValueError(f"{len(w)} weight(s) for {len(member_probs)} member(s)")
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError("voting weights must be >= 0 and not all 0")
    w = w / w.sum()
    return np.tensordot(w, np.stack(member_probs), axes=1)


@torch.no_grad()
def predict_views(model: torch.nn.Module, meta: dict, ctx: Context, views: list[str]) -> np.ndarray:
    """Softmax probabilities of ``model`` for every test image, averaged over ``views``."""
    device = ctx.device
    amp = amp_dtype(ctx.cfg.student.train.amp, device)
    out = []
    for view in views:
        ds = ctx.prep.test_dataset(tta_view(view, ctx.cfg.aug), seed=ctx.cfg.run.seed, size=int(meta.get("image_size", 0)) or None)
        loader = create_loader(ds, ctx.cfg.infer.batch_size, train=False, device=device, mean=meta["mean"], std=meta["std"],
                               num_workers=ctx.cfg.data.num_workers)
        logits = []
        for x, _ in loader:
            with autocast(device, amp):
                logits.append(model(x).float().cpu())
        out.append(softmax(torch.cat(logits).numpy()))
    return np.mean(out, axis=0)


def run_infer(ctx: Context) -> dict:
    """Predict the test set with every member under every TTA view, soft-vote, write the submission.

    Writes infer/probs.csv (one column per class), infer/members.json and submission.csv (in
    sample_submission's exact format, validated). Returns a summary.
    """
    if not ctx.main:
        return {}
    icfg = ctx.cfg.infer
    views = parse_list(icfg.tta) or ["orig"]
    for v in views:
        tta_view(v, ctx.cfg.aug)  # fail fast on a typo
    members = resolve_members(ctx)
    weights = [float(w) for w in parse_list(icfg.weights)] or None
    if weights is not None and len(weights) != len(members):
        raise ValueError(f"infer.weights has {len(weights)} value(s) for {len(members)} member(s)")
    member_probs, member_info = [], []
    for path in tqdm(members, desc="predicting", unit="model"):
        model, meta = load_checkpoint_model(path, ctx.device)
        if meta.get("classes") != ctx.prep.classes:
            raise ValueError(f"{path} predicts classes {meta.get('classes')}, the data has {ctx.prep.classes}")
        if "mean" not in meta or "std" not in meta:
            raise ValueError(f"{path} has no mean/std in its meta: not a sonokit checkpoint?")
        member_probs.append(predict_views(model, meta, ctx, views))
        member_info.append({"path": str(path), "sha256": sha256_file(path), "model": meta.get("model"), "stage": meta.get("stage"),
                            "fold": meta.get("fold"), "image_size": meta.get("image_size"), "val_loss": meta.get("val_loss")})
    probs = soft_vote(member_probs, weights)
    out_dir = ctx.run_dir / "infer"
    schema, classes = ctx.prep.index.schema, ctx.prep.classes
    ids = ctx.prep.index.test_ids
    dfp = pd.DataFrame(probs, columns=classes)
    dfp.insert(0, schema.submission_columns[0], ids)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "probs.csv") as tmp:
        dfp.to_csv(tmp, index=False)
    sub_path = ctx.run_dir / "submission.csv"
    sample = ctx.prep.index.root / schema.sample_submission
    with atomic_path(sub_path) as tmp:
        build_submission(ids, probs, classes, schema, sample=sample).to_csv(tmp, index=False)
    require_valid_submission(sub_path, sample, classes, schema)
    summary = {"members": member_info, "weights": weights, "tta_views": views, "n_test": len(ids), "submission": str(sub_path)}
    solution = ctx.prep.index.root / "solution.csv"  # the demo data's hidden labels
    if solution.is_file():
        truth = pd.read_csv(solution, dtype=str).set_index(schema.submission_columns[0])[schema.submission_label_column]
        truth = [truth.get(i) for i in ids]

        def acc(p: np.ndarray) -> float:
            return float(np.mean([t == classes[j] for t, j in zip(truth, p.argmax(1))]))

        summary["test_acc_on_solution_csv"] = acc(probs)
        for info, p in zip(member_info, member_probs):  # each member alone, for the report's ensemble section
            info["test_acc"] = acc(p)
    atomic_write_json(out_dir / "members.json", summary)
    return summary
