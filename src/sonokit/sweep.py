"""Experiment sweep: short cross-validated trainings over a grid of config overrides.

A grid file (YAML)::

    stages: [student]            # stages per grid point (default: the student, KD off)
    base:                        # overrides for every run
      student.kd.enabled: false
      student.train.epochs: 3
    max_gflops: 2.0              # skip models above this many *true* GFLOPs (optional)
    grid:                        # every combination of these axes
      student.model.name: [nf_regnet_b1, "nf_*"]   # a timm pattern expands to model names
      data.image_size: [224, 256]
      augment:                   # an axis of override bundles; "name" labels each
        - {name: none, aug.rotate_p: 0, aug.fancy_pca_p: 0}
        - {name: rotate+pca}

Each run records both FLOPs counts, params, validation loss and accuracy, wall time, or why
it failed (a failure is recorded and skipped, never fatal). Results are one JSON file per
run (so a sweep resumes by skipping finished runs and several workers or machines can share
the directory), aggregated into results.csv, results.md and GFLOPs scatter plots.
"""
from __future__ import annotations

import fnmatch
import hashlib
import itertools
import json
import logging
import math
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import Config, ConfigError, load_config
from .io import atomic_path, atomic_write_json

_logger = logging.getLogger("sonokit")
DEFAULT_STAGES = ["student"]
_RESIZE_RATIO = Config().data.resize_size / Config().data.image_size


@dataclass
class Point:
    index: int
    label: str
    overrides: dict[str, Any]

    @property
    def run_id(self) -> str:
        blob = json.dumps(self.overrides, sort_keys=True).encode()
        return f"r{self.index:03d}-{hashlib.sha1(blob).hexdigest()[:8]}"


@dataclass
class Grid:
    points: list[Point]
    stages: list[str] = field(default_factory=lambda: list(DEFAULT_STAGES))
    max_gflops: float | None = None
    source: str = ""


def _is_pattern(v: Any) -> bool:
    return isinstance(v, str) and any(c in v for c in "*?[")


def expand_models(pattern: str) -> list[str]:
    import timm

    names = sorted(timm.list_models(pattern))
    if fnmatch.fnmatch("efficientnet-b0", pattern):
        names += [f"efficientnet-b{i}" for i in range(8) if fnmatch.fnmatch(f"efficientnet-b{i}", pattern)]
    if not names:
        raise ConfigError(f"model pattern {pattern!r} matches no model")
    return names


def _axis_values(key: str, values: Any) -> list[tuple[str, dict]]:
    """One axis -> [(label, overrides)]."""
    if not isinstance(values, list) or not values:
        raise ConfigError(f"grid axis {key!r} must be a non-empty list")
    out = []
    for v in values:
        if isinstance(v, dict):
            bundle = dict(v)
            name = str(bundle.pop("name", "+".join(f"{k}={x}" for k, x in bundle.items()) or "default"))
            out.append((f"{key}={name}", bundle))
        elif key.endswith("model.name") and _is_pattern(v):
            out.extend((f"{key.split('.')[0]}={m}", {key: m}) for m in expand_models(v))
        else:
            out.append((f"{key.rsplit('.', 1)[-1]}={v}", {key: v}))
    return out


