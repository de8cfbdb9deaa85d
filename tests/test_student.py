"""Student stage: the KD loss, a frozen teacher, CutMix/MixUp frequencies, fold leakage, confusion files."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

from conftest import NO_WEIGHTS
from sonokit.config import KDConfig, MixConfig
from sonokit.mixing import BatchMixing, create_mixing
from sonokit.report import save_confusion
from sonokit.stages.student import make_student_task

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "scripts" / "train_local.py"


class Fixed(nn.Module):
    """Logits = x.mean over pixels per channel @ W: differentiable, deterministic."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(torch.as_tensor(w, dtype=torch.float32))

    def forward(self, x):
        return x.mean((2, 3)) @ self.w


def task_for(student, teacher, temperature, w_task):
    kd = KDConfig(temperature=temperature, w_task=w_task)
    return make_student_task(student, teacher, kd, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3), "cpu", soft_targets=True)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_kd_loss_matches_hand_computation(T):
    torch.manual_seed(0)
    student = Fixed(torch.randn(3, 4))
    teacher = Fixed(torch.randn(3, 4) * 3)
    x = torch.randn(5, 3, 6, 6)
    soft = torch.softmax(torch.randn(5, 4), 1)  # mixed-label soft targets
    w = 0.5
    task = task_for(student, teacher, T, w)
    out = task(x, soft)
    s, t = student(x), teacher(x)
    ce = -(soft * torch.log_softmax(s, 1)).sum(1).mean()
    p_t = torch.softmax(t / T, 1)
    kl = (p_t * (torch.log(p_t) - torch.log_softmax(s / T, 1))).sum(1).mean()
    expected = w * ce + (1 - w) * T**2 * kl
    torch.testing.assert_close(out["loss"], expected)
    torch.testing.assert_close(out["output"], s)


def test_teacher_gets_no_gradient_and_sees_the_same_batch():
    torch.manual_seed(0)
    student, teacher = Fixed(torch.randn(3, 4)), Fixed(torch.randn(3, 4))
    seen = []
    teacher.register_forward_hook(lambda m, inp, out: seen.append(inp[0].clone()))
    task = task_for(student, teacher, 4.0, 0.5)
    task.train()
    assert not teacher.training  # the teacher stays in eval mode
    x = torch.randn(4, 3, 6, 6)
    task(x, torch.softmax(torch.randn(4, 4), 1))["loss"].backward()
    assert teacher.w.grad is None
    assert student.w.grad is not None and student.w.grad.abs().sum() > 0
    torch.testing.assert_close(seen[0], x)  # not re-normalised


def _kind(before: torch.Tensor, after: torch.Tensor) -> str:
    """none / cutmix (each image holds only its own and its partner's values) / mixup."""
    if torch.equal(before, after):
        return "none"
    a0, partner = before[0, 0, 0, 0], before[-1, 0, 0, 0]
    vals = set(after[0].unique().tolist())
    return "cutmix" if vals <= {a0.item(), partner.item()} else "mixup"


@pytest.mark.parametrize("p", [(0.25, 0.25), (0.5, 0.5)])
def test_mixing_frequencies(p):
    np.random.seed(0)
    cutmix_p, mixup_p = p
    mix = BatchMixing(MixConfig(cutmix_p=cutmix_p, mixup_p=mixup_p), num_classes=3)
    counts = {"none": 0, "cutmix": 0, "mixup": 0}
    n = 4000
    for _ in range(n):
        x = torch.stack([torch.full((1, 32, 32), 1.0), torch.full((1, 32, 32), 5.0)])
        before = x.clone()
        _, y = mix(x, torch.tensor([0, 2]))
        counts[_kind(before, x)] += 1
        assert torch.allclose(y.sum(1), torch.ones(2))
    expected = {"cutmix": cutmix_p, "mixup": mixup_p, "none": 1 - cutmix_p - mixup_p}
    for k, v in expected.items():
        assert abs(counts[k] / n - v) < 0.035, (counts, expected)


def test_odd_batch_does_not_crash():
    np.random.seed(1)
    mix = BatchMixing(MixConfig(cutmix_p=0.5, mixup_p=0.5), num_classes=4)
    for _ in range(20):
        x, y = mix(torch.randn(5, 3, 16, 16), torch.tensor([0, 1, 2, 3, 0]))
        assert x.shape == (5, 3, 16, 16) and y.shape == (5, 4)


