"""CutMix / MixUp per batch, through timm's ``Mixup``.

One uniform draw ``r`` per batch: ``r < cutmix_p`` -> CutMix, ``r < cutmix_p + mixup_p`` ->
MixUp, else the batch is left alone (defaults 1/4, 1/4, 1/2, the source's choice). Targets
become soft (one-hot when the batch is not mixed) for ``SoftTargetCrossEntropy``.
"""
from __future__ import annotations

import numpy as np
from timm.data.mixup import Mixup, mixup_target

from .config import MixConfig


class BatchMixing(Mixup):
    """timm ``Mixup`` in 'batch' mode with two changes, each a few lines:

    * the source's single uniform draw picks CutMix / MixUp / nothing (timm draws twice:
      mix-or-not, then which; the probabilities would be the same, the draw count not);
    * no even-batch assertion: 'batch' mode pairs ``x`` with ``x.flip(0)``, which is well
      defined for an odd batch (the middle image is mixed with itself), so an odd-sized last
      batch does not crash.
    """

    def __init__(self, cfg: MixConfig, num_classes: int):
        if cfg.cutmix_p < 0 or cfg.mixup_p < 0 or cfg.cutmix_p + cfg.mixup_p > 1:
            raise ValueError(f"cutmix_p ({cfg.cutmix_p}) and mixup_p ({cfg.mixup_p}) must be >= 0 and sum to <= 1")
        super().__init__(
            mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha, prob=1.0, switch_prob=0.5,
            mode="batch", label_smoothing=cfg.label_smoothing, num_classes=num_classes,
        )
        self.cutmix_p = cfg.cutmix_p
        self.mixup_p = cfg.mixup_p
        self.last = "none"  # what the last call did: none, cutmix or mixup

    def _params_per_batch(self):
        r = np.random.rand()
        if r < self.cutmix_p:
            self.last = "cutmix"
            return float(np.random.beta(self.cutmix_alpha, self.cutmix_alpha)), True
        if r < self.cutmix_p + self.mixup_p:
            self.last = "mixup"
            return float(np.random.beta(self.mixup_alpha, self.mixup_alpha)), False
        self.last = "none"
        return 1.0, False

    def __call__(self, x, target):
        lam = self._mix_batch(x)
        target = mixup_target(target, self.num_classes, lam, self.label_smoothing)
        return x, target


def create_mixing(cfg: MixConfig, num_classes: int) -> BatchMixing | None:
    """A :class:`BatchMixing`, or None when both probabilities are 0 (plain hard targets)."""
    if cfg.cutmix_p == 0 and cfg.mixup_p == 0 and cfg.label_smoothing == 0:
        return None
    return BatchMixing(cfg, num_classes)
