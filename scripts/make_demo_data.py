#!/usr/bin/env python
"""Write sonokit's synthetic ultrasound-like demo data set.

  python scripts/make_demo_data.py OUT [--n-train N --n-test M --seed S]

Layout (the default input schema): OUT/train.csv (image_id,label), OUT/train/<id>.<jpg|png>,
OUT/test/<id>.<jpg|png>, OUT/sample_submission.csv, plus OUT/solution.csv (test labels, so the
demo can score itself). 8 classes with the source's imbalance; deterministic for a seed.
"""
import argparse
import sys

from sonokit.demo import make_demo_data


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="output directory (created; an existing data set there needs --force)")
    ap.add_argument("--n-train", type=int, default=400, help="number of training images (default 400)")
    ap.add_argument("--n-test", type=int, default=100, help="number of test images (default 100)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--force", action="store_true", help="replace a data set already in OUT")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = ap.parse_args(argv)
    try:
        out = make_demo_data(a.out, a.n_train, a.n_test, a.seed, progress=not a.no_progress, force=a.force)
    except (ValueError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"demo data written to {out} ({a.n_train} train, {a.n_test} test images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
