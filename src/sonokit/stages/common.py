"""What every stage shares: the run context, fold loaders, out-of-fold results and CV summaries."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import distributed as dist_utils
from ..ablation import log_softmax, metrics
from ..config import Config, TrainConfig, save_config
from ..constants import CONFIG_FILENAME, FOLDS_FILENAME
from ..data import ImageDataset, PreparedData, create_loader, prepare_data, write_folds
from ..io import atomic_path, atomic_write_json
from ..paths import resolve_assets
from ..paths import run_dir as resolve_run_dir

_logger = logging.getLogger("sonokit")


@dataclass
class Context:
    cfg: Config
    run_dir: Path
    prep: PreparedData | None  # None for stages that only read earlier outputs (package, report)
    device: torch.device
    env: dist_utils.DistEnv
    resume: bool = False
    #: called with every batch and epoch event of every fit() the stages run (a sweep's pruner listens here)
    callbacks: list = field(default_factory=list)

    @property
    def main(self) -> bool:
        return self.env.is_main

    @property
    def aug_on_device(self) -> bool:
        """Whether train augmentation runs per batch on the training device (``aug.device``)."""
        from ..data.device_aug import resolve_aug_device

        return resolve_aug_device(self.cfg.aug.device, self.device) == "gpu"

    def batch_transform(self, fold: int, mixing=None):
        """What fit() applies to each training batch: the device augmentation (when on), then CutMix/MixUp."""
        if not self.aug_on_device:
            return mixing
        from ..data.device_aug import Chain, DeviceAugment

        d = self.cfg.data
        augment = DeviceAugment(d.image_size, self.cfg.aug, self.prep.mean, self.prep.std, seed=self.cfg.run.seed + fold,
                                rank=self.env.rank)
        return Chain(augment, mixing)

    def assets(self) -> Path | None:
        """The assets folder (ImageNet weights, wheels) of ``run.assets``, or None."""
        return resolve_assets(self.cfg.run.assets)

    def folds(self) -> list[int]:
        n = self.cfg.data.folds
        spec = self.cfg.run.folds.strip()
        if spec in ("", "all"):
            return list(range(n))
        try:
            folds = sorted({int(f) for f in spec.split(",")})
        except ValueError:
            raise ValueError(f"run.folds must be 'all' or a comma list of fold numbers, not {spec!r}") from None
        bad = [f for f in folds if not 0 <= f < n]
        if bad:
            raise ValueError(f"run.folds {bad} out of range 0..{n - 1}")
        return folds

    def rank_loader(self, fold: int, batch_size: int):
        """The fold's *training* images, without augmentation (HRank's rank statistics)."""
        tr, _ = self.prep.fold_indices(fold)
        ds = ImageDataset([self.prep.train_eval_entries[i] for i in tr], self.prep.index.train_targets[tr], self.prep.eval_tf())
        return create_loader(ds, batch_size, False, device=self.device, mean=self.prep.mean, std=self.prep.std,
                             num_workers=self.cfg.data.num_workers)

    def loaders(self, fold: int, train_cfg: TrainConfig, val_extra: list | None = None):
        """(train, validation) loaders of ``fold``, normalised on the context's device.

        ``val_extra``: view transforms applied to the validation images (a TTA view)."""
        world = self.env.world_size
        if train_cfg.batch_size % world:
            raise ValueError(f"train.batch_size {train_cfg.batch_size} is not divisible by {world} processes")
        per_rank = train_cfg.batch_size // world
        seed = self.cfg.run.seed + fold
        train_ds, val_ds = self.prep.fold_datasets(fold, seed=seed, val_extra=val_extra, aug_on_device=self.aug_on_device)
        kw = dict(device=self.device, mean=self.prep.mean, std=self.prep.std, num_workers=self.cfg.data.num_workers, distributed=self.env.enabled)
        return (
            create_loader(train_ds, per_rank, True, seed=seed, **kw),
            create_loader(val_ds, per_rank, False, seed=seed, **kw),
        )


#: Stages that train, and so need the train images, folds and mean/std; the others only predict.
TRAINING_STAGES = ("teacher", "student", "hrank")


#: Stages that read only what earlier stages wrote (no data preparation at all).
RECORD_STAGES = ("package", "report")


def data_scope(stages) -> str:
    """``train`` when any of ``stages`` trains, ``none`` when they only read earlier outputs, else
    ``predict`` (test images and the class list only)."""
    if stages is None or any(s in TRAINING_STAGES for s in stages):
        return "train"
    return "none" if all(s in RECORD_STAGES for s in stages) else "predict"


def make_context(cfg: Config, resume: bool = False, progress: bool = True, stages=None) -> Context:
    """Resolve device and DDP, the run directory (config saved there), and the validated data.

    ``stages``: the stages this run will execute (None: all); a run of prediction stages only
    prepares the test images. Under DDP, local rank 0 of each machine prepares the data (with
    its progress bars) while the other ranks wait without the short collective timeout, however
    long preparation takes; then they read what it cached.
    """
    env = dist_utils.env_from_vars()
    device = dist_utils.resolve_device(cfg.run.device, env.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    env = dist_utils.init_distributed(device, cfg.run.collective_timeout_s, cfg.run.wait_timeout_s)
    scope = data_scope(stages)
    run_dir = resolve_run_dir(cfg.run.name, cfg.run.out_dir)
    prep = None
    if scope == "none":
        if not (run_dir / CONFIG_FILENAME).is_file():
            raise FileNotFoundError(f"{run_dir} holds no run (no {CONFIG_FILENAME}): run the earlier stages first")
        return Context(cfg, run_dir, None, device, env, resume)
    if env.local_rank == 0:
        prep = prepare_data(cfg, progress=progress and env.is_main, scope=scope)  # validates first: nothing written for bad data
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir)
        if prep.folds is not None:
            write_folds(prep.folds, run_dir / FOLDS_FILENAME)
    dist_utils.wait_for_peers()
    if prep is None:  # the machine's local rank 0 has validated and cached: this only reads
        prep = prepare_data(cfg, progress=False, scope=scope)
    return Context(cfg, run_dir, prep, device, env, resume)


def load_checkpoint_model(path: Path, device: torch.device | str = "cpu"):
    """Rebuild the model of a best.pt from its meta and load its weights; returns (model, meta)."""
    from ..engine import load_best
    from ..models import create_model

    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ck = load_best(path)
    meta = ck["meta"]
    model = create_model(meta["model"], meta["num_classes"], meta["in_chans"])
    if meta.get("shape_spec"):  # a pruned model: rebuild its shapes first
        from ..hrank import apply_shape_spec

        apply_shape_spec(model, meta["shape_spec"])
    model.load_state_dict(ck["model"])
    return model.to(device).eval(), meta


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def write_oof(stage_dir: Path, prep: PreparedData, oof_logits: np.ndarray, done: np.ndarray) -> pd.DataFrame:
    """Out-of-fold predictions of the folds run so far: id, label, fold, pred, one prob per class."""
    probs = softmax(oof_logits[done])
    idx = np.nonzero(done)[0]
    df = pd.DataFrame(
        {
            "image_id": [prep.index.train_ids[i] for i in idx],
            "label": [prep.index.train_labels[i] for i in idx],
            "fold": prep.folds["fold"].to_numpy()[idx],
            "pred": [prep.classes[j] for j in probs.argmax(1)],
        }
    )
    for j, c in enumerate(prep.classes):
        df[f"prob_{c}"] = probs[:, j]
    with atomic_path(stage_dir / "oof.csv") as tmp:
        df.to_csv(tmp, index=False)
    with atomic_path(stage_dir / "oof_logits.npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, oof_logits)
    return df


def cv_summary(stage_dir: Path, prep: PreparedData, fold_rows: list[dict], oof_logits: np.ndarray, done: np.ndarray, **extra) -> dict:
    """Per-fold and overall (out-of-fold) loss and accuracy, written to cv.json."""
    y = prep.index.train_targets[done]
    loss, acc = metrics(log_softmax(oof_logits[done]), y)
    overall = {"loss": loss, "acc": acc, "n_images": int(len(y))}
    summary = {"folds": fold_rows, "overall": overall, "classes": prep.classes, **extra}
    atomic_write_json(stage_dir / "cv.json", summary)
    return summary


def fold_fingerprint(prep: PreparedData, fold: int) -> str:
    """sha256 of the fold's training ids: a later stage checks it to prove nothing leaks."""
    import hashlib

    tr, _ = prep.fold_indices(fold)
    ids = sorted(prep.index.train_ids[i] for i in tr)
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


