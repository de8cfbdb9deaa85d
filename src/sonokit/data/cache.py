"""Decode each image once, resize, keep it as uint8 on disk.

An entry's key is the source file (absolute path, byte size, mtime) and the resize settings,
so a changed file or a changed setting rebuilds just the affected entries; later epochs,
folds and stages read only the cache.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from ..io import atomic_path, atomic_write_json
from ..schema import load_image

CACHE_VERSION = 1
_INTERP = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC, "lanczos": cv2.INTER_LANCZOS4}


def _build_one(args: tuple[str, list[tuple[str, int, str]]]) -> tuple[str, str | None]:
    """Decode ``src`` once and write every missing entry (one per size); (src, error or None)."""
    src, targets = args
    try:
        arr = load_image(src)
    except (ValueError, OSError) as e:
        return src, str(e)
    for dst, size, interpolation in targets:
        small = cv2.resize(arr, (size, size), interpolation=_INTERP[interpolation])
        with atomic_path(dst) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, small, allow_pickle=False)
    return src, None


def build_caches(files: Sequence[str | Path], caches: Sequence["ImageCache"], workers: int = -1, progress: bool = True,
                 desc: str = "caching images") -> tuple[list[list[Path]], dict[str, str]]:
    """Give every file an entry in every cache, decoding each file at most once.

    Files whose entries all exist (same path, byte size and mtime) are not decoded again: that
    is also what makes a second validation of the same data cheap. Returns (entries per cache,
    in ``files`` order; {file: why it does not decode} for the files that failed).
    """
    entries = [[c.entry(f) for f in files] for c in caches]
    todo = []
    for i, f in enumerate(files):
        targets = [(str(es[i]), c.size, c.interpolation) for c, es in zip(caches, entries) if not es[i].is_file()]
        if targets:
            todo.append((str(f), targets))
    errors: dict[str, str] = {}
    if not todo:
        return entries, errors
    workers = (os.cpu_count() or 1) if workers < 0 else workers
    bar = None
    if progress:
        from tqdm.auto import tqdm

        sizes = "+".join(f"{c.size}px" for c in caches)
        bar = tqdm(total=len(todo), desc=f"{desc} ({sizes}, {len(files) - len(todo)} cached)", unit="img")
    try:
        if workers > 1 and len(todo) > 8:
            # one cv2 thread per process: the processes are the parallelism
            cv2.setNumThreads(1)
            with ProcessPoolExecutor(workers) as ex:
                for src, err in ex.map(_build_one, todo, chunksize=8):
                    if err:
                        errors[src] = err
                    if bar:
                        bar.update()
        else:
            for job in todo:
                src, err = _build_one(job)
                if err:
                    errors[src] = err
                if bar:
                    bar.update()
    finally:
        if bar:
            bar.close()
    return entries, errors


class ImageCache:
    """On-disk uint8 cache of images resized to ``size`` x ``size``.

    Args:
        root: cache directory (shared by runs; safe to delete).
        size: side of the square the images are resized to.
        interpolation: one of area, linear, cubic, lanczos.
    """

    def __init__(self, root: str | Path, size: int, interpolation: str = "area"):
        if interpolation not in _INTERP:
            raise ValueError(f"interpolation must be one of {sorted(_INTERP)}, not {interpolation!r}")
        if size < 8:
            raise ValueError(f"cache size must be at least 8 px, not {size}")
        self.root = Path(root)
        self.size = int(size)
        self.interpolation = interpolation
        self.dir = self.root / f"v{CACHE_VERSION}_{self.size}_{interpolation}"

    def key(self, src: str | Path) -> str:
        p = Path(os.path.abspath(src))  # not resolved: a symlinked copy is its own entry, as a copied file would be
        st = p.stat()
        blob = f"{p}|{st.st_size}|{st.st_mtime_ns}|{self.size}|{self.interpolation}|{CACHE_VERSION}"
        return hashlib.sha1(blob.encode()).hexdigest()

    def entry(self, src: str | Path) -> Path:
        k = self.key(src)
        return self.dir / k[:2] / f"{k}.npy"

    def has(self, src: str | Path) -> bool:
        try:
            return self.entry(src).is_file()
        except OSError:
            return False

    def build(self, files: Sequence[str | Path], workers: int = -1, progress: bool = True) -> list[Path]:
        """Make sure every file has an entry; return the entry paths in the same order.

        Raises ValueError listing the files that do not decode.
        """
        (entries,), errors = build_caches(files, [self], workers, progress)
        if errors:
            raise ValueError("images that do not decode:\n" + "\n".join(f"{k}: {v}" for k, v in errors.items()))
        return entries

    @staticmethod
    def load(entry: str | Path) -> np.ndarray:
        return np.load(entry, allow_pickle=False)

    def mean_std(self, entries: Sequence[Path], progress: bool = False) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean/std (0..1 scale) over ``entries``, computed once and cached.

        Exact, from per-channel histograms of the uint8 pixels (256 bins each), which is several
        times faster than summing float copies of every image.
        """
        digest = hashlib.sha1("|".join(sorted(p.name for p in entries)).encode()).hexdigest()
        path = self.dir / "stats" / f"{digest}.json"
        if path.is_file():
            d = json.loads(path.read_text())
            return tuple(d["mean"]), tuple(d["std"])
        hist = np.zeros((3, 256), dtype=np.int64)
        it: Sequence[Path] = entries
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(entries, desc="train-set mean/std", unit="img", leave=False)
        for e in it:
            a = self.load(e).reshape(-1, 3)
            for c in range(3):
                hist[c] += np.bincount(a[:, c], minlength=256)
        levels = np.arange(256, dtype=np.float64) / 255.0
        count = hist.sum(1)
        mean = (hist * levels).sum(1) / count
        std = np.sqrt(np.maximum((hist * levels**2).sum(1) / count - mean**2, 1e-12))
        atomic_write_json(path, {"mean": mean.tolist(), "std": std.tolist(), "n_images": len(entries)})
        return tuple(mean.tolist()), tuple(std.tolist())
