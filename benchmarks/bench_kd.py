#!/usr/bin/env python
"""Images/s of a knowledge-distillation training step against a student-only step.

Same student (nf_regnet_b1, 1 channel behind the grayscale front), same batch, same mixing;
the KD step adds the teacher's (efficientnet-b4) forward under no_grad. Measured side by side
in one run and printed as a ratio. CPU at 64 px by default; on a GPU, 256 px with fp16 AMP.

  python benchmarks/bench_kd.py [--size 64 --batch 8 --steps 6 --device auto]
"""
import argparse
import time

import numpy as np
import torch

from sonokit.config import KDConfig, MixConfig
from sonokit.distributed import resolve_device
from sonokit.engine import amp_dtype, autocast
from sonokit.mixing import BatchMixing
from sonokit.models import create_model
from sonokit.stages.student import make_student_task


def step_rate(task, opt, x, y, mixing, device, amp, steps):
    """Images/s of training steps on in-memory batches: mixing, forward under AMP, backward, AdamW step
    (fp16 through a GradScaler, as the training loop does)."""
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None

    def one():
        xb, yb = mixing(x.clone(), y)
        with autocast(device, amp):
            loss = task(xb, yb)["loss"]
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()

    one()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * x.shape[0] / (time.perf_counter() - t0)


def measure(device, size: int, batch: int, steps: int, teacher: str, student: str, kinds=("student only", "KD (teacher + student)")):
    """{kind: images/s} for a student-only step and a KD step (teacher forward + student step)."""
    amp = amp_dtype("auto", device)
    torch.manual_seed(0)
    np.random.seed(0)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 8, (batch,), device=device)
    mixing = BatchMixing(MixConfig(), num_classes=8)
    norm = ((0.5,) * 3, (0.25,) * 3)
    results = {}
    for name in kinds:
        s = create_model(student, 8, 1).to(device)
        t = create_model(teacher, 8, 3).to(device).eval() if name.startswith("KD") else None
        task = make_student_task(s, t, KDConfig(), *norm, device, soft_targets=True).to(device)
        task.train()
        opt = torch.optim.AdamW(s.parameters(), lr=1e-3)
        results[name] = step_rate(task, opt, x, y, mixing, device, amp, steps)
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--size", type=int, default=0, help="input size (default: 64 on CPU, 256 on GPU)")
    ap.add_argument("--batch", type=int, default=0, help="batch size (default: 8 on CPU, 64 on GPU)")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--teacher", default="efficientnet-b4")
    ap.add_argument("--student", default="nf_regnet_b1")
    a = ap.parse_args()
    device = resolve_device(a.device)
    gpu = device.type == "cuda"
    size = a.size or (256 if gpu else 64)
    batch = a.batch or (64 if gpu else 8)
    amp = amp_dtype("auto", device)
    results = measure(device, size, batch, a.steps, a.teacher, a.student)
    print(f"device={device} size={size} batch={batch} amp={amp} teacher={a.teacher} student={a.student}")
    for k, v in results.items():
        print(f"{k:>24}: {v:8.1f} img/s")
    print(f"KD step / student-only step throughput: {results['KD (teacher + student)'] / results['student only']:.2f}x")


if __name__ == "__main__":
    main()
