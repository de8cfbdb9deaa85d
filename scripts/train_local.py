#!/usr/bin/env python
"""Run the pipeline locally: teacher, student, hrank, infer, flops, package, report (CPU, one GPU, or DDP).

  python scripts/train_local.py --demo                                   # everything, demo data, CPU
  python scripts/train_local.py --data DIR --gpus 4                      # all stages, 4 DDP processes
  python scripts/train_local.py --data DIR --stages teacher,student --gpus 0
  python scripts/train_local.py --data DIR --stages hrank --hrank-mode prune --hrank-ratio 0.125
  python scripts/train_local.py --data DIR --set student.train.epochs=20 --resume

Every run validates the data first (exit 2, every problem listed, nothing written), writes under
runs/<name>/ beside the resolved config.yaml, and every stage resumes with --resume.
--gpus N > 1 starts N processes through torch.distributed (torchrun); for several machines pass
--nnodes/--node-rank/--master-addr/--master-port, or run the script under torchrun yourself.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from sonokit.cli import add_config_args, config_from_args, run_main, setup_logging

STAGES = ("teacher", "student", "hrank", "infer", "flops", "package", "report")
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "src" / "sonokit" / "configs" / "demo.yaml"


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma list, run in pipeline order (default: all of {', '.join(STAGES)})")
    ap.add_argument("--demo", action="store_true", help="make the demo data if missing and run the whole pipeline on it (CPU, minutes)")
    ap.add_argument("--gpus", type=int, default=-1, help="0 = CPU, 1 = one GPU, N > 1 = N DDP processes (default: 1 if CUDA is available, else 0)")
    ap.add_argument("--cpu-procs", type=int, default=1, help="with --gpus 0: N CPU processes under DDP (gloo), to test DDP without GPUs")
    ap.add_argument("--resume", action="store_true", help="continue every stage from its last checkpoint")
    ap.add_argument("--folds", default="", help="train only these folds, e.g. 0,1 (default: all)")
    ap.add_argument("--kd", choices=("on", "off"), default="", help="student: distil from the teacher (on, default) or train alone (off)")
    ap.add_argument("--hrank-mode", choices=("reinit", "prune", "finetune"), default="",
                    help="hrank: re-initialise (the source) or prune the lowest-rank filters, or finetune (the control: no filter changed)")
    ap.add_argument("--hrank-ratio", type=float, default=0.0, help="hrank: fraction of filters (default 0.125)")
    ap.add_argument("--message", default="", help="package: submission description")
    g = ap.add_argument_group("multi-node (forwarded to torchrun)")
    g.add_argument("--nnodes", type=int, default=1)
    g.add_argument("--node-rank", type=int, default=0)
    g.add_argument("--master-addr", default="127.0.0.1")
    g.add_argument("--master-port", type=int, default=29500)
    ap.add_argument("-v", "--verbose", action="store_true")
    add_config_args(ap)
    return ap, ap.parse_args(argv)


def launch(a, argv, procs: int) -> int:
    """Start ``procs`` processes per node with torchrun; a process that dies stops them all."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    if a.nnodes > 1:
        rdzv = [f"--nnodes={a.nnodes}", f"--node-rank={a.node_rank}", f"--master-addr={a.master_addr}", f"--master-port={a.master_port}"]
    else:
        rdzv = ["--standalone"]
    try:
        torchrun([*rdzv, f"--nproc-per-node={procs}", "--max-restarts=0", __file__, *argv])
    except ChildFailedError as e:
        rank, first = e.get_first_failure()
        print(f"error: DDP process rank {rank} exited with code {first.exitcode}, so the whole run was stopped "
              f"({len(e.failures)} process(es) ended). Fix the cause shown above, then rerun with --resume to "
              f"continue from the last checkpoints.", file=sys.stderr)
        return 1
    return 0


def ensure_demo_data() -> Path:
    from sonokit.demo import make_demo_data
    from sonokit.paths import working_dir

    data = working_dir() / "demo_data"
    if not (data / "train.csv").is_file():
        print(f"making the demo data in {data} ...", file=sys.stderr)
        make_demo_data(data, force=True)
    return data


