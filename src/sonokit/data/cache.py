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


def _decode_resize(src: str, size: int, interpolation: str) -> np.ndarray:
    arr = load_image(src)
    return cv2.resize(arr, (size, size), interpolation=_INTERP[interpolation])


def _build_one(args: tuple[str, str, int, str]) -> tuple[str, str | None]:
    src, dst, size, interpolation = args
    try:
        arr = _decode_resize(src, size, interpolation)
    except ValueError as e:
        return src, str(e)
    with atomic_path(dst) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)
    return src, None


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
        p = Path(src).resolve()
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
        entries = [self.entry(f) for f in files]
        todo = [(str(f), str(e), self.size, self.interpolation) for f, e in zip(files, entries) if not e.is_file()]
        if todo:
            workers = (os.cpu_count() or 1) if workers < 0 else workers
            bar = None
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=len(todo), desc=f"caching images at {self.size}px", unit="img")
            errors = []
            if workers > 1 and len(todo) > 8:
                with ProcessPoolExecutor(workers) as ex:
                    for src, err in ex.map(_build_one, todo, chunksize=4):
                        if err:
                            errors.append(f"{src}: {err}")
                        if bar:
                            bar.update()
            else:
                for job in todo:
                    src, err = _build_one(job)
                    if err:
                        errors.append(f"{src}: {err}")
                    if bar:
                        bar.update()
            if bar:
                bar.close()
            if errors:
                raise ValueError("images that do not decode:\n" + "\n".join(errors))
        return entries

    @staticmethod
    def load(entry: str | Path) -> np.ndarray:
        return np.load(entry, allow_pickle=False)

    def mean_std(self, entries: Sequence[Path]) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean/std (0..1 scale) over ``entries``, computed once and cached."""
        digest = hashlib.sha1("|".join(sorted(p.name for p in entries)).encode()).hexdigest()
        path = self.dir / "stats" / f"{digest}.json"
        if path.is_file():
            d = json.loads(path.read_text())
            return tuple(d["mean"]), tuple(d["std"])
        total = np.zeros(3)
        total_sq = np.zeros(3)
        count = 0
        for e in entries:
            a = self.load(e).reshape(-1, 3).astype(np.float64) / 255.0
            total += a.sum(0)
            total_sq += (a * a).sum(0)
            count += a.shape[0]
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
        atomic_write_json(path, {"mean": mean.tolist(), "std": std.tolist(), "n_images": len(entries)})
        return tuple(mean.tolist()), tuple(std.tolist())
