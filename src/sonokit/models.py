"""Model factory: timm models, efficientnet_pytorch EfficientNets, the einops grayscale front.

``create_model`` never downloads. ``weights="imagenet"`` finds the ImageNet weights offline
(:func:`find_imagenet_weights`: the assets folder or dataset, else timm's / the torch hub's
local caches) and loads them the timm way (``pretrained=True`` with
``pretrained_cfg_overlay=dict(file=...)``, which sums the stem over channels for 1-channel
input and drops a classifier of another class count); efficientnet_pytorch models get the file
through :func:`load_weights`, which adapts the same way. When no weights are found the error
says how to get them, or to set ``model.weights=none`` to train from scratch on purpose.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn
from einops.layers.torch import Reduce
from timm.models._manipulate import adapt_input_conv

from .io import torch_load_safe

_logger = logging.getLogger("sonokit")
_EFFNET = re.compile(r"^efficientnet-b[0-7]$")


class Grayscale(nn.Module):
    """Channel mean with einops ``Reduce``: (B, C, H, W) -> (B, 1, H, W); identity for C = 1.

    Unlike albumentations' ToGray (3 equal channels), the network behind it really takes one
    channel, which lowers its FLOPs.
    """

    def __init__(self):
        super().__init__()
        self.reduce = Reduce("b c h w -> b 1 h w", "mean")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reduce(x)


class GrayscaleModel(nn.Module):
    """A 1-channel network behind :class:`Grayscale`, so it takes the same 3-channel batches as
    a teacher (and 1-channel input, as the competition's FLOPs check feeds it)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.gray = Grayscale()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.gray(x))

    @property
    def num_classes(self) -> int:
        return model_num_classes(self.model)


def is_efficientnet_pytorch(name: str) -> bool:
    return bool(_EFFNET.match(name))


def model_num_classes(model: nn.Module) -> int:
    if hasattr(model, "num_classes"):
        return int(model.num_classes)
    fc = getattr(model, "_fc", None)
    if isinstance(fc, nn.Linear):
        return fc.out_features
    raise AttributeError(f"cannot tell the class count of {type(model).__name__}")


class WeightsNotFound(FileNotFoundError):
    """ImageNet weights were asked for and none were found offline; the message says how to get them."""


def weights_file_name(name: str) -> str:
    """The file an assets folder holds for model ``name`` (scripts/export_assets.py writes it)."""
    return f"{name}.pth"


def _cached_imagenet_file(name: str) -> Path | None:
    """The library's own download of ``name``'s ImageNet weights, if it is in a local cache."""
    if is_efficientnet_pytorch(name):
        from efficientnet_pytorch.utils import url_map

        f = Path(torch.hub.get_dir()) / "checkpoints" / Path(url_map[name]).name
        return f if f.is_file() else None
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - timm depends on huggingface_hub
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            repo = cfg.hf_hub_id.split("@")[0]
            for fname in ([cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]):
                hit = try_to_load_from_cache(repo, fname)
                if isinstance(hit, str) and Path(hit).is_file():
                    return Path(hit)
    if cfg.url:
        f = Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg.url.split("?")[0]).name
        if f.is_file():
            return f
    return None


def find_imagenet_weights(name: str, assets: str | Path | None = None, key: str = "model.weights") -> Path:
    """The ImageNet weights of ``name``, found offline, or :class:`WeightsNotFound` saying how to get them.

    ``assets``: an assets folder (scripts/export_assets.py; on Kaggle the attached dataset):
    when given, the file must be there. Without it: timm's Hugging Face cache and the torch
    hub cache, where the libraries' own downloads land.
    """
    if assets:
        f = Path(assets) / "weights" / weights_file_name(name)
        if f.is_file():
            return f
        raise WeightsNotFound(f"no ImageNet weights for {name} in the assets at {assets} (expected {f}); remake the assets "
                              f"with this model (python scripts/export_assets.py ... --set <stage>.model.name={name}), "
                              f"or set {key}=none to train from scratch on purpose")
    hit = _cached_imagenet_file(name)
    if hit is not None:
        return hit
    fetch = (f"python -c \"from efficientnet_pytorch import EfficientNet; EfficientNet.from_pretrained('{name}')\""
             if is_efficientnet_pytorch(name) else f"python -c \"import timm; timm.create_model('{name}', pretrained=True)\"")
    raise WeightsNotFound(
        f"no ImageNet weights for {name} found offline (looked in timm's Hugging Face cache and {torch.hub.get_dir()}). "
        f"Get them on a machine with internet: {fetch} (fills the local cache), or "
        f"python scripts/export_assets.py ASSETS --owner USER and set run.assets=ASSETS; or point {key} at a weights file; "
        f"or set {key}=none to train from scratch on purpose"
    )


