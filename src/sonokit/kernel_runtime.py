"""What a generated Kaggle notebook runs: resolve inputs on Kaggle, run one stage, tidy the outputs.

The notebooks stay a few lines long; everything they do lives here, in the library, tested
like the rest. Paths come from :mod:`sonokit.paths` (both Kaggle mount layouts).
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from .config import load_config
from .paths import find_kaggle_input, working_dir

_logger = logging.getLogger("sonokit")

#: stage -> (stages it runs, upstream kernels whose outputs it needs)
KERNEL_STAGES = {
    "teacher": (["teacher"], []),
    "student": (["student"], ["teacher"]),
    "hrank": (["hrank"], ["teacher", "student"]),
    "inference": (["infer", "flops"], ["hrank"]),
}


def kernel_slug(stage: str) -> str:
    return f"sonokit-{stage}"


def _split(ref: str) -> tuple[str, str]:
    owner, _, slug = ref.partition("/")
    return (owner, slug) if slug else ("", owner)


def link_upstream(run_dir: Path, run_name: str, owner: str, upstream: list[str], stage_dirs: dict[str, str]) -> list[Path]:
    """Make upstream kernels' stage outputs visible in this kernel's run directory (symlinks).

    A later stage may need several earlier ones (hrank's fine-tuning distils from the teacher),
    so every upstream kernel is attached through kernel_sources and linked here.
    """
    links = []
    for kernel in upstream:
        src = find_kaggle_input(kernel_slug(kernel), "notebooks", owner, marker=f"{run_name}/config.yaml") / run_name
        target, link = src / stage_dirs.get(kernel, kernel), run_dir / stage_dirs.get(kernel, kernel)
        if not target.is_dir():
            raise FileNotFoundError(f"kernel {kernel_slug(kernel)} has no {target.name}/ output under {src}: run and attach it first")
        if not link.exists():
            link.symlink_to(target, target_is_directory=True)
            links.append(link)
    return links


def run_kernel(stage: str, run_name: str, competition: str, owner: str, assets_dataset: str, overrides: dict) -> Path:
    """Run one pipeline stage inside a Kaggle notebook; returns the run directory in /kaggle/working.

    ImageNet weights come from the assets dataset (``run.assets``): a configured dataset that is
    not attached is an error, as is a model with no weights there (unless its weights are
    ``none``). Packages the user's overrides need beyond the notebook's defaults (e.g.
    ``hrank.mode=prune`` needs torch-pruning) are installed from the same dataset.
    """
    from . import stages as st
    from .cli import setup_logging
    from .deps import kernel_setup, requirements

    setup_logging()
    if stage not in KERNEL_STAGES:
        raise ValueError(f"unknown kernel stage {stage!r}; choose from {', '.join(KERNEL_STAGES)}")
    run_stages, upstream = KERNEL_STAGES[stage]
    data = find_kaggle_input(competition, "competitions", marker="sample_submission.csv")
    base = [f"data.root={data}", f"run.out_dir={working_dir()}", f"run.name={run_name}", f"run.competition={competition}",
            f"run.assets={assets_dataset}"]
    cfg = load_config(overrides=base + [f"{k}={v}" for k, v in overrides.items()])
    kernel_setup(requirements(cfg, run_stages), assets_dataset)
    run_dir = working_dir() / run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    links = link_upstream(run_dir, run_name, owner, upstream, {})
    try:
        ctx = st.make_context(cfg, stages=run_stages)
        for s in run_stages:
            result = st.runner(s)(ctx)
            if "overall" in result:
                print(f"{s}: CV loss {result['overall']['loss']:.4f}, acc {result['overall']['acc']:.4f}")
            if s == "flops":
                print("\n".join(result["lines"]))
        if "infer" in run_stages:
            shutil.copyfile(run_dir / "submission.csv", working_dir() / "submission.csv")  # what Kaggle scores
            print(f"submission: {working_dir() / 'submission.csv'}")
    finally:
        for link in links:  # the outputs hold this kernel's own stage only
            link.unlink()
    return run_dir
