#!/usr/bin/env python
"""Validate a competition data directory against the input schema.

  python scripts/check_data.py DATA [--schema FILE] [--folds K]

Prints every problem, one line each, as FILE[:LINE]: message. Exit 0 when the data is clean,
2 when it is not. Nothing is written. Every training command runs the same validation first.
"""
import argparse
import sys

from sonokit.schema import SchemaError, load_schema, validate


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", help="data directory (train.csv, train/, test/, sample_submission.csv)")
    ap.add_argument("--schema", default="", help="input schema YAML (default: input_schema/default.yaml)")
    ap.add_argument("--folds", type=int, default=5, help="number of CV folds every class must cover (default 5)")
    ap.add_argument("--no-images", action="store_true", help="skip decoding the images (CSV and file checks only)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = ap.parse_args(argv)
    try:
        schema = load_schema(a.schema)
    except SchemaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    problems, index = validate(a.data, schema, n_folds=a.folds, check_images=not a.no_images, progress=not a.no_progress)
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} problem(s) found in {a.data}", file=sys.stderr)
        return 2
    print(
        f"OK: {len(index.train_ids)} train images in {len(index.classes)} classes "
        f"({', '.join(index.classes)}), {len(index.test_ids)} test images"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