def _build(name: str, num_classes: int, in_chans: int, imagenet_file: Path | None, drop_rate: float) -> nn.Module:
    if is_efficientnet_pytorch(name):
        from efficientnet_pytorch import EfficientNet

        kw: dict[str, Any] = {"num_classes": num_classes, "in_channels": in_chans}
        if drop_rate:
            kw["dropout_rate"] = drop_rate
        m = EfficientNet.from_name(name, **kw)
        if imagenet_file is not None:
            load_weights(m, imagenet_file)  # 3 -> 1 channel stem summed, 1000-class head re-initialised
        m.set_swish(memory_efficient=False)  # plain SiLU: traceable, compilable, countable
        return m
    try:
        if imagenet_file is not None:
            # the timm way: timm's own loader adapts the stem (in_chans) and drops a head of another class count
            return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(imagenet_file)),
                                     num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise ValueError(
                f"unknown model {name!r}: use a timm model name (timm.list_models()) or efficientnet-b0..b7"
            ) from None
        raise


def create_model(
    name: str,
    num_classes: int,
    in_chans: int = 3,
    weights: str | Path | None = None,
    drop_rate: float = 0.0,
    assets: str | Path | None = None,
    key: str = "model.weights",
) -> nn.Module:
    """Build a classifier.

    Args:
        name: a timm model name, or ``efficientnet-b0`` .. ``efficientnet-b7`` (efficientnet_pytorch).
        num_classes: output classes.
        in_chans: input channels of the network. With 1, the network sits behind the einops
            :class:`Grayscale` front and accepts 3-channel batches too.
        weights: None or ``"none"`` (random init, on purpose), ``"imagenet"`` (found offline, see
            :func:`find_imagenet_weights`; never downloaded), or a local file (adapted, see
            :func:`load_weights`).
        drop_rate: classifier dropout.
        assets: the assets folder to take ImageNet weights from (scripts/export_assets.py).
        key: the config key that set ``weights`` (named in error messages).
    """
    if num_classes < 1:
        raise ValueError("num_classes must be at least 1")
    if in_chans not in (1, 3):
        raise ValueError(f"in_chans must be 1 or 3, not {in_chans}")
    spec = "none" if weights is None else str(weights).strip()
    if not spec:
        raise ValueError(f"{key} is empty: use imagenet, none (train from scratch) or a weights file")
    imagenet = find_imagenet_weights(name, assets, key) if spec == "imagenet" else None
    net = _build(name, num_classes, in_chans, imagenet, drop_rate)
    if spec not in ("imagenet", "none"):
        load_weights(net, spec)
    return GrayscaleModel(net) if in_chans == 1 else net


def _unwrap_state(obj: Any) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state"):
            if key in obj and isinstance(obj[key], dict):
                return _unwrap_state(obj[key])
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {k.removeprefix("module."): v for k, v in obj.items()}
    raise ValueError("the weights file holds no state dict")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return _unwrap_state(torch_load_safe(path))


def load_weights(model: nn.Module, path: str | Path) -> list[str]:
    """Load ``path`` into ``model`` (the bare network), adapting what can be adapted.

    A conv whose weights have 3 input channels where the model has 1 is summed over channels
    (timm's ``adapt_input_conv``); a tensor of the classifier whose shape differs (another
    class count) keeps the model's fresh initialisation. Anything else that does not fit is an
    error. Returns the notes it logged.
    """
    src = read_state_dict(path)
    if isinstance(model, GrayscaleModel):
        model = model.model
    dst = model.state_dict()
    out, notes, bad = {}, [], []
    for key, target in dst.items():
        if key not in src:
            bad.append(f"missing in weights: {key}")
            continue
        w = src[key]
        if w.shape == target.shape:
            out[key] = w
        elif w.ndim == 4 and target.ndim == 4 and w.shape[1] != target.shape[1] and w.shape[0] == target.shape[0]:
            out[key] = adapt_input_conv(target.shape[1], w.float()).to(target.dtype)
            notes.append(f"{key}: {w.shape[1]}-channel weights adapted to {target.shape[1]} channel(s)")
        elif w.shape[0] != target.shape[0] and w.shape[1:] == target.shape[1:] and _is_classifier(model, key):
            out[key] = target
            notes.append(
                f"{key}: classifier re-initialised (weights have {w.shape[0]} classes, model has {target.shape[0]})"
            )
        else:
            bad.append(f"shape mismatch for {key}: weights {tuple(w.shape)}, model {tuple(target.shape)}")
    unexpected = sorted(set(src) - set(dst))
    if unexpected:
        bad.append(f"unexpected keys in weights: {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
    if bad:
        raise ValueError(f"weights {path} do not fit the model:\n  " + "\n  ".join(bad[:10]))
    model.load_state_dict(out)
    for n in notes:
        _logger.warning(n)
    return notes


def _is_classifier(model: nn.Module, key: str) -> bool:
    module_name = key.rsplit(".", 1)[0]
    if hasattr(model, "get_classifier"):
        clf = model.get_classifier()
        for name, m in model.named_modules():
            if m is clf:
                return module_name == name
    return module_name in ("_fc", "fc", "classifier", "head", "head.fc")


def bare_model(model: nn.Module) -> nn.Module:
    """Unwrap DDP / DataParallel / torch.compile wrappers (not the grayscale front)."""
    while True:
        if hasattr(model, "module") and isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
