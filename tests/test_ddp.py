"""DDP on the CPU (gloo): same weights as one process, no double-counted validation images, and a
dying rank stops the whole run quickly. Launched through train_local.py's torchrun launcher."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import NO_WEIGHTS, make_tiny_data
from sonokit.io import torch_load_safe

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "scripts" / "train_local.py"

# test_nfnet has no BatchNorm, so two processes with half batches compute exactly what one does
COMMON = ["--stages", "teacher", "--gpus", "0", "--folds", "0", "--set", "teacher.model.name=test_nfnet", "--set", "teacher.model.in_chans=3",
          "--set", "teacher.train.epochs=2", "--set", "teacher.train.batch_size=4", "--set", "data.image_size=32",
          "--set", "data.resize_size=36", "--set", "data.folds=2", "--set", "data.num_workers=0", "--set", "run.name=d", *NO_WEIGHTS]


def train(data, out, *extra, env=None, timeout=600):
    return subprocess.run([sys.executable, str(TRAIN), "--data", str(data), "--set", f"run.out_dir={out}", *COMMON, *extra],
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    data = make_tiny_data(tmp_path / "data", per_class=9, size=(40, 36))  # 18 images: an odd 9 in each validation fold
    one = train(data, tmp_path / "one")
    assert one.returncode == 0, one.stderr[-3000:]
    two = train(data, tmp_path / "two", "--cpu-procs", "2")
    assert two.returncode == 0, two.stderr[-3000:]
    a = torch_load_safe(tmp_path / "one" / "d" / "teacher" / "fold0" / "last.pt")
    b = torch_load_safe(tmp_path / "two" / "d" / "teacher" / "fold0" / "last.pt")
    assert a["state"]["epoch"] == b["state"]["epoch"] == 1
    for k, v in a["model"].items():
        # atol 1e-4 = lr / 10: AdamW normalises gradients, so float-rounding noise in a near-zero
        # gradient moves a weight by up to ~lr; a wrong split of the batch moves many by ~lr
        torch.testing.assert_close(b["model"][k], v, rtol=1e-4, atol=1e-4, msg=k)
    ha = [json.loads(x) for x in (tmp_path / "one" / "d" / "teacher" / "fold0" / "metrics.jsonl").read_text().splitlines()]
    hb = [json.loads(x) for x in (tmp_path / "two" / "d" / "teacher" / "fold0" / "metrics.jsonl").read_text().splitlines()]
    for x, y in zip(ha, hb):
        assert x["val_loss"] == pytest.approx(y["val_loss"], rel=1e-4)
        assert x["val_acc"] == y["val_acc"]
    # every validation image counted once: 9 out-of-fold rows, and the CV over exactly 9 images
    oof = pd.read_csv(tmp_path / "two" / "d" / "teacher" / "oof.csv")
    assert len(oof) == 9 and oof["image_id"].is_unique
    assert json.loads((tmp_path / "two" / "d" / "teacher" / "cv.json").read_text())["overall"]["n_images"] == 9


SLOW_PREPARE = """
import os, time
if os.environ.get("RANK") == "0":
    import sonokit.schema as schema
    _validate = schema.validate
    def _slow(*a, **k):
        time.sleep(12)  # data preparation 4x longer than the collective timeout below
        return _validate(*a, **k)
    schema.validate = _slow
"""


def site_env(tmp_path, code):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(code)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


@pytest.mark.slow
def test_preparation_longer_than_the_collective_timeout(tmp_path):
    """Rank 0 validates and caches for longer than the collective timeout; the run still trains."""
    data = make_tiny_data(tmp_path / "data", per_class=9, size=(40, 36))
    t0 = time.monotonic()
    r = train(data, tmp_path / "out", "--cpu-procs", "2", "--set", "run.collective_timeout_s=3", env=site_env(tmp_path, SLOW_PREPARE))
    assert r.returncode == 0, r.stderr[-3000:]
    assert time.monotonic() - t0 > 12
    assert "teacher: CV loss" in r.stdout
    assert (tmp_path / "out" / "d" / "teacher" / "fold0" / "best.pt").is_file()


#: rank 1's optimizer step: hangs (a stuck peer: only the collective timeout can end the run) or dies
PEER_FAULTS = {
    "hung": ("""
import os
if os.environ.get("RANK") == "1":
    import time, torch
    torch.optim.AdamW.step = lambda self, *a, **k: time.sleep(3600)
""", "so the whole run was stopped"),
    "dead": ("""
import os
if os.environ.get("RANK") == "1":
    import torch
    torch.optim.AdamW.step = lambda self, *a, **k: os._exit(3)
""", "error: DDP process rank 1 exited with code 3, so the whole run was stopped"),
}


@pytest.mark.slow
@pytest.mark.parametrize("fault", sorted(PEER_FAULTS))
def test_a_failing_peer_ends_the_run_quickly(tmp_path, fault):
    """A peer that dies, or hangs, during training ends the run within about a minute (here a 5 s collective timeout)."""
    code, message = PEER_FAULTS[fault]
    data = make_tiny_data(tmp_path / "data", per_class=9, size=(40, 36))
    t0 = time.monotonic()
    r = train(data, tmp_path / "out", "--cpu-procs", "2", "--set", "run.collective_timeout_s=5", env=site_env(tmp_path, code), timeout=300)
    elapsed = time.monotonic() - t0
    assert r.returncode != 0
    assert message in r.stderr
    assert elapsed < 60, f"took {elapsed:.0f} s"
