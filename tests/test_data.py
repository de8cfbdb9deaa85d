"""Demo generator, image cache, transforms, folds, loaders and the config system."""
from __future__ import annotations

import csv
import os
import time

import numpy as np
import pytest
import torch

from sonokit.config import Config, ConfigError, load_config, save_config
from sonokit.data import (
    ImageCache,
    ImageDataset,
    create_loader,
    eval_transform,
    make_folds,
    prepare_data,
    set_epoch,
    train_transform,
    write_folds,
)
from sonokit.demo import CLASSES, HEIGHT_RANGE, WIDTH_RANGE, make_demo_data
from sonokit.schema import load_schema, validate


# ----------------------------------------------------------------------------- demo data
def test_demo_layout_sizes_and_validity(demo_data):
    problems, index = validate(demo_data, load_schema(), n_folds=5, progress=False)
    assert problems == []
    assert index.classes == list(CLASSES) and index.classes[-1] == "other"
    from PIL import Image

    sizes = [Image.open(p).size for p in index.train_files]
    ws, hs = zip(*sizes)
    assert min(ws) == WIDTH_RANGE[0] and max(ws) == WIDTH_RANGE[1]
    assert min(hs) == HEIGHT_RANGE[0] and max(hs) == HEIGHT_RANGE[1]
    assert 650 < np.mean(ws) < 1050 and 420 < np.mean(hs) < 720
    exts = {p.suffix for p in index.train_files + index.test_files}
    assert exts == {".jpg", ".png"}
    # imbalance: "other" is the largest class, as in the source
    counts = {c: index.train_labels.count(c) for c in CLASSES}
    assert max(counts, key=counts.get) == "other"
    # black outside the fan, brighter inside
    arr = np.asarray(Image.open(index.train_files[4]).convert("L"), dtype=float)
    assert arr[0, 0] < 5 and arr[-1, 0] < 5 and arr[arr.shape[0] // 2, arr.shape[1] // 2] > arr[0, 0]


def test_demo_is_deterministic(tmp_path):
    a = make_demo_data(tmp_path / "a", n_train=16, n_test=2, seed=3, progress=False)
    b = make_demo_data(tmp_path / "b", n_train=16, n_test=2, seed=3, progress=False)
    c = make_demo_data(tmp_path / "c", n_train=16, n_test=2, seed=4, progress=False)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert (a / "train.csv").read_bytes() != (c / "train.csv").read_bytes() or any(
        (a / f).read_bytes() != (c / f).read_bytes() for f in files if (c / f).exists()
    )


def test_demo_bytes_do_not_depend_on_worker_count(tmp_path):
    a = make_demo_data(tmp_path / "a", n_train=16, n_test=6, seed=5, progress=False, workers=0)
    b = make_demo_data(tmp_path / "b", n_train=16, n_test=6, seed=5, progress=False, workers=2)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 16 + 6 + 3 and all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


def test_replicated_data_is_a_valid_larger_set(tmp_path):
    from sonokit.demo import replicate_data

    base = make_demo_data(tmp_path / "base", n_train=16, n_test=2, seed=1, progress=False)
    big = replicate_data(base, tmp_path / "big", 50, 5)
    problems, index = validate(big, load_schema(), n_folds=5, check_images=False)
    assert problems == [] and len(index.train_ids) == 50 and len(index.test_ids) == 5
    assert all(p.is_symlink() for p in index.train_files)
    labels = dict(zip(index.train_ids, index.train_labels))
    base_labels = dict(p.split(",") for p in (base / "train.csv").read_text().splitlines()[1:])
    assert all(labels[i] == base_labels[i.rsplit("_r", 1)[0]] for i in index.train_ids)
    # every copy is its own cache entry (as a copied file would be), so a cold run costs what real data costs
    cache = ImageCache(tmp_path / "c", 16)
    assert len({cache.entry(f) for f in index.train_files}) == 50


def test_demo_cli_rejects_too_few_images(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "make_demo_data.py"
    r = subprocess.run([sys.executable, str(script), str(tmp_path / "x"), "--n-train", "3"], capture_output=True, text=True)
    assert r.returncode == 2 and "n_train must be at least 16" in r.stderr and "Traceback" not in r.stderr


# ----------------------------------------------------------------------------- cache
def test_cache_hit_and_rebuild_on_change(tiny_data, tmp_path):
    files = sorted((tiny_data / "train").iterdir())
    cache = ImageCache(tmp_path / "c", 16)
    entries = cache.build(files, workers=0, progress=False)
    assert all(e.is_file() for e in entries)
    arr = cache.load(entries[0])
    assert arr.shape == (16, 16, 3) and arr.dtype == np.uint8
    mtimes = [e.stat().st_mtime_ns for e in entries]
    # hit: nothing rebuilt
    assert cache.build(files, workers=0, progress=False) == entries
    assert [e.stat().st_mtime_ns for e in entries] == mtimes
    # a changed file rebuilds just its entry
    from PIL import Image

    time.sleep(0.01)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(files[1])
    os.utime(files[1], ns=(time.time_ns(), time.time_ns()))
    entries2 = cache.build(files, workers=0, progress=False)
    assert entries2[0] == entries[0] and entries2[2:] == entries[2:]
    assert entries2[1] != entries[1]
    assert tuple(cache.load(entries2[1])[0, 0]) == (200, 10, 10)
    # a changed setting is a different entry
    other = ImageCache(tmp_path / "c", 24)
    assert other.entry(files[0]) != entries[0]
    assert not other.has(files[0])


def test_cache_reports_undecodable(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("nope")
    with pytest.raises(ValueError, match="bad.png: not an image"):
        ImageCache(tmp_path / "c", 16).build([bad], workers=0, progress=False)


def test_mean_std_cached(tiny_data, tmp_path):
    files = sorted((tiny_data / "train").iterdir())
    cache = ImageCache(tmp_path / "c", 16)
    entries = cache.build(files, workers=0, progress=False)
    mean, std = cache.mean_std(entries)
    allpx = np.concatenate([cache.load(e).reshape(-1, 3) for e in entries]) / 255.0
    np.testing.assert_allclose(mean, allpx.mean(0), atol=1e-6)
    np.testing.assert_allclose(std, allpx.std(0), atol=1e-6)
    assert len(list((cache.dir / "stats").iterdir())) == 1


# ----------------------------------------------------------------------------- transforms
def test_transform_shapes_and_dtypes():
    img = (np.random.default_rng(0).random((72, 72, 3)) * 255).astype(np.uint8)
    x = train_transform(64, 72)(image=img)["image"]
    assert x.shape == (3, 64, 64) and x.dtype == torch.uint8
    e = eval_transform(48)(image=img)["image"]
    assert e.shape == (3, 48, 48) and e.dtype == torch.uint8
    with pytest.raises(ValueError, match="resize_size"):
        train_transform(64, 32)


def test_fast_fancy_pca_matches_albumentations():
    from albumentations.augmentations.pixel import functional as F

    from sonokit.data.transforms import fancy_pca

    rng = np.random.default_rng(0)
    for shape in [(64, 48, 3), (17, 9, 3)]:
        img = (rng.random(shape) * 200 + 20).astype(np.uint8)
        for alpha in ([0.1, -0.2, 0.05], [2.0, -1.0, 3.0]):
            a = np.asarray(alpha, np.float32)
            diff = np.abs(F.fancy_pca(img, a).astype(int) - fancy_pca(img, a).astype(int))
            assert diff.max() <= 1
    gray = (rng.random((10, 10, 1)) * 255).astype(np.uint8)
    a = np.asarray([0.3], np.float32)
    assert np.abs(F.fancy_pca(gray, a).astype(int) - fancy_pca(gray, a).astype(int)).max() <= 1


def test_augmentation_reproducible_per_epoch_and_index(tiny_data, tmp_path):
    files = sorted((tiny_data / "train").iterdir())
    entries = ImageCache(tmp_path / "c", 40).build(files, workers=0, progress=False)
    ds = ImageDataset(entries, [0] * len(entries), train_transform(32, 40), seed=1)
    a = ds[3][0].clone()
    assert torch.equal(ds[3][0], a)  # same epoch and index -> same augmentation
    ds.set_epoch(1)
    assert not torch.equal(ds[3][0], a)


def test_loader_normalises_on_device(tiny_data, tmp_path):
    files = sorted((tiny_data / "train").iterdir())
    entries = ImageCache(tmp_path / "c", 16).build(files, workers=0, progress=False)
    ds = ImageDataset(entries, list(range(len(entries))), eval_transform(16))
    loader = create_loader(ds, 4, train=False, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), num_workers=0)
    set_epoch(loader, 0)
    x, y = next(iter(loader))
    raw = torch.from_numpy(ImageCache.load(entries[0])).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(x[0], (raw - 0.5) / 0.25)
    assert x.dtype == torch.float32 and y.tolist() == [0, 1, 2, 3]
    assert len(loader) == 3  # 10 images, batch 4, eval keeps the last partial batch


def test_loader_with_workers_sees_epoch(tiny_data, tmp_path):
    files = sorted((tiny_data / "train").iterdir())
    entries = ImageCache(tmp_path / "c", 40).build(files, workers=0, progress=False)
    ds = ImageDataset(entries, [0] * len(entries), train_transform(32, 40), seed=1)
    loader = create_loader(ds, 10, train=False, num_workers=1)
    set_epoch(loader, 0)
    a = next(iter(loader))[0]
    set_epoch(loader, 0)
    assert torch.equal(next(iter(loader))[0], a)
    set_epoch(loader, 1)
    assert not torch.equal(next(iter(loader))[0], a)


class WhoLoads(torch.utils.data.Dataset):
    """Each sample says which process loaded it."""

    def __len__(self):
        return 12

    def __getitem__(self, i):
        import os

        return torch.zeros(3, 4, 4, dtype=torch.uint8), os.getpid()


def test_loader_workers_persist_across_epochs():
    """Workers start once per loader, not every epoch (nor every validation pass)."""
    import os

    for train in (True, False):
        loader = create_loader(WhoLoads(), 4, train, num_workers=2)
        seen = []
        for epoch in range(3):
            set_epoch(loader, epoch)
            seen.append({int(p) for _, pids in loader for p in pids})
        assert seen[0] == seen[1] == seen[2] and len(seen[0]) == 2 and os.getpid() not in seen[0]


# ----------------------------------------------------------------------------- folds
def test_folds_stratified_and_seeded():
    labels = ["a"] * 50 + ["b"] * 30 + ["c"] * 20
    ids = [f"i{i}" for i in range(100)]
    df = make_folds(ids, labels, 5, seed=1)
    assert sorted(df["fold"].unique()) == [0, 1, 2, 3, 4]
    per = df.groupby(["fold", "label"]).size().unstack()
    assert (per["a"] == 10).all() and (per["b"] == 6).all() and (per["c"] == 4).all()
    assert df.equals(make_folds(ids, labels, 5, seed=1))
    assert not df["fold"].equals(make_folds(ids, labels, 5, seed=2)["fold"])


def test_prepare_data_writes_folds_and_uses_cache(tiny_data, tmp_path):
    cfg = load_config(overrides=[f"data.root={tiny_data}", "data.image_size=16", "data.resize_size=20", "data.folds=2", "data.num_workers=0"])
    prep = prepare_data(cfg, progress=False)
    assert prep.num_classes == 2 and len(prep.test_entries) == 3
    write_folds(prep.folds, tmp_path / "folds.csv")
    with open(tmp_path / "folds.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 10 and {r["fold"] for r in rows} == {"0", "1"}
    tr, va = prep.fold_datasets(0)
    assert len(tr) + len(va) == 10
    assert tr[0][0].shape == (3, 16, 16) and va[0][0].shape == (3, 16, 16)
    # second time: validation skips decoding images the cache already holds
    from sonokit.data import cache as cache_mod

    decoded = []
    real = cache_mod.load_image
    cache_mod.load_image = lambda path: decoded.append(str(path)) or real(path)
    try:
        again = prepare_data(cfg, progress=False)
        assert decoded == [] and again.train_crop_entries == prep.train_crop_entries
        # a file changed since it was cached is decoded again (only it), and its problem reported
        (tiny_data / "train" / "cat_1.png").write_bytes(b"")
        from sonokit.schema import DataError

        with pytest.raises(DataError, match="cat_1.png: empty file"):
            prepare_data(cfg, progress=False)
        assert decoded == [str(tiny_data / "train" / "cat_1.png")]
    finally:
        cache_mod.load_image = real


# ----------------------------------------------------------------------------- config
def test_config_layers_and_unknown_key(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("student:\n  train:\n    epochs: 7\n    lr: 0.01\n")
    cfg = load_config([y], ["student.train.epochs=3", "data.normalize=imagenet"])
    assert cfg.student.train.epochs == 3 and cfg.student.train.lr == 0.01
    assert cfg.data.normalize == "imagenet" and cfg.teacher.train.epochs == Config().teacher.train.epochs
    with pytest.raises(ConfigError, match=r"unknown config key 'student.train.epoch'; valid keys here: .*student.train.epochs"):
        load_config(overrides=["student.train.epoch=3"])
    with pytest.raises(ConfigError, match="unknown config key 'nope'"):
        load_config(overrides=["nope=1"])
    with pytest.raises(ConfigError, match="expects int"):
        load_config(overrides=["student.train.epochs=abc"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(overrides=["student.train.epochs"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  sizee: 3\n")
    with pytest.raises(ConfigError, match="data.sizee"):
        load_config([bad])


def test_config_saved_and_reloadable(tmp_path):
    cfg = load_config(overrides=["run.name=x", "student.kd.temperature=2"])
    path = save_config(cfg, tmp_path)
    again = load_config([path])
    assert again == cfg
