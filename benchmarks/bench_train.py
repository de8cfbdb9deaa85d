#!/usr/bin/env python
"""End-to-end training images/s against compute-only images/s, side by side in one run.

Same model (the student), same batches, same optimiser step; "compute-only" replays batches
already in memory, "end-to-end" pulls them through the real cached loader (augmentation,
normalisation, workers). Ratio target: >= 0.9 (the data path is never the bottleneck).
CPU at the demo size by default; on a GPU, 256 px with AMP.

  python benchmarks/bench_train.py [--data DIR] [--steps 12] [--device auto]
"""
import argparse
import tempfile
import time
from pathlib import Path

import torch
from timm.loss import SoftTargetCrossEntropy

from sonokit.config import load_config
from sonokit.demo import make_demo_data
from sonokit.engine import amp_dtype, autocast
from sonokit.mixing import create_mixing
from sonokit.models import create_model
from sonokit.stages.common import make_context

ROOT = Path(__file__).resolve().parents[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--size", type=int, default=0, help="default: 64 on CPU (the demo), 256 on GPU")
    ap.add_argument("--batch", type=int, default=0, help="default: 16 on CPU, 64 on GPU")
    ap.add_argument("--workers", type=int, default=-1)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = a.data or str(make_demo_data(Path(tmp) / "demo", n_train=240, n_test=8, progress=False))
        gpu = torch.cuda.is_available() and a.device != "cpu"
        size = a.size or (256 if gpu else 64)
        batch = a.batch or (64 if gpu else 16)
        cfg = load_config([ROOT / "src" / "sonokit" / "configs" / "demo.yaml"], [
            f"data.root={data}", f"run.out_dir={tmp}/runs", f"data.image_size={size}", f"data.resize_size={int(size * 1.125)}",
            f"data.num_workers={a.workers}", f"run.device={a.device}", f"student.train.batch_size={batch}"])
        ctx = make_context(cfg, progress=False)
        loader, _ = ctx.loaders(0, cfg.student.train)
        model = create_model(cfg.student.model.name, ctx.prep.num_classes, cfg.student.model.in_chans).to(ctx.device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        mixing = ctx.batch_transform(0, create_mixing(cfg.student.mix, ctx.prep.num_classes))  # device aug (when on) + mixing
        crit = SoftTargetCrossEntropy()
        amp = amp_dtype("auto", ctx.device)

        def step(x, y):
            x, y = mixing(x, y)
            with autocast(ctx.device, amp):
                loss = crit(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def sync():
            if ctx.device.type == "cuda":
                torch.cuda.synchronize()

        batches = []
        for x, y in loader:  # also warms the workers up
            batches.append((x.clone(), y.clone()))
            if len(batches) == a.steps:
                break
        n = sum(len(y) for _, y in batches)
        step(*batches[0])  # warm-up
        sync()
        t0 = time.perf_counter()
        for x, y in batches:
            step(x.clone(), y)
        sync()
        compute = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        seen = 0
        while seen < n:
            for x, y in loader:
                step(x, y)
                seen += len(y)
                if seen >= n:
                    break
        sync()
        e2e = seen / (time.perf_counter() - t0)
    print(f"device={ctx.device} size={size} batch={batch} workers={loader.loader.num_workers} model={cfg.student.model.name}")
    print(f"compute only (batches in memory): {compute:8.1f} img/s")
    print(f"end to end (cached loader):       {e2e:8.1f} img/s")
    print(f"ratio end-to-end / compute-only:  {e2e / compute:.2f} (target >= 0.9)")


if __name__ == "__main__":
    main()
