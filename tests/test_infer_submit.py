"""Inference (TTA, soft voting), submission validation, packaging and the real kaggle CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
from kaggle_fake import FakeKaggle, cli_env

from conftest import NO_WEIGHTS, NO_WEIGHTS_OVERRIDES, make_tiny_data
from sonokit.config import load_config, save_config
from sonokit.models import create_model
from sonokit.schema import load_schema, validate
from sonokit.stages.common import make_context
from sonokit.stages.infer import predict_views, soft_vote
from sonokit.submission import (
    SubmissionError,
    build_submission,
    copy_no_overwrite,
    package,
    require_valid_submission,
    sha256_file,
)

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "scripts" / "package_submission.py"
TRAIN = ROOT / "scripts" / "train_local.py"


def tiny_cfg(data, tmp_path, *more):
    return load_config(overrides=[f"data.root={data}", f"run.out_dir={tmp_path / 'runs'}", "run.name=r", "data.folds=2",
                                  "data.image_size=16", "data.resize_size=20", "data.num_workers=0", "run.device=cpu", *NO_WEIGHTS_OVERRIDES, *more])


class Constant(nn.Module):
    def __init__(self):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor([1.0, -2.0]))

    def forward(self, x):
        return self.logits.expand(x.shape[0], 2)


def test_tta_leaves_an_input_blind_model_unchanged(tiny_data, tmp_path):
    ctx = make_context(tiny_cfg(tiny_data, tmp_path), progress=False)
    meta = {"image_size": 16, "mean": list(ctx.prep.mean), "std": list(ctx.prep.std)}
    one = predict_views(Constant(), meta, ctx, ["orig"])
    many = predict_views(Constant(), meta, ctx, ["orig", "fancypca", "hflip", "vflip"])
    expected = torch.softmax(torch.tensor([1.0, -2.0]), 0).numpy()
    np.testing.assert_allclose(one, np.tile(expected, (3, 1)), rtol=1e-6)
    np.testing.assert_allclose(many, one, rtol=1e-6)


class LeftRight(nn.Module):
    """Logits (m, -m), m = mean of the left half minus the right half: a horizontal flip negates m."""

    def forward(self, x):
        w = x.shape[-1] // 2
        m = (x[..., :w].mean((1, 2, 3)) - x[..., w:].mean((1, 2, 3))) * 4
        return torch.stack([m, -m], 1)


def test_tta_hflip_vote_has_a_known_answer(tiny_data, tmp_path):
    ctx = make_context(tiny_cfg(tiny_data, tmp_path), progress=False)
    meta = {"image_size": 16, "mean": list(ctx.prep.mean), "std": list(ctx.prep.std)}
    a, b = predict_views(LeftRight(), meta, ctx, ["orig"]), predict_views(LeftRight(), meta, ctx, ["hflip"])
    np.testing.assert_allclose(b, a[:, ::-1], rtol=1e-5)  # the flip swapped the classes, image by image
    assert np.abs(a[:, 0] - 0.5).max() > 0.05  # the images are not symmetric: the views really differ
    np.testing.assert_allclose(predict_views(LeftRight(), meta, ctx, ["orig", "hflip"]), 0.5, atol=1e-6)  # softmax(m,-m)+softmax(-m,m)
    with pytest.raises(ValueError, match="unknown TTA view 'rot90'"):
        predict_views(LeftRight(), meta, ctx, ["rot90"])


def test_soft_vote_can_overrule_the_most_confident_member():
    confident_wrong = np.array([[0.9, 0.1]])
    mildly_right = np.array([[0.3, 0.7]])
    vote = soft_vote([confident_wrong, mildly_right, mildly_right])
    np.testing.assert_allclose(vote, [[0.5, 0.5]])  # (0.9 + 0.3 + 0.3) / 3: a tie, by hand
    assert soft_vote([confident_wrong, mildly_right, mildly_right], [1, 1.5, 1.5]).argmax() == 1  # weights tip it right
    assert soft_vote([confident_wrong, mildly_right, mildly_right], [3, 1, 1]).argmax() == 0  # or wrong
    np.testing.assert_allclose(soft_vote([confident_wrong, mildly_right], [0, 1]), mildly_right)  # weight 0 = not a member
    for bad in ([1], [-1, 2], [0, 0]):
        with pytest.raises(ValueError):
            soft_vote([confident_wrong, mildly_right], bad)


# ----------------------------------------------------------------------------- validation
def write(path, header, rows):
    pd.DataFrame(rows, columns=header).to_csv(path, index=False)
    return path


@pytest.fixture
def sample(tmp_path):
    return write(tmp_path / "sample.csv", ["image_id", "label"], [("a", "cat"), ("b", "cat"), ("c", "cat")])


CASES = {
    "header": (["image_id", "class"], [("a", "cat"), ("b", "dog"), ("c", "cat")], "header ['image_id', 'class'] differs"),
    "nan": (["image_id", "label"], [("a", "cat"), ("b", None), ("c", "cat")], "1 row(s) with an empty/NaN id or label (e.g. ['b'])"),
    "missing": (["image_id", "label"], [("a", "cat"), ("b", "dog")], "1 id(s) of sample_submission missing (e.g. ['c'])"),
    "extra": (["image_id", "label"], [("a", "cat"), ("b", "dog"), ("c", "cat"), ("z", "cat")], "1 id(s) not in sample_submission (e.g. ['z'])"),
    "order": (["image_id", "label"], [("b", "cat"), ("a", "dog"), ("c", "cat")], "ids are not in sample_submission's order"),
    "dupes": (["image_id", "label"], [("a", "cat"), ("a", "dog"), ("b", "cat"), ("c", "cat")], "duplicate ids: ['a']"),
    "label": (["image_id", "label"], [("a", "cat"), ("b", "bird"), ("c", "cat")], "label(s) not in the class list: ['bird']"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_validation_failure(tmp_path, sample, case):
    header, rows, message = CASES[case]
    sub = write(tmp_path / "sub.csv", header, rows)
    with pytest.raises(SubmissionError) as e:
        require_valid_submission(sub, sample, ["cat", "dog"], load_schema())
    assert any(message in p for p in e.value.problems), e.value.problems


def test_valid_submission_and_index_labels(tmp_path, sample):
    schema = load_schema()
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    df = build_submission(["a", "b", "c"], probs, ["cat", "dog"], schema)
    df.to_csv(tmp_path / "sub.csv", index=False)
    require_valid_submission(tmp_path / "sub.csv", sample, ["cat", "dog"], schema)
    assert df["label"].tolist() == ["cat", "dog", "cat"]
    schema.submission_label = "index"
    df = build_submission(["a", "b", "c"], probs, ["cat", "dog"], schema)
    assert df["label"].tolist() == ["0", "1", "0"]
    df.to_csv(tmp_path / "sub2.csv", index=False)
    write(tmp_path / "sample2.csv", ["image_id", "label"], [("a", 0), ("b", 0), ("c", 0)])
    require_valid_submission(tmp_path / "sub2.csv", tmp_path / "sample2.csv", ["cat", "dog"], schema)


def test_integer_labels_index_mode_writes_the_label_value(tmp_path):
    """12 classes labelled 0..11: sorted numerically, and class k is written as k (not its string-sort position)."""
    data = make_tiny_data(tmp_path / "d", classes=tuple(str(i) for i in range(12)), per_class=2, size=(8, 8))
    schema = load_schema()
    schema.submission_label = "index"
    _, index = validate(data, schema, n_folds=2)
    assert index.classes[:4] == ["0", "1", "2", "3"] and index.classes[-1] == "11"
    probs = np.eye(12)[[2, 10, 11]]
    ids = index.test_ids
    df = build_submission(ids, probs, index.classes, schema)
    assert df["label"].tolist() == ["2", "10", "11"]
    df.to_csv(tmp_path / "sub.csv", index=False)
    require_valid_submission(tmp_path / "sub.csv", data / "sample_submission.csv", index.classes, schema)
    write(tmp_path / "bad.csv", ["image_id", "label"], [(ids[0], "2"), (ids[1], "12"), (ids[2], "11")])
    with pytest.raises(SubmissionError, match=r"label\(s\) not in the class list: \['12'\]"):
        require_valid_submission(tmp_path / "bad.csv", data / "sample_submission.csv", index.classes, schema)


def test_three_column_submission_keeps_sample_values(tmp_path):
    schema = load_schema()
    schema.submission_columns = ["image_id", "usage", "label"]
    sample = write(tmp_path / "sample.csv", ["image_id", "usage", "label"], [("a", "Public", "cat"), ("b", "Private", "cat"), ("c", "", "cat")])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    df = build_submission(["a", "b", "c"], probs, ["cat", "dog"], schema, sample=sample)
    assert list(df.columns) == ["image_id", "usage", "label"]
    assert df["usage"].tolist() == ["Public", "Private", ""] and df["label"].tolist() == ["cat", "dog", "cat"]
    df.to_csv(tmp_path / "sub.csv", index=False)
    require_valid_submission(tmp_path / "sub.csv", sample, ["cat", "dog"], schema)
    df.assign(usage=["Public", "Public", ""]).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(SubmissionError, match="column 'usage' differs from sample_submission's in 1 row"):
        require_valid_submission(tmp_path / "bad.csv", sample, ["cat", "dog"], schema)
    with pytest.raises(ValueError, match="come from sample_submission"):
        build_submission(["a"], probs[:1], ["cat", "dog"], schema)


def test_never_overwrite(tmp_path):
    csv = write(tmp_path / "s.csv", ["image_id", "label"], [("a", "cat")])
    out = tmp_path / "subs"
    now = datetime(2026, 11, 28, 12, 0, 0, tzinfo=timezone.utc)
    d1, m1 = package(csv, "run", {"x": 1}, out, now=now)
    before = d1.read_bytes()
    csv.write_text("image_id,label\na,dog\n")
    d2, m2 = package(csv, "run", {"x": 2}, out, now=now)
    assert d1.name == "20261128T120000Z_run.csv" and d2.name == "20261128T120000Z_run-2.csv"
    assert d1.read_bytes() == before and d2.read_text().endswith("a,dog\n")
    assert json.loads(m1.read_text())["x"] == 1 and json.loads(m2.read_text())["csv_sha256"] == sha256_file(d2)
    with pytest.raises(FileExistsError):
        copy_no_overwrite(csv, d1)
    assert d1.read_bytes() == before


# ----------------------------------------------------------------------------- packaging + kaggle CLI
@pytest.fixture
def run_dir(tiny_data, tmp_path):
    """A run directory as the infer stage leaves it (one member checkpoint, a valid submission)."""
    cfg = tiny_cfg(tiny_data, tmp_path, "run.competition=fake-comp")
    run = tmp_path / "runs" / "r"
    (run / "infer").mkdir(parents=True)
    (run / "student").mkdir()
    save_config(cfg, run)
    model = create_model("nf_regnet_b1", 2, 1)
    ck = run / "student" / "fold0" / "best.pt"
    ck.parent.mkdir()
    torch.save({"model": model.state_dict(), "meta": {"model": "nf_regnet_b1", "num_classes": 2, "in_chans": 1, "image_size": 256,
                                                     "classes": ["cat", "dog"]}}, ck)
    (run / "student" / "cv.json").write_text(json.dumps({"overall": {"loss": 0.5, "acc": 0.75, "n_images": 10}}))
    members = {"members": [{"path": str(ck), "sha256": sha256_file(ck), "model": "nf_regnet_b1"}], "tta_views": ["orig", "fancypca"],
               "weights": None}
    (run / "infer" / "members.json").write_text(json.dumps(members))
    write(run / "submission.csv", ["image_id", "label"], [("t0", "cat"), ("t1", "dog"), ("t2", "cat")])
    # the flops stage's output, so packaging need not count FLOPs (test_package_manifest_and_command removes it)
    (run / "flops.json").write_text(json.dumps({"competition_gflops": 0.0092865, "true_gflops": 1.5559, "pipeline_gflops": 3.1118}))
    return run


def package_cli(run, out, *args, env=None):
    return subprocess.run([sys.executable, str(PACKAGE), str(run), "--out", str(out), *args], capture_output=True, text=True,
                          timeout=300, env=env)


def test_package_manifest_and_command(run_dir, tmp_path):
    (run_dir / "flops.json").unlink()  # packaging counts them itself: the members' FLOPs
    out = tmp_path / "subs"
    r = package_cli(run_dir, out, "--message", "first try")
    assert r.returncode == 0, r.stderr
    assert "kaggle competitions submit -c fake-comp -f" in r.stdout and "-m 'first try'" in r.stdout
    csvs = sorted(out.glob("*.csv"))
    assert len(csvs) == 1 and csvs[0].name.endswith("_r.csv")
    man = json.loads(csvs[0].with_suffix(".json").read_text())
    assert man["cv"]["student"]["acc"] == 0.75 and man["tta_views"] == ["orig", "fancypca"]
    assert man["flops"]["competition_gflops"] > 0 and man["flops"]["true_gflops"] > 1.0
    assert man["flops"]["pipeline_gflops"] == pytest.approx(man["flops"]["true_gflops"] * 2)
    assert man["members"][0]["sha256"] == sha256_file(man["members"][0]["path"])
    assert man["csv_sha256"] == sha256_file(csvs[0]) and len(man["config_hash"]) == 16 and man["git_commit"]
    r = package_cli(run_dir, out)
    assert r.returncode == 0 and len(list(out.glob("*.csv"))) == 2  # a second package, the first untouched


def test_package_refuses_invalid_submission(run_dir, tmp_path):
    write(run_dir / "submission.csv", ["image_id", "label"], [("t0", "cat"), ("t1", "bird")])
    r = package_cli(run_dir, tmp_path / "subs")
    assert r.returncode == 2
    assert "1 id(s) of sample_submission missing (e.g. ['t2'])" in r.stderr and "label(s) not in the class list: ['bird']" in r.stderr
    assert not (tmp_path / "subs").exists()


def test_package_refuses_changed_member(run_dir, tmp_path):
    ck = run_dir / "student" / "fold0" / "best.pt"
    ck.write_bytes(ck.read_bytes() + b"x")
    r = package_cli(run_dir, tmp_path / "subs")
    assert r.returncode == 2 and "changed since it predicted this submission" in r.stderr


@pytest.mark.parametrize(
    "mode,credentials,rc,text",
    [
        ("ok", True, 0, "submitted: ref 4242: Successfully submitted to fake-comp"),
        ("http400", True, 1, "(HTTP 400): You must accept this competition's rules"),
        ("error_exit0", True, 1, "failed: Submission error: file could not be parsed"),
        ("ok", False, 1, "no Kaggle credentials"),
    ],
)
def test_submit_through_the_kaggle_api(run_dir, tmp_path, mode, credentials, rc, text):
    out = tmp_path / "subs"
    with FakeKaggle(mode) as fk:
        env = cli_env(tmp_path, fk.endpoint, credentials=credentials)
        r = package_cli(run_dir, out, "--submit", "-m", "via fake", env=env)
    assert r.returncode == rc, r.stdout + r.stderr
    assert text in r.stdout + r.stderr
    csv = next(out.glob("*.csv"))
    man = json.loads(csv.with_suffix(".json").read_text())
    if mode == "ok" and credentials:
        start = fk.calls("StartSubmissionUpload")[0]
        assert start["competitionName"] == "fake-comp" and start["fileName"] == csv.name
        assert fk.uploads["/upload/tok-1"] == csv.read_bytes()
        assert fk.calls("CreateSubmission")[0]["submissionDescription"] == "via fake"
        assert man["submitted"]["ref"] == 4242 and not fk.calls("GetSubmission")  # no --wait: no polling
    else:
        assert "submitted" not in man


@pytest.mark.parametrize("mode,rc,status,text", [("ok", 0, "COMPLETE", "scored: public score 0.87654"),
                                                ("score_error", 1, "ERROR", "failed to score: Submission must have 3 rows")])
def test_submit_wait_polls_until_scored(run_dir, tmp_path, mode, rc, status, text):
    out = tmp_path / "subs"
    with FakeKaggle(mode, pending_polls=2) as fk:
        env = cli_env(tmp_path, fk.endpoint)
        r = package_cli(run_dir, out, "--submit", "--wait", "60", "--poll", "0.05", env=env)
    assert r.returncode == rc, r.stdout + r.stderr
    assert text in r.stdout + r.stderr and r.stdout.count("submission 4242: pending") == 2
    assert [c["ref"] for c in fk.calls("GetSubmission")] == [4242] * 3
    man = json.loads(next(out.glob("*.json")).read_text())
    assert man["submitted"]["ref"] == 4242 and man["submitted"]["status"] == status
    if mode == "ok":
        assert man["submitted"]["public_score"] == "0.87654"


@pytest.mark.slow
def test_infer_stage_end_to_end(demo_data, tmp_path):
    args = ["--data", str(demo_data), "--gpus", "0", "--name", "e", "--set", f"run.out_dir={tmp_path}", "--set", "data.image_size=32",
            "--set", "data.resize_size=40", "--set", "data.folds=2", "--set", "data.num_workers=0", "--set", "student.train.epochs=1",
            "--set", "student.train.batch_size=8", "--kd", "off", *NO_WEIGHTS]
    r = subprocess.run([sys.executable, str(TRAIN), "--stages", "student,infer,flops", *args], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "e"
    sub = pd.read_csv(run / "submission.csv")
    sample = pd.read_csv(demo_data / "sample_submission.csv")
    assert list(sub.columns) == list(sample.columns) and sub["image_id"].tolist() == sample["image_id"].tolist()
    probs = pd.read_csv(run / "infer" / "probs.csv")
    assert probs.shape == (12, 9) and np.allclose(probs.iloc[:, 1:].sum(1), 1, atol=1e-5)
    members = json.loads((run / "infer" / "members.json").read_text())
    assert len(members["members"]) == 2 and members["tta_views"] == ["orig", "fancypca"]
    # the demo's test accuracy is exactly the submission's agreement with solution.csv
    solution = pd.read_csv(demo_data / "solution.csv").set_index("image_id")["label"]
    assert members["test_acc_on_solution_csv"] == pytest.approx((sub.set_index("image_id")["label"] == solution.loc[sub["image_id"]]).mean())
    # TTA out of fold: one logits array per view; "orig" is the stage's own OOF prediction, fancypca another
    oof = np.load(run / "student" / "oof_logits.npy")
    with np.load(run / "student" / "oof_tta.npz") as z:
        assert sorted(z.files) == ["fancypca", "orig"]
        np.testing.assert_array_equal(z["orig"], oof)
        assert not np.allclose(z["fancypca"], oof)
        fancy = z["fancypca"]
    cv = json.loads((run / "student" / "cv.json").read_text())
    y = pd.read_csv(run / "folds.csv")["label"].map({c: i for i, c in enumerate(cv["classes"])}).to_numpy()
    assert cv["tta"]["fancypca"]["acc"] == pytest.approx((fancy.argmax(1) == y).mean())
    assert cv["tta"]["orig"]["acc"] == pytest.approx(cv["overall"]["acc"])
    flops = json.loads((run / "flops.json").read_text())
    assert flops["competition_gflops"] > 0 and flops["pipeline_gflops"] == pytest.approx(flops["true_gflops"] * 4)
    # a prediction-only run reads train.csv for the class list and nothing else of the train set:
    # here the train images are gone and the (fresh) cache gets the 12 test images only
    import shutil

    copy = tmp_path / "no-train-images"
    shutil.copytree(demo_data, copy, ignore=shutil.ignore_patterns("train"))
    assert (copy / "train.csv").is_file() and not (copy / "train").exists()
    cache = tmp_path / "fresh-cache"
    env = {**os.environ, "SONOKIT_CACHE": str(cache)}
    args[1] = str(copy)
    r = subprocess.run([sys.executable, str(TRAIN), "--stages", "infer,flops", *args], capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "train images" not in r.stderr
    assert [p.name for p in cache.iterdir()] == ["v1_32_area"]  # nothing at resize_size (40): no training cache
    assert len(list(cache.rglob("*.npy"))) == 12
    again = pd.read_csv(run / "submission.csv")
    assert again.equals(sub)
