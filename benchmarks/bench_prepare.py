#!/usr/bin/env python
"""Wall time of data preparation: a first run (cold cache) against a second run (warm cache).

Preparation is what every training run does before the first batch: validate the CSVs and
every image, build the uint8 caches (train images at resize_size and image_size, test images
at image_size), the folds and the train-set mean/std. Under DDP it is one rank's work while
the others wait. A few thousand source-size images are made by symlinking copies of demo
images (each copy is its own file for the cache, as a copied file would be).

The cold run decodes each image once (the check and both cache sizes from one decode, in
parallel processes); the warm run finds every entry by path, size and mtime and decodes
nothing (checked: it writes no cache entry, and an entry is only written after a decode).
Printed side by side with the ratio.

  python benchmarks/bench_prepare.py [--n-train 3000 --n-test 300 --workers 2]
"""
import argparse
import tempfile
import time
from pathlib import Path

from sonokit.config import load_config
from sonokit.data import prepare_data
from sonokit.demo import make_demo_data, replicate_data


def entries_state(cache: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in cache.rglob("*.npy")}


def timed_prepare(cfg, cache: Path, scope="train"):
    """(seconds, prepared data, cache entries written by this run): an entry is written only after a decode."""
    before = entries_state(cache) if cache.exists() else {}
    t0 = time.perf_counter()
    prep = prepare_data(cfg, progress=False, scope=scope)
    seconds = time.perf_counter() - t0
    after = entries_state(cache)
    return seconds, prep, sum(1 for k, v in after.items() if before.get(k) != v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-train", type=int, default=3000)
    ap.add_argument("--n-test", type=int, default=300)
    ap.add_argument("--unique", type=int, default=120, help="distinct demo images behind the symlinked copies")
    ap.add_argument("--workers", type=int, default=2, help="cache-building processes (0 = this process)")
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--resize-size", type=int, default=288)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = make_demo_data(tmp / "base", n_train=a.unique, n_test=16, progress=False)
        data = replicate_data(base, tmp / "data", a.n_train, a.n_test)
        cfg = load_config(overrides=[f"data.root={data}", f"data.cache_dir={tmp / 'cache'}", f"data.num_workers={a.workers}",
                                     f"data.image_size={a.image_size}", f"data.resize_size={a.resize_size}"])
        print(f"{a.n_train} train + {a.n_test} test images (symlinked copies of {a.unique} demo images, mean about 850x570), "
              f"caches at {a.resize_size}+{a.image_size} px, {a.workers} worker process(es)")
        cache = tmp / "cache"
        cold, prep, cold_written = timed_prepare(cfg, cache)
        warm, prep2, warm_written = timed_prepare(cfg, cache)
        assert prep2.mean == prep.mean and len(prep2.train_crop_entries) == a.n_train
        pred, _, pred_written = timed_prepare(cfg, cache, scope="predict")
        n = a.n_train + a.n_test
        print(f"first preparation (cold cache):  {cold:8.1f} s  ({n / cold:6.0f} img/s), {cold_written} cache entries written")
        print(f"second preparation (warm cache): {warm:8.1f} s  ({n / warm:6.0f} img/s), {warm_written} written (no image decoded)")
        print(f"prediction-only run (warm):      {pred:8.1f} s, {pred_written} written")
        print(f"ratio cold/warm: {cold / warm:.1f}x")
        if warm_written or pred_written:
            raise SystemExit("error: a warm preparation decoded and rewrote images")


if __name__ == "__main__":
    main()
