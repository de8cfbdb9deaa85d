"""Lay out the configured teacher's and student's weights as a Kaggle dataset folder."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .models import GrayscaleModel, create_model


def export_weights(out: str | Path, owner: str, models: list[str], weights: str | None = "imagenet",
                   slug: str = "sonokit-weights") -> Path:
    """Write ``<model>.pth`` per model name and dataset-metadata.json into ``out``.

    ``weights="imagenet"`` uses the libraries' own download (machines with internet only);
    ``None`` saves random weights (to check the layout offline). The kernels load these files
    with weights_only=True and adapt them (1-channel stem, the competition's class count).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for name in models:
        # saved with 3 input channels and 1000 classes as published; adapted when loaded
        model = create_model(name, 1000, 3, weights=weights)
        net = model.model if isinstance(model, GrayscaleModel) else model
        path = out / f"{name}.pth"
        torch.save(net.state_dict(), path)
        files.append(path.name)
    meta = {"title": slug, "id": f"{owner}/{slug}", "licenses": [{"name": "other"}],
            "description": f"ImageNet weights for sonokit ({', '.join(files)}), from timm / efficientnet_pytorch."}
    (out / "dataset-metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out
