"""Input schema (input_schema/*.yaml) and validation of a competition data directory.

:func:`validate` returns every problem it finds, one :class:`Problem` per line of output,
each naming the file and (for CSV rows) the line number. ``scripts/check_data.py`` and every
training command call it before touching the data; nothing is written.
"""
from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import yaml
from PIL import Image, UnidentifiedImageError

from .paths import packaged_schema


class SchemaError(ValueError):
    """The schema file itself is invalid."""


class DataError(RuntimeError):
    """The data directory failed validation; ``problems`` holds every finding."""

    def __init__(self, problems: list["Problem"]):
        self.problems = problems
        super().__init__(f"{len(problems)} problem(s) in the input data:\n" + "\n".join(map(str, problems)))


@dataclass
class Schema:
    train_csv: str = "train.csv"
    id_column: str = "image_id"
    label_column: str = "label"
    train_dir: str = "train"
    test_dir: str = "test"
    extensions: list[str] = field(default_factory=lambda: ["jpg", "jpeg", "png"])
    sample_submission: str = "sample_submission.csv"
    submission_columns: list[str] = field(default_factory=lambda: ["image_id", "label"])
    submission_label: str = "name"
    classes: list[str] = field(default_factory=list)
    source: str = ""

    @property
    def train_columns(self) -> list[str]:
        return [self.id_column, self.label_column]

    @property
    def submission_label_column(self) -> str:
        return self.submission_columns[-1]


def _is_int_label(label: str) -> bool:
    t = label.strip()
    return bool(t) and t.lstrip("-").isdigit()


def sort_classes(labels: Iterable[str]) -> list[str]:
    """The class list from the labels: integer-like labels numerically ("2" before "10"), others as text."""
    uniq = set(labels)
    if uniq and all(_is_int_label(c) for c in uniq):
        return sorted(uniq, key=lambda c: int(c))
    return sorted(uniq)


def submission_values(classes: list[str], schema: "Schema") -> list[str]:
    """What the submission writes for each class, in class order.

    ``submission_label: name`` writes the class itself; ``index`` writes the class's own integer
    label when every class is an integer (0..N-1, as most Kaggle competitions number them),
    otherwise its position in ``classes``.
    """
    if schema.submission_label == "name":
        return list(classes)
    if all(_is_int_label(c) for c in classes):
        return [str(int(c)) for c in classes]
    return [str(i) for i in range(len(classes))]


def load_schema(path: str | Path = "") -> Schema:
    path = Path(path) if path else packaged_schema()
    if not path.is_file():
        raise SchemaError(f"schema file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise SchemaError(f"{path}: not valid YAML: {e}") from None
    valid = set(Schema.__dataclass_fields__) - {"source"}
    unknown = sorted(set(data) - valid)
    if unknown:
        raise SchemaError(f"{path}: unknown key(s) {unknown}; valid keys: {sorted(valid)}")
    s = Schema(**data, source=str(path))
    s.extensions = [e.lower().lstrip(".") for e in s.extensions]
    s.classes = [str(c) for c in (s.classes or [])]
    if s.submission_label not in ("name", "index"):
        raise SchemaError(f"{path}: submission_label must be 'name' or 'index', not {s.submission_label!r}")
    if len(s.submission_columns) < 2:
        raise SchemaError(f"{path}: submission_columns needs the id column and the label column")
    if not s.extensions:
        raise SchemaError(f"{path}: extensions must list at least one file extension")
    return s


@dataclass(frozen=True)
class Problem:
    file: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.message}"


# ----------------------------------------------------------------------------- images
#: Modes decoded to RGB as they are (CMYK: PIL's conversion, as every decoder reads such a JPEG).
_PLAIN_MODES = {"RGB", "L", "1", "P", "PA", "LA", "YCbCr", "CMYK"}
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N"}