def load_grid(path: str | Path, shard: tuple[int, int] = (0, 1)) -> Grid:
    """Read a grid file and expand it into points; keep those of shard ``i/n`` (index % n == i)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"grid file not found: {path}")
    spec = yaml.safe_load(path.read_text()) or {}
    unknown = set(spec) - {"stages", "base", "grid", "max_gflops"}
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {sorted(unknown)}; valid: stages, base, grid, max_gflops")
    base = dict(spec.get("base") or {})
    axes = [_axis_values(k, v) for k, v in (spec.get("grid") or {}).items()]
    points = []
    for i, combo in enumerate(itertools.product(*axes) if axes else [()]):
        ov = dict(base)
        for _, o in combo:
            ov.update(o)
        if "data.image_size" in ov and "data.resize_size" not in ov:
            ov["data.resize_size"] = int(math.ceil(int(ov["data.image_size"]) * _RESIZE_RATIO))
        label = ", ".join(lbl for lbl, _ in combo) or "base"
        points.append(Point(i, label, ov))
    # validate every point's keys now, not after an hour of training
    for p in points:
        load_config(overrides=[f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in p.overrides.items()])
    i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError(f"shard must be i/n with 0 <= i < n, not {i}/{n}")
    stages = list(spec.get("stages") or DEFAULT_STAGES)
    mg = spec.get("max_gflops")
    return Grid([p for p in points if p.index % n == i], stages, float(mg) if mg is not None else None, str(path))


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard must look like i/n (e.g. 0/4), not {text!r}") from None
    return i, n


_SIZE_TOKENS = {"t", "s", "m", "l", "xl", "xxl", "tiny", "small", "base", "large", "nano", "pico", "femto", "atto"}


def model_family(name: str) -> str:
    """nf_regnet_b1 -> nf_regnet, efficientnet-b4 -> efficientnet, resnet18 -> resnet, tf_efficientnetv2_s -> tf_efficientnetv2."""
    parts = name.replace("-", "_").split("_")
    if len(parts) > 1 and (any(c.isdigit() for c in parts[-1]) or parts[-1] in _SIZE_TOKENS):
        return "_".join(parts[:-1])
    return name.rstrip("0123456789") or name


def _overrides_list(ov: dict) -> list[str]:
    return [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in ov.items()]


def run_point(point: Point, grid: Grid, sweep_dir: Path, data: str, config_files: list[str], extra: list[str]) -> dict:
    """Train one grid point; always returns a record (status ok, failed or skipped)."""
    from .flops import competition_gflops, count_params, true_gflops
    from .models import create_model
    from .stages import make_context, run_hrank, run_student, run_teacher

    runners = {"teacher": run_teacher, "student": run_student, "hrank": run_hrank}
    t0 = time.perf_counter()
    rec: dict[str, Any] = {"run_id": point.run_id, "index": point.index, "label": point.label, "overrides": point.overrides,
                           "stages": grid.stages}
    try:
        cfg = load_config(config_files, [f"data.root={data}", f"run.out_dir={sweep_dir / 'runs'}", f"run.name={point.run_id}",
                                         *extra, *_overrides_list(point.overrides)])
        mcfg = cfg.student.model if "student" in grid.stages else cfg.teacher.model
        size = cfg.data.image_size
        rec.update(model=mcfg.name, family=model_family(mcfg.name), image_size=size, in_chans=mcfg.in_chans)
        probe = create_model(mcfg.name, 8, mcfg.in_chans)
        rec.update(
            competition_gflops=competition_gflops(probe, size, mcfg.in_chans),
            true_gflops=true_gflops(probe, size, mcfg.in_chans),
            params=count_params(probe),
        )
        del probe
        if grid.max_gflops is not None and rec["true_gflops"] > grid.max_gflops:
            rec.update(status="skipped", error=f"{rec['true_gflops']:.3f} true GFLOPs > max_gflops {grid.max_gflops}")
            return rec
        unknown = [s for s in grid.stages if s not in runners]
        if unknown:
            raise ConfigError(f"unknown stage(s) {unknown} in the grid; choose from {sorted(runners)}")
        ctx = make_context(cfg, resume=True, progress=False, stages=grid.stages)
        for stage in grid.stages:
            summary = runners[stage](ctx)
            rec[f"{stage}_cv"] = summary.get("overall")
        last = rec[f"{grid.stages[-1]}_cv"]
        rec.update(status="ok", val_loss=last["loss"], val_acc=last["acc"])
    except Exception as e:  # noqa: BLE001 - a failing run is recorded, never fatal
        rec.update(status="failed", error=f"{type(e).__name__}: {e}".strip()[:2000], traceback=traceback.format_exc()[-4000:])
        _logger.warning(f"sweep run {point.run_id} ({point.label}) failed: {type(e).__name__}: {e}")
    finally:
        rec["wall_s"] = round(time.perf_counter() - t0, 2)
    return rec


def result_path(sweep_dir: Path, point: Point) -> Path:
    return sweep_dir / "results" / f"{point.run_id}.json"


def run_sweep(grid: Grid, sweep_dir: Path, data: str, config_files=(), extra=(), worker: tuple[int, int] = (0, 1),
              progress: bool = True) -> tuple[int, int]:
    """Run this worker's unfinished points; returns (ran, skipped as already finished)."""
    i, n = worker
    todo = [p for p in grid.points if p.index % n == i]
    ran = skipped = 0
    from tqdm.auto import tqdm

    for p in tqdm(todo, desc="sweep", unit="run", disable=not progress):
        path = result_path(sweep_dir, p)
        if path.is_file():
            skipped += 1
            continue
        rec = run_point(p, grid, sweep_dir, data, list(config_files), list(extra))
        atomic_write_json(path, rec)
        ran += 1
    return ran, skipped


