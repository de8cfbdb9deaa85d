"""The Optuna sweep: grids and searches, workers sharing one study, resumption, pruning, the Pareto front."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import timm

from sonokit.config import ConfigError
from sonokit.sweep import load_grid, model_family, pareto_mask

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "scripts" / "sweep.py"

BASE = """
base:
  student.kd.enabled: false
  student.model.weights: none
  student.train.epochs: 1
  student.train.batch_size: 8
  student.train.max_batches: 2
  data.folds: 2
  run.folds: "0"
  data.num_workers: 0
"""
GRID = BASE + """
grid:
  student.model.name: [test_efficientnet, test_resnet]
  data.image_size: [32, 48]
"""


def sweep(grid_file, data, out, *extra, env=None, wait=True):
    cmd = [sys.executable, str(SWEEP), "--grid", str(grid_file), "--data", str(data), "--out-dir", str(out), "--name", "s",
           "--gpus", "0", *extra]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)


def study_of(out):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(out / "s" / "study.log"))))


def test_grid_expansion_and_checks(tmp_path):
    g = tmp_path / "g.yaml"
    g.write_text(GRID + "  augment:\n    - {name: none, aug.rotate_p: 0}\n    - {name: rot}\n")
    full = load_grid(g)
    assert len(full.points) == 8 and [p.index for p in full.points] == list(range(8))
    assert all(p.overrides["data.resize_size"] == int(-(-p.overrides["data.image_size"] * 288 // 256)) for p in full.points)
    assert full.points[1].label == "student=test_efficientnet, image_size=32, augment=rot"
    assert full.directions == ["minimize"] and not full.is_search
    g.write_text("grid:\n  student.model.name: ['test_conv*']\n")
    names = [p.overrides["student.model.name"] for p in load_grid(g).points]
    assert names == sorted(timm.list_models("test_conv*")) and len(names) >= 2
    for bad, msg in (("grid:\n  student.train.epoch: [1]\n", "student.train.epoch"),
                     ("objectives: [val_acc, flops]\ngrid:\n  data.folds: [2]\n", "objectives must"),
                     ("search:\n  space:\n    student.train.lr: {log_uniform: [1, 0.1]}\n", "low < high"),
                     ("grid:\n  data.folds: [2]\nsearch:\n  space: {}\n", "not both")):
        g.write_text(bad)
        with pytest.raises(ConfigError, match=msg):
            load_grid(g)
    assert model_family("nf_regnet_b1") == "nf_regnet" and model_family("efficientnet-b4") == "efficientnet"


def test_pareto_front_by_hand():
    cost = [1.0, 2.0, 3.0, 2.0, 0.5]
    acc = [0.80, 0.90, 0.85, 0.70, 0.60]
    assert pareto_mask(cost, acc, maximize=True) == [True, True, False, False, True]
    assert pareto_mask(cost, [0.3, 0.2, 0.25, 0.4, 0.5], maximize=False) == [True, True, False, False, True]


@pytest.mark.parametrize("name", ["step1_models", "step2_sizes", "step3_augment", "step5_mixing", "search_pareto"])
def test_shipped_grids_load(name):
    g = load_grid(ROOT / "src" / "sonokit" / "grids" / f"{name}.yaml")
    assert g.points or (g.is_search and g.n_trials > 0 and g.directions == ["maximize", "minimize"])


@pytest.mark.slow
def test_two_workers_share_a_grid_with_no_duplicate_and_no_gap(demo_data, tmp_path):
    g = tmp_path / "grid.yaml"
    g.write_text(GRID.replace("test_resnet]", "test_resnet, no_such_model]"))  # 6 points, 2 of them fail
    out = tmp_path / "sw"
    procs = [sweep(g, demo_data, out, wait=False) for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    study = study_of(out)
    points = [t.params["point"] for t in study.trials]
    assert sorted(points) == list(range(6))  # every point exactly once: no duplicate, no gap
    states = pd.Series([t.state.name for t in study.trials]).value_counts().to_dict()
    assert states == {"COMPLETE": 4, "FAIL": 2}
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert all("unknown model 'no_such_model'" in t.user_attrs["error"] for t in failed)
    workers = {t.user_attrs["worker"] for t in study.trials}
    assert 1 <= len(workers) <= 2
    df = pd.read_csv(out / "s" / "results.csv")
    assert len(df) == 6 and (df["status"] == "ok").sum() == 4 and df["pareto"].any()
    ok = df[df["status"] == "ok"]
    assert ok["competition_gflops"].gt(0).all() and ok["true_gflops"].gt(0).all() and ok["val_loss"].notna().all()
    for png in ("gflops_vs_loss.png", "gflops_vs_acc.png"):
        assert (out / "s" / png).read_bytes()[:4] == b"\x89PNG"
    # re-running continues the study: nothing is run again, the counts are printed
    r = sweep(g, demo_data, out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "study s: 6 trial(s): 2 failed, 4 ok; this command ran: none" in r.stdout
    assert "dashboard: optuna-dashboard" in r.stdout
    assert len(study_of(out).trials) == 6


@pytest.mark.slow
def test_a_killed_worker_resumes_and_a_pruned_trial_is_recorded(demo_data, tmp_path):
    """A worker killed mid-trial leaves a RUNNING trial; the next start marks it failed, queues its point again
    and finishes the grid. A ThresholdPruner prunes every trial whose first validation loss is above 0.01."""
    g = tmp_path / "grid.yaml"
    g.write_text(GRID.replace("student.train.epochs: 1", "student.train.epochs: 2").replace("max_batches: 2", "max_batches: 3"))
    out = tmp_path / "sw"
    p = sweep(g, demo_data, out, wait=False)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # wait for the first trial to be under way, then kill the worker
        time.sleep(0.5)
        if (out / "s" / "study.log").is_file():
            running = [t for t in study_of(out).trials if t.state.name == "RUNNING" and "label" in t.user_attrs]
            completed = [t for t in study_of(out).trials if t.state.name == "COMPLETE"]
            if running and completed:
                break
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=60)
    killed = [t.number for t in study_of(out).trials if t.state.name == "RUNNING"]
    assert len(killed) == 1
    r = sweep(g, demo_data, out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "left running by a worker that died: queued again" in r.stderr
    study = study_of(out)
    dead = study.trials[killed[0]]
    assert dead.state.name == "FAIL" and "died during the trial" in dead.user_attrs["error"]
    done = [t.params["point"] for t in study.trials if t.state.name == "COMPLETE"]
    assert sorted(done) == list(range(4))  # every point completed exactly once, the killed one included
    # pruning: the same grid with a pruner that stops everything after the first epoch
    g2 = tmp_path / "prune.yaml"
    g2.write_text(g.read_text().replace("grid:", "pruner: {threshold: {upper: 0.01}}\ngrid:"))
    r = sweep(g2, demo_data, tmp_path / "pr")
    assert r.returncode == 0, r.stderr[-3000:]
    study = study_of(tmp_path / "pr")
    assert {t.state.name for t in study.trials} == {"PRUNED"}
    t = study.trials[0]
    assert t.user_attrs["status"] == "pruned" and list(t.intermediate_values) == [0]  # stopped after its first epoch
    assert "4 pruned" in r.stdout


@pytest.mark.slow
def test_a_multi_objective_search_yields_a_front(demo_data, tmp_path):
    g = tmp_path / "search.yaml"
    g.write_text(BASE + """
objectives: [val_acc, true_gflops]
search:
  n_trials: 4
  sampler: nsga2
  space:
    student.model.name: {choice: [test_efficientnet, test_resnet, test_byobnet]}
    data.image_size: {choice: [32, 48]}
    student.train.lr: {log_uniform: [1.0e-4, 1.0e-2]}
    augment:
      choice:
        - {name: none, aug.rotate_p: 0, aug.fancy_pca_p: 0}
        - {name: default}
""")
    r = sweep(g, demo_data, tmp_path / "sw")
    assert r.returncode == 0, r.stderr[-3000:]
    study = study_of(tmp_path / "sw")
    assert len(study.trials) == 4 and all(t.state.name == "COMPLETE" for t in study.trials)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    front = study.best_trials
    assert front and all(len(t.values) == 2 for t in front)
    df = pd.read_csv(tmp_path / "sw" / "s" / "results.csv")
    assert sorted(df[df["pareto"]]["trial"]) == sorted(t.number for t in front)  # the plotted front is Optuna's
    assert "Pareto front (accuracy against GFLOPs)" in r.stdout
    assert set(study.trials[0].params) == {"student.model.name", "data.image_size", "student.train.lr", "augment"}
