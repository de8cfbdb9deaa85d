"""Kaggle notebooks: deterministic build, metadata rules, no secrets, chained execution with
nbclient in a Kaggle-like tree where sonokit is not installed, and pushes with the real CLI."""
from __future__ import annotations

import base64
import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from kaggle_fake import FakeKaggle, cli_env

from sonokit.kaggle_kernels import STAGE_ORDER, check_metadata, kernel_metadata, source_archive

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "scripts" / "build_kernels.py"
PUSH = ROOT / "scripts" / "push_kernels.py"


def build(out, *args, env=None):
    return subprocess.run([sys.executable, str(BUILD), "--out", str(out), *args], capture_output=True, text=True, timeout=300, env=env)


def test_build_is_deterministic_and_check_detects_staleness(tmp_path):
    out = tmp_path / "k"
    assert build(out, "--competition", "comp-x", "--owner", "alice").returncode == 0
    first = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert build(out).returncode == 0  # build.json keeps the arguments
    assert first == {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert source_archive() == source_archive()
    r = build(out, "--check")
    assert r.returncode == 0, r.stderr
    nb = out / "student" / "sonokit-student.ipynb"
    nb.write_bytes(nb.read_bytes().replace(b"Distils", b"Distills"))
    r = build(out, "--check")
    assert r.returncode == 1 and "student/sonokit-student.ipynb" in r.stderr


def test_metadata_passes_the_cli_rules(tmp_path):
    out = tmp_path / "k"
    assert build(out, "--competition", "comp-x", "--owner", "alice", "--assets-dataset", "alice/w-data").returncode == 0
    for stage in STAGE_ORDER:
        meta = json.loads((out / stage / "kernel-metadata.json").read_text())
        assert check_metadata(meta, out / stage) == []
        assert meta["enable_internet"] is False and meta["enable_gpu"] is True and meta["competition_sources"] == ["comp-x"]
    assert json.loads((out / "hrank" / "kernel-metadata.json").read_text())["kernel_sources"] == ["alice/sonokit-teacher", "alice/sonokit-student"]
    assert json.loads((out / "inference" / "kernel-metadata.json").read_text())["kernel_sources"] == ["alice/sonokit-hrank"]
    bad = dict(kernel_metadata("teacher", "c/comp", "alice", ""), enable_internet=1, title="x")
    problems = check_metadata(bad, out / "teacher")
    assert "enable_internet must be an explicit JSON boolean" in problems and "title must be at least 5 characters" in problems
    assert "competition_sources: write the bare slug, not 'c/comp'" in problems


def test_no_credentials_or_local_paths_in_kernels(tmp_path):
    out = tmp_path / "k"
    env = {**os.environ, "KAGGLE_USERNAME": "secret-user-123", "KAGGLE_KEY": "deadbeefcafe0123"}
    assert build(out, "--owner", "alice", env=env).returncode == 0
    texts = [p.read_text() for p in out.rglob("*") if p.is_file()]
    nb = nbformat.reads((out / "teacher" / "sonokit-teacher.ipynb").read_text(), as_version=4)
    blob = base64.b64decode(nb.cells[1].source.split('"""')[1].replace("\n", ""))
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tar:
        names = tar.getnames()
        texts += [tar.extractfile(m).read().decode() for m in tar.getmembers()]
    assert "sonokit/__init__.py" in names and "sonokit/default_schema.yaml" in names
    for t in texts:
        for secret in ("secret-user-123", "deadbeefcafe0123", str(ROOT), "/root/", "/home/"):
            assert secret not in t


BLOCK_SONOKIT = """
import sys
sys.path[:] = [p for p in sys.path if not p.rstrip('/').endswith('{src}')]
"""


def kaggle_env(tmp_path, monkeypatch, blocked=("thop", "torch_pruning")):
    """A Kaggle-like environment for nbclient's kernels: sonokit not installed, ``blocked`` not importable."""
    from conftest import BLOCK_IMPORTS, site_with

    kaggle = tmp_path / "kaggle"
    code = BLOCK_SONOKIT.format(src=str(ROOT / "src")) + BLOCK_IMPORTS.format(blocked=list(blocked))
    site = site_with(tmp_path, code)
    env = {"PYTHONPATH": str(site), "SONOKIT_KAGGLE_ROOT": str(kaggle), "KAGGLE_KERNEL_RUN_TYPE": "Batch",
           "SONOKIT_CACHE": str(tmp_path / "cache"), "MPLBACKEND": "Agg", "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    probe = subprocess.run([sys.executable, "-c", "import sonokit"], capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'sonokit'" in probe.stderr  # really not importable
    probe = subprocess.run([sys.executable, "-c", "import thop"], capture_output=True, text=True)
    assert probe.returncode != 0 and "blocked for this test" in probe.stderr
    return kaggle


def execute(path: Path, work: Path, edit=None):
    """Run a notebook with nbclient as Kaggle would; returns (notebook, all printed text)."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    if edit:
        edit(nb)
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(work)}}).execute()
    finally:
        text = "".join(o.get("text", "") + "".join(o.get("traceback", [])) for c in nb.cells if c.cell_type == "code"
                       for o in c.get("outputs", []))
    return nb, text


@pytest.mark.slow
def test_notebooks_chain_on_a_kaggle_like_tree(tmp_path, monkeypatch, dep_wheels):
    """The four notebooks, chained, where sonokit, thop and torch-pruning are not installed: the teacher
    and student need neither; hrank (pruning) and inference install them from the assets dataset's wheels."""
    from sonokit.demo import make_demo_data
    from sonokit.export import export_assets

    owner, comp = "alice", "ultra-comp"
    out = tmp_path / "kernels"
    assert build(out, "--competition", comp, "--owner", owner).returncode == 0
    kaggle = tmp_path / "kaggle"
    inp, work = kaggle / "input", kaggle / "working"
    make_demo_data(inp / "competitions" / comp, n_train=48, n_test=6, seed=3, progress=False)
    # the assets dataset (legacy mount layout): random "ImageNet" weights, wheels from the local folder
    export_assets(inp / "sonokit-assets", owner, ["test_efficientnet", "test_nfnet"], ["thop", "torch-pruning"], weights=None,
                  find_links=dep_wheels)
    assert kaggle_env(tmp_path, monkeypatch) == kaggle

    tiny = {"data.image_size": 32, "data.resize_size": 36, "data.folds": 2, "data.num_workers": 0,
            "teacher.model.name": "test_efficientnet", "student.model.name": "test_nfnet",
            "teacher.train.epochs": 1, "teacher.train.batch_size": 8, "student.train.epochs": 1, "student.train.batch_size": 8,
            "hrank.train.epochs": 1, "hrank.train.batch_size": 8, "hrank.layer": "stages.2.-1.conv3", "hrank.rank_batches": 1,
            "hrank.mode": "prune", "hrank.prune_stages": "2", "infer.tta": "orig"}
    texts = {}
    for stage in STAGE_ORDER:
        work.mkdir(parents=True, exist_ok=True)

        def as_a_user(nb):
            cfg_cell = nb.cells[2]
            assert cfg_cell.source.startswith("# The only cell to edit.")
            overrides = {**json.loads(cfg_cell.source.split("OVERRIDES = ", 1)[1]), **tiny}
            cfg_cell.source = cfg_cell.source.split("OVERRIDES = ", 1)[0] + f"OVERRIDES = {json.dumps(overrides)}"

        _, text = execute(out / stage / f"sonokit-{stage}.ipynb", work, as_a_user)
        texts[stage] = text
        assert "sonokit 0.1.0 from" in text
        assert str(ROOT / "src") not in text  # the embedded copy was used
        if stage == "inference":
            break
        # Kaggle mounts a kernel's output for the kernels that list it in kernel_sources
        dest = (inp / f"sonokit-{stage}") if stage == "teacher" else (inp / "notebooks" / owner / f"sonokit-{stage}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(work), str(dest))
        assert not any(p.is_symlink() for p in dest.rglob("*"))  # upstream links were removed before the output was saved
        assert (dest / "kaggle" / stage / "fold1" / "best.pt").is_file()
    for stage in ("teacher", "student"):
        assert "dependencies: all present" in texts[stage] and "installing" not in texts[stage]
    assert "installing from the assets dataset: thop-" in texts["hrank"] and "torch_pruning-" in texts["hrank"]
    assert "installing from the assets dataset: thop-" in texts["inference"] and "torch_pruning" not in texts["inference"]
    assert "Loading pretrained weights from file" in texts["teacher"] or "sonokit-assets/weights/test_efficientnet.pth" in texts["teacher"]
    sub = pd.read_csv(work / "submission.csv")
    sample = pd.read_csv(inp / "competitions" / comp / "sample_submission.csv")
    assert list(sub.columns) == list(sample.columns) and sub["image_id"].tolist() == sample["image_id"].tolist()
    members = json.loads((work / "kaggle" / "infer" / "members.json").read_text())["members"]
    assert [m["stage"] for m in members] == ["hrank", "hrank"]
    flops = json.loads((work / "kaggle" / "flops.json").read_text())
    assert flops["competition_gflops"] > 0


def test_a_notebook_without_the_assets_dataset_stops_with_one_message(tmp_path, monkeypatch):
    """The inference notebook needs thop; with it missing and no assets dataset attached, the first cell says so."""
    from nbclient.exceptions import CellExecutionError

    out = tmp_path / "kernels"
    assert build(out, "--competition", "c-x", "--owner", "alice").returncode == 0
    kaggle = kaggle_env(tmp_path, monkeypatch)
    (kaggle / "input").mkdir(parents=True)
    (kaggle / "working").mkdir()
    with pytest.raises(CellExecutionError) as e:
        execute(out / "inference" / "sonokit-inference.ipynb", kaggle / "working")
    text = str(e.value)
    assert "sonokit cannot run this notebook (assets dataset alice/sonokit-assets is not attached): missing or too old:" in text
    assert "thop: not installed, >= 0.1.1 needed" in text
    assert "python scripts/export_assets.py ASSETS --owner YOUR_KAGGLE_USER && kaggle datasets create -p ASSETS" in text


@pytest.mark.parametrize("mode,rc,text", [("ok", 0, "teacher: version 3 pushed: https://www.kaggle.com/code/alice/sonokit-teacher"),
                                          ("error_exit0", 1, "refused: Notebook not found"),
                                          ("http400", 1, "(HTTP 400): You must accept"),
                                          ("invalid_sources", 1, "student: Kaggle rejected dataset sources ['alice/sonokit-assets']; "
                                                                 "kernel sources ['alice/sonokit-teacher']")])
def test_push_through_the_kaggle_api(tmp_path, mode, rc, text):
    out = tmp_path / "k"
    assert build(out, "--competition", "comp-x", "--owner", "alice").returncode == 0
    stages = {"ok": ["teacher", "student"], "invalid_sources": ["student"]}.get(mode, ["teacher"])
    with FakeKaggle(mode) as fk:
        env = cli_env(tmp_path, fk.endpoint)
        r = subprocess.run([sys.executable, str(PUSH), "--kernels", str(out), *stages], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == rc, r.stdout + r.stderr
    assert text in r.stdout + r.stderr
    calls = fk.calls("SaveKernel")
    if mode == "ok":
        assert [c["slug"] for c in calls] == ["alice/sonokit-teacher", "alice/sonokit-student"]
        s = calls[-1]
        assert s["enableInternet"] is False and s["enableGpu"] is True and s["competitionDataSources"] == ["comp-x"]
        assert s["kernelDataSources"] == ["alice/sonokit-teacher"] and s["datasetDataSources"] == ["alice/sonokit-assets"]
        assert json.loads(s["text"])["cells"][0]["source"].startswith("# sonokit: student")
        assert "student: version 3 pushed" in r.stdout
    if mode == "invalid_sources":
        assert [c["slug"] for c in calls] == ["alice/sonokit-student"] and "version" not in r.stdout


def test_export_assets_layout(tmp_path, dep_wheels):
    from sonokit.models import create_model
    from sonokit.models import load_weights as adapt

    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "export_assets.py"), str(tmp_path / "a"), "--owner", "alice", "--random",
                        "--set", "teacher.model.name=test_efficientnet", "--set", "student.model.name=test_nfnet",
                        "--wheels", "thop,torch-pruning", "--find-links", str(dep_wheels)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "a" / "dataset-metadata.json").read_text())
    assert meta["id"] == "alice/sonokit-assets" and meta["licenses"]
    assert sorted(p.name for p in (tmp_path / "a" / "weights").glob("*.pth")) == ["test_efficientnet.pth", "test_nfnet.pth"]
    wheels = sorted(p.name for p in (tmp_path / "a" / "wheels").glob("*.whl"))
    assert len(wheels) == 2 and wheels[0].startswith("thop-0.1.1") and wheels[1].startswith("torch_pruning-1.6")
    m = create_model("test_nfnet", 8, 1)
    notes = adapt(m, tmp_path / "a" / "weights" / "test_nfnet.pth")
    assert any("adapted to 1 channel" in n for n in notes) and any("classifier re-initialised" in n for n in notes)
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "export_assets.py"), str(tmp_path / "b"), "--owner", "alice", "--random",
                        "--wheels", "nosuchpkg"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "unknown distribution(s) ['nosuchpkg']" in r.stderr
