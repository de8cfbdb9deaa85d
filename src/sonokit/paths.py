"""The one path resolver: local directories, Kaggle's /kaggle/input layouts and /kaggle/working.

Nothing else in the kit spells out a ``/kaggle/...`` path. Kaggle mounts inputs in two
layouts, and both are probed:

* legacy: ``/kaggle/input/<slug>/``
* newer:  ``/kaggle/input/competitions/<slug>/``, ``/kaggle/input/datasets/<owner>/<slug>/``,
  ``/kaggle/input/notebooks/<owner>/<kernel-slug>/``

``SONOKIT_KAGGLE_ROOT`` replaces ``/kaggle`` (tests build a Kaggle-like tree in a temp dir).
"""
from __future__ import annotations

import os
from pathlib import Path

KINDS = ("competitions", "datasets", "notebooks")


def kaggle_root() -> Path:
    return Path(os.environ.get("SONOKIT_KAGGLE_ROOT", "/kaggle"))


def on_kaggle() -> bool:
    """True inside a Kaggle kernel (or a test's Kaggle-like tree)."""
    return bool(os.environ.get("KAGGLE_KERNEL_RUN_TYPE")) or "SONOKIT_KAGGLE_ROOT" in os.environ


def working_dir() -> Path:
    """Where outputs go: /kaggle/working on Kaggle, the current directory elsewhere."""
    return kaggle_root() / "working" if on_kaggle() else Path.cwd()


def default_runs_dir() -> Path:
    return working_dir() if on_kaggle() else Path.cwd() / "runs"


def default_cache_dir() -> Path:
    """Image cache location: $SONOKIT_CACHE, else /kaggle/tmp-like scratch on Kaggle, else ~/.cache."""
    env = os.environ.get("SONOKIT_CACHE")
    if env:
        return Path(env)
    if on_kaggle():
        # /kaggle/working is saved as the kernel's output; a cache does not belong there.
        return Path(os.environ.get("TMPDIR", "/tmp")) / "sonokit-cache"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "sonokit"


def run_dir(name: str, out_dir: str | Path = "") -> Path:
    """``<out_dir or default>/<name>``; the name must be a plain directory name."""
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise ValueError(f"run name {name!r} must be a plain directory name")
    base = Path(out_dir) if out_dir else default_runs_dir()
    return base / name


def kaggle_input_candidates(slug: str, kind: str = "", owner: str = "") -> list[Path]:
    """Every place Kaggle may mount input ``slug`` (legacy layout first, then the newer one)."""
    root = kaggle_root() / "input"
    cands = [root / slug]
    kinds = [kind] if kind else list(KINDS)
    for k in kinds:
        if k == "competitions":
            cands.append(root / "competitions" / slug)
        elif owner:
            cands.append(root / k / owner / slug)
        else:
            base = root / k
            if base.is_dir():
                cands.extend(sorted(p / slug for p in base.iterdir() if p.is_dir()))
    return cands


def find_kaggle_input(slug: str, kind: str = "", owner: str = "", marker: str = "") -> Path:
    """Resolve a Kaggle input directory; with ``marker``, fall back to searching for that file."""
    for cand in kaggle_input_candidates(slug, kind, owner):
        if cand.is_dir() and (not marker or (cand / marker).exists()):
            return cand
    root = kaggle_root() / "input"
    if marker and root.is_dir():
        depth = len(Path(marker).parts)
        bases = [hit.parents[depth - 1] for hit in sorted(root.rglob(marker))]
        for base in bases:
            if base.name == slug:
                return base
        if len(bases) == 1:
            return bases[0]
    raise FileNotFoundError(
        f"Kaggle input '{slug}' not found under {root} (looked in: "
        + ", ".join(str(c) for c in kaggle_input_candidates(slug, kind, owner))
        + ")"
    )


def resolve_data_dir(root: str | Path = "", competition: str = "") -> Path:
    """The competition data: an explicit directory, or on Kaggle the competition's mount."""
    if root:
        path = Path(root).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"data directory not found: {path}")
        return path
    if on_kaggle() and competition:
        return find_kaggle_input(competition, "competitions", marker="")
    raise FileNotFoundError("no data directory given (use --data DIR)")


def resolve_assets(spec: str) -> Path | None:
    """The assets folder (scripts/export_assets.py): a local directory, or on Kaggle the attached
    dataset ``owner/slug`` (either mount layout). A configured one that is not there is an error."""
    if not spec:
        return None
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if on_kaggle() and "/" in spec and not spec.startswith(("/", ".")):
        owner, _, slug = spec.partition("/")
        try:
            return find_kaggle_input(slug, "datasets", owner)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"the assets dataset {spec} is not attached to this notebook: add it (Add Input, or dataset_sources in "
                f"kernel-metadata.json), or set run.assets to \"\" and the model weights to none to train from scratch"
            ) from None
    raise FileNotFoundError(f"run.assets: no assets folder at {path} (make one with python scripts/export_assets.py)")


def submissions_dir() -> Path:
    """Where packaged submissions go: $SONOKIT_SUBMISSIONS, the checkout's submissions/, or ./submissions."""
    env = os.environ.get("SONOKIT_SUBMISSIONS")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2]
    if (repo / "submissions").is_dir() and (repo / "setup.cfg").is_file():
        return repo / "submissions"
    return working_dir() / "submissions"


def packaged_schema() -> Path:
    """The default input schema: input_schema/default.yaml in a checkout (the user may edit it), else the
    packaged copy (src/sonokit/default_schema.yaml, a link to it in the repository, a file in a wheel)."""
    here = Path(__file__).resolve()
    for cand in (here.parents[2] / "input_schema" / "default.yaml", here.parent / "default_schema.yaml"):
        if cand.is_file():
            return cand
    raise FileNotFoundError("input_schema/default.yaml not found")
