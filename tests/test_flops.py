"""FLOPs verification: the competition's thop number and the true cost."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from sonokit.flops import competition_gflops, cost_report, count_params, thop_full_gflops, true_gflops
from sonokit.models import create_model

ROOT = Path(__file__).resolve().parents[1]
VERIFY = ROOT / "scripts" / "verify_flops.py"

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


def verify(*args, in_process: bool = True):
    """Run scripts/verify_flops.py: in this process (its main(), exit code and printed text), or as a command."""
    if not in_process:
        return subprocess.run([sys.executable, str(VERIFY), *args], capture_output=True, text=True, timeout=300)
    import contextlib
    import io
    import types

    sys.path.insert(0, str(VERIFY.parent))
    try:
        import verify_flops
    finally:
        sys.path.pop(0)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = verify_flops.main(list(args))
        except SystemExit as e:
            rc = e.code
    return types.SimpleNamespace(returncode=rc, stdout=out.getvalue(), stderr=err.getvalue())


def test_verify_flops_exit_codes(tmp_path):
    r = verify("--model", "nf_regnet_b1", "--size", "256", "--in-chans", "1", "--json", str(tmp_path / "f.json"), in_process=False)
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
