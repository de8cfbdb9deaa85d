"""Offline runs: dependency floors and their run-time check, installs from an assets dataset's wheels,
ImageNet weights found offline (or a clear error), and the teacher kept in eval mode during KD."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from conftest import BLOCK_IMPORTS, make_tiny_data, site_with
from sonokit import deps
from sonokit.models import WeightsNotFound, create_model, find_imagenet_weights

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- versions
def test_version_floors_compare_like_pip():
    assert deps.older("1.0.9", "1.0.27") and deps.older("2.1.0+cu121", "2.3")
    assert not deps.older("1.0.27", "1.0.27") and not deps.older("2.14.1", "2.3")
    assert not deps.older("0.1.1-2209072238", "0.1.1")  # thop's metadata version
    assert not deps.older("anything", "")


def test_setup_cfg_floors_match_the_run_time_check():
    text = (ROOT / "setup.cfg").read_text()
    for dist in ("torch", "timm", "torch-pruning", "albumentations"):
        floor = deps.REQUIREMENTS[dist].floor
        assert f"{dist}>={floor}" in text, f"setup.cfg and sonokit.deps disagree on {dist}'s floor {floor}"


def test_check_names_package_found_and_needed(monkeypatch):
    monkeypatch.setitem(deps.REQUIREMENTS, "pytest", deps.Requirement("pytest", "pytest", "999.0", "a test"))
    monkeypatch.setitem(deps.REQUIREMENTS, "nope-pkg", deps.Requirement("nope-pkg", "nope_pkg_xyz", "1.0"))
    problems = deps.check(["torch", "pytest", "nope-pkg"])
    assert [str(p) for p in problems] == [
        f"pytest: version {pytest.__version__} found, >= 999.0 needed (needed for a test)",
        "nope-pkg: not installed, >= 1.0 needed",
    ]
    with pytest.raises(deps.MissingDependencies, match=r"pip install 'pytest>=999.0' 'nope-pkg>=1.0'"):
        deps.require(["pytest", "nope-pkg"])


def test_stage_needs():
    assert "thop" not in deps.stage_needs(["teacher"], ["efficientnet-b4"]) and "torch-pruning" not in deps.stage_needs(["teacher"])
    assert "efficientnet_pytorch" in deps.stage_needs(["teacher"], ["efficientnet-b4"])
    assert "efficientnet_pytorch" not in deps.stage_needs(["student"], ["resnet18", "nf_regnet_b1"])
    assert {"thop", "torch-pruning"} <= set(deps.stage_needs(["hrank"], ["nf_regnet_b1"], hrank_mode="prune"))
    assert "torch-pruning" not in deps.stage_needs(["hrank"], ["nf_regnet_b1"], hrank_mode="reinit")
    assert "thop" in deps.stage_needs(["infer", "flops"], ["nf_regnet_b1"])


def test_teacher_run_imports_neither_thop_nor_torch_pruning(tmp_path):
    """The teacher stage (and its notebook) must run where Kaggle's image lacks both."""
    code = ("import sys; from sonokit import stages as st; st.runner('teacher'); st.runner('student'); "
            "import sonokit.kernel_runtime, sonokit.models, sonokit.hrank; "
            "print(sorted(m for m in ('thop', 'torch_pruning') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]"


ENSURE = """
import sys
from sonokit import deps
assert [p.req.dist for p in deps.check(["thop", "torch-pruning", "torch"])] == ["thop", "torch-pruning"], deps.check(["thop"])
try:
    deps.ensure(["thop", "torch-pruning"], None)
except deps.MissingDependencies as e:
    print("NO WHEELS:", e)
print("INSTALLED:", deps.ensure(["thop", "torch-pruning", "torch"], sys.argv[1], target=sys.argv[2], quiet=True))
import thop, torch_pruning
print("FROM:", thop.__file__, torch_pruning.__file__)
"""


@pytest.mark.slow
def test_ensure_installs_blocked_packages_from_wheels(tmp_path, dep_wheels):
    site = site_with(tmp_path, BLOCK_IMPORTS.format(blocked=["thop", "torch_pruning"]))
    env = {**os.environ, "PYTHONPATH": str(site)}
    target = tmp_path / "deps"
    r = subprocess.run([sys.executable, "-c", ENSURE, str(dep_wheels), str(target)], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert "NO WHEELS: missing or too old:\n  thop: not installed" in r.stdout and deps.ASSETS_COMMAND in r.stdout
    assert "INSTALLED: ['thop-" in r.stdout and "torch_pruning-1.6" in r.stdout
    assert f"FROM: {target}/thop/__init__.py {target}/torch_pruning/__init__.py" in r.stdout


# ----------------------------------------------------------------------------- weights
def test_imagenet_weights_from_the_assets_folder_the_timm_way(tmp_path):
    torch.manual_seed(0)
    src = create_model("test_nfnet", 1000, 3, weights="none")
    (tmp_path / "weights").mkdir()
    torch.save(src.state_dict(), tmp_path / "weights" / "test_nfnet.pth")
    m = create_model("test_nfnet", 5, 1, weights="imagenet", assets=tmp_path)
    a, b = src.stem.conv1.weight, m.model.stem.conv1.weight
    assert b.shape[1] == 1 and torch.allclose(a.sum(1, keepdim=True), b)  # the stem summed over channels
    assert torch.equal(src.stages[0][0].conv1.weight, m.model.stages[0][0].conv1.weight)
    assert m.model.get_classifier().out_features == 5
    with pytest.raises(WeightsNotFound, match=r"no ImageNet weights for test_resnet in the assets.*student.model.weights=none"):
        create_model("test_resnet", 5, 1, weights="imagenet", assets=tmp_path, key="student.model.weights")


def test_imagenet_weights_from_the_torch_hub_cache(tmp_path, monkeypatch):
    """efficientnet_pytorch's own download lands in the torch hub cache; found there offline."""
    from efficientnet_pytorch.utils import url_map

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsNotFound, match="efficientnet-b0.*EfficientNet.from_pretrained"):
        find_imagenet_weights("efficientnet-b0")
    torch.manual_seed(1)
    src = create_model("efficientnet-b0", 1000, 3, weights="none")
    f = tmp_path / "torch" / "hub" / "checkpoints" / Path(url_map["efficientnet-b0"]).name
    f.parent.mkdir(parents=True)
    torch.save(src.state_dict(), f)
    assert find_imagenet_weights("efficientnet-b0") == f
    m = create_model("efficientnet-b0", 3, 3, weights="imagenet")
    assert torch.equal(m._blocks[3]._depthwise_conv.weight, src._blocks[3]._depthwise_conv.weight)


def test_a_real_run_without_weights_stops_clearly(tmp_path):
    data = make_tiny_data(tmp_path / "data")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch"), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_local.py"), "--data", str(data), "--stages", "teacher",
                        "--gpus", "0", "--set", f"run.out_dir={tmp_path / 'runs'}", "--set", "data.folds=2", "--set", "data.image_size=16",
                        "--set", "data.resize_size=20", "--set", "teacher.model.name=test_resnet"],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "error: no ImageNet weights for test_resnet found offline" in r.stderr
    assert "set teacher.model.weights=none to train from scratch on purpose" in r.stderr and "Traceback" not in r.stderr


