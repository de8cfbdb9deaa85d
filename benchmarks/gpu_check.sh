#!/usr/bin/env bash
# Every check that needs a GPU, in one run (under 8 minutes on one modern GPU), printing the figures.
#   bash benchmarks/gpu_check.sh            # from the repository root, with the kit installed
# 1. an fp16 AMP + GradScaler training step (loss finite, scaler scale printed, weights moved)
# 2. the demo pipeline with --gpus 1 at 256 px (short epochs), report table included
# 3. bench_kd, bench_train and bench_pipeline (4 workers) on the device
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
start=$(date +%s)
status=0
step() { echo; echo "=== $1 ($(( $(date +%s) - start )) s so far)"; }

step "GPU"
python - <<'EOF' || exit 1
import torch
assert torch.cuda.is_available(), "no CUDA device: run this on a GPU machine"
print(torch.cuda.get_device_name(0), "| torch", torch.__version__, "| CUDA", torch.version.cuda)
EOF

step "1. fp16 AMP + GradScaler training step"
python - <<'EOF' || status=1
import torch, torch.nn as nn
from timm.task import ClassificationTask
from sonokit.config import TrainConfig
from sonokit.data import create_loader
from sonokit.engine import fit
from sonokit.models import create_model
torch.manual_seed(0)
x = (torch.rand(64, 3, 64, 64) * 255).to(torch.uint8); y = torch.arange(64) % 4
ds = torch.utils.data.TensorDataset(x, y)
kw = dict(mean=(0.5,) * 3, std=(0.25,) * 3, num_workers=2, device="cuda")
model = create_model("nf_regnet_b1", 4, 1)
before = {k: v.clone() for k, v in model.state_dict().items()}
res = fit(ClassificationTask(model, criterion=nn.CrossEntropyLoss(), verbose=False), create_loader(ds, 16, True, **kw),
          create_loader(ds, 16, False, **kw), TrainConfig(epochs=2, amp="fp16", clip_mode="agc"), "/tmp/sonokit-gpu-amp", "cuda")
moved = sum(not torch.equal(before[k], v.cpu()) for k, v in model.state_dict().items())
assert all(h["train_loss"] == h["train_loss"] for h in res.history), "non-finite loss"
print(f"fp16 AMP + GradScaler: losses {[round(h['train_loss'], 4) for h in res.history]}, {moved} tensors moved, "
      f"{res.history[-1]['images_per_s']:.0f} img/s")
EOF

step "2. demo pipeline, --gpus 1, 256 px"
rm -rf /tmp/sonokit-gpu-demo && mkdir -p /tmp/sonokit-gpu-demo
(cd /tmp/sonokit-gpu-demo && SONOKIT_SUBMISSIONS=/tmp/sonokit-gpu-demo/subs timeout 300 python "$OLDPWD/scripts/train_local.py" --demo --gpus 1 \
  --set data.image_size=256 --set data.resize_size=288 --set teacher.train.epochs=3 --set student.train.epochs=3 \
  --set hrank.train.epochs=1 --set teacher.train.batch_size=32 --set student.train.batch_size=32 --set hrank.train.batch_size=32) \
  2>/tmp/sonokit-gpu-demo/stderr.txt | grep -v "epoch [0-9]*:" || { status=1; tail -30 /tmp/sonokit-gpu-demo/stderr.txt; }

step "3a. bench_kd (256 px, fp16)"
timeout 120 python benchmarks/bench_kd.py --device cuda || status=1
step "3b. bench_train (256 px)"
timeout 120 python benchmarks/bench_train.py --device cuda --workers 4 || status=1
step "3c. bench_pipeline (4 workers, 256 px)"
timeout 180 python benchmarks/bench_pipeline.py --device cuda --workers 4 || status=1

echo; echo "gpu_check finished in $(( $(date +%s) - start )) s, status $status"
exit $status
