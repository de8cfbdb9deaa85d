"""The assets dataset for offline Kaggle notebooks: ImageNet weights and wheels, as one Kaggle dataset folder.

::

    ASSETS/weights/<model>.pth        ImageNet weights of each configured model (3 channels, 1000 classes)
    ASSETS/wheels/*.whl               the kit's dependencies that Kaggle's image may lack or ship too old
    ASSETS/dataset-metadata.json      for ``kaggle datasets create -p ASSETS``

Made on a machine with internet (the libraries' own downloads, ``pip wheel``); a notebook's
first cell installs from ``wheels/`` (:func:`sonokit.deps.ensure`) and ``model.weights=imagenet``
reads ``weights/`` (:func:`sonokit.models.find_imagenet_weights`).
"""
from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import torch

from .deps import REQUIREMENTS
from .io import atomic_write_text
from .models import GrayscaleModel, is_efficientnet_pytorch, weights_file_name

#: Wheels shipped by default: what the facts say Kaggle's image lacks (thop, torch-pruning,
#: efficientnet_pytorch), timm (unpinned there, may be older than the floor), einops.
DEFAULT_WHEELS = ("timm", "thop", "torch-pruning", "efficientnet_pytorch", "einops")


def wheel_spec(dist: str) -> str:
    """The requirement to build a wheel for: the version installed here (what was tested), else >= the floor."""
    try:
        return f"{dist}=={importlib.metadata.version(dist)}"
    except importlib.metadata.PackageNotFoundError:
        floor = REQUIREMENTS[dist].floor
        return f"{dist}>={floor}" if floor else dist


def build_wheels(dists, out: str | Path, find_links: str | Path | None = None) -> list[Path]:
    """``pip wheel --no-deps`` of each distribution into ``out`` (downloads a wheel, or builds one from an sdist).

    ``find_links``: take them from this folder only (no index), e.g. a wheel cache.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    specs = [wheel_spec(d) for d in dists]
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), *specs]
    if find_links:
        cmd[4:4] = ["--no-index", "--find-links", str(find_links)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=None)
    if r.returncode != 0:
        raise RuntimeError(f"pip wheel {' '.join(specs)} failed:\n{r.stderr[-3000:]}")
    return sorted(out.glob("*.whl"))


def export_weights(out: str | Path, models: list[str], weights: str | None = "download") -> list[Path]:
    """``out/<model>.pth`` per model: ImageNet weights through the libraries' own download, or random (``None``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for name in dict.fromkeys(models):
        if weights is None:
            from .models import create_model

            net = create_model(name, 1000, 3, weights="none")
        elif is_efficientnet_pytorch(name):
            from efficientnet_pytorch import EfficientNet

            net = EfficientNet.from_pretrained(name)  # the library's own download (internet)
        else:
            import timm

            net = timm.create_model(name, pretrained=True)  # the library's own download (internet)
        net = net.model if isinstance(net, GrayscaleModel) else net
        path = out / weights_file_name(name)
        torch.save(net.state_dict(), path)  # 3 channels, 1000 classes as published; adapted when loaded
        files.append(path)
    return files


def export_assets(out: str | Path, owner: str, models: list[str], wheels=DEFAULT_WHEELS, weights: str | None = "download",
                  slug: str = "sonokit-assets", find_links: str | Path | None = None) -> Path:
    """Write the assets dataset folder (weights/, wheels/, dataset-metadata.json) into ``out``."""
    out = Path(out)
    w = export_weights(out / "weights", models, weights)
    whl = build_wheels(list(wheels), out / "wheels", find_links) if wheels else []
    meta = {"title": slug, "id": f"{owner}/{slug}", "licenses": [{"name": "other"}],
            "description": (f"sonokit assets for offline Kaggle notebooks: ImageNet weights ({', '.join(p.name for p in w)}) "
                            f"and wheels ({', '.join(p.name for p in whl)}).")}
    atomic_write_text(out / "dataset-metadata.json", json.dumps(meta, indent=2) + "\n")
    return out
