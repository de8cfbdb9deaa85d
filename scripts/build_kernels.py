#!/usr/bin/env python
"""Build the Kaggle notebooks (kernels/<stage>/) from src/: teacher, student, hrank, inference.

  python scripts/build_kernels.py [--competition SLUG --owner USER --assets-dataset OWNER/SLUG]
  python scripts/build_kernels.py --check        # exit 1 when kernels/ is stale (CI runs this)

Each notebook embeds the sonokit source, so it needs no pip install and no internet. The student
kernel reads the teacher kernel's output (kernel_sources), hrank reads both, inference reads
hrank's; the competition data comes through competition_sources, ImageNet weights and the wheels
of packages Kaggle's image lacks through the assets dataset made by scripts/export_assets.py
(each notebook's first cell checks its packages and installs from it, offline). Two builds give
identical bytes; the arguments of the last
build are kept in kernels/build.json, so --check rebuilds with the same ones.
Then: python scripts/push_kernels.py (or kaggle kernels push -p kernels/<stage>).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "kernels"))
    ap.add_argument("--competition", default=None, help="competition slug (default: kernels/build.json's, else 'your-competition')")
    ap.add_argument("--owner", default=None, help="your Kaggle user name (default: build.json's, else 'your-kaggle-user')")
    ap.add_argument("--assets-dataset", default=None,
                    help="OWNER/SLUG of the assets dataset (weights + wheels; default: <owner>/sonokit-assets; '' for none)")
    ap.add_argument("--check", action="store_true", help="compare with kernels/ instead of writing; exit 1 when stale")
    a = ap.parse_args(argv)
    from sonokit.io import atomic_write_bytes
    from sonokit.kaggle_kernels import build_all, check_metadata

    out = Path(a.out)
    prev = json.loads((out / "build.json").read_text()) if (out / "build.json").is_file() else {}
    owner = a.owner or prev.get("owner") or "your-kaggle-user"
    competition = a.competition or prev.get("competition") or "your-competition"
    if a.assets_dataset is not None:
        assets = a.assets_dataset
    elif not a.owner and "assets_dataset" in prev:
        assets = prev["assets_dataset"]
    else:
        assets = f"{owner}/sonokit-assets"
    if "/" in competition or not owner or "/" in owner:
        print("error: --competition is a bare slug and --owner a user name", file=sys.stderr)
        return 2
    files = build_all(competition, owner, assets)
    if a.check:
        stale = [name for name, data in files.items() if not (out / name).is_file() or (out / name).read_bytes() != data]
        extra = [str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != "README.md"
                 and str(p.relative_to(out)) not in files]
        if stale or extra:
            print(f"kernels/ is stale: {', '.join(stale + extra)}; run python scripts/build_kernels.py", file=sys.stderr)
            return 1
        print("kernels/ is up to date")
        return 0
    for name, data in files.items():
        atomic_write_bytes(out / name, data)
    for stage_dir in sorted(p for p in out.iterdir() if p.is_dir()):
        meta = json.loads((stage_dir / "kernel-metadata.json").read_text())
        problems = check_metadata(meta, stage_dir)
        if problems:
            print(f"error: {stage_dir}: " + "; ".join(problems), file=sys.stderr)
            return 1
        print(f"built {stage_dir / meta['code_file']} ({meta['id']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
