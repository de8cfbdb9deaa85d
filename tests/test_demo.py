"""README's main command: train_local.py --demo (shortened epochs here; the full demo is timed in the notes)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_runs_the_whole_pipeline(tmp_path):
    env = {**os.environ, "SONOKIT_SUBMISSIONS": str(tmp_path / "subs")}
    fast = ["--set", "teacher.train.epochs=1", "--set", "student.train.epochs=1", "--set", "hrank.train.epochs=1"]
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_local.py"), "--demo", *fast], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "runs" / "demo"
    for stage in ("teacher:", "student:", "hrank (reinit", "infer:", "flops:", "package:", "where everything is:"):
        assert stage in r.stdout
    for f in ("submission.csv", "flops.json", "student/confusion.png", "hrank/fold0/ranks_heatmap.png", "config.yaml", "folds.csv"):
        assert (run / f).is_file(), f
    sample = pd.read_csv(tmp_path / "demo_data" / "sample_submission.csv")
    sub = pd.read_csv(run / "submission.csv")
    assert sub["image_id"].tolist() == sample["image_id"].tolist()
    packaged = sorted((tmp_path / "subs").glob("*_demo.csv"))
    assert len(packaged) == 1 and packaged[0].read_bytes() == (run / "submission.csv").read_bytes()
    man = json.loads(packaged[0].with_suffix(".json").read_text())
    assert man["competition"] == "sonokit-demo" and set(man["cv"]) == {"teacher", "student", "hrank"}
    assert man["flops"]["competition_gflops"] > 0 and len(man["members"]) == 2
    # a second demo reuses the data and the cache, and resumes every finished stage
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_local.py"), "--demo", "--resume", *fast], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "making the demo data" not in r.stderr
    assert len(list((tmp_path / "subs").glob("*_demo*.csv"))) == 2  # packaged again, nothing overwritten