def test_mixing_config_validated():
    with pytest.raises(ValueError, match="sum to <= 1"):
        BatchMixing(MixConfig(cutmix_p=0.7, mixup_p=0.5), 3)
    assert create_mixing(MixConfig(cutmix_p=0, mixup_p=0), 3) is None


def test_confusion_files_on_known_predictions(tmp_path):
    classes = ["a", "b", "c"]
    y_true = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    y_pred = [0, 0, 1, 1, 2, 2, 2, 2, 0]
    cm = save_confusion(y_true, y_pred, classes, tmp_path, title="t")
    expected = np.array([[2, 1, 0], [0, 1, 1], [1, 0, 3]])
    assert (cm == expected).all()
    assert (np.load(tmp_path / "confusion.npy") == expected).all()
    df = pd.read_csv(tmp_path / "confusion.csv", index_col=0)
    assert list(df.columns) == classes and list(df.index) == classes
    assert df.loc["c", "a"] == 1 and df.loc["a", "b"] == 1  # rows truth, columns prediction
    from PIL import Image

    img = Image.open(tmp_path / "confusion.png")
    assert img.size[0] >= 500 and img.size[1] >= 400
    # larger class counts get a larger figure
    many = [f"class_{i}" for i in range(12)]
    save_confusion(list(range(12)), list(range(12)), many, tmp_path / "m")
    assert Image.open(tmp_path / "m" / "confusion.png").size[0] > img.size[0]


def run_train(*args):
    return subprocess.run([sys.executable, str(TRAIN), *args], capture_output=True, text=True, timeout=900)


TINY = ["--set", "data.image_size=32", "--set", "data.resize_size=40", "--set", "data.folds=2", "--set", "data.num_workers=0",
        "--set", "teacher.model.name=efficientnet-b0", "--set", "teacher.train.epochs=1", "--set", "teacher.train.batch_size=8",
        "--set", "student.train.epochs=2", "--set", "student.train.batch_size=7", "--set", "infer.tta=orig", *NO_WEIGHTS]


@pytest.mark.slow
def test_teacher_student_pipeline_and_no_leakage(demo_data, tmp_path):
    runs = tmp_path / "runs"
    r = run_train("--data", str(demo_data), "--stages", "teacher,student", "--gpus", "0", "--name", "s",
                  "--set", f"run.out_dir={runs}", *TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    run = runs / "s"
    cv = json.loads((run / "student" / "cv.json").read_text())
    assert cv["kd"] is True and cv["overall"]["n_images"] == 64
    for f in ("confusion.npy", "confusion.csv", "confusion.png", "oof.csv"):
        assert (run / "student" / f).is_file()
    cm = np.load(run / "student" / "confusion.npy")
    assert cm.shape == (8, 8) and cm.sum() == 64
    # no leakage: each fold's teacher was trained exactly on the images outside that fold
    from sonokit.engine import load_best

    folds = pd.read_csv(run / "folds.csv")
    for k in (0, 1):
        meta = load_best(run / "teacher" / f"fold{k}" / "best.pt")["meta"]
        outside = sorted(folds.loc[folds["fold"] != k, "image_id"])
        assert meta["train_ids_sha256"] == hashlib.sha256("\n".join(outside).encode()).hexdigest()
        smeta = load_best(run / "student" / f"fold{k}" / "best.pt")["meta"]
        assert smeta["model"] == "nf_regnet_b1" and smeta["in_chans"] == 1 and smeta["kd"] is True
    # a student run whose folds differ from the teacher's is refused, with a readable error
    r = run_train("--data", str(demo_data), "--stages", "student", "--gpus", "0", "--name", "s",
                  "--set", f"run.out_dir={runs}", "--set", "data.seed=7", *TINY)
    assert r.returncode == 2 and "may be in the student's validation set" in r.stderr and "Traceback" not in r.stderr
    # --kd off trains the same student without a teacher
    r = run_train("--data", str(demo_data), "--stages", "student", "--gpus", "0", "--name", "nokd", "--kd", "off",
                  "--set", f"run.out_dir={runs}", *TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((runs / "nokd" / "student" / "cv.json").read_text())["kd"] is False
    assert not (runs / "nokd" / "teacher").exists()
