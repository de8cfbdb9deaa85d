"""Physical filter pruning with torch-pruning (DepGraph), ranked by HRank's feature-map ranks.

Imported only by runs that prune (``hrank.mode=prune``): torch-pruning is not in Kaggle's image,
and a pruned checkpoint is rebuilt without it (:func:`sonokit.hrank.apply_shape_spec`).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch_pruning as tp
from timm.layers import ScaledStdConv2d
from torch_pruning.pruner import function as tp_function

from .hrank import _prefix


class ScaledStdConvPruner(tp_function.ConvPruner):
    """torch-pruning's conv pruner, plus what ScaledStdConv2d needs: slice ``gain`` with the
    output filters, and recompute ``scale = gamma / sqrt(fan_in)`` when inputs are removed
    (the stock pruner leaves both, and the pruned conv fails to run)."""

    def prune_out_channels(self, layer, idxs):
        keep = sorted(set(range(layer.out_channels)) - set(idxs))
        layer = super().prune_out_channels(layer, idxs)
        if isinstance(layer, ScaledStdConv2d):
            layer.gain = self._prune_parameter_and_grad(layer.gain, keep, 0)
        return layer

    def prune_in_channels(self, layer, idxs):
        gamma = layer.scale * layer.weight[0].numel() ** 0.5 if isinstance(layer, ScaledStdConv2d) else None
        layer = super().prune_in_channels(layer, idxs)
        if gamma is not None:
            layer.scale = gamma * layer.weight[0].numel() ** -0.5
        return layer


class RankImportance(tp.importance.GroupMagnitudeImportance):
    """HRank importance: a channel's mean feature-map rank (higher = keep), averaged over the
    convs of its DepGraph group that have ranks. Groups with no ranked conv are left alone,
    which is how pruning stays inside the chosen stages."""

    def __init__(self, ranks: dict[str, np.ndarray], model: nn.Module):
        super().__init__(p=1, group_reduction="mean", normalizer=None)
        self.ranks = {name: torch.as_tensor(r, dtype=torch.float32) for name, r in ranks.items()}
        self.names = {m: n for n, m in model.named_modules()}

    @torch.no_grad()
    def __call__(self, group):
        imps, idxs_all = [], []
        for i, (dep, idxs) in enumerate(group):
            name = self.names.get(dep.layer)
            if name in self.ranks and getattr(dep.pruning_fn, "__name__", "") == "prune_out_channels":
                r = self.ranks[name][idxs]
                # tiny index term: ties are broken by filter index, deterministically
                imps.append(r + 1e-6 * torch.as_tensor(idxs, dtype=torch.float32) / max(len(r), 1))
                idxs_all.append(group[i].root_idxs)
        if not imps:
            return None
        return self._reduce(imps, idxs_all)


def prune(model: nn.Module, ranks: dict[str, np.ndarray], ratio: float, example: torch.Tensor) -> nn.Module:
    """Remove the lowest-rank ``ratio`` of the filters of every ranked conv's group, in place."""
    if not 0 < ratio < 1:
        raise ValueError(f"pruning ratio must be in (0, 1), not {ratio}")
    net, _ = _prefix(model)
    ignored = [m for m in (getattr(net, "get_classifier", lambda: None)(),) if isinstance(m, nn.Module)]
    stem = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
    if stem is not None:
        ignored.append(stem)  # the input channels are the data's
    pruner = tp.pruner.MetaPruner(
        model, example, importance=RankImportance(ranks, model), pruning_ratio=ratio, ignored_layers=ignored,
        customized_pruners={ScaledStdConv2d: ScaledStdConvPruner()},
    )
    pruner.step()
    return model
