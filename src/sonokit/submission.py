"""Submission files: validation against sample_submission, and never-overwrite packaging."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .io import atomic_write_json
from .schema import Schema, submission_values


class SubmissionError(ValueError):
    """The submission does not match sample_submission; ``problems`` lists every difference."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid submission:\n  " + "\n  ".join(problems))


def _read_sample(sample: str | Path) -> pd.DataFrame:
    return pd.read_csv(sample, dtype=str, keep_default_na=False)


def build_submission(ids: Sequence[str], probs: np.ndarray, classes: Sequence[str], schema: Schema,
                     sample: str | Path | pd.DataFrame | None = None) -> pd.DataFrame:
    """sample_submission's columns and id order; the label as :func:`sonokit.schema.submission_values` says.

    Columns between the id and the label (a schema with more than two ``submission_columns``)
    keep sample_submission's values, so ``sample`` is required for such a schema.
    """
    pred = probs.argmax(1)
    values = submission_values(list(classes), schema)
    id_col, label_col = schema.submission_columns[0], schema.submission_label_column
    df = pd.DataFrame({id_col: list(ids), label_col: [values[i] for i in pred]})
    extra = schema.submission_columns[1:-1]
    if extra:
        if sample is None:
            raise ValueError(f"submission columns {extra} come from sample_submission: pass sample=")
        ref = sample if isinstance(sample, pd.DataFrame) else _read_sample(sample)
        missing = [c for c in extra if c not in ref.columns]
        if missing:
            raise ValueError(f"sample_submission has no column(s) {missing}")
        kept = ref.drop_duplicates(id_col).set_index(id_col)
        unknown = [i for i in ids if i not in kept.index]
        if unknown:
            raise ValueError(f"{len(unknown)} id(s) are not in sample_submission (e.g. {unknown[:5]})")
        for c in extra:
            df[c] = kept.loc[list(ids), c].to_numpy()
    return df[schema.submission_columns]


def validate_submission(path: str | Path, sample: str | Path, classes: Sequence[str], schema: Schema) -> list[str]:
    """Every way ``path`` differs from what ``sample`` requires (empty list = valid)."""
    problems: list[str] = []
    try:
        sub = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except Exception as e:  # noqa: BLE001 - any unreadable file is one problem line
        return [f"cannot read {path}: {e}"]
    ref = _read_sample(sample)
    if list(sub.columns) != list(ref.columns):
        problems.append(f"header {list(sub.columns)} differs from sample_submission's {list(ref.columns)}")
        return problems
    id_col, label_col = schema.submission_columns[0], schema.submission_label_column
    empty = sub[[id_col, label_col]].isna().any(axis=1)
    if empty.any():
        problems.append(f"{int(empty.sum())} row(s) with an empty/NaN id or label (e.g. {sub[empty][id_col].tolist()[:5]})")
    if sub[id_col].duplicated().any():
        problems.append(f"duplicate ids: {sub[id_col][sub[id_col].duplicated()].tolist()[:5]}")
    got, want = set(sub[id_col]), set(ref[id_col])
    if got != want:
        missing, extra = sorted(want - got), sorted(got - want)
        if missing:
            problems.append(f"{len(missing)} id(s) of sample_submission missing (e.g. {missing[:5]})")
        if extra:
            problems.append(f"{len(extra)} id(s) not in sample_submission (e.g. {extra[:5]})")
    elif list(sub[id_col]) != list(ref[id_col]):
        problems.append("ids are not in sample_submission's order")
    else:
        for c in schema.submission_columns[1:-1]:  # extra columns carry sample_submission's values
            changed = (sub[c].fillna("") != ref[c]).to_numpy()
            if changed.any():
                problems.append(f"column {c!r} differs from sample_submission's in {int(changed.sum())} row(s)")
    allowed = set(submission_values(list(classes), schema))
    bad_labels = sorted(set(sub[label_col].dropna()) - allowed)
    if bad_labels:
        problems.append(f"label(s) not in the class list: {bad_labels[:5]} (allowed: {sorted(allowed)})")
    return problems


def require_valid_submission(path, sample, classes, schema) -> None:
    problems = validate_submission(path, sample, classes, schema)
    if problems:
        raise SubmissionError(problems)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def git_commit(path: str | Path | None = None) -> str:
    """The sonokit checkout's commit (``unknown`` outside a git checkout)."""
    here = Path(path) if path else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = out.stdout.strip() if out.returncode == 0 else "unknown"
    if commit != "unknown":
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
        if dirty.stdout.strip():
            commit += "-dirty"
    return commit


def copy_no_overwrite(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst``; fail if ``dst`` exists (O_EXCL: no race, no overwrite)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
        shutil.copyfileobj(inp, out)


def package(csv: Path, run_name: str, manifest: dict, out_dir: Path, now: datetime | None = None) -> tuple[Path, Path]:
    """Copy ``csv`` to ``out_dir/<UTC stamp>_<run name>.csv`` plus a .json manifest; never overwrite.

    When the stamped name is taken (two packages in the same second), a suffix -2, -3 ... is added.
    """
    now = now or datetime.now(timezone.utc)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    for k in range(1, 1000):
        stem = f"{stamp}_{run_name}" + (f"-{k}" if k > 1 else "")
        dst, man = out_dir / f"{stem}.csv", out_dir / f"{stem}.json"
        if dst.exists() or man.exists():
            continue
        try:
            copy_no_overwrite(csv, dst)
        except FileExistsError:
            continue
        full = {**manifest, "file": dst.name, "csv_sha256": sha256_file(dst), "created_utc": now.isoformat()}
        if man.exists():  # pragma: no cover - a race with another packager
            raise FileExistsError(man)
        atomic_write_json(man, full)
        return dst, man
    raise FileExistsError(f"no free name for {stamp}_{run_name} in {out_dir}")
