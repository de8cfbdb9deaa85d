#!/usr/bin/env python
"""Model and recipe search on Optuna: short cross-validated trainings, one shared study, any number of workers.

  python scripts/sweep.py --grid src/sonokit/grids/step1_models.yaml --data DIR [--gpus N]
  python scripts/sweep.py --grid GRID.yaml --data DIR --storage postgresql://user@db/sonokit   # many machines

See src/sonokit/sweep.py for the grid/search file. The study lives in one storage: by default the
journal file runs/<name>/study.log (any number of processes on this machine or a shared
filesystem), or --storage URL (a database) for many machines. --gpus N starts N workers here, one
per GPU (and its share of the CPU cores); the same command on another machine joins the same
study: every grid point runs once,
with no manual sharding. A failed trial is recorded with its error; a trial whose worker died is
queued again; re-running continues the study. Outputs in runs/<name>/: results.csv, results.md,
gflops_vs_loss.png and gflops_vs_acc.png with the Pareto front. optuna-dashboard reads the same
storage (the command is printed at the end).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from sonokit.cli import run_main, setup_logging


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", required=True, help="grid or search YAML file")
    ap.add_argument("--data", required=True, help="data directory")
    ap.add_argument("--name", default="", help="study and folder name: outputs in runs/<name>/ (default: sweep-<grid file stem>)")
    ap.add_argument("--out-dir", default="", help="parent of the sweep folder (default: ./runs)")
    ap.add_argument("--storage", default="", help="Optuna storage: a database URL, or a journal file (default: <sweep folder>/study.log)")
    ap.add_argument("--config", action="append", default=[], help="base YAML config (repeatable)")
    ap.add_argument("--set", action="append", default=[], dest="overrides", help="override for every trial (key=value)")
    ap.add_argument("--gpus", type=int, default=-1, help="workers on this machine, one per GPU (default: every GPU; 0 = one CPU worker)")
    ap.add_argument("--stale-after", type=float, default=0, help="seconds without a heartbeat after which another machine's "
                                                                 "running trial counts as dead and is queued again (default: never)")
    ap.add_argument("--flops", choices=("true", "competition"), default="true", help="x axis of the plots and the front")
    ap.add_argument("--seed", type=int, default=0, help="sampler seed")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    def go() -> int:
        setup_logging()
        import torch

        from sonokit.deps import require, requirements
        from sonokit.paths import default_runs_dir
        from sonokit.sweep import aggregate, load_grid, open_storage, open_study, run_worker

        grid = load_grid(a.grid)
        name = a.name or f"sweep-{Path(a.grid).stem}"
        sweep_dir = (Path(a.out_dir) if a.out_dir else default_runs_dir()) / name
        sweep_dir.mkdir(parents=True, exist_ok=True)
        storage = a.storage or str(sweep_dir / "study.log")
        gpus = a.gpus if a.gpus >= 0 else torch.cuda.device_count()
        extra = list(a.overrides) + [f"run.device={'cuda' if gpus > 0 else 'cpu'}"]
        from sonokit.config import load_config

        require([*requirements(load_config(a.config, list(a.overrides)), [*grid.stages, "flops"]), "optuna"])
        if gpus > 1 and not a.worker:
            open_study(grid, open_storage(storage), name, a.seed)  # created (and queued) once, before the workers race
            procs = []
            for g in range(gpus):
                env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(g)}
                # N processes on one machine: each its share of the cores (torch's threads would otherwise fight)
                env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // gpus)))
                args = [*(argv if argv is not None else sys.argv[1:]), "--worker", "--storage", storage, "--name", name]
                procs.append(subprocess.Popen([sys.executable, __file__, *args], env=env))
            codes = [p.wait() for p in procs]
            if any(codes):
                print(f"error: sweep worker exit codes {codes}", file=sys.stderr)
            ran = {}
        else:
            ran = run_worker(grid, storage, name, sweep_dir, a.data, a.config, extra, a.seed, progress=not a.worker,
                             stale_after_s=a.stale_after)
        if a.worker:
            return 0
        study, _ = open_study(grid, open_storage(storage), name, a.seed)
        df = aggregate(study, sweep_dir, a.flops)
        counts = df["status"].value_counts().to_dict()
        here = ", ".join(f"{v} {k}" for k, v in sorted(ran.items())) or "none"
        print(f"study {name}: {len(df)} trial(s): " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
              + f"; this command ran: {here}")
        for r in df[df["status"].isin(["failed", "skipped"])].to_dict("records"):
            print(f"  trial {r['trial']} ({r['label']}): {r['status']}: {str(r['error'])[:200]}")
        front = df[df["pareto"]]
        if len(front):
            print("Pareto front (accuracy against GFLOPs): " + "; ".join(
                f"{r['label']} acc {r['val_acc']:.4f} @ {r[f'{a.flops}_gflops']:.4f}" for r in front.to_dict("records")))
        print(f"results: {sweep_dir / 'results.md'}, {sweep_dir / 'results.csv'}, plots: {sweep_dir}/gflops_vs_*.png")
        print(f"dashboard: optuna-dashboard {storage}")
        return 0

    return run_main(go)


if __name__ == "__main__":
    sys.exit(main())
