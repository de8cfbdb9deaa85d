"""Shared fixtures: tiny data directories written by the tests themselves."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

#: Tests train from random weights on purpose (real runs default to ImageNet weights, found offline).
NO_WEIGHTS_OVERRIDES = ["teacher.model.weights=none", "student.model.weights=none"]
NO_WEIGHTS = [a for o in NO_WEIGHTS_OVERRIDES for a in ("--set", o)]


def write_csv(path: Path, header, rows) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def make_tiny_data(root: Path, classes=("cat", "dog"), per_class=5, n_test=3, size=(40, 30), seed=0) -> Path:
    """A valid data directory in the default schema's layout, with small images."""
    rng = np.random.default_rng(seed)
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    rows = []
    for c_i, c in enumerate(classes):
        for i in range(per_class):
            image_id = f"{c}_{i}"
            arr = (rng.random((size[1], size[0], 3)) * 60 + 60 * c_i).astype(np.uint8)
            ext = "png" if i % 2 else "jpg"
            Image.fromarray(arr).save(root / "train" / f"{image_id}.{ext}")
            rows.append((image_id, c))
    write_csv(root / "train.csv", ["image_id", "label"], rows)
    test_rows = []
    for i in range(n_test):
        arr = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(root / "test" / f"t{i}.png")
        test_rows.append((f"t{i}", classes[0]))
    write_csv(root / "sample_submission.csv", ["image_id", "label"], test_rows)
    return root


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    return make_tiny_data(tmp_path / "data")


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """A small demo data set (source-like image sizes), made once per test session."""
    from sonokit.demo import make_demo_data

    return make_demo_data(tmp_path_factory.mktemp("demo") / "data", n_train=64, n_test=12, seed=1, progress=False)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Never touch the user's ~/.cache from a test."""
    monkeypatch.setenv("SONOKIT_CACHE", str(tmp_path / "cache"))


#: A sitecustomize.py that makes packages unimportable from this environment's site-packages, as
#: on a Kaggle image that lacks them; a copy installed elsewhere on sys.path (e.g. from wheels by
#: sonokit.deps.ensure) imports normally. Format with blocked=[...] (top-level module names).
BLOCK_IMPORTS = '''
import importlib.machinery, sys, sysconfig
_BLOCKED = set({blocked!r})
_SITE = {{sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}}

class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] not in _BLOCKED or path is not None:
            return None
        elsewhere = [p for p in sys.path if p and p.rstrip("/") not in _SITE]
        spec = importlib.machinery.PathFinder.find_spec(name, elsewhere)
        if spec is None:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked for this test)", name=name)
        return spec

sys.meta_path.insert(0, _Blocker())
'''


def site_with(tmp_path: Path, code: str, name: str = "site") -> Path:
    """A directory holding sitecustomize.py with ``code`` (put it first on PYTHONPATH)."""
    site = tmp_path / name
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(code)
    return site


@pytest.fixture(scope="session")
def dep_wheels(tmp_path_factory) -> Path:
    """Wheels of thop and torch-pruning (the versions installed here), as an assets dataset ships them.

    Built with pip from the package index (or pip's cache), as scripts/export_assets.py does.
    """
    from sonokit.export import build_wheels

    out = tmp_path_factory.mktemp("wheels")
    build_wheels(["thop", "torch-pruning"], out)
    return out
