#!/usr/bin/env python
"""Images/s of the cached loader against a naive loader that decodes the original file every time.

Same demo images at source-like sizes (mean about 850x570), same workers and batch size,
measured side by side in one run, at the kit's default model size (256 px, resized to 288) and
at the demo size (64 px, resized to 72). Two cached loaders:

* augmentation on the CPU workers (aug.device=cpu): the same transforms as the naive loader,
  so the augmentations both share (about 1 ms per image per core at 256 px) bound the ratio;
* augmentation on the device (aug.device=gpu, the default on CUDA): the workers only read the
  cached uint8 images; RandomCrop, Rotate, flips and FancyPCA run per batch on the training
  device (their cost there is measured by benchmarks/bench_pipeline.py).

Prints the ratios against the naive loader (target: >= 5x on 2 cores at 256 px).

  python benchmarks/bench_data.py [--n 200 --epochs 2 --workers 2]
"""
import argparse
import tempfile
import time
from pathlib import Path

from sonokit.data import ImageCache, ImageDataset, create_loader, set_epoch, train_transform
from sonokit.demo import make_demo_data
from sonokit.schema import load_schema, require_valid


def throughput(loader, epochs: int) -> float:
    n = 0
    t0 = time.perf_counter()
    for epoch in range(epochs):
        set_epoch(loader, epoch)
        for x, _ in loader:
            n += x.shape[0]
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="number of demo train images")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--sizes", default="256:288,64:72", help="model:resize size pairs to measure")
    ap.add_argument("--data", default="", help="existing data dir (default: make demo data in a temp dir)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(a.data) if a.data else make_demo_data(Path(tmp) / "demo", n_train=a.n, n_test=8, progress=False)
        index = require_valid(data, load_schema(), n_folds=2, progress=False)
        y = index.train_targets
        sizes = [tuple(int(v) for v in pair.split(":")) for pair in a.sizes.split(",")]
        print(f"images: {len(y)} demo train images at source-like sizes; workers={a.workers}, batch={a.batch_size}")
        for size, resize in sizes:
            cache = ImageCache(Path(tmp) / "cache", resize)
            t0 = time.perf_counter()
            entries = cache.build(index.train_files, workers=a.workers, progress=False)
            build_s = time.perf_counter() - t0
            mean, std = cache.mean_std(entries)
            tf = train_transform(size, resize)
            kw = dict(batch_size=a.batch_size, train=True, mean=mean, std=std, num_workers=a.workers)
            naive = create_loader(ImageDataset(index.train_files, y, tf, decode=True), **kw)
            cached = create_loader(ImageDataset(entries, y, tf), **kw)
            decoded = create_loader(ImageDataset(entries, y, train_transform(size, resize, on_device=True)), **kw)
            # one warm-up pass each (worker start-up), then the measured passes
            for loader in (naive, cached, decoded):
                throughput(loader, 1)
            naive_ips = throughput(naive, a.epochs)
            cached_ips = throughput(cached, a.epochs)
            decoded_ips = throughput(decoded, a.epochs)
            print(f"[{size} px, resize {resize}] cache build (one-off): {build_s:.1f} s ({len(entries) / build_s:.0f} img/s)")
            print(f"[{size} px] naive loader (decode + augment every time):                 {naive_ips:8.1f} img/s")
            print(f"[{size} px] cached loader, augmentation on the CPU workers:              {cached_ips:8.1f} img/s   "
                  f"ratio {cached_ips / naive_ips:.2f}x")
            print(f"[{size} px] cached loader, augmentation on the device (default on CUDA): {decoded_ips:8.1f} img/s   "
                  f"ratio {decoded_ips / naive_ips:.2f}x (target >= 5x)")


if __name__ == "__main__":
    main()
