"""Package stage: the validated submission into submissions/ with its manifest (never overwriting)."""
from __future__ import annotations

from pathlib import Path

from ..kaggle_api import submit_command
from ..packaging import make_manifest
from ..paths import submissions_dir
from ..submission import package
from .common import Context


def run_package(ctx: Context, out_dir: str | Path | None = None, message: str = "") -> dict:
    if not ctx.main:
        return {}
    manifest, csv = make_manifest(ctx.run_dir)
    manifest["message"] = message or manifest["default_message"]
    dst, man = package(csv, ctx.run_dir.name, manifest, Path(out_dir) if out_dir else submissions_dir())
    return {"csv": str(dst), "manifest": str(man),
            "command": submit_command(manifest["competition"] or "<competition>", dst, manifest["message"])}
