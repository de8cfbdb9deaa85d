"""Build single-file Kaggle notebooks from src/: deterministic bytes, sonokit embedded inside.

The sonokit source (and the default input schema) is embedded as a base64 gzip tar: the
notebook stays small, the bytes are reproducible (sorted members, zeroed times and owners,
gzip mtime 0), and its sha256 identifies the code. The readable source is in the repository at
the commit named in the first cell.

The first code cell unpacks the archive to a temp directory (first on sys.path), then checks
the packages the stage imports (versions included) and installs missing or too old ones from
the attached assets dataset's wheels (offline, ``pip install --no-index --find-links``); without
them it stops with one message that lists what is missing and how to make the dataset. Then
the config cell (the only one to edit), then the run.
"""
from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import re
import subprocess
import tarfile
from pathlib import Path

import nbformat

from .kernel_runtime import KERNEL_STAGES, kernel_slug

ROOT = Path(__file__).resolve().parents[2]
SRC = Path(__file__).resolve().parent
STAGE_ORDER = ("teacher", "student", "hrank", "inference")

DESCRIPTIONS = {
    "teacher": ("Trains the teacher (efficientnet-b4 by default) on every fold with plain cross-entropy.",
                "the competition data; the assets dataset (ImageNet weights, wheels)",
                "`<run>/teacher/fold*/best.pt`, out-of-fold predictions, `cv.json`"),
    "student": ("Distils each fold's teacher into the 1-channel nf_regnet_b1 student (KD + CutMix 1/4 + MixUp 1/4).",
                "the competition data; the teacher kernel's output; the assets dataset",
                "`<run>/student/fold*/best.pt`, `cv.json`, the confusion matrix"),
    "hrank": ("HRank: ranks the student's filters, re-initialises (or prunes) the lowest-rank ones, fine-tunes with KD.",
              "the competition data; the teacher and student kernels' outputs; the assets dataset",
              "`<run>/hrank/fold*/best.pt`, rank heatmaps, `report.json`"),
    "inference": ("Predicts the test set with every fold (TTA + soft voting), checks the FLOPs, writes `submission.csv`.",
                  "the competition data; the hrank kernel's output; the assets dataset (thop)",
                  "`/kaggle/working/submission.csv` (validated against sample_submission), `<run>/flops.json`"),
}

DEFAULT_OVERRIDES = {
    "teacher": {},
    "student": {},
    "hrank": {"hrank.mode": "reinit", "hrank.ratio": 0.125},
    "inference": {"infer.stage": "hrank", "infer.tta": "orig,fancypca"},
}