def test_assets_dataset_not_attached_is_an_error(tmp_path, monkeypatch):
    from sonokit.paths import resolve_assets

    monkeypatch.setenv("SONOKIT_KAGGLE_ROOT", str(tmp_path / "kaggle"))
    (tmp_path / "kaggle" / "input").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="the assets dataset alice/sonokit-assets is not attached"):
        resolve_assets("alice/sonokit-assets")
    mounted = tmp_path / "kaggle" / "input" / "datasets" / "alice" / "sonokit-assets"
    mounted.mkdir(parents=True)
    assert resolve_assets("alice/sonokit-assets") == mounted
    assert resolve_assets("") is None


# ----------------------------------------------------------------------------- the teacher stays in eval mode
def test_teacher_batchnorm_untouched_by_a_kd_epoch(tmp_path, monkeypatch):
    """Whatever the installed timm's task.train() does (here: what timm < 1.0.31 did, the plain
    nn.Module.train that also trains the teacher), the teacher's BatchNorm statistics do not move
    and it runs in eval mode, while the student's statistics do move."""
    from timm.task import LogitDistillationTask

    from sonokit.config import KDConfig, TrainConfig
    from sonokit.data import create_loader
    from sonokit.engine import fit
    from sonokit.stages.student import make_student_task

    monkeypatch.setattr(LogitDistillationTask, "train", nn.Module.train)
    torch.manual_seed(0)
    teacher = create_model("test_resnet", 2, 3, weights="none").eval()
    student = create_model("test_resnet", 2, 1, weights="none")
    before = {k: v.clone() for k, v in teacher.state_dict().items() if "running" in k}
    s_before = {k: v.clone() for k, v in student.state_dict().items() if "running_mean" in k}
    modes = []
    teacher.register_forward_pre_hook(lambda m, i: modes.append(m.training))
    x = (torch.rand(24, 3, 16, 16) * 255).to(torch.uint8)
    y = torch.arange(24) % 2
    ds = torch.utils.data.TensorDataset(x, y)
    kw = dict(mean=(0.5,) * 3, std=(0.25,) * 3, num_workers=0)
    tr, va = create_loader(ds, 8, True, **kw), create_loader(ds, 8, False, **kw)
    task = make_student_task(student, teacher, KDConfig(), (0.5,) * 3, (0.25,) * 3, "cpu", soft_targets=False)
    fit(task, tr, va, TrainConfig(epochs=1, lr=1e-2), tmp_path, seed=0)
    assert modes and not any(modes)
    for k, v in before.items():
        assert torch.equal(teacher.state_dict()[k], v), k
    assert any(not torch.equal(student.state_dict()[k], v) for k, v in s_before.items())


