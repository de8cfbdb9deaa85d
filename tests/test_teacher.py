"""The teacher stage through its command: train_local.py --stages teacher --gpus 0."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import NO_WEIGHTS
from sonokit.engine import load_best

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "scripts" / "train_local.py"
TINY = ["--set", "data.image_size=32", "--set", "data.resize_size=40", "--set", "data.folds=2", "--set", "data.num_workers=0", "--set", "infer.tta=orig", *NO_WEIGHTS]


def train(*args, env=None):
    return subprocess.run([sys.executable, str(TRAIN), *args], capture_output=True, text=True, timeout=900, env=env)


def test_bad_data_exit_2_nothing_written(tiny_data, tmp_path):
    (tiny_data / "train" / "cat_1.png").write_bytes(b"")
    r = train("--data", str(tiny_data), "--stages", "teacher", "--gpus", "0", "--set", f"run.out_dir={tmp_path / 'runs'}", *TINY)
    assert r.returncode == 2
    assert "train/cat_1.png: empty file (0 bytes)" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists()


def test_unknown_config_key_exit_2(tiny_data, tmp_path):
    r = train("--data", str(tiny_data), "--gpus", "0", "--set", "teacher.train.epoch=1")
    assert r.returncode == 2 and "unknown config key 'teacher.train.epoch'" in r.stderr


def test_help_explains():
    r = train("--help")
    assert r.returncode == 0 and "--stages" in r.stdout and "--resume" in r.stdout and "--set" in r.stdout


@pytest.mark.slow
def test_teacher_stage_on_demo_data(demo_data, tmp_path):
    runs = tmp_path / "runs"
    r = train(
        "--data", str(demo_data), "--stages", "teacher", "--gpus", "0", "--name", "t",
        "--set", f"run.out_dir={runs}", "--set", "teacher.model.name=efficientnet-b0",
        "--set", "teacher.train.epochs=2", "--set", "teacher.train.batch_size=8", *TINY,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    run = runs / "t"
    assert (run / "config.yaml").is_file() and (run / "folds.csv").is_file()
    cv = json.loads((run / "teacher" / "cv.json").read_text())
    assert [f["fold"] for f in cv["folds"]] == [0, 1]
    assert cv["overall"]["n_images"] == 64
    oof = pd.read_csv(run / "teacher" / "oof.csv")
    assert len(oof) == 64 and set(oof["fold"]) == {0, 1}
    assert abs(oof.filter(like="prob_").sum(axis=1) - 1).max() < 1e-5
    # the CV figures are exactly what the out-of-fold predictions say
    probs = oof[[f"prob_{c}" for c in cv["classes"]]].to_numpy()
    truth = oof["label"].map({c: i for i, c in enumerate(cv["classes"])}).to_numpy()
    assert cv["overall"]["acc"] == pytest.approx((oof["pred"] == oof["label"]).mean())
    assert cv["overall"]["loss"] == pytest.approx(-np.log(probs[np.arange(64), truth]).mean(), rel=1e-4)
    for row in cv["folds"]:  # and each fold's best-epoch accuracy is that fold's share of them
        part = oof[oof["fold"] == row["fold"]]
        assert row["val_acc"] == pytest.approx((part["pred"] == part["label"]).mean())
    folds = pd.read_csv(run / "folds.csv")
    assert (oof.set_index("image_id")["fold"] == folds.set_index("image_id")["fold"].loc[oof["image_id"]].values).all()
    for k in (0, 1):
        ck = load_best(run / "teacher" / f"fold{k}" / "best.pt")
        assert ck["meta"]["model"] == "efficientnet-b0" and ck["meta"]["fold"] == k and ck["meta"]["num_classes"] == 8
    # --resume on a finished run trains nothing more and reports the same CV
    r2 = train(
        "--data", str(demo_data), "--stages", "teacher", "--gpus", "0", "--name", "t", "--resume",
        "--set", f"run.out_dir={runs}", "--set", "teacher.model.name=efficientnet-b0",
        "--set", "teacher.train.epochs=2", "--set", "teacher.train.batch_size=8", *TINY,
    )
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert json.loads((run / "teacher" / "cv.json").read_text()) == cv
