"""FLOPs verification (the competition's thop number and the true cost) and the sweep."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import timm
import torch

from sonokit.config import ConfigError
from sonokit.flops import competition_gflops, cost_report, count_params, thop_full_gflops, true_gflops
from sonokit.models import create_model
from sonokit.sweep import load_grid, model_family, parse_shard

ROOT = Path(__file__).resolve().parents[1]
VERIFY = ROOT / "scripts" / "verify_flops.py"
SWEEP = ROOT / "scripts" / "sweep.py"

# The source's Step 2 table: nf_regnet_b1, 1 channel, 8 classes (../shared/seed/NOTES.md)
SOURCE_TABLE = {112: 0.0088147, 224: 0.0091473, 256: 0.0092865, 284: 0.0094328, 384: 0.0100289, 512: 0.0110683, 1024: 0.0181953}


@pytest.fixture(scope="module")
def student():
    return create_model("nf_regnet_b1", 8, 1)


@pytest.mark.parametrize("size", sorted(SOURCE_TABLE))
def test_source_size_table_reproduced_exactly(student, size):
    assert competition_gflops(student, size, 1) == SOURCE_TABLE[size]


def test_raw_timm_model_and_dataparallel_give_the_same_number():
    raw = timm.create_model("nf_regnet_b1", in_chans=1, num_classes=8)
    assert competition_gflops(torch.nn.DataParallel(raw), 256, 1) == 0.0092865


def test_true_cost_beside_the_competition_number(student):
    r = cost_report(student, 256, 1, n_models=5, tta_views=2)
    assert r.competition_gflops == 0.0092865
    assert r.true_gflops == pytest.approx(1.5559, abs=2e-4)
    assert r.thop_full_gflops == pytest.approx(r.true_gflops, rel=2e-3)  # the cross-check agrees
    assert r.params == count_params(student) == 9_269_952
    assert r.thop_params < r.params  # thop misses the ScaledStdConv2d weights
    assert r.pipeline_gflops == pytest.approx(r.true_gflops * 10)


def test_plain_conv_models_agree():
    m = timm.create_model("test_resnet", num_classes=3)
    t = true_gflops(m, 64, 3)
    full, _ = thop_full_gflops(m, 64, 3)
    assert competition_gflops(m, 64, 3) == pytest.approx(t, rel=0.05)
    assert full == pytest.approx(t, rel=0.05)


def verify(*args):
    return subprocess.run([sys.executable, str(VERIFY), *args], capture_output=True, text=True, timeout=300)


def test_verify_flops_exit_codes(tmp_path):
    r = verify("--model", "nf_regnet_b1", "--size", "256", "--in-chans", "1", "--json", str(tmp_path / "f.json"))
    assert r.returncode == 0, r.stderr
    assert "0.0092865 GFLOPs" in r.stdout and "MATCH" in r.stdout and "true FLOPs" in r.stdout and "why they differ" in r.stdout
    d = json.loads((tmp_path / "f.json").read_text())
    assert d["competition_gflops"] == 0.0092865 and d["true_gflops"] > 1.5
    r = verify("--model", "nf_regnet_b1", "--size", "224")
    assert r.returncode == 1 and "differs from the target" in r.stderr
    r = verify("--model", "no_such_model")
    assert r.returncode == 2 and "unknown model" in r.stderr and "Traceback" not in r.stderr
    r = verify("--checkpoint", str(tmp_path / "missing.pt"))
    assert r.returncode == 2 and "not found" in r.stderr


def test_verify_flops_from_checkpoint(tmp_path):
    m = create_model("nf_regnet_b1", 8, 1)
    meta = {"model": "nf_regnet_b1", "num_classes": 8, "in_chans": 1, "image_size": 256}
    torch.save({"model": m.state_dict(), "meta": meta}, tmp_path / "best.pt")
    r = verify("--checkpoint", str(tmp_path / "best.pt"))
    assert r.returncode == 0, r.stderr


# ----------------------------------------------------------------------------- sweep
GRID = """
base:
  student.kd.enabled: false
  student.model.weights: none
  student.train.epochs: 1
  student.train.batch_size: 8
  data.folds: 2
  run.folds: "0"
  data.num_workers: 0
