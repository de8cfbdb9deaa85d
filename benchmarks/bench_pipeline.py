#!/usr/bin/env python
"""Does the data path keep up with training? Loader images/s beside KD-step images/s, on one device.

Three rates, measured side by side in one run on the same demo images (source-like sizes, cached):

* the loader with the augmentations on the CPU workers (aug.device=cpu);
* the loader whose workers only read the cached uint8 images, with the augmentations applied
  per batch on the training device (aug.device=gpu; on a CPU-only machine, "the device" is the CPU);
* a KD training step (efficientnet-b4 teacher forward + nf_regnet_b1 student step, AMP on a GPU)
  on batches already in memory.

Printed as loader / step ratios: a ratio >= 1 means the GPU is never left waiting for data. On a
GPU the target is >= 1 with 4 workers (Kaggle's notebooks have 2-4 cores).

  python benchmarks/bench_pipeline.py [--workers 4] [--size 256] [--batch 64] [--device auto]
"""
import argparse
import tempfile
import time
from pathlib import Path

import torch
from bench_kd import measure  # the KD step exactly as bench_kd measures it

from sonokit.config import load_config
from sonokit.demo import make_demo_data
from sonokit.distributed import resolve_device
from sonokit.engine import amp_dtype
from sonokit.stages.common import make_context


def loader_rate(ctx, cfg, batches: int, epochs: int = 2) -> float:
    """Images/s the training loader delivers, batch transform (device augmentation) included."""
    from sonokit.data import set_epoch

    loader, _ = ctx.loaders(0, cfg.student.train)
    augment = ctx.batch_transform(0)
    sync = torch.cuda.synchronize if ctx.device.type == "cuda" else (lambda: None)

    def one_pass(epoch, limit):
        set_epoch(loader, epoch)
        if augment is not None:
            augment.set_epoch(epoch)
        n = 0
        for i, (x, y) in enumerate(loader):
            if augment is not None:
                x, y = augment(x, y)
            n += x.shape[0]
            if i + 1 >= limit:
                break
        sync()
        return n

    one_pass(0, 2)  # worker start-up and cuda warm-up
    t0 = time.perf_counter()
    n = sum(one_pass(e + 1, batches) for e in range(epochs))
    return n / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=-1, help="loader workers (default: the CPU count, at most 8)")
    ap.add_argument("--size", type=int, default=0, help="model input size (default: 256 on a GPU, 128 on the CPU)")
    ap.add_argument("--batch", type=int, default=0, help="default: 64 on a GPU, 16 on the CPU")
    ap.add_argument("--n", type=int, default=240, help="demo train images")
    ap.add_argument("--batches", type=int, default=0, help="batches per timed pass (default: all)")
    ap.add_argument("--steps", type=int, default=0, help="timed KD steps (default: 20 on a GPU, 3 on the CPU)")
    ap.add_argument("--teacher", default="efficientnet-b4")
    ap.add_argument("--student", default="nf_regnet_b1")
    a = ap.parse_args()
    device = resolve_device(a.device)
    gpu = device.type == "cuda"
    size = a.size or (256 if gpu else 128)
    batch = a.batch or (64 if gpu else 16)
    with tempfile.TemporaryDirectory() as tmp:
        data = make_demo_data(Path(tmp) / "demo", n_train=a.n, n_test=8, progress=False)
        rates = {}
        for aug in ("cpu", "gpu"):
            cfg = load_config(overrides=[f"data.root={data}", f"data.cache_dir={tmp}/cache", f"run.out_dir={tmp}/runs", "data.folds=2",
                                         f"data.image_size={size}", f"data.resize_size={int(size * 1.125)}", f"data.num_workers={a.workers}",
                                         f"run.device={device}", f"student.train.batch_size={batch}", f"aug.device={aug}",
                                         "aug.rotate_p=0.5", "aug.fancy_pca_p=0.5"])
            ctx = make_context(cfg, progress=False)
            n_batches = a.batches or len(ctx.loaders(0, cfg.student.train)[0])
            rates[f"loader, augmentation on the {'CPU workers' if aug == 'cpu' else 'device (' + device.type + ')'}"] = \
                loader_rate(ctx, cfg, n_batches)
        workers = ctx.loaders(0, cfg.student.train)[0].loader.num_workers
        step = measure(device, size, batch, a.steps or (20 if gpu else 3), a.teacher, a.student, kinds=("KD",))["KD"]
    print(f"device={device} size={size} batch={batch} workers={workers} KD={a.teacher}->{a.student} amp={amp_dtype('auto', device)}")
    for k, v in rates.items():
        print(f"{k:>48}: {v:8.1f} img/s")
    print(f"{'KD training step (batches in memory)':>48}: {step:8.1f} img/s")
    for k, v in rates.items():
        print(f"ratio {k} / KD step: {v / step:.2f}" + ("  (target >= 1 on a GPU with 4 workers)" if "device" in k else ""))


if __name__ == "__main__":
    main()
