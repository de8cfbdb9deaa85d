#!/usr/bin/env python
"""Short cross-validated trainings over a grid of config overrides (models, sizes, augmentation...).

  python scripts/sweep.py --grid grid.yaml --data DIR [--name NAME] [--gpus N] [--shard i/n]

See src/sonokit/sweep.py for the grid format. Outputs under runs/<name>/: one JSON per run in
results/, results.csv, results.md, gflops_vs_loss.png and gflops_vs_acc.png. Re-running skips
finished runs; --gpus N runs N trainings at once (one per GPU); --shard i/n splits the grid
across machines that share the output directory. A failing model is recorded, not fatal.
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
    ap.add_argument("--grid", required=True, help="grid YAML file")
    ap.add_argument("--data", required=True, help="data directory")
    ap.add_argument("--name", default="", help="sweep name: outputs in runs/<name>/ (default: sweep-<grid file stem>)")
    ap.add_argument("--out-dir", default="", help="parent of the sweep directory (default: ./runs)")
    ap.add_argument("--config", action="append", default=[], help="base YAML config (repeatable)")
    ap.add_argument("--set", action="append", default=[], dest="overrides", help="override for every run (key=value)")
    ap.add_argument("--gpus", type=int, default=-1, help="runs at once, one per GPU (default: all GPUs; 0 = CPU, one at a time)")
    ap.add_argument("--shard", default="0/1", help="this machine's share of the grid: i/n (default 0/1, everything)")
    ap.add_argument("--flops", choices=("true", "competition"), default="true", help="x axis of the plots")
    ap.add_argument("--worker", default="", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    def go() -> int:
        setup_logging()
        from sonokit.paths import default_runs_dir
        from sonokit.sweep import aggregate, load_grid, parse_shard, run_sweep

        grid = load_grid(a.grid, parse_shard(a.shard))
        sweep_dir = (Path(a.out_dir) if a.out_dir else default_runs_dir()) / (a.name or f"sweep-{Path(a.grid).stem}")
        sweep_dir.mkdir(parents=True, exist_ok=True)
        import torch

        gpus = a.gpus if a.gpus >= 0 else torch.cuda.device_count()
        extra = list(a.overrides) + [f"run.device={'cuda' if gpus > 0 else 'cpu'}"]
        if a.worker:
            run_sweep(grid, sweep_dir, a.data, a.config, extra, worker=parse_shard(a.worker), progress=False)
            return 0
        if gpus > 1:
            procs = []
            for g in range(gpus):
                env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(g)}
                cmd = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--worker", f"{g}/{gpus}"]
                procs.append(subprocess.Popen(cmd, env=env))
            codes = [p.wait() for p in procs]
            if any(codes):
                print(f"error: sweep worker exit codes {codes}", file=sys.stderr)
            ran = len(grid.points)
            skipped = 0
        else:
            ran, skipped = run_sweep(grid, sweep_dir, a.data, a.config, extra)
        recs = aggregate(sweep_dir, a.flops)
        ok = sum(r["status"] == "ok" for r in recs)
        failed = [r for r in recs if r["status"] != "ok"]
        print(f"sweep {sweep_dir}: {ran} run(s) now, {skipped} already finished; {ok} ok, {len(failed)} failed or skipped")
        for r in failed:
            print(f"  {r['run_id']} ({r['label']}): {r['status']}: {r.get('error', '')[:200]}")
        print(f"results: {sweep_dir / 'results.md'}, {sweep_dir / 'results.csv'}, plots: {sweep_dir}/gflops_vs_*.png")
        return 0

    return run_main(go)


if __name__ == "__main__":
    sys.exit(main())