FLOOR_KD = """
import sys, torch, timm
from sonokit.config import KDConfig, TrainConfig
from sonokit.data import create_loader
from sonokit.engine import fit
from sonokit.models import create_model
from sonokit.stages.student import make_student_task
assert timm.__version__ == sys.argv[2], timm.__file__
torch.manual_seed(0)
teacher = create_model("test_resnet", 2, 3, weights="none").eval()
student = create_model("test_nfnet", 2, 1, weights="none")
before = {k: v.clone() for k, v in teacher.state_dict().items() if "running" in k}
x = (torch.rand(16, 3, 16, 16) * 255).to(torch.uint8)
ds = torch.utils.data.TensorDataset(x, torch.arange(16) % 2)
kw = dict(mean=(0.5,) * 3, std=(0.25,) * 3, num_workers=0)
task = make_student_task(student, teacher, KDConfig(), (0.5,) * 3, (0.25,) * 3, "cpu", soft_targets=False)
res = fit(task, create_loader(ds, 8, True, **kw), create_loader(ds, 8, False, **kw), TrainConfig(epochs=2, clip_mode="agc"), sys.argv[1])
assert all(torch.equal(teacher.state_dict()[k], v) for k, v in before.items())
print("KD OK with timm", timm.__version__, "loss", res.history[-1]["train_loss"])
"""


@pytest.mark.slow
def test_kd_step_on_the_floor_version_of_timm(tmp_path):
    floor = deps.REQUIREMENTS["timm"].floor
    target = tmp_path / "timm-floor"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), f"timm=={floor}"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": str(target)}
    r = subprocess.run([sys.executable, "-c", FLOOR_KD, str(tmp_path / "run"), floor], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"KD OK with timm {floor}" in r.stdout
    # and the run-time check accepts it, while one release older is refused by name
    older = f"1.0.{int(floor.split('.')[-1]) - 1}"
    code = textwrap.dedent(f"""
        from sonokit import deps
        assert deps.check(["timm"]) == []
        print(deps.older("{older}", "{floor}"))""")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0 and r.stdout.strip() == "True", r.stderr[-2000:]