def stage_line(stage: str, s: dict, run_dir) -> str:
    if stage == "report":
        return (f"report: what each step bought, out of fold ({run_dir / 'report.html'}, report.md)\n\n{s['table']}\n\n"
                + "\n".join(f"  {line}" for line in s["hrank_lines"] + s["cost_lines"][:1] + s["test_lines"][-1:]))
    if stage == "hrank":
        lines = [f"hrank ({s['mode']}, ratio {s['ratio']}): CV loss {s['overall']['loss']:.4f}, acc {s['overall']['acc']:.4f} -> {run_dir / stage}"]
        for r in s["reports"]:
            line = f"  fold {r['fold']}: acc {r['before']['val_acc']:.4f} before -> {r['after']['val_acc']:.4f} after fine-tuning"
            if "cost_after" in r:
                b, c = r["cost_before"], r["cost_after"]
                line += (f"; true GFLOPs {b['true_gflops']:.4f} -> {c['true_gflops']:.4f}, thop {b['competition_gflops']:.7f} -> "
                         f"{c['competition_gflops']:.7f}, params {b['params'] / 1e6:.2f}M -> {c['params'] / 1e6:.2f}M, "
                         f"latency {b['latency_ms_batch1_cpu']:.1f} -> {c['latency_ms_batch1_cpu']:.1f} ms")
            lines.append(line)
        if "control" in s:
            c = s["control"]
            lines.append(f"hrank control (finetune, no filter changed): CV loss {c['overall']['loss']:.4f}, acc {c['overall']['acc']:.4f}")
        return "\n".join(lines)
    if "overall" in s:
        line = f"{stage}: CV loss {s['overall']['loss']:.4f}, acc {s['overall']['acc']:.4f} -> {run_dir / stage}"
        if "control" in s:
            c = s["control"]
            line += f"\n{stage} control (no KD): CV loss {c['overall']['loss']:.4f}, acc {c['overall']['acc']:.4f}"
        return line
    if stage == "infer":
        extra = f", demo test accuracy {s['test_acc_on_solution_csv']:.4f}" if "test_acc_on_solution_csv" in s else ""
        return f"infer: {len(s['members'])} member(s) x {len(s['tta_views'])} view(s) -> {s['submission']}{extra}"
    if stage == "flops":
        return "flops: " + "\n       ".join(s["lines"][:4]) + f"\n       -> {run_dir / 'flops.json'}"
    if stage == "package":
        return f"package: {s['csv']}\n         manifest {s['manifest']}\n         to submit: {s['command']}"
    return f"{stage}: done"


def summary(run_dir: Path) -> str:
    where = [
        ("report", run_dir / "report.html"),
        ("submission", run_dir / "submission.csv"),
        ("FLOPs report", run_dir / "flops.json"),
        ("confusion matrix", run_dir / "student" / "confusion.png"),
        ("rank heatmap", run_dir / "hrank" / "fold0" / "ranks_heatmap.png"),
        ("training curves", run_dir / "student" / "fold0" / "curves.png"),
        ("resolved config", run_dir / "config.yaml"),
    ]
    lines = ["", "where everything is:"] + [f"  {k:<17} {p}" for k, p in where if p.exists()]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap, a = parse(argv)
    stages = [s.strip() for s in a.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        ap.error(f"unknown stage(s) {unknown}; choose from {', '.join(STAGES)}")
    import torch

    gpus = a.gpus if a.gpus >= 0 else (1 if torch.cuda.is_available() and not a.demo else 0)
    procs = gpus if gpus > 1 else (a.cpu_procs if gpus == 0 else 1)
    if procs > 1 and "RANK" not in os.environ:
        return launch(a, argv, procs)

    def go() -> int:
        setup_logging(a.verbose)
        extra = [f"run.device={'cpu' if gpus == 0 else 'auto'}"]
        if a.demo:
            a.config = [str(DEMO_CONFIG), *a.config]
            if not a.data:
                a.data = str(ensure_demo_data())
        for flag, key in ((a.folds, "run.folds"), (a.hrank_mode, "hrank.mode"), (a.hrank_ratio, "hrank.ratio")):
            if flag:
                extra.append(f"{key}={flag}")
        if a.kd:
            extra.append(f"student.kd.enabled={'true' if a.kd == 'on' else 'false'}")
        cfg = config_from_args(a, extra)
        from sonokit import stages as st
        from sonokit.deps import require, requirements

        require(requirements(cfg, stages))  # names each missing or too old package before any work
        ctx = st.make_context(cfg, resume=a.resume, stages=stages)
        for stage in [s for s in STAGES if s in stages]:
            run = st.runner(stage)
            result = run(ctx, message=a.message) if stage == "package" else run(ctx)
            if ctx.main:
                print(stage_line(stage, result, ctx.run_dir), flush=True)
        if ctx.main:
            print(summary(ctx.run_dir))
        return 0

    return run_main(go)


if __name__ == "__main__":
    sys.exit(main())
