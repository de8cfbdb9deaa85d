#!/usr/bin/env python
"""Train the pipeline's stages locally (CPU, one GPU, or several GPUs with DDP).

  python scripts/train_local.py --data DIR --stages teacher --gpus 0
  python scripts/train_local.py --data DIR --stages teacher --gpus 4          # 4 DDP processes
  python scripts/train_local.py --data DIR --set teacher.train.epochs=5 --resume

Every stage validates the data first (exit 2 with every problem listed), writes under
runs/<name>/ beside the resolved config.yaml, and is resumable with --resume. --gpus N > 1
launches N processes through torch.distributed (torchrun-compatible: under torchrun, pass
--gpus 1 and use its --nnodes/--node-rank/--master-addr).
"""
from __future__ import annotations

import argparse
import os
import sys

from sonokit.cli import add_config_args, config_from_args, run_main, setup_logging

STAGES = ("teacher", "student", "hrank", "infer", "flops")


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma list, run in pipeline order (choices: {', '.join(STAGES)})")
    ap.add_argument("--gpus", type=int, default=-1, help="0 = CPU, 1 = one GPU, N > 1 = N DDP processes (default: 1 if CUDA is available, else 0)")
    ap.add_argument("--resume", action="store_true", help="continue every stage from its last checkpoint")
    ap.add_argument("--folds", default="", help="train only these folds, e.g. 0,1 (default: all)")
    ap.add_argument("--kd", choices=("on", "off"), default="", help="student: distil from the teacher (on, default) or train alone (off)")
    ap.add_argument("--hrank-mode", choices=("reinit", "prune"), default="", help="hrank: re-initialise (the source) or prune the lowest-rank filters")
    ap.add_argument("--hrank-ratio", type=float, default=0.0, help="hrank: fraction of filters (default 0.125)")
    ap.add_argument("-v", "--verbose", action="store_true")
    add_config_args(ap)
    return ap, ap.parse_args(argv)


def stage_line(stage: str, s: dict, run_dir) -> str:
    if stage == "hrank":
        lines = [f"hrank ({s['mode']}, ratio {s['ratio']}): CV loss {s['overall']['loss']:.4f}, acc {s['overall']['acc']:.4f} -> {run_dir / stage}"]
        for r in s["reports"]:
            line = f"  fold {r['fold']}: acc {r['before']['val_acc']:.4f} before -> {r['after']['val_acc']:.4f} after fine-tuning"
            if "cost_after" in r:
                b, a = r["cost_before"], r["cost_after"]
                line += (f"; true GFLOPs {b['true_gflops']:.4f} -> {a['true_gflops']:.4f}, thop {b['competition_gflops']:.7f} -> "
                         f"{a['competition_gflops']:.7f}, params {b['params'] / 1e6:.2f}M -> {a['params'] / 1e6:.2f}M, "
                         f"latency {b['latency_ms_batch1_cpu']:.1f} -> {a['latency_ms_batch1_cpu']:.1f} ms")
            lines.append(line)
        return "\n".join(lines)
    if "overall" in s:
        return f"{stage}: CV loss {s['overall']['loss']:.4f}, acc {s['overall']['acc']:.4f} -> {run_dir / stage}"
    if stage == "infer":
        extra = f", demo test accuracy {s['test_acc_on_solution_csv']:.4f}" if "test_acc_on_solution_csv" in s else ""
        return f"infer: {len(s['members'])} member(s) x {len(s['tta_views'])} view(s) -> {s['submission']}{extra}"
    if stage == "flops":
        return "flops: " + "\n       ".join(s["lines"][:4]) + f"\n       -> {run_dir / 'flops.json'}"
    return f"{stage}: done"


def main(argv=None) -> int:
    ap, a = parse(argv)
    stages = [s.strip() for s in a.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        ap.error(f"unknown stage(s) {unknown}; choose from {', '.join(STAGES)}")

    import torch

    gpus = a.gpus if a.gpus >= 0 else (1 if torch.cuda.is_available() else 0)
    if gpus > 1 and "RANK" not in os.environ:
        from torch.distributed.run import main as torchrun

        argv = list(sys.argv[1:] if argv is None else argv)
        torchrun(["--standalone", f"--nproc_per_node={gpus}", __file__, *argv])
        return 0
    extra = [f"run.device={'cpu' if gpus == 0 else 'auto'}"]
    if a.folds:
        extra.append(f"run.folds={a.folds}")
    if a.kd:
        extra.append(f"student.kd.enabled={'true' if a.kd == 'on' else 'false'}")
    if a.hrank_mode:
        extra.append(f"hrank.mode={a.hrank_mode}")
    if a.hrank_ratio:
        extra.append(f"hrank.ratio={a.hrank_ratio}")

    def go() -> int:
        setup_logging(a.verbose)
        cfg = config_from_args(a, extra)
        from sonokit import stages as st

        ctx = st.make_context(cfg, resume=a.resume)
        runners = {"teacher": st.run_teacher, "student": st.run_student, "hrank": st.run_hrank, "infer": st.run_infer,
                   "flops": st.run_flops}
        for stage in [s for s in STAGES if s in stages]:
            s = runners[stage](ctx)
            if ctx.main:
                print(stage_line(stage, s, ctx.run_dir))
        return 0

    return run_main(go)


if __name__ == "__main__":
    sys.exit(main())
