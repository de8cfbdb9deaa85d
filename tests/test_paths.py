"""The one path resolver: local directories and both Kaggle input layouts."""
from __future__ import annotations

import pytest

from sonokit import paths


def test_local_defaults(tmp_path, monkeypatch):
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    monkeypatch.delenv("SONOKIT_KAGGLE_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert not paths.on_kaggle()
    assert paths.run_dir("exp1") == tmp_path / "runs" / "exp1"
    assert paths.run_dir("exp1", tmp_path / "out") == tmp_path / "out" / "exp1"
    for bad in ("", "..", "a/b"):
        with pytest.raises(ValueError, match="plain directory name"):
            paths.run_dir(bad)
    with pytest.raises(FileNotFoundError, match="data directory not found"):
        paths.resolve_data_dir(tmp_path / "missing")


@pytest.mark.parametrize("layout", ["legacy", "new"])
def test_kaggle_layouts(tmp_path, monkeypatch, layout):
    root = tmp_path / "kaggle"
    monkeypatch.setenv("SONOKIT_KAGGLE_ROOT", str(root))
    inp = root / "input"
    if layout == "legacy":
        comp, ds, nb = inp / "ultra", inp / "weights", inp / "sonokit-teacher"
    else:
        comp = inp / "competitions" / "ultra"
        ds = inp / "datasets" / "alice" / "weights"
        nb = inp / "notebooks" / "alice" / "sonokit-teacher"
    for d in (comp, ds, nb):
        d.mkdir(parents=True)
    (comp / "train.csv").write_text("image_id,label\n")
    (nb / "teacher").mkdir()
    (nb / "teacher" / "cv.json").write_text("{}")
    assert paths.on_kaggle()
    assert paths.working_dir() == root / "working"
    assert paths.resolve_data_dir("", competition="ultra") == comp
    assert paths.find_kaggle_input("weights", "datasets") == ds
    assert paths.find_kaggle_input("weights", "datasets", owner="alice") == ds
    assert paths.find_kaggle_input("sonokit-teacher", "notebooks") == nb
    # marker fallback: found by searching /kaggle/input for the file
    assert paths.find_kaggle_input("renamed-slug", marker="teacher/cv.json") == nb
    with pytest.raises(FileNotFoundError, match="Kaggle input 'nothing' not found"):
        paths.find_kaggle_input("nothing")