class FoldResults:
    """Out-of-fold logits and per-fold rows of one stage, gathered fold by fold.

    With the trained model, :meth:`add` also predicts the fold's validation images under every
    TTA view of ``infer.tta`` (the best weights, every DDP rank taking its share), so each
    view's gain is measured out of fold: ``oof_tta.npz`` holds one logits array per view.
    """

    def __init__(self, ctx: Context, stage: str):
        from .infer import parse_list

        self.ctx, self.stage = ctx, stage
        self.stage_dir = ctx.run_dir / stage
        n = len(ctx.prep.index.train_ids)
        self.oof = np.zeros((n, ctx.prep.num_classes), dtype=np.float32)
        self.done = np.zeros(n, dtype=bool)
        self.rows: list[dict] = []
        self.views = parse_list(ctx.cfg.infer.tta) or ["orig"]
        self.tta = {v: np.zeros_like(self.oof) for v in self.views} if len(self.views) > 1 else {}

    def add(self, fold: int, res, model=None, train_cfg: TrainConfig | None = None, **extra) -> None:
        _, va = self.ctx.prep.fold_indices(fold)
        if self.ctx.main and res.val_logits is not None:
            self.oof[va] = res.val_logits
            self.done[va] = True
        if model is not None and self.tta and res.best_state is not None:
            self._predict_views(fold, va, res, model, train_cfg)
        self.rows.append({"fold": fold, "val_loss": res.best_val_loss, "val_acc": res.best_val_acc, "best_epoch": res.best_epoch,
                          "epochs_run": res.epochs_run, "stopped_early": res.stopped_early, **extra})

    def _predict_views(self, fold: int, va: np.ndarray, res, model, train_cfg: TrainConfig | None) -> None:
        from ..engine import amp_dtype, evaluate
        from ..models import bare_model
        from .infer import tta_view

        model = bare_model(model)
        model.load_state_dict(res.best_state)
        amp = amp_dtype(train_cfg.amp, self.ctx.device) if train_cfg else None
        tcfg = train_cfg or self.ctx.cfg.student.train
        for view in self.views:
            if view == "orig":  # the fit's own validation pass (on rank 0; the same decision on every rank)
                logits = res.val_logits
            else:
                _, loader = self.ctx.loaders(fold, tcfg, val_extra=tta_view(view, self.ctx.cfg.aug))
                _, _, logits = evaluate(model, loader, self.ctx.device, amp)
            if self.ctx.main and logits is not None:
                self.tta[view][va] = logits

    def finish(self, **extra) -> dict:
        """oof.csv, cv.json, the confusion matrix and oof_tta.npz (rank 0); returns the CV summary ({} on other ranks)."""
        if not self.ctx.main:
            return {}
        from ..report import save_confusion

        write_oof(self.stage_dir, self.ctx.prep, self.oof, self.done)
        y = self.ctx.prep.index.train_targets[self.done]
        if self.tta:
            with atomic_path(self.stage_dir / "oof_tta.npz") as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, **self.tta)
            extra["tta"] = {}
            for v, logits in self.tta.items():
                loss, acc = metrics(log_softmax(logits[self.done]), y)
                extra["tta"][v] = {"loss": loss, "acc": acc}
        summary = cv_summary(self.stage_dir, self.ctx.prep, self.rows, self.oof, self.done, **extra)
        save_confusion(y, self.oof[self.done].argmax(1), self.ctx.prep.classes, self.stage_dir, title=f"{self.stage} out-of-fold")
        _logger.info(f"{self.stage} CV: loss {summary['overall']['loss']:.4f}, acc {summary['overall']['acc']:.4f}")
        return summary


def model_meta(name: str, in_chans: int, prep: PreparedData, cfg: Config, fold: int | None = None, **extra) -> dict:
    """What is needed to rebuild a checkpoint's model (saved inside best.pt)."""
    if fold is not None:
        extra.update(fold=fold, train_ids_sha256=fold_fingerprint(prep, fold))
    return {
        "model": name,
        "in_chans": in_chans,
        "num_classes": prep.num_classes,
        "classes": list(prep.classes),
        "image_size": cfg.data.image_size,
        "mean": list(prep.mean),
        "std": list(prep.std),
        **extra,
    }