def slugify(title: str) -> str:
    """kaggle's own rule for a kernel slug from its title (lower case, dashes)."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def source_archive() -> bytes:
    """src/sonokit (with the default input schema) as a deterministic gzip tar."""
    files = sorted(p for p in SRC.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix in (".py", ".yaml"))
    # default_schema.yaml is a link to input_schema/default.yaml: its content is what is archived
    members = [(f"sonokit/{p.relative_to(SRC).as_posix()}", p.read_bytes()) for p in files]
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(members):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0o644, 0, 0, "", ""
            tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, compresslevel=9, filename="") as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def source_commit() -> str:
    """The last commit that changed the embedded source (stable while src/ is unchanged)."""
    paths = ["src/sonokit", "input_schema"]
    try:
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", *paths], capture_output=True, text=True, timeout=10)
        log = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%H", "--", *paths], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if log.returncode != 0 or not log.stdout.strip():
        return "unknown"
    return log.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")


SETUP = '''# Setup (do not edit: scripts/build_kernels.py writes it). Unpacks the embedded sonokit (no pip install of the
# kit, no internet), then checks the packages this stage imports and installs missing or too old ones from the
# assets dataset's wheels. The archive is at the end of this cell.
import base64, gzip, hashlib, io, sys, tarfile, tempfile
STAGE = {stage}
ASSETS_DATASET = {assets}  # owner/slug of the dataset made by scripts/export_assets.py (weights + wheels)
NEEDS = {needs}


def _sonokit_setup():
    blob = base64.b64decode(SONOKIT_ARCHIVE)
    assert hashlib.sha256(blob).hexdigest() == SONOKIT_SHA256, "embedded sonokit archive is corrupt"
    dest = tempfile.mkdtemp(prefix="sonokit-")
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tar:
        tar.extractall(dest, filter="data")
    sys.path.insert(0, dest)
    import sonokit
    from sonokit.deps import kernel_setup

    print("sonokit", sonokit.__version__, "from", sonokit.__file__)
    kernel_setup(NEEDS, ASSETS_DATASET)


SONOKIT_SHA256 = "{sha}"
SONOKIT_ARCHIVE = """
{archive}
"""
_sonokit_setup()'''


def stage_needs_default(stage: str) -> list[str]:
    """What the kernel's stages import with the default config and the kernel's default overrides."""
    from .config import load_config
    from .deps import requirements

    cfg = load_config(overrides=[f"{k}={v}" for k, v in DEFAULT_OVERRIDES[stage].items()])
    return requirements(cfg, KERNEL_STAGES[stage][0])


def build_notebook(stage: str, competition: str, owner: str, assets_dataset: str, archive: bytes, commit: str) -> str:
    what, inputs, outputs = DESCRIPTIONS[stage]
    sha = hashlib.sha256(archive).hexdigest()
    upstream = [kernel_slug(k) for k in KERNEL_STAGES[stage][1]]
    md = (
        f"# sonokit: {stage}\n\n{what}\n\n"
        f"- **Inputs:** {inputs}.\n- **Outputs:** {outputs} in `/kaggle/working`.\n"
        f"- **Built from:** sonokit commit `{commit}` (embedded source sha256 `{sha[:16]}`), "
        f"by `python scripts/build_kernels.py`. Edit only the config cell: change `src/` and rebuild for the rest.\n"
        + (f"- **Needs:** {', '.join(upstream)} (attached as kernel sources).\n" if upstream else "")
    )
    b64 = base64.b64encode(archive).decode()
    wrapped = "\n".join(b64[i:i + 100] for i in range(0, len(b64), 100))
    setup = SETUP.format(stage=json.dumps(stage), assets=json.dumps(assets_dataset), needs=json.dumps(stage_needs_default(stage)),
                         sha=sha, archive=wrapped)
    overrides = json.dumps(DEFAULT_OVERRIDES[stage], indent=4, sort_keys=True)
    config = (
        "# The only cell to edit.\n"
        f"RUN_NAME = \"kaggle\"\nCOMPETITION = {json.dumps(competition)}\nOWNER = {json.dumps(owner)}\n"
        f"# any sonokit config key, e.g. \"student.train.epochs\": 30, \"data.image_size\": 256, \"student.model.weights\": \"none\"\n"
        f"OVERRIDES = {overrides}"
    )
    run = (
        "from sonokit.kernel_runtime import run_kernel\n"
        "run_kernel(STAGE, RUN_NAME, COMPETITION, OWNER, ASSETS_DATASET, OVERRIDES)"
    )
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                   "language_info": {"name": "python"}}
    cells = [nbformat.v4.new_markdown_cell(md), nbformat.v4.new_code_cell(setup), nbformat.v4.new_code_cell(config),
             nbformat.v4.new_code_cell(run)]
    for i, c in enumerate(cells):
        c["id"] = f"sonokit-{stage}-{i}"  # fixed ids: nbformat would draw random ones
    nb.cells = cells
    nbformat.validate(nb)
    return nbformat.writes(nb) + "\n"


def kernel_metadata(stage: str, competition: str, owner: str, assets_dataset: str) -> dict:
    slug = kernel_slug(stage)
    title = slug  # slugify(title) == slug, as kaggle wants
    return {
        "id": f"{owner}/{slug}",
        "title": title,
        "code_file": f"{slug}.ipynb",
        "language": "python",
        "kernel_type": "notebook",
        "is_private": True,
        "enable_gpu": True,
        "enable_tpu": False,
        "enable_internet": False,
        "dataset_sources": [assets_dataset] if assets_dataset else [],
        "competition_sources": [competition],
        "kernel_sources": [f"{owner}/{kernel_slug(k)}" for k in KERNEL_STAGES[stage][1]],
        "model_sources": [],
    }


def check_metadata(meta: dict, folder: Path) -> list[str]:
    """The rules ``kaggle kernels push`` checks before any request (../shared/facts/kaggle-cli.md)."""
    problems = []
    owner, _, slug = meta.get("id", "").partition("/")
    if not owner or not slug or "/" in slug:
        problems.append("id must be owner/slug")
    if len(slug) < 5:
        problems.append("slug must be at least 5 characters")
    if len(meta.get("title", "")) < 5:
        problems.append("title must be at least 5 characters")
    if slugify(meta.get("title", "")) != slug:
        problems.append("slugify(title) differs from the slug")
    code = folder / meta.get("code_file", "")
    if not meta.get("code_file") or not code.is_file():
        problems.append("code_file missing")
    elif meta.get("kernel_type") == "notebook":
        try:
            json.loads(code.read_text())
        except ValueError:
            problems.append("code_file is not valid JSON")
    if meta.get("language") not in ("python", "r", "rmarkdown"):
        problems.append("language must be python, r or rmarkdown")
    if meta.get("kernel_type") not in ("script", "notebook"):
        problems.append("kernel_type must be script or notebook")
    for key in ("is_private", "enable_gpu", "enable_tpu", "enable_internet"):
        if not isinstance(meta.get(key), bool):
            problems.append(f"{key} must be an explicit JSON boolean")
    if meta.get("enable_internet") is not False:
        problems.append("enable_internet must be false")
    if meta.get("enable_gpu") is not True:
        problems.append("enable_gpu must be true")
    ref = re.compile(r"^[^/\s]+/[^/\s]+(/\d+)?$")
    for key in ("dataset_sources", "kernel_sources"):
        for r in meta.get(key, []):
            if not ref.match(r):
                problems.append(f"{key}: {r!r} is not owner/slug[/version]")
    for c in meta.get("competition_sources", []):
        if "/" in c:
            problems.append(f"competition_sources: write the bare slug, not {c!r}")
    return problems


def build_all(competition: str, owner: str, assets_dataset: str) -> dict[str, bytes]:
    """Every file of kernels/ as {relative path: bytes} (nothing written)."""
    archive = source_archive()
    commit = source_commit()
    files: dict[str, bytes] = {}
    for stage in STAGE_ORDER:
        meta = kernel_metadata(stage, competition, owner, assets_dataset)
        files[f"{stage}/{meta['code_file']}"] = build_notebook(stage, competition, owner, assets_dataset, archive, commit).encode()
        files[f"{stage}/kernel-metadata.json"] = (json.dumps(meta, indent=2) + "\n").encode()
    files["build.json"] = (json.dumps({"competition": competition, "owner": owner, "assets_dataset": assets_dataset},
                                      indent=2, sort_keys=True) + "\n").encode()
    return files
