#!/usr/bin/env python
"""Save the configured teacher's and student's ImageNet weights as a Kaggle dataset folder.

  python scripts/export_weights.py OUT --owner USER      # on a machine with internet
  kaggle datasets create -p OUT                           # then attach it to the kernels

Writes OUT/<model>.pth for the teacher (efficientnet-b4) and the student (nf_regnet_b1) and
OUT/dataset-metadata.json (id USER/sonokit-weights). --random saves random weights instead,
to check the layout without internet.
"""
import argparse
import sys

from sonokit.cli import add_config_args, config_from_args, run_main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="output folder")
    ap.add_argument("--owner", required=True, help="your Kaggle user name")
    ap.add_argument("--slug", default="sonokit-weights", help="dataset slug (default sonokit-weights)")
    ap.add_argument("--random", action="store_true", help="random weights (offline layout check)")
    add_config_args(ap)
    a = ap.parse_args(argv)

    def go() -> int:
        from sonokit.export import export_weights

        cfg = config_from_args(a)
        models = [cfg.teacher.model.name, cfg.student.model.name]
        out = export_weights(a.out, a.owner, models, weights=None if a.random else "imagenet", slug=a.slug)
        print(f"weights dataset ready in {out}: kaggle datasets create -p {out}")
        return 0

    return run_main(go)


if __name__ == "__main__":
    sys.exit(main())
