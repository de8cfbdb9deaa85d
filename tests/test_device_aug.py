"""Augmentation on the device agrees with the CPU path: same crop offsets, angles and colour shifts
(two-sample tests on CPU tensors), same order of ops; and a stage trains with it."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from sonokit.config import AugConfig, load_config
from sonokit.data.device_aug import DeviceAugment, resolve_aug_device
from sonokit.data.transforms import train_transform

N = 400


def coords_image(size: int) -> np.ndarray:
    """Channel 0 = 6 x column, channel 1 = 6 x row: a pixel says where it came from."""
    r = np.arange(size) * 6
    img = np.zeros((size, size, 3), np.uint8)
    img[..., 0] = r[None, :]
    img[..., 1] = r[:, None]
    img[..., 2] = 128
    return img


def cpu_outputs(img: np.ndarray, image_size: int, aug: AugConfig, n: int = N) -> np.ndarray:
    tf = train_transform(image_size, img.shape[0], aug)
    out = []
    for i in range(n):
        tf.set_random_seed(1000 + i)
        out.append(tf(image=img)["image"].numpy().astype(np.float64))
    return np.stack(out)  # (n, 3, S, S)


def device_outputs(img: np.ndarray, image_size: int, aug: AugConfig, n: int = N) -> np.ndarray:
    da = DeviceAugment(image_size, aug, mean=(0, 0, 0), std=(1, 1, 1), seed=5)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float().repeat(n, 1, 1, 1)
    return da.augment_pixels(x, da._generator(x.device)).numpy().astype(np.float64)


def same_distribution(a, b, what):
    p = stats.ks_2samp(a, b).pvalue
    assert p > 1e-3, f"{what}: the CPU and device distributions differ (KS p={p:.2g})"


def test_crop_offsets_are_uniform_on_both_paths():
    img = coords_image(40)
    aug = AugConfig(rotate_p=0, fancy_pca_p=0)
    cpu, dev = cpu_outputs(img, 32, aug), device_outputs(img, 32, aug)
    for ch, what in ((0, "x offset"), (1, "y offset")):
        a, b = cpu[:, ch, 0, 0] / 6, dev[:, ch, 0, 0] / 6
        assert set(np.unique(a)) <= set(range(9)) and set(np.unique(b)) <= set(range(9))
        counts = np.stack([np.bincount(a.astype(int), minlength=9), np.bincount(b.astype(int), minlength=9)])
        assert stats.chi2_contingency(counts).pvalue > 1e-3, what
        assert stats.chisquare(counts[1]).pvalue > 1e-3  # uniform over every position
    # and the crop is a crop: the whole window moved together
    np.testing.assert_array_equal(dev[:, 0, 0, 5] - dev[:, 0, 0, 0], 30)


def angles_of(out: np.ndarray, size: int, radius: int = 15) -> np.ndarray:
    """The rotation each output shows: where the pixel right of the centre came from."""
    c = (size - 1) / 2
    u = out[:, 0, int(c), int(c) + radius] / 6 - c
    v = out[:, 1, int(c), int(c) + radius] / 6 - c
    return np.degrees(np.arctan2(v, u))


def test_rotation_angles_match_albumentations():
    img = coords_image(41)
    aug = AugConfig(rotate_limit=15, rotate_p=0.5, fancy_pca_p=0)
    cpu, dev = angles_of(cpu_outputs(img, 41, aug), 41), angles_of(device_outputs(img, 41, aug), 41)
    for a in (cpu, dev):
        assert np.abs(a).max() < 15.8 and 0.4 < np.mean(np.abs(a) < 0.3) < 0.6  # half not rotated
    same_distribution(cpu, dev, "rotation angle")
    rotated_cpu, rotated_dev = cpu[np.abs(cpu) > 0.3], dev[np.abs(dev) > 0.3]
    assert abs(rotated_cpu.mean() - rotated_dev.mean()) < 2.5  # symmetric, same direction convention
    same_distribution(rotated_cpu, rotated_dev, "rotation angle when rotated")


def test_fancy_pca_colour_shifts_match():
    rng = np.random.default_rng(0)
    base = rng.normal(120, 40, (32, 32)).clip(0, 255)
    img = np.stack([base, 0.6 * base + rng.normal(20, 15, base.shape), 255 - base], -1).clip(0, 255).astype(np.uint8)
    aug = AugConfig(rotate_p=0, fancy_pca_p=1.0, fancy_pca_alpha=0.5)
    cpu, dev = cpu_outputs(img, 32, aug, 300), device_outputs(img, 32, aug, 300)
    dev = np.rint(dev)  # the CPU path ends in uint8 (cv2 rounds); the device keeps floats: compare like with like
    src = img.transpose(2, 0, 1).astype(np.float64)
    for ch in range(3):  # the contrast change of each channel, image by image
        a = cpu[:, ch].std((1, 2)) / src[ch].std()
        b = dev[:, ch].std((1, 2)) / src[ch].std()
        assert a.std() > 0.01  # the shifts are real
        same_distribution(a, b, f"FancyPCA contrast change, channel {ch}")
    np.testing.assert_allclose(cpu.mean((2, 3)).mean(0), dev.mean((2, 3)).mean(0), atol=1.5)


def test_draws_are_seeded_per_epoch_and_batch():
    aug = AugConfig()
    da = DeviceAugment(24, aug, (0.5,) * 3, (0.25,) * 3, seed=1)
    x = torch.randn(4, 3, 28, 28)
    da.set_epoch(3)
    a = da(x, None)[0]
    b = da(x, None)[0]
    da.set_epoch(3)
    assert torch.equal(da(x, None)[0], a) and not torch.equal(a, b)  # the same epoch and batch: the same draws
    assert a.shape == (4, 3, 24, 24)
    assert resolve_aug_device("auto", "cpu") == "cpu" and resolve_aug_device("gpu", "cpu") == "gpu"
    with pytest.raises(ValueError, match="aug.device must be"):
        resolve_aug_device("tpu", "cpu")


def test_a_stage_trains_with_augmentation_on_the_device(tiny_data, tmp_path):
    from conftest import NO_WEIGHTS_OVERRIDES
    from sonokit.stages import make_context, runner

    cfg = load_config(overrides=[f"data.root={tiny_data}", f"run.out_dir={tmp_path}", "data.folds=2", "data.image_size=16",
                                 "data.resize_size=20", "data.num_workers=0", "run.folds=0", "run.device=cpu", "aug.device=gpu",
                                 "teacher.model.name=test_resnet", "teacher.train.epochs=1", "teacher.train.batch_size=4",
                                 "infer.tta=orig", *NO_WEIGHTS_OVERRIDES])
    ctx = make_context(cfg, progress=False)
    train, _ = ctx.loaders(0, cfg.teacher.train)
    x, _ = next(iter(train))
    assert x.shape[-1] == 20  # the workers only decode: the batch is still at resize_size
    bt = ctx.batch_transform(0)
    assert bt(x, None)[0].shape[-1] == 16
    summary = runner("teacher")(ctx)
    assert summary["overall"]["n_images"] == 5
