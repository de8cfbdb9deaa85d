#!/usr/bin/env python
"""Push the built notebooks with the real kaggle CLI, in pipeline order.

  python scripts/push_kernels.py [STAGE ...]      # default: teacher student hrank inference

Fails on a push error even when the CLI exits 0 (it prints "Kernel push error" and exits 0).
Run `python scripts/build_kernels.py --check` first: a stale kernel is refused.
"""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    from sonokit.kaggle_kernels import STAGE_ORDER

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stages", nargs="*", default=list(STAGE_ORDER), help=f"stages to push (default: {' '.join(STAGE_ORDER)})")
    ap.add_argument("--kernels", default=str(ROOT / "kernels"))
    a = ap.parse_args(argv)
    from sonokit.kaggle_cli import KaggleCliError, push_kernel

    bad = [s for s in a.stages if s not in STAGE_ORDER]
    if bad:
        ap.error(f"unknown stage(s) {bad}; choose from {', '.join(STAGE_ORDER)}")
    for stage in [s for s in STAGE_ORDER if s in a.stages]:
        folder = Path(a.kernels) / stage
        if not (folder / "kernel-metadata.json").is_file():
            print(f"error: {folder} has no kernel-metadata.json: run python scripts/build_kernels.py", file=sys.stderr)
            return 2
        try:
            out = push_kernel(folder)
        except KaggleCliError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"{stage}: {out.strip().splitlines()[-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
