#!/usr/bin/env python
"""Reproduce the competition's FLOPs check and report the true cost beside it.

  python scripts/verify_flops.py --model nf_regnet_b1 [--size 256 --in-chans 1 --num-classes 8]
  python scripts/verify_flops.py --checkpoint runs/default/student/fold0/best.pt
  python scripts/verify_flops.py ... --target 0.0092865 --models 5 --tta 2 --json flops.json

The competition number is thop.profile on torch.randn(1, C, S, S), 2 x MACs / 1e9, rounded to
7 places (of the unwrapped model), exactly as the host computes it. Exit 0 when it equals
--target, 1 when it differs, 2 on bad input.
"""
import argparse
import sys

from sonokit.constants import COMPETITION_GFLOPS_TARGET, EXIT_BAD_INPUT


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="a best.pt written by sonokit (its model is rebuilt from the saved meta)")
    src.add_argument("--model", default="nf_regnet_b1", help="a model name (timm, or efficientnet-b0..b7); default nf_regnet_b1")
    ap.add_argument("--size", type=int, default=0, help="input size S (default: the checkpoint's, else 256)")
    ap.add_argument("--in-chans", type=int, default=0, help="input channels C (default: the checkpoint's, else 1)")
    ap.add_argument("--num-classes", type=int, default=8, help="classes, with --model (default 8)")
    ap.add_argument("--target", type=float, default=COMPETITION_GFLOPS_TARGET, help=f"expected competition GFLOPs (default {COMPETITION_GFLOPS_TARGET})")
    ap.add_argument("--models", type=int, default=1, help="models in the submission (folds x members), for the pipeline cost")
    ap.add_argument("--tta", type=int, default=1, help="TTA views per model, for the pipeline cost")
    ap.add_argument("--json", default="", help="also write the report to this JSON file")
    a = ap.parse_args(argv)

    from sonokit.flops import cost_report
    from sonokit.io import atomic_write_json
    from sonokit.models import create_model

    try:
        if a.checkpoint:
            from sonokit.stages.common import load_checkpoint_model

            model, meta = load_checkpoint_model(a.checkpoint)
            size = a.size or int(meta.get("image_size", 256))
            in_chans = a.in_chans or int(meta.get("in_chans", 1))
            label = f"{a.checkpoint} ({meta['model']})"
        else:
            size, in_chans = a.size or 256, a.in_chans or 1
            model = create_model(a.model, a.num_classes, in_chans)
            label = a.model
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if size < 8 or in_chans not in (1, 3):
        print("error: --size must be >= 8 and --in-chans 1 or 3", file=sys.stderr)
        return EXIT_BAD_INPUT
    report = cost_report(model, size, in_chans, a.models, a.tta)
    print(f"model: {label}")
    for line in report.lines(a.target):
        print(line)
    if a.json:
        atomic_write_json(a.json, {**report.to_dict(), "target": a.target, "model": label})
    if report.competition_gflops != round(a.target, 7):
        print(f"competition number {report.competition_gflops:.7f} differs from the target {a.target:.7f}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