def image_mode_problem(img: Image.Image) -> str | None:
    """Why ``img`` cannot be converted to RGB safely, or None when it can."""
    mode = img.mode
    if mode in _PLAIN_MODES or mode in _SIXTEEN_BIT:
        if mode in ("PA", "LA") or (mode == "P" and "transparency" in img.info):
            alpha = np.asarray(img.convert("RGBA"))[..., 3]
            if alpha.min() < 255:
                return f"mode {mode} with transparent pixels: dropping alpha would change the image"
        return None
    if mode == "RGBA":
        alpha = np.asarray(img)[..., 3]
        if alpha.min() < 255:
            return "mode RGBA with transparent pixels: dropping alpha would change the image"
        return None
    if mode == "I":
        arr = np.asarray(img)
        if arr.min() < 0 or arr.max() > 65535:
            return "mode I (32-bit) with values outside 0..65535: no safe 8-bit conversion"
        return None
    return f"mode {mode} is not supported (expected L, RGB, RGBA, P, CMYK or 16-bit grayscale)"


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """Decode ``img`` to an HxWx3 uint8 array. 16-bit images are scaled to 8 bits (value >> 8)."""
    mode = img.mode
    if mode in _SIXTEEN_BIT or mode == "I":
        arr = np.asarray(img).astype(np.uint32)
        arr8 = (arr >> 8).astype(np.uint8)
        return np.repeat(arr8[..., None], 3, axis=2)
    if mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def load_image(path: str | Path) -> np.ndarray:
    """Fully decode an image file to HxWx3 uint8; raises ValueError with a readable reason."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise ValueError("empty file (0 bytes)")
    try:
        with Image.open(path) as img:
            img.load()
            problem = image_mode_problem(img)
            if problem:
                raise ValueError(problem)
            return to_rgb_array(img)
    except UnidentifiedImageError:
        raise ValueError("not an image (cannot identify the format)") from None
    except (OSError, SyntaxError) as e:
        raise ValueError(f"cannot decode: {e}") from None


def check_image(path: str | Path) -> str | None:
    try:
        load_image(path)
    except ValueError as e:
        return str(e)
    return None


# ----------------------------------------------------------------------------- CSVs
def _read_csv(path: Path, rel: str, expected: list[str], problems: list[Problem]) -> list[tuple[int, dict]] | None:
    """Rows as (line number, dict); None when the file cannot be used at all."""
    if not path.is_file():
        problems.append(Problem(rel, "file not found"))
        return None
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                problems.append(Problem(rel, "empty CSV (no header)"))
                return None
            header = [h.strip() for h in header]
            missing = [c for c in expected if c not in header]
            extra = [c for c in header if c not in expected]
            if missing:
                problems.append(Problem(rel, f"missing column(s): {', '.join(missing)} (found: {', '.join(header)})", 1))
            if extra:
                problems.append(Problem(rel, f"extra column(s): {', '.join(extra)} (expected: {', '.join(expected)})", 1))
            dupes = [c for c, n in Counter(header).items() if n > 1]
            if dupes:
                problems.append(Problem(rel, f"duplicate column name(s): {', '.join(dupes)}", 1))
            rows = []
            for i, row in enumerate(reader, start=2):
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != len(header):
                    problems.append(Problem(rel, f"{len(row)} field(s), the header has {len(header)}", i))
                    continue
                rows.append((i, dict(zip(header, (c.strip() for c in row)))))
    except UnicodeDecodeError:
        problems.append(Problem(rel, "not a UTF-8 text file"))
        return None
    except csv.Error as e:
        problems.append(Problem(rel, f"malformed CSV: {e}"))
        return None
    if not rows:
        problems.append(Problem(rel, "empty CSV (a header but no rows)"))
        return None
    if missing:
        return None
    return rows


def _bad_id(image_id: str) -> str | None:
    if not image_id:
        return "empty id"
    if "/" in image_id or "\\" in image_id or image_id in (".", "..") or ".." in image_id:
        return f"id {image_id!r} contains a path separator or '..'"
    if image_id.startswith("."):
        return f"id {image_id!r} starts with '.'"
    return None


def _index_dir(folder: Path, extensions: list[str]) -> dict[str, list[Path]]:
    """stem -> files with an allowed extension (case-insensitive)."""
    out: dict[str, list[Path]] = {}
    if folder.is_dir():
        for entry in os.scandir(folder):
            if entry.is_file():
                stem, _, ext = entry.name.rpartition(".")
                if stem and ext.lower() in extensions:
                    out.setdefault(stem, []).append(Path(entry.path))
    return out


@dataclass
class DataIndex:
    """What validation learnt about a data directory: usable ids, labels and image files."""

    root: Path
    schema: Schema
    classes: list[str]
    train_ids: list[str]
    train_labels: list[str]
    train_files: list[Path]
    test_ids: list[str]
    test_files: list[Path]

    @property
    def train_targets(self) -> np.ndarray:
        lookup = {c: i for i, c in enumerate(self.classes)}
        return np.array([lookup[label] for label in self.train_labels], dtype=np.int64)


def _check_ids(rows, rel, id_col, problems) -> list[tuple[int, dict]]:
    seen: dict[str, int] = {}
    good = []
    for line, row in rows:
        image_id = row[id_col]
        bad = _bad_id(image_id)
        if bad:
            problems.append(Problem(rel, bad, line))
            continue
        if image_id in seen:
            problems.append(Problem(rel, f"duplicate {id_col} {image_id!r} (first on line {seen[image_id]})", line))
            continue
        seen[image_id] = line
        good.append((line, row))
    return good


def _resolve_files(rows, rel_csv, id_col, rel_dir, extensions, index, problems) -> list[tuple[int, dict, Path]]:
    out = []
    for line, row in rows:
        image_id = row[id_col]
        hits = index.get(image_id, [])
        if not hits:
            problems.append(Problem(rel_csv, f"image file missing: {rel_dir}/{image_id}.<{'|'.join(extensions)}>", line))
        elif len(hits) > 1:
            names = ", ".join(sorted(p.name for p in hits))
            problems.append(Problem(rel_csv, f"ambiguous image for {image_id!r}: {names}", line))
        else:
            out.append((line, row, hits[0]))
    return out


#: A function that decodes images and returns {path: why it does not decode} for the bad ones.
ImageCheck = Callable[[list[Path], list[Path]], dict[Path, str]]


def _check_one(path: Path) -> tuple[Path, str | None]:
    return path, check_image(path)


def decode_check(train_files: list[Path], test_files: list[Path], workers: int = -1, progress: bool = False) -> dict[Path, str]:
    """Decode every image (in parallel processes) and return the ones that fail, with the reason."""
    files = [*train_files, *test_files]
    workers = min(os.cpu_count() or 1, 8) if workers < 0 else workers
    bar = None
    if progress and files:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(files), desc="checking images", unit="img", leave=False)
    bad: dict[Path, str] = {}
    results: Iterable
    if workers > 1 and len(files) > 16:
        from concurrent.futures import ProcessPoolExecutor

        ex = ProcessPoolExecutor(workers)
        results = ex.map(_check_one, files, chunksize=16)
    else:
        ex, results = None, map(_check_one, files)
    try:
        for path, why in results:
            if why:
                bad[path] = why
            if bar:
                bar.update()
    finally:
        if ex is not None:
            ex.shutdown()
        if bar:
            bar.close()
    return bad


def validate(
    root: str | Path,
    schema: Schema | None = None,
    n_folds: int = 5,
    check_images: bool = True,
    progress: bool = False,
    scope: str = "train",
    image_check: ImageCheck | None = None,
) -> tuple[list[Problem], DataIndex | None]:
    """Check a data directory against ``schema``; return (problems, index-or-None).

    Args:
        scope: ``train`` checks everything; ``predict`` (runs that only predict) checks the test
            side and reads train.csv only for the class list (not at all when the schema lists
            the classes): no train image is listed or decoded.
        image_check: decodes the images, ``(train files, test files) -> {file: reason}`` for the
            bad ones. Default: :func:`decode_check`. Training passes the image cache's builder,
            which decodes each image once for both the check and the cache and skips images
            whose cache entries (keyed by path, size and mtime) exist.
    """
    if scope not in ("train", "predict"):
        raise ValueError(f"scope must be 'train' or 'predict', not {scope!r}")
    schema = schema or load_schema()
    root = Path(root)
    problems: list[Problem] = []
    if not root.is_dir():
        return [Problem(str(root), "data directory not found")], None
    training = scope == "train"
    classes = list(schema.classes)
    train_rows = None
    if training or not classes:
        train_rows = _read_csv(root / schema.train_csv, schema.train_csv, schema.train_columns, problems)
    sub_rows = _read_csv(root / schema.sample_submission, schema.sample_submission, schema.submission_columns, problems)
    for d in (schema.train_dir, schema.test_dir) if training else (schema.test_dir,):
        if not (root / d).is_dir():
            problems.append(Problem(d + "/", "image folder not found"))

    train_items: list[tuple[int, dict, Path]] = []
    if train_rows is not None:
        if training:
            train_rows = _check_ids(train_rows, schema.train_csv, schema.id_column, problems)
        labelled = []
        for line, row in train_rows:
            if not row[schema.label_column]:
                problems.append(Problem(schema.train_csv, f"empty {schema.label_column}", line))
            else:
                labelled.append((line, row))
        if not classes:
            classes = sort_classes(row[schema.label_column] for _, row in labelled)
        else:
            allowed = set(classes)
            kept = []
            for line, row in labelled:
                if row[schema.label_column] not in allowed:
                    problems.append(
                        Problem(schema.train_csv, f"label {row[schema.label_column]!r} is not in the class list ({', '.join(classes)})", line)
                    )
                else:
                    kept.append((line, row))
            labelled = kept
    if training and train_rows is not None:
        index = _index_dir(root / schema.train_dir, schema.extensions)
        train_items = _resolve_files(labelled, schema.train_csv, schema.id_column, schema.train_dir, schema.extensions, index, problems)
        listed = {row[schema.id_column] for _, row in train_rows}
        for stem in sorted(set(index) - listed):
            for p in index[stem]:
                problems.append(Problem(f"{schema.train_dir}/{p.name}", f"image not listed in {schema.train_csv}"))
        counts = Counter(row[schema.label_column] for _, row, _ in train_items)
        for c in classes:
            if counts.get(c, 0) < n_folds:
                problems.append(
                    Problem(schema.train_csv, f"class {c!r} has {counts.get(c, 0)} image(s), fewer than the {n_folds} folds")
                )
    if (train_rows is not None or schema.classes) and len(classes) < 2:
        problems.append(Problem(schema.train_csv, f"need at least 2 classes, found {len(classes)}"))

    test_items: list[tuple[int, dict, Path]] = []
    if sub_rows is not None:
        sub_id = schema.submission_columns[0]
        sub_rows = _check_ids(sub_rows, schema.sample_submission, sub_id, problems)
        index = _index_dir(root / schema.test_dir, schema.extensions)
        test_items = _resolve_files(sub_rows, schema.sample_submission, sub_id, schema.test_dir, schema.extensions, index, problems)
        listed = {row[sub_id] for _, row in sub_rows}
        for stem in sorted(set(index) - listed):
            for p in index[stem]:
                problems.append(Problem(f"{schema.test_dir}/{p.name}", f"test image has no row in {schema.sample_submission}"))

    if check_images:
        train_files, test_files = [p for _, _, p in train_items], [p for _, _, p in test_items]
        bad = image_check(train_files, test_files) if image_check else decode_check(train_files, test_files, progress=progress)
        where = {p: schema.train_dir for p in train_files} | {p: schema.test_dir for p in test_files}
        for p in [*train_files, *test_files]:
            if p in bad:
                problems.append(Problem(f"{where[p]}/{p.name}", bad[p]))
        train_items = [t for t in train_items if t[2] not in bad]
        test_items = [t for t in test_items if t[2] not in bad]

    if problems:
        return problems, None
    lab = schema.label_column
    return [], DataIndex(
        root=root,
        schema=schema,
        classes=classes,
        train_ids=[row[schema.id_column] for _, row, _ in train_items],
        train_labels=[row[lab] for _, row, _ in train_items],
        train_files=[p for _, _, p in train_items],
        test_ids=[row[schema.submission_columns[0]] for _, row, _ in test_items],
        test_files=[p for _, _, p in test_items],
    )


def require_valid(root, schema=None, n_folds=5, progress=True, scope="train", image_check=None) -> DataIndex:
    """Validate or raise :class:`DataError` (what every training command does first)."""
    problems, index = validate(root, schema, n_folds=n_folds, progress=progress, scope=scope, image_check=image_check)
    if problems or index is None:
        raise DataError(problems)
    return index
