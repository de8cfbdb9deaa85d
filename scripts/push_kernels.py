#!/usr/bin/env python
"""Push the built notebooks to Kaggle through the kaggle package's API, in pipeline order.

  python scripts/push_kernels.py [STAGE ...]      # default: teacher student hrank inference

Each push is read from the API's structured answer: an error, or a dataset / competition /
kernel source that Kaggle rejected (the notebook would be saved without it and fail), stops the
push with exit 1 and the server's words; a success prints the kernel version and its URL.
Run `python scripts/build_kernels.py --check` first: push what the current source builds.
"""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    from sonokit.kaggle_kernels import STAGE_ORDER

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stages", nargs="*", default=list(STAGE_ORDER), help=f"stages to push (default: {' '.join(STAGE_ORDER)})")
    ap.add_argument("--kernels", default=str(ROOT / "kernels"), help="folder of the built kernels (default: kernels/)")
    a = ap.parse_args(argv)
    from sonokit.kaggle_api import KaggleApiError, connect, push_kernel

    bad = [s for s in a.stages if s not in STAGE_ORDER]
    if bad:
        ap.error(f"unknown stage(s) {bad}; choose from {', '.join(STAGE_ORDER)}")
    folders = [Path(a.kernels) / s for s in STAGE_ORDER if s in a.stages]
    for folder in folders:
        if not (folder / "kernel-metadata.json").is_file():
            print(f"error: {folder} has no kernel-metadata.json: run python scripts/build_kernels.py", file=sys.stderr)
            return 2
    try:
        api = connect()
        for folder in folders:
            res = push_kernel(folder, api)
            print(f"{folder.name}: version {res.version} pushed: {res.url}", flush=True)
    except KaggleApiError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