COLUMNS = ["run_id", "label", "status", "model", "family", "image_size", "in_chans", "competition_gflops", "true_gflops",
           "params", "val_loss", "val_acc", "wall_s", "error"]


def aggregate(sweep_dir: Path, flops: str = "true") -> list[dict]:
    """results/*.json -> results.csv, results.md and the GFLOPs scatter plots."""
    import pandas as pd

    recs = [json.loads(p.read_text()) for p in sorted((sweep_dir / "results").glob("*.json"))]
    if not recs:
        return []
    df = pd.DataFrame(recs)
    for c in COLUMNS:
        if c not in df:
            df[c] = None
    df = df[COLUMNS].sort_values("run_id")
    with atomic_path(sweep_dir / "results.csv") as tmp:
        df.to_csv(tmp, index=False)
    md = ["| run | setting | status | GFLOPs (competition) | GFLOPs (true) | params (M) | val loss | val acc | wall (s) |",
          "|---|---|---|---|---|---|---|---|---|"]
    def f(x, fmt, scale=1.0):
        return "" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x / scale, fmt)

    for r in df.to_dict("records"):
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {str(r['error'])[:80]}"
        md.append(f"| {r['run_id']} | {r['label']} | {status} | {f(r['competition_gflops'], '.7f')} | {f(r['true_gflops'], '.4f')} | "
                  f"{f(r['params'], '.2f', 1e6)} | {f(r['val_loss'], '.4f')} | {f(r['val_acc'], '.4f')} | {f(r['wall_s'], '.1f')} |")
    with atomic_path(sweep_dir / "results.md") as tmp:
        tmp.write_text("\n".join(md) + "\n")
    plot_sweep(df[df["status"] == "ok"], sweep_dir, flops)
    return recs


def plot_sweep(df, sweep_dir: Path, flops: str = "true") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if flops not in ("true", "competition"):
        raise ValueError("flops axis must be 'true' or 'competition'")
    xcol = f"{flops}_gflops"
    for metric, name in (("val_loss", "validation loss"), ("val_acc", "validation accuracy")):
        fig, ax = plt.subplots(figsize=(8, 5.5))
        for j, (fam, g) in enumerate(sorted(df.groupby("family"), key=lambda t: t[0])):
            ax.scatter(g[xcol], g[metric], label=fam, color=f"C{j % 10}", s=40, alpha=0.85)
            for _, r in g.iterrows():
                ax.annotate(f"{r['model']}@{r['image_size']}", (r[xcol], r[metric]), fontsize=7, alpha=0.7,
                            xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(f"GFLOPs ({'competition thop number' if flops == 'competition' else 'true, FlopCounterMode'})")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if len(df):
            ax.legend(title="model family", fontsize=8)
        ax.set_title(f"{name} against cost ({len(df)} runs)")
        fig.tight_layout()
        with atomic_path(sweep_dir / f"gflops_vs_{metric.split('_')[1]}.png") as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)
