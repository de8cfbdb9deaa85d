"""albumentations pipelines: train (resize, RandomCrop, Rotate, FancyPCA) and eval (resize).

Both end in a uint8 CHW tensor. Normalisation (train-set or ImageNet mean/std) happens on the
batch, on the device, in :func:`sonokit.data.create_loader` (timm's ``PrefetchLoader``, as
timm's own training does): workers then ship 4x fewer bytes, and on a GPU normalising is free.
The benchmark in benchmarks/bench_data.py measured 440 -> 565 img/s for this change on 2 cores.
"""
from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
from albucore import from_float, to_float
from albumentations.pytorch import ToTensorV2

from ..config import AugConfig


def fancy_pca(img: np.ndarray, alpha_vector: np.ndarray) -> np.ndarray:
    """albumentations' ``fancy_pca`` formula as one affine colour transform (``cv2.transform``).

    Written here because albumentations' version spends 10.7 ms per 256 px image (``np.cov`` in
    float64, a full-size transposed copy, float round trips), more than decoding the original
    JPEG, which made FancyPCA the data path's bottleneck. Its formula, ``x + V diag(a*l) V^T``
    applied to the centred pixels, is affine in the pixel, so it is exactly one 3x4 matrix per
    image. Tests check this against albumentations to within 1 grey level; ~1 ms here.
    """
    if img.ndim != 3 or img.shape[-1] != 3 or img.dtype != np.uint8:
        out = to_float(img) if img.dtype != np.float32 else img
        flat = out.reshape(-1, out.shape[-1] if out.ndim == 3 else 1)
        centred = flat - flat.mean(axis=0)
        if flat.shape[1] == 1:
            res = flat + alpha_vector[0] * centred.std() * centred
        else:
            vals, vecs = np.linalg.eigh(np.cov(centred, rowvar=False))
            order = vals[::-1].argsort()
            res = flat + centred @ (vecs[:, order] @ np.diag(alpha_vector * vals[order])).T
        res = np.clip(res.reshape(out.shape), 0, 1).astype(np.float32)
        return from_float(res, target_dtype=img.dtype) if img.dtype != np.float32 else res
    flat = img.reshape(-1, 3).astype(np.float64)
    n = flat.shape[0]
    total = flat.sum(axis=0) if n < 64 else np.ones(n) @ flat
    mean = total / n
    cov = (flat.T @ flat - np.outer(total, mean)) / max(n - 1, 1) / 255.0**2
    vals, vecs = np.linalg.eigh(cov)
    order = vals[::-1].argsort()
    vals, vecs = vals[order], vecs[:, order]
    mix = vecs @ np.diag(alpha_vector.astype(np.float64) * vals)
    affine = np.hstack([np.eye(3) + mix, (-mix @ mean)[:, None]]).astype(np.float32)
    return cv2.transform(img, affine)


class FancyPCA(A.ImageOnlyTransform):
    """Drop-in for ``albumentations.FancyPCA`` (same parameters, same random draws, same image)."""

    def __init__(self, alpha: float = 0.1, p: float = 0.5):
        super().__init__(p=p)
        self.alpha = alpha

    def get_params_dependent_on_data(self, params, data):
        shape = params["shape"]
        c = shape[-1] if len(shape) == 3 else 1
        return {"alpha_vector": self.random_generator.normal(0, self.alpha, c).astype(np.float32)}

    def apply(self, img, alpha_vector, **params):
        return fancy_pca(img, alpha_vector)

    def get_transform_init_args_names(self):
        return ("alpha",)


def train_transform(image_size: int, resize_size: int, aug: AugConfig | None = None, on_device: bool = False) -> A.Compose:
    """Resize to ``resize_size``, RandomCrop ``image_size``, Rotate, (flips), FancyPCA -> uint8 CHW.

    ``on_device``: only the resize (a no-op on cache entries, already at resize_size); the rest
    runs per batch on the training device (:class:`sonokit.data.device_aug.DeviceAugment`).
    """
    aug = aug or AugConfig()
    if resize_size < image_size:
        raise ValueError(f"resize_size ({resize_size}) must be at least image_size ({image_size})")
    if on_device:
        return A.Compose([A.Resize(resize_size, resize_size, interpolation=cv2.INTER_AREA), ToTensorV2()])
    ts = [A.Resize(resize_size, resize_size, interpolation=cv2.INTER_AREA), A.RandomCrop(image_size, image_size)]
    if aug.rotate_limit > 0 and aug.rotate_p > 0:
        ts.append(A.Rotate(limit=aug.rotate_limit, border_mode=cv2.BORDER_CONSTANT, fill=0, p=aug.rotate_p))
    if aug.hflip_p > 0:
        ts.append(A.HorizontalFlip(p=aug.hflip_p))
    if aug.vflip_p > 0:
        ts.append(A.VerticalFlip(p=aug.vflip_p))
    if aug.fancy_pca_p > 0:
        ts.append(FancyPCA(alpha=aug.fancy_pca_alpha, p=aug.fancy_pca_p))
    ts.append(ToTensorV2())
    return A.Compose(ts)


def eval_transform(image_size: int, extra: list | None = None) -> A.Compose:
    """Resize to ``image_size``, optional extra view transforms (TTA) -> uint8 CHW."""
    ts = [A.Resize(image_size, image_size, interpolation=cv2.INTER_AREA), *(extra or []), ToTensorV2()]
    return A.Compose(ts)
