"""HRank (Lin et al., CVPR 2020): feature-map ranks, low-rank filter re-initialisation, real pruning.

* :func:`collect_ranks` hooks chosen convs (by module name) inside a context manager and, over
  a few batches in eval mode, takes ``torch.linalg.matrix_rank`` of every channel's HxW map of
  every image: an images x filters matrix per layer.
* :func:`reinit_filters` gives the lowest-rank filters fresh weights with the layer's own
  initialiser (the source's method).
* :func:`sonokit.pruning.prune` removes the lowest-rank filters physically with torch-pruning
  (DepGraph), so the true FLOPs really fall; :func:`shape_spec` / :func:`apply_shape_spec` here
  let a pruned checkpoint be rebuilt later from plain data (weights_only=True safe), without
  torch-pruning.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
from timm.layers import ScaledStdConv2d

from .io import atomic_path
from .models import GrayscaleModel

DEFAULT_LAYER = "stages.2.-1.conv3"  # nf_regnet_b1: the last conv of the 3rd stage


# ----------------------------------------------------------------------------- layers by name
def _prefix(model: nn.Module) -> tuple[nn.Module, str]:
    return (model.model, "model.") if isinstance(model, GrayscaleModel) else (model, "")


def resolve_layer(model: nn.Module, spec: str = DEFAULT_LAYER) -> str:
    """A dotted module path (negative indices allowed, relative to the bare network) -> its full name."""
    net, prefix = _prefix(model)
    node, parts = net, []
    for part in spec.split("."):
        if part.lstrip("-").isdigit() and isinstance(node, (nn.Sequential, nn.ModuleList)):
            i = int(part)
            if not -len(node) <= i < len(node):
                raise ValueError(f"layer {spec!r}: index {i} out of range for a block of {len(node)}")
            i %= len(node)
            node, part = node[i], str(i)
        else:
            if not hasattr(node, part) or not isinstance(getattr(node, part), nn.Module):
                raise ValueError(f"layer {spec!r}: no module {part!r} under {'.'.join(parts) or 'the model'}")
            node = getattr(node, part)
        parts.append(part)
    if not isinstance(node, nn.Conv2d):
        raise ValueError(f"layer {spec!r} is a {type(node).__name__}, not a convolution")
    return prefix + ".".join(parts)


def stage_convs(model: nn.Module, stages: Sequence[int]) -> list[str]:
    """Full names of every conv inside the given stages (``stages.<i>``) of the network."""
    net, prefix = _prefix(model)
    if not hasattr(net, "stages"):
        raise ValueError(f"{type(net).__name__} has no 'stages'; name the layers to prune explicitly")
    out = []
    for i in stages:
        if not 0 <= i < len(net.stages):
            raise ValueError(f"stage {i} out of range 0..{len(net.stages) - 1}")
        out += [f"{prefix}stages.{i}.{n}" for n, m in net.stages[i].named_modules() if isinstance(m, nn.Conv2d)]
    return out


# ----------------------------------------------------------------------------- ranks
def channel_ranks(fmap: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) feature maps -> (B, C) rank of every channel's HxW matrix (batched)."""
    return torch.linalg.matrix_rank(fmap.detach().float()).to(torch.float32)


@contextmanager
def rank_hooks(model: nn.Module, names: Iterable[str], shapes: dict | None = None) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Forward hooks that append each named conv's per-image, per-filter ranks (and, into
    ``shapes``, its feature maps' H x W); removed on exit."""
    modules = dict(model.named_modules())
    store: dict[str, list[torch.Tensor]] = {}
    handles = []
    shapes = {} if shapes is None else shapes

    def hook(m, i, o, n):
        store[n].append(channel_ranks(o).cpu())
        shapes[n] = tuple(int(v) for v in o.shape[-2:])

    try:
        for name in names:
            if name not in modules:
                raise ValueError(f"no module named {name!r}")
            store[name] = []
            handles.append(modules[name].register_forward_hook(lambda m, i, o, n=name: hook(m, i, o, n)))
        yield store
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def collect_ranks(model: nn.Module, loader, names: Sequence[str], n_batches: int = 4,
                  shapes: dict | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Ranks over the first ``n_batches`` of ``loader`` in eval mode: {name: images x filters}, targets.

    ``shapes`` (optional dict) receives each layer's feature-map H x W."""
    was_training = model.training
    model.eval()
    targets = []
    try:
        with rank_hooks(model, names, shapes) as store:
            for b, (x, y) in enumerate(loader):
                if b >= n_batches:
                    break
                model(x)
                targets.append(y.cpu())
    finally:
        model.train(was_training)
    return {n: torch.cat(v).numpy() for n, v in store.items()}, torch.cat(targets).numpy()


TIE_RULE = "ties in mean rank are broken by filter index: the lowest-numbered filters are chosen first"


def n_chosen(n: int, fraction: float) -> int:
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), not {fraction}")
    return max(1, int(round(fraction * n)))


