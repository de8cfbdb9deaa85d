"""Data pipeline: validated input, image cache, transforms, folds and loaders."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..config import Config
from ..constants import IMAGENET_MEAN, IMAGENET_STD
from ..paths import default_cache_dir, resolve_data_dir
from ..schema import DataIndex, load_schema, require_valid
from .cache import ImageCache, build_caches
from .dataset import ImageDataset, create_loader, default_workers, make_folds, set_epoch, write_folds
from .transforms import eval_transform, train_transform

__all__ = [
    "ImageCache",
    "ImageDataset",
    "PreparedData",
    "create_loader",
    "default_workers",
    "eval_transform",
    "make_folds",
    "prepare_data",
    "set_epoch",
    "train_transform",
    "write_folds",
]


@dataclass
class PreparedData:
    """A validated data directory with its cache entries, folds and normalisation.

    A ``predict``-scope preparation (runs that only predict) has no train entries, no folds
    and no mean/std: every member carries its own normalisation in its checkpoint.
    """

    cfg: Config
    index: DataIndex
    train_crop_entries: list[Path]  # train images at resize_size (random crops come from these)
    train_eval_entries: list[Path]  # train images at image_size (validation)
    test_entries: list[Path]  # test images at image_size
    folds: pd.DataFrame | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    scope: str = "train"

    @property
    def classes(self) -> list[str]:
        return self.index.classes

    @property
    def num_classes(self) -> int:
        return len(self.index.classes)

    def fold_indices(self, fold: int):
        if self.folds is None:
            raise RuntimeError("the data was prepared for prediction only: no folds (prepare with scope='train')")
        f = self.folds["fold"].to_numpy()
        if fold < 0 or fold >= int(f.max()) + 1:
            raise ValueError(f"fold {fold} out of range 0..{int(f.max())}")
        return (f != fold).nonzero()[0], (f == fold).nonzero()[0]

    def fold_datasets(self, fold: int, seed: int = 0, val_extra: list | None = None,
                      aug_on_device: bool = False) -> tuple[ImageDataset, ImageDataset]:
        """The fold's (train, validation) datasets; ``val_extra``: view transforms for the validation images (TTA);
        ``aug_on_device``: the train images only decoded (augmented per batch on the device)."""
        d = self.cfg.data
        tr, va = self.fold_indices(fold)
        y = self.index.train_targets
        train_ds = ImageDataset(
            [self.train_crop_entries[i] for i in tr],
            y[tr],
            train_transform(d.image_size, d.resize_size, self.cfg.aug, on_device=aug_on_device),
            seed=seed,
        )
        val_ds = ImageDataset([self.train_eval_entries[i] for i in va], y[va], self.eval_tf(val_extra), seed=seed)
        return train_ds, val_ds

    def eval_tf(self, extra: list | None = None):
        return eval_transform(self.cfg.data.image_size, extra)

    def test_dataset(self, extra: list | None = None, seed: int = 0, size: int | None = None) -> ImageDataset:
        """The test images at ``size`` (default: the config's image size), with extra view transforms."""
        size = size or self.cfg.data.image_size
        entries = self.test_entries
        if size != self.cfg.data.image_size:
            d = self.cfg.data
            cache = ImageCache(Path(d.cache_dir) if d.cache_dir else default_cache_dir(), size, d.interpolation)
            entries = cache.build(self.index.test_files, workers=default_workers(d.num_workers), progress=False)
        return ImageDataset(entries, None, eval_transform(size, extra), seed=seed)


SCOPES = ("train", "predict")


def prepare_data(cfg: Config, progress: bool = True, scope: str = "train") -> PreparedData:
    """Validate ``cfg.data.root`` and build what the run needs (nothing else is written).

    ``scope="train"``: every image is decoded once, for the validation and the caches at
    once (train images at resize_size and image_size, test images at image_size), then the
    folds and the train-set mean/std. Images whose entries exist (same path, size, mtime) are
    not decoded again. ``scope="predict"``: the test images and the class list only; train.csv
    is read for its labels (not even that when the schema lists the classes).

    Raises :class:`sonokit.schema.DataError` listing every problem when the data is invalid.
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, not {scope!r}")
    d = cfg.data
    root = resolve_data_dir(d.root)
    schema = load_schema(d.schema)
    cache_root = Path(d.cache_dir) if d.cache_dir else default_cache_dir()
    crop_cache = ImageCache(cache_root, d.resize_size, d.interpolation)
    eval_cache = ImageCache(cache_root, d.image_size, d.interpolation)
    workers = default_workers(d.num_workers)
    built: dict[str, list[list[Path]]] = {}

    def check_and_cache(train_files: list[Path], test_files: list[Path]) -> dict[Path, str]:
        bad: dict[Path, str] = {}
        for name, files, caches in (("train", train_files, [crop_cache, eval_cache]), ("test", test_files, [eval_cache])):
            entries, errors = build_caches(files, caches, workers, progress, desc=f"{name} images: checking + caching")
            built[name] = entries
            bad.update({Path(k): v for k, v in errors.items()})
        return bad

    index = require_valid(root, schema, n_folds=d.folds, progress=progress, scope=scope, image_check=check_and_cache)
    # valid data: the index holds exactly the files that were checked, in the same order
    (crop_entries, train_eval), (test_entries,) = built["train"], built["test"]
    if scope == "predict":
        return PreparedData(cfg, index, [], [], test_entries, None, None, None, scope)
    folds = make_folds(index.train_ids, index.train_labels, d.folds, d.seed)
    if d.normalize == "imagenet":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    elif d.normalize == "dataset":
        mean, std = crop_cache.mean_std(crop_entries, progress=progress)
    else:
        raise ValueError(f"data.normalize must be 'dataset' or 'imagenet', not {d.normalize!r}")
    return PreparedData(cfg, index, crop_entries, train_eval, test_entries, folds, tuple(mean), tuple(std), scope)
