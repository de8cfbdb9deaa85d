#!/usr/bin/env python
"""Make the assets dataset the Kaggle notebooks need offline: ImageNet weights and wheels.

  python scripts/export_assets.py ASSETS --owner USER      # on a machine with internet
  kaggle datasets create -p ASSETS                          # once; then build the kernels with
  python scripts/build_kernels.py --owner USER              # (their assets dataset: USER/sonokit-assets)

Writes ASSETS/weights/<model>.pth for the configured teacher and student (efficientnet-b4 and
nf_regnet_b1 by default; --set teacher.model.name=... changes them, --models adds more),
ASSETS/wheels/*.whl for the kit's dependencies that Kaggle's image may lack or ship too old
(timm, thop, torch-pruning, efficientnet_pytorch, einops: the versions installed here), and
ASSETS/dataset-metadata.json (id USER/sonokit-assets). Locally, --set run.assets=ASSETS makes
runs take their ImageNet weights from it. --random saves random weights (a layout check without
internet); --find-links DIR takes the wheels from a local folder instead of the package index.
"""
import argparse
import sys

from sonokit.cli import add_config_args, config_from_args, run_main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="output folder (the dataset)")
    ap.add_argument("--owner", required=True, help="your Kaggle user name")
    ap.add_argument("--slug", default="sonokit-assets", help="dataset slug (default sonokit-assets)")
    ap.add_argument("--models", default="", help="more model names, comma separated (default: the configured teacher and student)")
    ap.add_argument("--wheels", default="", help="distributions to ship as wheels, comma separated "
                                                 "(default: timm,thop,torch-pruning,efficientnet_pytorch,einops; 'none' for none)")
    ap.add_argument("--find-links", default="", help="build the wheels from this folder only (no package index)")
    ap.add_argument("--random", action="store_true", help="random weights (offline layout check)")
    add_config_args(ap)
    a = ap.parse_args(argv)

    def go() -> int:
        from sonokit.deps import REQUIREMENTS
        from sonokit.export import DEFAULT_WHEELS, export_assets

        cfg = config_from_args(a)
        models = [cfg.teacher.model.name, cfg.student.model.name] + [m.strip() for m in a.models.split(",") if m.strip()]
        wheels = DEFAULT_WHEELS if not a.wheels else () if a.wheels == "none" else tuple(w.strip() for w in a.wheels.split(","))
        unknown = [w for w in wheels if w not in REQUIREMENTS]
        if unknown:
            raise ValueError(f"--wheels: unknown distribution(s) {unknown}; choose from {', '.join(REQUIREMENTS)}")
        out = export_assets(a.out, a.owner, models, wheels, weights=None if a.random else "download", slug=a.slug,
                            find_links=a.find_links or None)
        print(f"assets dataset ready in {out}: kaggle datasets create -p {out}")
        for sub in ("weights", "wheels"):
            for p in sorted((out / sub).glob("*")):
                print(f"  {sub}/{p.name}")
        return 0

    return run_main(go)


if __name__ == "__main__":
    sys.exit(main())