def lowest_rank_filters(mean_ranks: np.ndarray, fraction: float) -> np.ndarray:
    """Indices of the lowest-rank ``fraction`` of filters; ties broken by filter index (deterministic)."""
    n = len(mean_ranks)
    k = n_chosen(n, fraction)
    order = np.lexsort((np.arange(n), np.asarray(mean_ranks)))
    return np.sort(order[:k])


def separability(ranks: np.ndarray, fraction: float, map_hw: tuple[int, int] | None) -> dict:
    """Can these ranks tell the filters apart? The facts a user needs before trusting the choice.

    ``ranks``: images x filters. Reports the distinct mean ranks, the maximum rank the map size
    allows, how many of the chosen filters were picked by the tie rule rather than by rank, and a
    warning when the ranks cannot separate the filters at all (every filter has the same mean
    rank, e.g. every map full-rank because the map is tiny).
    """
    mean = ranks.mean(0)
    n = len(mean)
    k = n_chosen(n, fraction)
    order = np.lexsort((np.arange(n), mean))
    cut = mean[order[k - 1]]
    # filters chosen only through the tie rule: those at the cut value when the cut splits a tie group
    at_cut = int((mean == cut).sum())
    chosen_at_cut = int((mean[order[:k]] == cut).sum())
    by_tie = chosen_at_cut if at_cut > chosen_at_cut else 0
    max_rank = min(map_hw) if map_hw else None
    out = {"filters": n, "chosen": k, "distinct_mean_ranks": int(len(np.unique(mean))), "min_mean_rank": float(mean.min()),
           "max_mean_rank": float(mean.max()), "map_hw": list(map_hw) if map_hw else None, "max_possible_rank": max_rank,
           "chosen_by_tie_rule": by_tie, "tie_rule": TIE_RULE, "separable": bool(len(np.unique(mean)) > 1), "warning": ""}
    if not out["separable"]:
        why = (f"every filter has rank {mean[0]:g} on every image" if np.all(ranks == ranks.flat[0])
               else f"every filter has the same mean rank {mean[0]:.3g}")
        if max_rank is not None and np.isclose(mean[0], max_rank):
            why += f" (the {map_hw[0]}x{map_hw[1]} feature maps are too small for rank to vary: full rank is {max_rank})"
        out["warning"] = (f"the ranks cannot separate the filters: {why}; the {k} 'lowest-rank' filters are simply "
                          f"filters {order[:min(k, 6)].tolist()}{'...' if k > 6 else ''} by the tie rule. Use a larger "
                          f"image size or an earlier layer for HRank to mean anything.")
    elif by_tie:
        out["warning"] = f"{by_tie} of the {k} chosen filters tie with unchosen ones at mean rank {cut:.3g}: picked by the tie rule"
    return out


# ----------------------------------------------------------------------------- re-initialisation
@torch.no_grad()
def reinit_filters(conv: nn.Conv2d, idxs: Sequence[int], seed: int | None = None) -> None:
    """Fresh weights for output filters ``idxs`` of ``conv``, with the layer's own initialiser.

    ``seed``: the fresh weights come from this seed alone (the global random state is left as
    it was), so a fold's re-initialisation does not depend on what ran before it.

    timm's NF networks initialise convs with kaiming_normal(fan_in, linear) and zero bias; other
    convs use nn.Conv2d's reset_parameters. A ScaledStdConv2d's per-filter ``gain`` is set to the
    median gain of the layer's other filters (1 if that is 0): its initial value (0 with
    zero_init_last, as on nf_regnet_b1's conv3) would leave the new filters dead.
    """
    idx = torch.as_tensor(list(idxs), dtype=torch.long)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        fresh = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, groups=conv.groups, bias=conv.bias is not None)
        if isinstance(conv, ScaledStdConv2d):
            nn.init.kaiming_normal_(fresh.weight, mode="fan_in", nonlinearity="linear")
    if isinstance(conv, ScaledStdConv2d):
        if fresh.bias is not None:
            nn.init.zeros_(fresh.bias)
        keep = torch.ones(conv.out_channels, dtype=torch.bool)
        keep[idx] = False
        median = conv.gain[keep].median().item() if keep.any() else 0.0
        conv.gain[idx] = median if median != 0 else conv.gain_init or 1.0
    conv.weight[idx] = fresh.weight[idx].to(conv.weight)
    if conv.bias is not None:
        conv.bias[idx] = fresh.bias[idx].to(conv.bias)


