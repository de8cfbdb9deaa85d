"""The training augmentations on the device, per batch: random crop, rotate, flips, FancyPCA.

With ``aug.device=gpu`` the loader workers only read the cached uint8 images (already at
``resize_size``), and these run on the batch where the model runs: a GPU augments a batch of
256 px images in well under a millisecond, while 2-4 CPU cores spend about 1 ms per image.

Plain torch (written here rather than taken from kornia, which the kit does not otherwise
need): each op draws from the same distribution as the CPU path in
:func:`sonokit.data.transforms.train_transform` (albumentations' RandomCrop and Rotate, and
the kit's FancyPCA), in the same order; tests compare the two paths' crop offsets, angles and
colour shifts statistically. The batch arrives normalised (mean/std); the ops run in 0..255
pixel space (rotation fills with black, FancyPCA clips to 0..255) and the result is normalised
again. Random draws come from a generator seeded by (seed, rank, epoch, batch), so a run
resumed at an epoch boundary augments exactly as an uninterrupted one.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from ..config import AugConfig


def resolve_aug_device(spec: str, device: torch.device | str) -> str:
    """auto -> gpu when training on CUDA, else cpu."""
    if spec not in ("auto", "cpu", "gpu"):
        raise ValueError(f"aug.device must be auto, cpu or gpu, not {spec!r}")
    if spec == "auto":
        return "gpu" if torch.device(device).type == "cuda" else "cpu"
    return spec


def random_crop(x: torch.Tensor, size: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image crops of ``size`` at offsets uniform over every position (albumentations' RandomCrop)."""
    b, _, h, w = x.shape
    oy = torch.randint(0, h - size + 1, (b,), generator=g, device=g.device).to(x.device)
    ox = torch.randint(0, w - size + 1, (b,), generator=g, device=g.device).to(x.device)
    r = torch.arange(size, device=x.device)
    rows = (oy[:, None] + r)[:, :, None]  # (B, S, 1)
    cols = (ox[:, None] + r)[:, None, :]  # (B, 1, S)
    out = x[torch.arange(b, device=x.device)[:, None, None], :, rows, cols]  # (B, S, S, C)
    return out.permute(0, 3, 1, 2).contiguous(), torch.stack([oy, ox], 1)


def rotate(x: torch.Tensor, angles_deg: torch.Tensor) -> torch.Tensor:
    """Rotate each image about its centre by its angle (degrees, counter-clockwise as cv2), bilinear, black fill."""
    t = angles_deg.to(x.dtype) * (math.pi / 180)
    c, s = torch.cos(t), torch.sin(t)
    h, w = x.shape[-2:]
    # output -> input sampling in normalised coordinates; the aspect ratio enters for non-square images
    theta = torch.zeros(x.shape[0], 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0], theta[:, 0, 1] = c, -s * h / w
    theta[:, 1, 0], theta[:, 1, 1] = s * w / h, c
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def fancy_pca(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Per image: ``x + V diag(alpha * l) V^T (x - mean)`` over the pixels' colour covariance (0..255 in and out)."""
    b, c, h, w = x.shape
    flat = x.reshape(b, c, h * w).transpose(1, 2).double()  # (B, N, 3)
    mean = flat.mean(1, keepdim=True)
    centred = flat - mean
    cov = centred.transpose(1, 2) @ centred / max(h * w - 1, 1) / 255.0**2
    vals, vecs = torch.linalg.eigh(cov)  # ascending
    vals, vecs = vals.flip(-1), vecs.flip(-1)  # descending, as albumentations orders them
    mix = vecs @ torch.diag_embed(alpha.double() * vals)  # (B, 3, 3)
    out = flat + centred @ mix.transpose(1, 2)
    return out.clamp_(0, 255).transpose(1, 2).reshape(b, c, h, w).to(x.dtype)


class DeviceAugment:
    """The train augmentations of ``aug`` on a normalised batch, on its device: ``(x, y) -> (x, y)``.

    Args:
        image_size: the crop size (the batch holds images at resize_size).
        aug: rotation, flip and FancyPCA settings (the CPU path's).
        mean, std: the normalisation the loader applied (0..1 scale).
        seed, rank: seed the draws (each DDP rank its own).
    """

    def __init__(self, image_size: int, aug: AugConfig, mean: Sequence[float], std: Sequence[float], seed: int = 0, rank: int = 0):
        self.size, self.aug = int(image_size), aug
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255
        self.seed, self.rank, self.epoch, self.calls = int(seed), int(rank), 0, 0
        self.last: dict[str, torch.Tensor] = {}  # the last batch's draws (tests and debugging)

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.calls = int(epoch), 0

    def _generator(self, device: torch.device) -> torch.Generator:
        g = torch.Generator(device=device)
        g.manual_seed((self.seed * 1_000_003 + self.rank * 7_919 + self.epoch * 100_003 + self.calls) % (2**63))
        return g

    @torch.no_grad()
    def augment_pixels(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """The ops on 0..255 float images (B, 3, R, R) -> (B, 3, S, S)."""
        a, b = self.aug, x.shape[0]

        def rand(n):
            return torch.rand(n, generator=g, device=g.device).to(x.device)

        x, offsets = random_crop(x, self.size, g)
        self.last = {"offsets": offsets}
        if a.rotate_limit > 0 and a.rotate_p > 0:
            angles = (rand(b) * 2 - 1) * a.rotate_limit
            angles = torch.where(rand(b) < a.rotate_p, angles, torch.zeros_like(angles))
            x = rotate(x, angles)
            self.last["angles"] = angles
        for p, dim, key in ((a.hflip_p, 3, "hflip"), (a.vflip_p, 2, "vflip")):
            if p > 0:
                flip = rand(b) < p
                x = torch.where(flip[:, None, None, None], x.flip(dim), x)
                self.last[key] = flip
        if a.fancy_pca_p > 0:
            alpha = torch.randn(b, 3, generator=g, device=g.device).to(x.device) * a.fancy_pca_alpha
            use = rand(b) < a.fancy_pca_p
            alpha = torch.where(use[:, None], alpha, torch.zeros_like(alpha))
            x = fancy_pca(x, alpha)
            self.last["alpha"] = alpha
        return x

    def __call__(self, x: torch.Tensor, y):
        g = self._generator(x.device)
        self.calls += 1
        mean, std = self.mean.to(x.device, x.dtype), self.std.to(x.device, x.dtype)
        pixels = self.augment_pixels(x * std + mean, g)
        return (pixels - mean) / std, y


class Chain:
    """Batch transforms one after the other (device augmentation, then CutMix/MixUp)."""

    def __init__(self, *fns):
        self.fns = [f for f in fns if f is not None]

    def set_epoch(self, epoch: int) -> None:
        for f in self.fns:
            if hasattr(f, "set_epoch"):
                f.set_epoch(epoch)

    def __call__(self, x, y):
        for f in self.fns:
            x, y = f(x, y)
        return x, y
