"""Confusion matrices people can read: .npy, .csv (rows truth, columns prediction) and a PNG."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix

from .io import atomic_path


def save_confusion(y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[str], out_dir: str | Path, title: str = "") -> np.ndarray:
    """Write confusion.npy, confusion.csv and confusion.png into ``out_dir``; return the matrix."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    classes = list(classes)
    cm = confusion_matrix(np.asarray(y_true), np.asarray(y_pred), labels=list(range(len(classes))))
    with atomic_path(out_dir / "confusion.npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, cm)
    df = pd.DataFrame(cm, index=pd.Index(classes, name="truth \\ prediction"), columns=classes)
    with atomic_path(out_dir / "confusion.csv") as tmp:
        df.to_csv(tmp)
    plot_confusion(cm, classes, out_dir / "confusion.png", title)
    return cm


def plot_confusion(cm: np.ndarray, classes: Sequence[str], path: str | Path, title: str = "") -> None:
    """Counts in the cells, colour by row-normalised rate (recall), figure sized to the class count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(classes)
    rows = cm.sum(axis=1, keepdims=True)
    rate = np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0)
    side = max(5.0, 0.75 * n + 2.5)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    im = ax.imshow(rate, cmap="Blues", vmin=0, vmax=1)
    fontsize = max(6, min(12, int(110 / max(n, 1))))
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{cm[i, j]}\n{rate[i, j]:.0%}" if cm[i, j] else "0", ha="center", va="center",
                    fontsize=fontsize, color="white" if rate[i, j] > 0.55 else "black")
    ax.set_xticks(range(n), labels=classes, rotation=45, ha="right", fontsize=fontsize + 1)
    ax.set_yticks(range(n), labels=[f"{c} ({int(rows[i, 0])})" for i, c in enumerate(classes)], fontsize=fontsize + 1)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (support)")
    acc = np.trace(cm) / max(cm.sum(), 1)
    ax.set_title(f"{title + ': ' if title else ''}accuracy {acc:.2%} ({int(cm.sum())} images)")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class (row)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