# ----------------------------------------------------------------------------- pruned checkpoints
_ATTRS = ("in_channels", "out_channels", "groups", "num_features", "in_features", "out_features", "scale")


def shape_spec(model: nn.Module) -> dict:
    """Plain data that rebuilds ``model``'s (pruned) shapes on a freshly built unpruned model."""
    spec = {}
    for name, m in model.named_modules():
        params = {k: list(v.shape) for k, v in m._parameters.items() if v is not None}
        buffers = {k: list(v.shape) for k, v in m._buffers.items() if v is not None}
        if not params and not buffers:
            continue
        attrs = {a: getattr(m, a) for a in _ATTRS if isinstance(getattr(m, a, None), (int, float)) and not isinstance(getattr(m, a), bool)}
        spec[name] = {"params": params, "buffers": buffers, "attrs": attrs}
    return spec


def apply_shape_spec(model: nn.Module, spec: dict) -> nn.Module:
    """Reshape a freshly built model to ``spec`` (then load the pruned state dict into it)."""
    for name, s in spec.items():
        m = model.get_submodule(name)
        for k, shape in s["params"].items():
            m._parameters[k] = nn.Parameter(torch.empty(shape))
        for k, shape in s["buffers"].items():
            m._buffers[k] = torch.empty(shape)
        for k, v in s["attrs"].items():
            setattr(m, k, v)
    return model


# ----------------------------------------------------------------------------- figures
def _gray_heatmap(values: np.ndarray, path: Path, height: float, title: str, label: str, ylabel: str = "",
                  yticks: list[str] | None = None, warning: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(min(16, 4 + values.shape[1] / 12), height))
    im = ax.imshow(values, cmap="gray", aspect="auto", interpolation="nearest")
    if yticks is not None:
        ax.set_yticks(range(len(yticks)), labels=yticks)
    ax.set_xlabel("filter index")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if warning:  # said on the picture itself: a flat heatmap is not a finding
        import textwrap

        ax.text(0.5, 0.5, "\n".join(textwrap.wrap(warning, 70)), transform=ax.transAxes, ha="center", va="center",
                fontsize=9, color="black", bbox={"facecolor": "#ffe08a", "edgecolor": "#b07d00", "alpha": 0.95})
    fig.colorbar(im, ax=ax, label=label)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def save_rank_figures(ranks: np.ndarray, targets: np.ndarray, classes: Sequence[str], out_dir: Path, layer: str,
                      fraction: float = 0.125, map_hw: tuple[int, int] | None = None) -> dict:
    """ranks.npy, ranks_heatmap.png (x filter, y image, brightness rank, like the source's figure)
    and ranks_by_class.png (mean rank per class and filter). Returns how much of the rank
    variance the label explains (eta squared), the source's question, and :func:`separability`
    (its warning is also written on the heatmap)."""
    sep = separability(ranks, fraction, map_hw)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "ranks.npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, ranks)
    n_img, n_f = ranks.shape
    hw = f", {map_hw[0]}x{map_hw[1]} maps" if map_hw else ""
    _gray_heatmap(ranks, out_dir / "ranks_heatmap.png", min(12, 2.5 + n_img / 10),
                  f"feature-map rank per image and filter: {layer}{hw}", "rank", ylabel="image",
                  warning=sep["warning"] if not sep["separable"] else "")

    present = [c for c in range(len(classes)) if (targets == c).any()]
    per_class = np.stack([ranks[targets == c].mean(0) for c in present])
    grand = ranks.mean()
    between = sum((targets == c).sum() * ((ranks[targets == c].mean(0) - ranks.mean(0)) ** 2).sum() for c in present)
    total = ((ranks - grand) ** 2).sum() - n_img * ((ranks.mean(0) - grand) ** 2).sum()  # within-filter variance
    eta2 = float(between / total) if total > 0 else 0.0
    _gray_heatmap(per_class, out_dir / "ranks_by_class.png", 2 + 0.4 * len(present),
                  f"mean rank per class: the label explains {eta2:.1%} of the per-filter rank variance", "mean rank",
                  yticks=[f"{classes[c]} ({int((targets == c).sum())})" for c in present])
    return {"label_explains": eta2, "images": int(n_img), **sep}
