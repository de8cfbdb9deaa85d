"""Model cost: the competition's thop number, the true FLOPs, parameters, pipeline cost, latency.

The competition's host profiles the final model with ``thop.profile`` on
``torch.randn(1, C, S, S)`` and reports ``round(2 * MACs / 1e9, 7)`` GFLOPs (of
``model.module``, the DataParallel-wrapped model). thop looks modules up by *exact* type,
so subclasses of nn.Conv2d such as timm's ``ScaledStdConv2d`` (every conv of an NF model) or
efficientnet_pytorch's ``Conv2dStaticSamePadding`` count zero: nf_regnet_b1's number is
0.0092865 at 256 px while it really costs about 1.556 GFLOPs. Both are reported here, side by
side; the true count comes from ``torch.utils.flop_counter.FlopCounterMode`` and is
cross-checked with thop given rules for those subclasses.
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass

import thop
import torch
import torch.nn as nn
from thop.profile import register_hooks
from torch.utils.flop_counter import FlopCounterMode

from .models import bare_model

WHY = (
    "thop counts only modules whose exact type it knows (nn.Conv2d, nn.Linear, ...); subclasses such "
    "as timm's ScaledStdConv2d or efficientnet_pytorch's Conv2dStaticSamePadding count zero, so the "
    "competition's number leaves those convolutions out. The true FLOPs count every operation."
)


def unwrap(model: nn.Module) -> nn.Module:
    """The host profiles ``model.module``: unwrap DataParallel / DDP (and torch.compile)."""
    return bare_model(model)


def _input(model: nn.Module, size: int, in_chans: int) -> torch.Tensor:
    p = next(iter(model.parameters()), None)
    device = p.device if p is not None else torch.device("cpu")
    return torch.randn(1, in_chans, size, size, device=device)


def competition_gflops(model: nn.Module, size: int = 256, in_chans: int = 1) -> float:
    """Exactly the host's check: thop.profile, 2 x MACs / 1e9, rounded to 7 places."""
    m = copy.deepcopy(unwrap(model)).eval()
    macs, _ = thop.profile(m, inputs=(_input(m, size, in_chans),), verbose=False)
    return round(2 * macs / 1e9, 7)


def subclass_rules(model: nn.Module) -> dict:
    """thop rules for subclasses of the types thop knows (ScaledStdConv2d -> the Conv2d rule, ...)."""
    rules = {}
    for mod in model.modules():
        t = type(mod)
        if t in register_hooks or t in rules:
            continue
        for base in t.__mro__[1:]:
            if base in register_hooks:
                rules[t] = register_hooks[base]
                break
    return rules


def thop_full_gflops(model: nn.Module, size: int = 256, in_chans: int = 1) -> tuple[float, int]:
    """thop with rules for the subclasses it skips: (GFLOPs = 2 x MACs / 1e9, params it saw)."""
    m = copy.deepcopy(unwrap(model)).eval()
    macs, params = thop.profile(m, inputs=(_input(m, size, in_chans),), custom_ops=subclass_rules(m), verbose=False)
    return 2 * macs / 1e9, int(params)


def true_gflops(model: nn.Module, size: int = 256, in_chans: int = 1) -> float:
    """Every operation counted by torch.utils.flop_counter.FlopCounterMode (batch 1)."""
    m = unwrap(model)
    was_training = m.training
    m.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            m(_input(m, size, in_chans))
    finally:
        m.train(was_training)
    return fc.get_total_flops() / 1e9


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in unwrap(model).parameters())


def latency_ms(model: nn.Module, size: int = 256, in_chans: int = 1, repeats: int = 20, warmup: int = 3) -> float:
    """Median forward time at batch 1 in milliseconds (report it next to FLOPs)."""
    m = unwrap(model).eval()
    x = _input(m, size, in_chans)
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            if x.is_cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            m(x)
            if x.is_cuda:
                torch.cuda.synchronize()
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return times[len(times) // 2]


@dataclass
class CostReport:
    size: int
    in_chans: int
    competition_gflops: float
    true_gflops: float
    thop_full_gflops: float
    params: int
    thop_params: int
    n_models: int = 1
    tta_views: int = 1

    @property
    def pipeline_gflops(self) -> float:
        """True cost of one test image through the submission: models x TTA views x true FLOPs."""
        return self.true_gflops * self.n_models * self.tta_views

    def to_dict(self) -> dict:
        return {**asdict(self), "pipeline_gflops": self.pipeline_gflops, "why_they_differ": WHY}

    def lines(self, target: float | None = None) -> list[str]:
        out = [
            f"competition number (thop, 1x{self.in_chans}x{self.size}x{self.size}): {self.competition_gflops:.7f} GFLOPs"
            + (f"  (target {target:.7f}: {'MATCH' if self.competition_gflops == round(target, 7) else 'DIFFERENT'})" if target is not None else ""),
            f"true FLOPs (FlopCounterMode):  {self.true_gflops:.4f} GFLOPs"
            f"  (thop with subclass rules: {self.thop_full_gflops:.4f}; ratio true/competition: "
            f"{self.true_gflops / self.competition_gflops if self.competition_gflops else float('inf'):.0f}x)",
            f"parameters: {self.params / 1e6:.3f} M (thop sees {self.thop_params / 1e6:.3f} M)",
            f"submission pipeline: {self.n_models} model(s) x {self.tta_views} TTA view(s) = {self.pipeline_gflops:.4f} true GFLOPs per image",
            f"why they differ: {WHY}",
        ]
        return out


def cost_report(model: nn.Module, size: int = 256, in_chans: int = 1, n_models: int = 1, tta_views: int = 1) -> CostReport:
    full, thop_params_full = thop_full_gflops(model, size, in_chans)
    m = copy.deepcopy(unwrap(model)).eval()
    _, thop_params = thop.profile(m, inputs=(_input(m, size, in_chans),), verbose=False)
    return CostReport(
        size=size,
        in_chans=in_chans,
        competition_gflops=competition_gflops(model, size, in_chans),
        true_gflops=true_gflops(model, size, in_chans),
        thop_full_gflops=full,
        params=count_params(model),
        thop_params=int(thop_params),
        n_models=n_models,
        tta_views=tta_views,
    )
