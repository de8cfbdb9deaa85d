"""Config is data: one dataclass per component, YAML files and ``--set key=value`` on top.

Every component owns its defaults in a dataclass. :func:`load_config` starts from those
defaults, applies YAML files in order, then ``key=value`` overrides with dotted keys
(``student.train.epochs=3``). A key that does not exist is an error naming the valid keys;
a value of the wrong type is an error naming the expected type. :func:`save_config`
writes the resolved config into a run directory.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .constants import DEFAULT_STUDENT, DEFAULT_TEACHER


class ConfigError(ValueError):
    """A config file or override names an unknown key or holds a value of the wrong type."""


@dataclass
class DataConfig:
    root: str = ""  # data directory (train.csv, train/, test/, sample_submission.csv)
    schema: str = ""  # input schema YAML; "" = input_schema/default.yaml shipped with the kit
    image_size: int = 256  # model input size (RandomCrop / eval resize)
    resize_size: int = 288  # train images are resized to this, then randomly cropped
    interpolation: str = "area"  # cv2 interpolation used when building the cache
    normalize: str = "dataset"  # "dataset" (train-set mean/std) or "imagenet"
    folds: int = 5
    seed: int = 42
    cache_dir: str = ""  # "" = the path resolver's default
    num_workers: int = -1  # -1 = min(cpu count, 8)


@dataclass
class AugConfig:
    device: str = "auto"  # where train augmentation runs: auto (gpu on CUDA), cpu (loader workers), gpu (per batch, training device)
    rotate_limit: float = 15.0  # degrees; 0 disables Rotate
    rotate_p: float = 0.5
    fancy_pca_p: float = 0.5
    fancy_pca_alpha: float = 0.1
    hflip_p: float = 0.0  # the source's best set did not use flips
    vflip_p: float = 0.0


@dataclass
class MixConfig:
    cutmix_p: float = 0.25  # per-batch probability of CutMix
    mixup_p: float = 0.25  # per-batch probability of MixUp
    mixup_alpha: float = 1.0
    cutmix_alpha: float = 1.0
    label_smoothing: float = 0.0


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 32  # global batch (split across DDP processes)
    lr: float = 1e-3
    weight_decay: float = 1e-2
    patience: int = 5  # early stopping on validation loss
    plateau_patience: int = 2  # ReduceLROnPlateau
    plateau_factor: float = 0.5
    min_lr: float = 1e-6
    amp: str = "auto"  # auto (fp16 on CUDA, off on CPU), off, fp16, bf16
    clip_mode: str = "none"  # none, norm, value, agc
    clip_value: float = 0.01  # agc: 0.01 as in NFNet/timm; norm/value: the threshold
    channels_last: bool = False
    compile: bool = False
    max_batches: int = 0  # >0: cap batches per epoch (smoke runs and sweeps)
    monitor: str = "val_loss"  # val_loss or val_acc: picks best.pt, drives early stopping and the plateau decay
    accum_steps: int = 1  # gradient accumulation: one optimizer step every N batches (effective batch N x batch_size)
    warmup_epochs: float = 0.0  # linear lr warmup over this many epochs (per optimizer step); 0 = none
    warmup_start: float = 0.1  # warmup starts at this fraction of lr
    ema: bool = False  # keep a model EMA (timm ModelEmaV3): evaluated, monitored and saved as best.pt
    ema_decay: float = 0.998


@dataclass
class ModelConfig:
    name: str = DEFAULT_STUDENT
    in_chans: int = 1
    weights: str = "imagenet"  # imagenet (found offline: run.assets, else timm's / torch hub's cache), none (from scratch), or a file
    drop_rate: float = 0.0


def _teacher_model() -> ModelConfig:
    return ModelConfig(name=DEFAULT_TEACHER, in_chans=3)


@dataclass
class TeacherConfig:
    model: ModelConfig = field(default_factory=_teacher_model)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class KDConfig:
    enabled: bool = True
    temperature: float = 4.0
    w_task: float = 0.5  # w_kd = 1 - w_task
    control: bool = False  # also train the same student without KD (same seeds) into student_nokd/


@dataclass
class StudentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    kd: KDConfig = field(default_factory=KDConfig)
    mix: MixConfig = field(default_factory=MixConfig)


def _hrank_train() -> TrainConfig:
    return TrainConfig(epochs=10, lr=3e-4)


@dataclass
class HRankConfig:
    mode: str = "reinit"  # reinit (the source: fresh weights for low-rank filters), prune (remove them), finetune (the control)
    control: bool = False  # also run mode=finetune (the same fine-tuning, no filter changed) into hrank_finetune/
    ratio: float = 0.125  # fraction of filters re-initialised / pruned
    layer: str = "stages.2.-1.conv3"  # reinit: the conv whose filters are ranked (dotted path, -1 = last)
    prune_stages: str = "0,1,2,3"  # prune: rank and prune the convs of these stages
    rank_batches: int = 4  # batches of the training fold used to compute the ranks
    train: TrainConfig = field(default_factory=_hrank_train)  # fine-tuning (the student's KD task)


@dataclass
class InferConfig:
    stage: str = "student"  # whose fold checkpoints are the members: student, hrank or teacher
    checkpoints: str = ""  # more members: comma list of best.pt paths or globs (other runs, models)
    weights: str = ""  # soft-voting weights, comma list, one per member ("" = equal)
    tta: str = "orig,fancypca"  # views: orig, fancypca (p=1, as in the source), hflip, vflip
    batch_size: int = 64


@dataclass
class RunConfig:
    name: str = "default"
    out_dir: str = ""  # "" = the path resolver's default (./runs locally, /kaggle/working on Kaggle)
    folds: str = "all"  # which folds to train: "all" or a comma list such as "0,2"
    competition: str = ""  # Kaggle competition slug (submissions, kernels)
    assets: str = ""  # assets folder of scripts/export_assets.py (ImageNet weights, wheels); on Kaggle its dataset owner/slug
    seed: int = 42
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    collective_timeout_s: float = 60.0  # DDP: a training collective waiting longer than this ends the run (a dead or hung peer)
    wait_timeout_s: float = 86400.0  # DDP: how long ranks wait for one rank's one-off work (data preparation, HRank ranks)


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    hrank: HRankConfig = field(default_factory=HRankConfig)
    infer: InferConfig = field(default_factory=InferConfig)


# ---------------------------------------------------------------------------------------
def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _field_types(obj: Any) -> dict[str, Any]:
    hints = typing.get_type_hints(type(obj))
    return {f.name: hints[f.name] for f in dataclasses.fields(obj)}


def _coerce(value: Any, typ: Any, key: str) -> Any:
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif typ is str:
        if value is None:
            return ""
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    else:  # pragma: no cover - only the types above are used in the dataclasses
        return value
    raise ConfigError(f"config key '{key}' expects {typ.__name__}, got {value!r}")


def _apply(obj: Any, updates: dict, prefix: str = "") -> None:
    if not isinstance(updates, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping")
    types = _field_types(obj)
    for key, value in updates.items():
        full = f"{prefix}{key}"
        if key not in types:
            valid = ", ".join(f"{prefix}{k}" for k in types)
            raise ConfigError(f"unknown config key '{full}'; valid keys here: {valid}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _apply(current, value, f"{full}.")
        else:
            setattr(obj, key, _coerce(value, types[key], full))


def _nest(dotted: str, value: Any) -> dict:
    out: dict = {}
    node = out
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def parse_override(text: str) -> dict:
    """``'a.b=3'`` -> ``{'a': {'b': 3}}``; the value is parsed as YAML (numbers, booleans...)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value (e.g. student.train.epochs=3)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    value = yaml.safe_load(raw) if raw.strip() else ""
    return _nest(key, value)


def load_config(
    files: list[str | Path] | None = None,
    overrides: list[str] | None = None,
    base: Config | None = None,
) -> Config:
    """Defaults, then each YAML file in order, then ``key=value`` overrides."""
    cfg = base if base is not None else Config()
    for f in files or []:
        path = Path(f)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        _apply(cfg, data)
    for o in overrides or []:
        _apply(cfg, parse_override(o))
    return cfg


def config_hash(cfg: Config) -> str:
    blob = json.dumps(to_dict(cfg), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def save_config(cfg: Config, run_dir: str | Path) -> Path:
    """Write the resolved config as YAML into ``run_dir`` (atomically)."""
    from .constants import CONFIG_FILENAME
    from .io import atomic_write_text

    path = Path(run_dir) / CONFIG_FILENAME
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path
