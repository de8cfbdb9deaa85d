"""Synthetic ultrasound-like demo data in the default input-schema layout.

Each image is a fan-shaped sector on black with speckle, depth attenuation and a random
gain; inside the sector sits a class-specific structure at a random place, size and angle,
drawn with the same speckle texture so that it is learnable but not trivial. Sizes and
class balance follow the source competition (../shared/seed/NOTES.md). Deterministic for
a seed.
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .io import atomic_path

#: Class names; "other" sorts last, as in the source's confusion matrices.
CLASSES = ("abdomen", "bladder", "brain", "femur", "heart", "kidney", "liver", "other")
#: Validation support per class in the source's confusion matrices (its imbalance).
SOURCE_SUPPORT = (76, 183, 77, 59, 104, 218, 198, 295)
#: (width, height) of the source's extreme images; the first train images use them.
EXTREME_SIZES = ((1605, 787), (280, 392), (787, 1137), (320, 196))
WIDTH_RANGE = (280, 1605)
HEIGHT_RANGE = (196, 1137)


def _sample_size(rng: np.random.Generator) -> tuple[int, int]:
    w = int(np.clip(rng.normal(850, 260), *WIDTH_RANGE))
    aspect = float(np.clip(rng.normal(0.67, 0.09), 0.45, 1.45))
    h = int(np.clip(round(w * aspect), *HEIGHT_RANGE))
    return w, h


def _ellipse(draw, cx, cy, rx, ry, fill=None, outline=None, width=1):
    draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=fill, outline=outline, width=width)


def _draw_structure(label: str, draw: ImageDraw.ImageDraw, cx: float, cy: float, s: float, rng) -> None:
    """Echogenicity of the structure: 128 = background tissue, <128 darker, >128 brighter."""
    w = max(2, int(s * 0.08))
    if label == "abdomen":
        _ellipse(draw, cx, cy, s, s * rng.uniform(0.8, 0.95), fill=70, outline=190, width=w)
        a = rng.uniform(0, 2 * math.pi)
        _ellipse(draw, cx + 0.7 * s * math.cos(a), cy + 0.7 * s * math.sin(a), s * 0.12, s * 0.12, fill=235)
    elif label == "bladder":
        _ellipse(draw, cx, cy, s * rng.uniform(0.8, 1.1), s * rng.uniform(0.5, 0.7), fill=18)
    elif label == "brain":
        _ellipse(draw, cx, cy, s * 1.05, s * 0.85, fill=105, outline=230, width=w)
        draw.line([cx, cy - s * 0.8, cx, cy + s * 0.8], fill=200, width=max(1, w // 2))
    elif label == "femur":
        a = rng.uniform(-0.4, 0.4)
        dx, dy = s * 1.2 * math.cos(a), s * 1.2 * math.sin(a)
        draw.line([cx - dx, cy - dy, cx + dx, cy + dy], fill=245, width=max(3, int(s * 0.16)))
        # acoustic shadow under the bone
        draw.polygon([(cx - dx, cy - dy + s * 0.1), (cx + dx, cy + dy + s * 0.1), (cx + dx, cy + dy + s), (cx - dx, cy - dy + s)], fill=55)
    elif label == "heart":
        r = s * 0.38
        for ox, oy in ((-1, -1), (1, -1), (-1, 1), (1, 1)):
            _ellipse(draw, cx + ox * r * 1.15, cy + oy * r * 1.05, r, r * 0.9, fill=25, outline=175, width=max(1, w // 2))
    elif label == "kidney":
        _ellipse(draw, cx, cy, s, s * 0.55, fill=95)
        _ellipse(draw, cx + s * 0.1, cy, s * 0.45, s * 0.2, fill=215)
    elif label == "liver":
        _ellipse(draw, cx, cy, s * 1.2, s * 0.9, fill=158)
        for _ in range(int(rng.integers(3, 6))):
            _ellipse(draw, cx + rng.uniform(-0.8, 0.8) * s, cy + rng.uniform(-0.55, 0.55) * s, s * 0.09, s * 0.09, fill=30)
    elif label == "other":
        # clutter: a few small primitives of mixed brightness, sometimes nothing at all
        for _ in range(int(rng.integers(0, 4))):
            x, y, r = cx + rng.uniform(-1, 1) * s, cy + rng.uniform(-1, 1) * s, s * rng.uniform(0.1, 0.35)
            _ellipse(draw, x, y, r, r * rng.uniform(0.5, 1.0), fill=int(rng.choice([40, 170, 210])))
    else:  # pragma: no cover
        raise ValueError(label)


def make_image(label: str, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """One ultrasound-like RGB image (H x W x 3 uint8) showing ``label``."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    apex_x, apex_y = w / 2 + rng.uniform(-0.03, 0.03) * w, -0.04 * h
    radius = min(h * rng.uniform(0.92, 1.0), (w / 2) / math.sin(math.radians(40)))
    half = math.radians(rng.uniform(30, 40))
    dist = np.hypot(xx - apex_x, yy - apex_y)
    ang = np.arctan2(xx - apex_x, yy - apex_y)
    inner = radius * 0.08
    sector = (dist < radius) & (dist > inner) & (np.abs(ang) < half)

    # structure map (echogenicity), drawn inside the sector at a random place
    echo = Image.new("L", (w, h), 128)
    draw = ImageDraw.Draw(echo)
    r_pos = rng.uniform(0.35, 0.7) * radius
    a_pos = rng.uniform(-0.5, 0.5) * half
    cx, cy = apex_x + r_pos * math.sin(a_pos), apex_y + r_pos * math.cos(a_pos)
    s = radius * rng.uniform(0.2, 0.28)
    _draw_structure(label, draw, cx, cy, s, rng)
    echo = echo.rotate(float(rng.uniform(-20, 20)), resample=Image.BILINEAR, center=(cx, cy), fillcolor=128)
    echo_arr = np.asarray(echo.filter(ImageFilter.GaussianBlur(max(1.0, s * 0.03))), dtype=np.float32) / 128.0

    # speckle: Rayleigh noise, blurred a little so grains have a size
    grain = max(0.6, min(w, h) / 500)
    noise = rng.rayleigh(0.55, size=(h, w)).astype(np.float32)
    noise_img = Image.fromarray(np.clip(noise * 100, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(grain))
    speckle = np.asarray(noise_img, dtype=np.float32) / 100.0

    gain = rng.uniform(0.55, 1.25)
    atten = np.exp(-rng.uniform(0.4, 1.4) * dist / radius)
    img = 150.0 * gain * echo_arr * speckle * atten * sector
    img = np.clip(img, 0, 255)
    tint = np.array([1.0, 1.0, 1.0]) + rng.uniform(-0.04, 0.04, size=3) * (rng.random() < 0.3)
    rgb = np.clip(img[..., None] * tint[None, None, :], 0, 255).astype(np.uint8)
    return rgb


def _class_weights() -> np.ndarray:
    p = np.asarray(SOURCE_SUPPORT, dtype=np.float64)
    return p / p.sum()


def _labels(n: int, rng: np.random.Generator, min_per_class: int) -> list[str]:
    """Counts in the source's proportions (largest remainder), at least ``min_per_class`` each."""
    p = _class_weights()
    counts = np.floor(n * p).astype(int)
    for i in np.argsort(-(n * p - counts))[: n - counts.sum()]:
        counts[i] += 1
    floor = min(min_per_class, n // len(CLASSES))
    while counts.min() < floor:  # lift the rarest class, take from the one most above its share
        counts[counts.argmin()] += 1
        share = np.where(counts > floor, counts / p, -np.inf)
        counts[share.argmax()] -= 1
    labels = [c for c, k in zip(CLASSES, counts) for _ in range(k)]
    rng.shuffle(labels)
    return [str(x) for x in labels]


def _save(arr: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        img = Image.fromarray(arr, "RGB")
        if path.suffix == ".png":
            img.save(tmp, format="PNG", compress_level=1)
        else:
            img.save(tmp, format="JPEG", quality=90)


def _make_one(job: tuple) -> None:
    split, image_id, label, size, ext, img_seed, out = job
    _save(make_image(label, size, np.random.default_rng(img_seed)), Path(out) / split / f"{image_id}.{ext}")


def make_demo_data(
    out: str | Path,
    n_train: int = 400,
    n_test: int = 100,
    seed: int = 0,
    png_fraction: float = 0.3,
    progress: bool = True,
    force: bool = False,
    workers: int = -1,
) -> Path:
    """Write a demo data set (train.csv, train/, test/, sample_submission.csv, solution.csv).

    ``solution.csv`` holds the test labels, so the demo can score its own submission; the
    validator ignores it. An existing data set in ``out`` is an error unless ``force``, which
    replaces it (a stale image with another extension would otherwise make ids ambiguous).
    Images are drawn by ``workers`` processes (-1: every core); each has its own seed, so the
    bytes do not depend on the worker count.
    """
    out = Path(out)
    existing = [p for d in ("train", "test") if (out / d).is_dir() for p in (out / d).iterdir()]
    if existing:
        if not force:
            raise FileExistsError(f"{out} already holds a data set; pass force=True (--force) to replace it")
        import shutil

        for d in ("train", "test"):
            shutil.rmtree(out / d, ignore_errors=True)
    if n_train < len(CLASSES) * 2:
        raise ValueError(f"n_train must be at least {len(CLASSES) * 2} (2 images per class)")
    if n_test < 1:
        raise ValueError("n_test must be at least 1")
    rng = np.random.default_rng(seed)
    (out / "train").mkdir(parents=True, exist_ok=True)
    (out / "test").mkdir(parents=True, exist_ok=True)
    jobs = []
    for split, n in (("train", n_train), ("test", n_test)):
        labels = _labels(n, rng, min_per_class=6 if split == "train" else 0)
        for i, label in enumerate(labels):
            size = EXTREME_SIZES[i] if split == "train" and i < len(EXTREME_SIZES) else _sample_size(rng)
            ext = "png" if rng.random() < png_fraction else "jpg"
            jobs.append((split, f"{split}_{i:05d}", label, size, ext, int(rng.integers(2**31)), str(out)))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc="demo images", unit="img")
    workers = (os.cpu_count() or 1) if workers < 0 else workers
    if workers > 1 and len(jobs) > 4:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as ex:
            for _ in ex.map(_make_one, jobs, chunksize=2):
                if bar:
                    bar.update()
    else:
        for job in jobs:
            _make_one(job)
            if bar:
                bar.update()
    if bar:
        bar.close()

    def write_csv(name, header, rows):
        with atomic_path(out / name) as tmp:
            with open(tmp, "w", newline="") as f:
                wr = csv.writer(f)
                wr.writerow(header)
                wr.writerows(rows)

    train = [(j[1], j[2]) for j in jobs if j[0] == "train"]
    test = [(j[1], j[2]) for j in jobs if j[0] == "test"]
    write_csv("train.csv", ["image_id", "label"], train)
    write_csv("sample_submission.csv", ["image_id", "label"], [(i, CLASSES[0]) for i, _ in test])
    write_csv("solution.csv", ["image_id", "label"], test)
    return out


def replicate_data(src: str | Path, out: str | Path, n_train: int, n_test: int | None = None) -> Path:
    """A data set of ``n_train`` train (and ``n_test`` test) images made of symlinks to ``src``'s.

    Copies get new ids (``<id>_r<k>``) and keep their labels, so a few hundred demo images make a
    10,000-image set in seconds: a real-size check of everything that runs once per image.
    """
    src, out = Path(src).resolve(), Path(out)
    if (out / "train.csv").exists():
        raise FileExistsError(f"{out} already holds a data set")

    def rows(name):
        with open(src / name, newline="") as f:
            return list(csv.reader(f))[1:]

    def files(split):
        return {p.stem: p for p in (src / split).iterdir()}

    def copy(split, base_rows, n, header, label_of):
        (out / split).mkdir(parents=True, exist_ok=True)
        by_id = files(split)
        made = []
        for k in range(n):
            image_id, label = base_rows[k % len(base_rows)][0], label_of(base_rows[k % len(base_rows)])
            new_id = f"{image_id}_r{k // len(base_rows)}"
            target = by_id[image_id]
            (out / split / f"{new_id}{target.suffix}").symlink_to(target)
            made.append((new_id, label))
        with atomic_path(out / header) as tmp:
            with open(tmp, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["image_id", "label"])
                w.writerows(made)
        return made

    copy("train", rows("train.csv"), n_train, "train.csv", lambda r: r[1])
    test_rows = rows("solution.csv") if (src / "solution.csv").is_file() else rows("sample_submission.csv")
    made = copy("test", test_rows, n_test if n_test is not None else len(test_rows), "solution.csv", lambda r: r[1])
    with atomic_path(out / "sample_submission.csv") as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image_id", "label"])
            w.writerows((i, CLASSES[0]) for i, _ in made)
    return out
