"""Datasets over cached (or, for comparison, original) images, folds and the DataLoader factory."""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import StratifiedKFold
from timm.data.loader import PrefetchLoader
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from ..io import atomic_path
from ..schema import load_image


class ImageDataset(Dataset):
    """Images from a list of paths (cache entries or, with ``decode=True``, original files).

    Augmentation is seeded per (seed, epoch, index), so a sample's augmentation does not depend
    on worker count, DDP rank or whether the run was resumed. Call :meth:`set_epoch` each epoch.
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        targets: Sequence[int] | None,
        transform: Callable,
        decode: bool = False,
        seed: int = 0,
    ):
        self.paths = [str(p) for p in paths]
        self.targets = None if targets is None else np.asarray(targets, dtype=np.int64)
        if self.targets is not None and len(self.targets) != len(self.paths):
            raise ValueError("paths and targets differ in length")
        self.transform = transform
        self.decode = decode
        self.seed = int(seed)
        # shared memory, so persistent DataLoader workers see the epoch the main process sets
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        arr = load_image(self.paths[i]) if self.decode else np.load(self.paths[i], allow_pickle=False)
        if hasattr(self.transform, "set_random_seed"):
            self.transform.set_random_seed((self.seed * 1_000_003 + self.epoch * 100_003 + i) % (2**32))
        x = self.transform(image=arr)["image"]
        y = -1 if self.targets is None else int(self.targets[i])
        return x, y


def make_folds(ids: Sequence[str], labels: Sequence[str], n_folds: int = 5, seed: int = 42) -> pd.DataFrame:
    """StratifiedKFold (shuffled, seeded): a frame of id, label, fold."""
    if n_folds < 2:
        raise ValueError("n_folds must be at least 2")
    df = pd.DataFrame({"image_id": list(ids), "label": list(labels)})
    df["fold"] = -1
    skf = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, val_idx) in enumerate(skf.split(np.zeros(len(df)), df["label"])):
        df.loc[val_idx, "fold"] = k
    return df


def write_folds(df: pd.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return path


class ShardSampler(torch.utils.data.Sampler):
    """Every rank takes indices ``rank::world_size``, with no padding.

    Written here because DistributedSampler pads the last shard with repeated images (so a
    validation image would be counted twice in the metrics) or, with drop_last, drops some.
    """

    def __init__(self, n: int, rank: int, world_size: int):
        self.indices = list(range(rank, n, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def default_workers(requested: int = -1) -> int:
    if requested >= 0:
        return requested
    return min(os.cpu_count() or 1, 8)


def _seed_worker(worker_id: int) -> None:
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def create_loader(
    dataset: Dataset,
    batch_size: int,
    train: bool,
    device: torch.device | str = "cpu",
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
    num_workers: int = -1,
    seed: int = 0,
    distributed: bool = False,
    drop_last: bool | None = None,
) -> PrefetchLoader:
    """A loader that is right on CPU and GPU, yielding normalised float batches on ``device``.

    Workers default to the CPU count (max 8); pinned memory on CUDA only; persistent workers
    when there are workers; seeded workers and a seeded shuffling generator; a
    DistributedSampler (also for one process, so the order is the same). The uint8 batches are moved to ``device`` and normalised
    with ``mean``/``std`` (0..1 scale) there by timm's ``PrefetchLoader``. Call
    :func:`set_epoch` before each epoch.
    """
    device = torch.device(device)
    workers = default_workers(num_workers)
    if workers > 0:
        import cv2

        # The workers are the parallelism: a cv2 thread pool in each oversubscribes the cores
        # (bench_data, 256 px: 474 -> 625 img/s). Set here, before the workers fork; calling it
        # inside a forked worker can deadlock on the pool's inherited lock.
        cv2.setNumThreads(1)
    if drop_last is None:
        drop_last = train and len(dataset) > batch_size
    g = torch.Generator()
    g.manual_seed(seed)
    import torch.distributed as dist

    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if train:
        # one process or many, the same seeded permutation per epoch: N processes together see
        # exactly the batches one process would (each rank every N-th index of it)
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=False)
    else:
        sampler = ShardSampler(len(dataset), rank, world)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        worker_init_fn=_seed_worker,
        generator=g,
        drop_last=drop_last,
    )
    return PrefetchLoader(loader, mean=tuple(mean), std=tuple(std), channels=len(mean), device=device)


def set_epoch(loader, epoch: int) -> None:
    """Make epoch ``epoch`` reproducible: sampler order and per-sample augmentation."""
    inner = getattr(loader, "loader", loader)
    if isinstance(inner.sampler, DistributedSampler):
        inner.sampler.set_epoch(epoch)
    ds = loader.dataset
    if hasattr(ds, "set_epoch"):
        ds.set_epoch(epoch)
