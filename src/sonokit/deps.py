"""What the kit needs from its environment, checked at start, and installed offline on Kaggle.

Kaggle's notebook image is a runtime of its own: with internet off, only what it ships is
there, in whatever version it ships. Each stage declares the packages it imports
(:func:`stage_needs`); :func:`check` names every package that is missing or older than the
kit's floor (the version found and the version needed); :func:`ensure` installs those from an
attached assets dataset's ``wheels/`` folder (``pip install --no-index --find-links``) and
stops with one message listing what is missing when it cannot.

Standard library only (plus ``packaging`` when present): a notebook imports this module before
anything else, to find out whether it can import the rest.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ASSETS_COMMAND = "python scripts/export_assets.py ASSETS --owner YOUR_KAGGLE_USER && kaggle datasets create -p ASSETS"


@dataclass(frozen=True)
class Requirement:
    dist: str  # distribution name (pip install / importlib.metadata)
    module: str  # import name
    floor: str = ""  # lowest version the kit works with ("" = any)
    why: str = ""  # the API that sets the floor


#: Every package the kit imports, with its floor and the reason for it (checked in the notes of
#: the issue that set them: found in each package's release history).
REQUIREMENTS: dict[str, Requirement] = {r.dist: r for r in (
    Requirement("torch", "torch", "2.3", "torch.amp.GradScaler('cuda') (2.3)"),
    Requirement("torchvision", "torchvision", "", "imported by timm"),
    Requirement("timm", "timm", "1.0.27",
                "timm.task (1.0.23), DistillationTeacher(model) (1.0.25), task.compile / get_clip_parameters (1.0.27)"),
    Requirement("efficientnet_pytorch", "efficientnet_pytorch", "0.7.1", "EfficientNet.from_name(..., in_channels=)"),
    Requirement("albumentations", "albumentations", "2.0", "albumentations 2 API (fill=, random_generator)"),
    Requirement("einops", "einops", "0.6", "einops.layers.torch.Reduce"),
    Requirement("thop", "thop", "0.1.1", "thop.profile: the competition's FLOPs number"),
    Requirement("torch-pruning", "torch_pruning", "1.6", "MetaPruner, GroupMagnitudeImportance (1.6)"),
    Requirement("scikit-learn", "sklearn", "1.0", "StratifiedKFold, confusion_matrix"),
    Requirement("pandas", "pandas", "1.5", ""),
    Requirement("numpy", "numpy", "1.23", ""),
    Requirement("opencv", "cv2", "", "resize, FancyPCA's cv2.transform"),
    Requirement("matplotlib", "matplotlib", "3.5", "Axes.set_yticks(labels=) (3.5)"),
    Requirement("PyYAML", "yaml", "", ""),
    Requirement("tqdm", "tqdm", "", ""),
    Requirement("pillow", "PIL", "9.1", "Image.Resampling"),
    Requirement("optuna", "optuna", "5.0", "the sweep's study (optuna.storages.journal.JournalFileBackend)"),
)}

#: What every training or predicting stage imports.
BASE = ("torch", "torchvision", "timm", "albumentations", "einops", "scikit-learn", "pandas", "numpy", "opencv",
        "matplotlib", "PyYAML", "tqdm", "pillow")


def stage_needs(stages, model_names=(), hrank_mode: str = "reinit") -> list[str]:
    """The distributions ``stages`` import, given the models they build and the HRank mode.

    thop only where FLOPs are counted (the flops and report stages, pruning's before/after costs);
    torch-pruning only to prune (a pruned checkpoint is rebuilt from plain shapes without it);
    efficientnet_pytorch only for ``efficientnet-b*`` models.
    """
    stages = set(stages)
    needs = list(BASE) if stages - {"package"} else []
    if any(re.match(r"^efficientnet-b[0-7]$", n or "") for n in model_names):
        needs.append("efficientnet_pytorch")
    if "flops" in stages or ("hrank" in stages and hrank_mode == "prune") or "report" in stages:
        needs.append("thop")
    if "hrank" in stages and hrank_mode == "prune":
        needs.append("torch-pruning")
    return needs


def requirements(cfg, stages) -> list[str]:
    """The distributions a run of ``stages`` with config ``cfg`` imports (:func:`stage_needs` for its models)."""
    stages = set(stages)
    names = []
    kd = cfg.student.kd.enabled and stages & {"student", "hrank"}
    if "teacher" in stages or kd or ("infer" in stages and cfg.infer.stage == "teacher"):
        names.append(cfg.teacher.model.name)
    if stages & {"student", "hrank"} or ("infer" in stages and cfg.infer.stage != "teacher"):
        names.append(cfg.student.model.name)
    return stage_needs(stages, names, cfg.hrank.mode)


def _version_tuple(text: str) -> tuple:
    try:
        from packaging.version import Version

        return (Version(text),)
    except Exception:  # noqa: BLE001 - no packaging, or a version packaging cannot parse
        return (tuple(int(x) for x in re.findall(r"\d+", text.split("+")[0])[:4]),)


def older(found: str, floor: str) -> bool:
    """True when version ``found`` is below ``floor`` ("0.1.1-2209072238" >= "0.1.1", "1.0.9" < "1.0.27")."""
    if not floor:
        return False
    a, b = _version_tuple(found), _version_tuple(floor)
    if type(a[0]) is not type(b[0]):
        a = (tuple(int(x) for x in re.findall(r"\d+", found)[:4]),)
        b = (tuple(int(x) for x in re.findall(r"\d+", floor)[:4]),)
    return a < b


@dataclass
class Problem:
    req: Requirement
    found: str  # "" = not importable

    def __str__(self) -> str:
        need = f">= {self.req.floor}" if self.req.floor else "any version"
        got = f"version {self.found} found" if self.found else "not installed"
        why = f" (needed for {self.req.why})" if self.req.why else ""
        return f"{self.req.dist}: {got}, {need} needed{why}"


class MissingDependencies(RuntimeError):
    """Packages are missing or too old, and could not be installed; the message lists them."""

    def __init__(self, problems: list[Problem], hint: str):
        self.problems = problems
        super().__init__("missing or too old:\n  " + "\n  ".join(map(str, problems)) + ("\n" + hint if hint else ""))


def installed_version(req: Requirement) -> str:
    """The version of ``req`` that an import would load ("" when it cannot be imported)."""
    try:
        if importlib.util.find_spec(req.module) is None:
            return ""
    except (ImportError, ValueError):
        return ""
    for name in (req.dist, req.module):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    mod = sys.modules.get(req.module)
    return str(getattr(mod, "__version__", "0")) if mod else "0"


def check(dists) -> list[Problem]:
    """Every distribution of ``dists`` that cannot be imported or is older than its floor."""
    importlib.invalidate_caches()
    problems = []
    for d in dict.fromkeys(dists):
        req = REQUIREMENTS[d]
        found = installed_version(req)
        if not found or older(found, req.floor):
            problems.append(Problem(req, found))
    return problems


def require(dists, hint: str = "") -> None:
    """Raise :class:`MissingDependencies` naming each package, the version found and the version needed."""
    problems = check(dists)
    if problems:
        raise MissingDependencies(problems, hint or "install them, e.g. pip install " + " ".join(
            f"'{p.req.dist}>={p.req.floor}'" if p.req.floor else p.req.dist for p in problems))


def _wheel_for(req: Requirement, wheels: Path) -> Path | None:
    prefix = re.sub(r"[-_.]+", "_", req.dist).lower() + "-"
    for w in sorted(wheels.glob("*.whl"), reverse=True):
        if re.sub(r"[-_.]+", "_", w.name.split("-")[0]).lower() + "-" == prefix:
            version = w.name.split("-")[1]
            if not older(version, req.floor):
                return w
    return None


def ensure(dists, wheels_dir: str | Path | None, target: str | Path | None = None, quiet: bool = False) -> list[str]:
    """Make ``dists`` importable: install what is missing or too old from ``wheels_dir``.

    Installs with ``pip install --no-index --find-links WHEELS --no-deps --target TARGET`` and puts
    TARGET first on ``sys.path`` (so a newer wheel wins over an older copy in the image).
    Returns what it installed; raises :class:`MissingDependencies` (with the command that makes
    the assets dataset) when something is missing and no wheel for it is at hand.
    """
    problems = check(dists)
    if not problems:
        return []
    wheels = Path(wheels_dir) if wheels_dir else None
    hint = (f"Attach the sonokit assets dataset (its wheels/ folder has them); make it on a machine with internet:\n  "
            f"{ASSETS_COMMAND}")
    if wheels is None or not wheels.is_dir():
        raise MissingDependencies(problems, hint + ("" if wheels is None else f"\n(no wheels folder at {wheels})"))
    files = {p.req.dist: _wheel_for(p.req, wheels) for p in problems}
    absent = [p for p in problems if files[p.req.dist] is None]
    if absent:
        raise MissingDependencies(absent, f"{wheels} has no wheel for them.\n" + hint)
    target = Path(target) if target else Path(tempfile.gettempdir()) / "sonokit-deps"
    target.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(wheels), "--no-deps", "--upgrade",
           "--target", str(target), "--quiet", *[str(f) for f in files.values()]]
    if not quiet:
        print("installing from the assets dataset: " + ", ".join(f.name for f in files.values()), flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    if r.returncode != 0:
        raise MissingDependencies(problems, f"pip could not install them from {wheels}:\n{r.stderr[-2000:]}")
    if str(target) not in sys.path:
        sys.path.insert(0, str(target))
    for p in problems:  # a stale copy imported before would shadow the new one
        for name in [m for m in sys.modules if m == p.req.module or m.startswith(p.req.module + ".")]:
            del sys.modules[name]
    still = check(dists)
    if still:
        raise MissingDependencies(still, f"installed from {wheels} into {target}, but still not importable")
    return [f.name for f in files.values()]


def kernel_setup(needs, assets_dataset: str = "") -> list[str]:
    """A notebook's first step: make ``needs`` importable, from the attached assets dataset if need be.

    Prints one message and stops the notebook (SystemExit) when something is missing and the
    assets dataset (or a wheel in it) is not there.
    """
    from .paths import find_kaggle_input

    wheels = None
    if assets_dataset:
        owner, _, slug = assets_dataset.partition("/")
        try:
            wheels = find_kaggle_input(slug or owner, "datasets", owner if slug else "") / "wheels"
        except FileNotFoundError:
            wheels = None
    try:
        installed = ensure(needs, wheels)
    except MissingDependencies as e:
        where = f" (assets dataset {assets_dataset} {'has no wheels/ folder' if wheels else 'is not attached'})" if assets_dataset else ""
        print(f"sonokit cannot run this notebook{where}: {e}", flush=True)
        raise SystemExit(1) from None
    print("dependencies: " + (f"installed {', '.join(installed)} from the assets dataset" if installed else "all present"), flush=True)
    return installed
