"""What a packaged submission's manifest holds, gathered from a run directory."""
from __future__ import annotations

import json
from pathlib import Path

from .config import config_hash, load_config
from .schema import load_schema, validate
from .submission import SubmissionError, git_commit, require_valid_submission, sha256_file


def make_manifest(run_dir: Path, repo_root: Path | None = None) -> tuple[dict, Path]:
    """Validate ``run_dir/submission.csv`` and collect its manifest; returns (manifest, csv path)."""
    run_dir = Path(run_dir)
    csv = run_dir / "submission.csv"
    cfg_path = run_dir / "config.yaml"
    if not csv.is_file():
        raise FileNotFoundError(f"{csv} not found: run the infer stage first")
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} not found: is {run_dir} a sonokit run directory?")
    cfg = load_config([cfg_path])
    schema = load_schema(cfg.data.schema)
    problems, index = validate(cfg.data.root, schema, n_folds=cfg.data.folds, check_images=False, scope="predict")
    if index is None:
        raise SubmissionError([f"the run's data directory {cfg.data.root} is not valid: {p}" for p in problems[:5]])
    require_valid_submission(csv, Path(cfg.data.root) / schema.sample_submission, index.classes, schema)

    members_file = run_dir / "infer" / "members.json"
    infer = json.loads(members_file.read_text()) if members_file.is_file() else {}
    members = []
    for m in infer.get("members", []):
        path = Path(m["path"])
        now = sha256_file(path) if path.is_file() else "missing"
        if now != m["sha256"]:
            raise SubmissionError([f"member {path} changed since it predicted this submission (sha256 {now[:12]} != {m['sha256'][:12]})"])
        members.append(m)
    cv = {}
    for stage in ("teacher", "student", "hrank"):
        p = run_dir / stage / "cv.json"
        if p.is_file():
            cv[stage] = json.loads(p.read_text())["overall"]
    flops_path = run_dir / "flops.json"
    if flops_path.is_file():
        flops = json.loads(flops_path.read_text())
    elif members:
        from .stages.flops_stage import flops_for_members

        flops = flops_for_members([Path(m["path"]) for m in members], len(infer.get("tta_views", ["orig"])))
    else:
        flops = {}
    flops.pop("lines", None)
    last_cv = next((cv[s] for s in ("hrank", "student", "teacher") if s in cv), {})
    message = f"{run_dir.name}"
    if last_cv:
        message += f" | CV acc {last_cv['acc']:.4f} loss {last_cv['loss']:.4f}"
    if flops:
        message += f" | {flops['competition_gflops']:.7f} GFLOPs (thop), {flops['true_gflops']:.3f} true"
    manifest = {
        "run": run_dir.name,
        "run_dir": str(run_dir.resolve()),
        "competition": cfg.run.competition,
        "cv": cv,
        "flops": flops,
        "tta_views": infer.get("tta_views", []),
        "members": members,
        "voting_weights": infer.get("weights"),
        "config_hash": config_hash(cfg),
        "git_commit": git_commit(repo_root),
        "default_message": message,
    }
    return manifest, csv