grid:
  student.model.name: [test_efficientnet, test_resnet, test_byobnet]
  data.image_size: [32, 48]
"""


def test_grid_expansion_shards_partition(tmp_path):
    g = tmp_path / "g.yaml"
    g.write_text(GRID + "  augment:\n    - {name: none, aug.rotate_p: 0}\n    - {name: rot}\n")
    full = load_grid(g)
    assert len(full.points) == 12
    assert all(p.overrides["data.resize_size"] == int(-(-p.overrides["data.image_size"] * 288 // 256)) for p in full.points)
    ids = [p.run_id for p in full.points]
    assert len(set(ids)) == 12
    shards = [load_grid(g, (i, 3)) for i in range(3)]
    got = [p.run_id for s in shards for p in s.points]
    assert sorted(got) == sorted(ids) and len(got) == len(set(got))
    assert all(shards[i].points for i in range(3))
    with pytest.raises(ConfigError, match="shard"):
        load_grid(g, (3, 3))
    assert parse_shard("1/4") == (1, 4)


def test_grid_pattern_and_bad_keys(tmp_path):
    g = tmp_path / "g.yaml"
    g.write_text("grid:\n  student.model.name: ['test_conv*']\n")
    names = [p.overrides["student.model.name"] for p in load_grid(g).points]
    assert names == sorted(timm.list_models("test_conv*")) and len(names) >= 2
    g.write_text("grid:\n  student.train.epoch: [1]\n")
    with pytest.raises(ConfigError, match="student.train.epoch"):
        load_grid(g)
    assert model_family("nf_regnet_b1") == "nf_regnet" and model_family("efficientnet-b4") == "efficientnet"


@pytest.mark.slow
def test_sweep_end_to_end_with_failure_and_resume(demo_data, tmp_path):
    g = tmp_path / "grid.yaml"
    g.write_text(GRID.replace("test_byobnet]", "test_byobnet, no_such_model]"))
    out = tmp_path / "sw"

    def sweep(*extra):
        return subprocess.run([sys.executable, str(SWEEP), "--grid", str(g), "--data", str(demo_data), "--out-dir", str(out),
                               "--name", "s", "--gpus", "0", *extra], capture_output=True, text=True, timeout=900)

    r = sweep("--shard", "0/2")
    assert r.returncode == 0, r.stderr[-3000:]
    d = out / "s"
    assert len(list((d / "results").glob("*.json"))) == 4  # half of the 8 points
    r = sweep()
    assert r.returncode == 0, r.stderr[-3000:]
    assert "4 run(s) now, 4 already finished" in r.stdout
    df = pd.read_csv(d / "results.csv")
    assert len(df) == 8
    ok = df[df["status"] == "ok"]
    assert len(ok) == 6 and set(ok["model"]) == {"test_efficientnet", "test_resnet", "test_byobnet"}
    assert ok["competition_gflops"].gt(0).all() and ok["true_gflops"].gt(0).all() and ok["params"].gt(0).all()
    assert ok["val_loss"].notna().all() and ok["val_acc"].between(0, 1).all() and ok["wall_s"].gt(0).all()
    failed = df[df["status"] == "failed"]
    assert len(failed) == 2 and failed["error"].str.contains("unknown model 'no_such_model'").all()
    md = (d / "results.md").read_text()
    assert md.count("\n| r0") == 8 and "GFLOPs (competition)" in md
    for png in ("gflops_vs_loss.png", "gflops_vs_acc.png"):
        assert (d / png).read_bytes()[:4] == b"\x89PNG"
    # resume: nothing is redone
    mtimes = {p.name: p.stat().st_mtime_ns for p in (d / "results").glob("*.json")}
    r = sweep()
    assert "0 run(s) now, 8 already finished" in r.stdout
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in (d / "results").glob("*.json")}


@pytest.mark.parametrize("name", ["step1_models", "step2_sizes", "step3_augment", "step5_mixing"])
def test_shipped_grids_load(name):
    path = ROOT / "src" / "sonokit" / "grids" / f"{name}.yaml"
    g = load_grid(path)
    assert g.points and all(p.run_id for p in g.points)
