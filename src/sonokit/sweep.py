"""Model and recipe search on Optuna: short cross-validated trainings, any number of workers, one storage.

A grid file (YAML) holds either a ``grid`` (every combination, as the source's Steps 1-3 and 5)
or a ``search`` (an open search, e.g. model x image size x augmentation x mixing x KD x lr,
with a Pareto-front sampler), plus what every trial shares::

    stages: [student]                  # the kit's stages each trial runs (default: the student)
    base:                              # config overrides for every trial
      student.kd.enabled: false
      student.train.epochs: 3
    objectives: [val_loss]             # val_loss | val_acc, optionally against competition_gflops | true_gflops
    max_gflops: 2.0                    # trials above this many true GFLOPs are skipped (optional)
    pruner: {median: {n_warmup_steps: 2}}   # optional: median | percentile | threshold | none
    grid:                              # every combination of these axes
      student.model.name: [nf_regnet_b1, "nf_*"]   # a timm pattern expands to model names
      data.image_size: [224, 256]
      augment:                         # an axis of override bundles; "name" labels each
        - {name: none, aug.rotate_p: 0, aug.fancy_pca_p: 0}
        - {name: rotate+pca}
    # or, instead of grid:
    search:
      n_trials: 40
      sampler: nsga2                   # nsga2 (default for several objectives) | tpe | random
      space:
        student.model.name: {choice: [nf_regnet_b0, nf_regnet_b1]}
        student.train.lr: {log_uniform: [1.0e-4, 3.0e-3]}
        student.mix.cutmix_p: {uniform: [0.0, 0.5]}
        data.image_size: {choice: [224, 256]}

Every worker (``scripts/sweep.py`` on this machine with ``--gpus N``, or the same command on
another machine) opens the same Optuna storage: a journal file by default (processes on one
machine or a shared filesystem), or a database URL for many machines. The grid's points are
put in the study's trial queue once, by whichever worker creates the study, and each worker
claims the next waiting trial atomically through the storage, so every point runs exactly once.
(Optuna's GridSampler alone may run a point twice under concurrent workers: its documentation
says so.) A trial that fails is recorded as a failed trial with its error; a trial whose worker
died (killed, out of memory) is found on the next start and queued again; re-running the
command continues the study. With one objective an Optuna pruner stops hopeless trials from
the per-epoch validation loss (Optuna cannot prune multi-objective studies).
"""
from __future__ import annotations

import fnmatch
import itertools
import json
import logging
import math
import os
import socket
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import Config, ConfigError, load_config
from .io import atomic_path

_logger = logging.getLogger("sonokit")
DEFAULT_STAGES = ["student"]
_RESIZE_RATIO = Config().data.resize_size / Config().data.image_size
METRICS = {"val_loss": "minimize", "val_acc": "maximize", "competition_gflops": "minimize", "true_gflops": "minimize"}
GRID_KEY = "point"  # the grid's one Optuna parameter: the point's index


@dataclass
class Point:
    index: int
    label: str
    overrides: dict[str, Any]


@dataclass
class Grid:
    """A grid or search file, parsed and checked."""

    points: list[Point]  # empty for an open search
    stages: list[str] = field(default_factory=lambda: list(DEFAULT_STAGES))
    max_gflops: float | None = None
    objectives: list[str] = field(default_factory=lambda: ["val_loss"])
    pruner: dict = field(default_factory=dict)
    base: dict = field(default_factory=dict)
    space: dict = field(default_factory=dict)  # open search: key -> {choice|uniform|log_uniform|int: ...}
    n_trials: int = 0
    sampler: str = ""
    source: str = ""

    @property
    def is_search(self) -> bool:
        return bool(self.space)

    @property
    def directions(self) -> list[str]:
        return [METRICS[o] for o in self.objectives]


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
        elif key.endswith("model.name"):  # labelled by the model's role: student=..., teacher=...
            out.extend((f"{key.split('.')[0]}={m}", {key: m}) for m in (expand_models(v) if _is_pattern(v) else [v]))
        else:
            out.append((f"{key.rsplit('.', 1)[-1]}={v}", {key: v}))
    return out


def _with_resize(ov: dict) -> dict:
    if "data.image_size" in ov and "data.resize_size" not in ov:
        ov = {**ov, "data.resize_size": int(math.ceil(int(ov["data.image_size"]) * _RESIZE_RATIO))}
    return ov


def overrides_list(ov: dict) -> list[str]:
    return [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in ov.items()]


SPACE_KINDS = ("choice", "uniform", "log_uniform", "int")


def _check_space(space: dict, path: Path) -> None:
    for key, spec in space.items():
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in SPACE_KINDS:
            raise ConfigError(f"{path}: search space {key!r} must be one of {{{', '.join(SPACE_KINDS)}: ...}}, not {spec!r}")
        kind, arg = next(iter(spec.items()))
        if kind == "choice" and (not isinstance(arg, list) or not arg):
            raise ConfigError(f"{path}: {key}: choice needs a non-empty list")
        if kind != "choice" and (not isinstance(arg, list) or len(arg) != 2 or not arg[0] < arg[1]):
            raise ConfigError(f"{path}: {key}: {kind} needs [low, high] with low < high")


def load_grid(path: str | Path) -> Grid:
    """Read a grid or search file; every point's keys are checked now, not after an hour of training."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"grid file not found: {path}")
    spec = yaml.safe_load(path.read_text()) or {}
    valid = {"stages", "base", "grid", "search", "max_gflops", "objectives", "pruner"}
    unknown = set(spec) - valid
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {sorted(unknown)}; valid: {', '.join(sorted(valid))}")
    if ("grid" in spec) == ("search" in spec):
        raise ConfigError(f"{path}: give either a grid (every combination) or a search (an open search), not {'both' if 'grid' in spec else 'neither'}")
    base = dict(spec.get("base") or {})
    objectives = list(spec.get("objectives") or ["val_loss"])
    bad = [o for o in objectives if o not in METRICS]
    if bad or not objectives or objectives[0] not in ("val_loss", "val_acc"):
        raise ConfigError(f"{path}: objectives must start with val_loss or val_acc and use {', '.join(METRICS)}; got {objectives}")
    mg = spec.get("max_gflops")
    grid = Grid([], list(spec.get("stages") or DEFAULT_STAGES), float(mg) if mg is not None else None, objectives,
                dict(spec.get("pruner") or {}), base, source=str(path))
    if "grid" in spec:
        axes = [_axis_values(k, v) for k, v in (spec.get("grid") or {}).items()]
        for i, combo in enumerate(itertools.product(*axes) if axes else [()]):
            ov = dict(base)
            for _, o in combo:
                ov.update(o)
            grid.points.append(Point(i, ", ".join(lbl for lbl, _ in combo) or "base", _with_resize(ov)))
        for p in grid.points:
            load_config(overrides=overrides_list(p.overrides))
    else:
        search = dict(spec["search"] or {})
        grid.space = dict(search.get("space") or {})
        if not grid.space:
            raise ConfigError(f"{path}: search needs a space")
        _check_space(grid.space, path)
        grid.n_trials = int(search.get("n_trials", 20))
        grid.sampler = str(search.get("sampler", "nsga2" if len(objectives) > 1 else "tpe"))
        probe = dict(base)
        for key, s in grid.space.items():
            kind, arg = next(iter(s.items()))
            if not isinstance(arg[0], dict):
                probe[key] = arg[0]
        load_config(overrides=overrides_list(_with_resize({k: v for k, v in probe.items() if not isinstance(v, dict)})))
    return grid


_SIZE_TOKENS = {"t", "s", "m", "l", "xl", "xxl", "tiny", "small", "base", "large", "nano", "pico", "femto", "atto"}


def model_family(name: str) -> str:
    """nf_regnet_b1 -> nf_regnet, efficientnet-b4 -> efficientnet, resnet18 -> resnet, tf_efficientnetv2_s -> tf_efficientnetv2."""
    parts = name.replace("-", "_").split("_")
    if len(parts) > 1 and (any(c.isdigit() for c in parts[-1]) or parts[-1] in _SIZE_TOKENS):
        return "_".join(parts[:-1])
    return name.rstrip("0123456789") or name


# ----------------------------------------------------------------------------- the study
def open_storage(storage: str):
    """A database URL (sqlite:///..., postgresql://...) or a journal file path (created if missing)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if "://" in storage:
        return optuna.storages.RDBStorage(storage)
    Path(storage).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(storage)))


def create_pruner(spec: dict):
    import optuna

    if not spec:
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    (kind, kw), = spec.items()
    kw = dict(kw or {})
    makers = {"median": optuna.pruners.MedianPruner, "percentile": optuna.pruners.PercentilePruner,
              "threshold": optuna.pruners.ThresholdPruner, "none": optuna.pruners.NopPruner}
    if kind not in makers:
        raise ConfigError(f"pruner must be one of {', '.join(makers)}, not {kind!r}")
    return makers[kind](**kw)


def create_sampler(grid: Grid, seed: int):
    import optuna

    if not grid.is_search:
        # the grid as Optuna sees it; the points themselves come from the trial queue
        return optuna.samplers.GridSampler({GRID_KEY: [p.index for p in grid.points]}, seed=seed)
    kinds = {"nsga2": optuna.samplers.NSGAIISampler, "tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
    if grid.sampler not in kinds:
        raise ConfigError(f"search.sampler must be one of {', '.join(kinds)}, not {grid.sampler!r}")
    return kinds[grid.sampler](seed=seed)


def open_study(grid: Grid, storage, name: str, seed: int = 0):
    """Create the study (and queue the grid's points once), or join it; returns (study, created)."""
    import optuna

    kw = dict(study_name=name, storage=storage, sampler=create_sampler(grid, seed), pruner=create_pruner(grid.pruner))
    try:
        study = optuna.create_study(directions=grid.directions, load_if_exists=False, **kw)
        created = True
    except optuna.exceptions.DuplicatedStudyError:  # another worker was first: join
        study = optuna.load_study(**kw)
        created = False
    if [d.name.lower() for d in study.directions] != grid.directions:
        raise ConfigError(f"study {name!r} optimises {[d.name.lower() for d in study.directions]}, the grid file says "
                          f"{grid.directions}: use another --name for other objectives")
    if created:
        study.set_user_attr("grid_file", grid.source)
        study.set_user_attr("objectives", grid.objectives)
        for p in grid.points:
            study.enqueue_trial({GRID_KEY: p.index}, user_attrs={"label": p.label, "overrides": p.overrides})
        study.set_user_attr("queued", len(grid.points))
    else:
        deadline = time.monotonic() + 300
        while grid.points and "queued" not in study.user_attrs:  # the creator is still queueing
            if time.monotonic() > deadline:
                raise RuntimeError(f"study {name!r} exists but its grid was never queued (its creator died while queueing?): "
                                   f"delete the storage or use another --name")
            time.sleep(0.5)
        if grid.points and study.user_attrs["queued"] != len(grid.points):
            raise ConfigError(f"study {name!r} holds a grid of {study.user_attrs['queued']} points, the grid file has "
                              f"{len(grid.points)}: use another --name for another grid")
    return study, created


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(worker: str) -> bool | None:
    """True/False for a worker of this machine, None for another machine's (cannot tell)."""
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def requeue_dead_trials(study, storage, stale_after_s: float = 0) -> list[int]:
    """Trials left RUNNING by a worker that died: marked failed (with why) and their point queued again.

    A worker of this machine is dead when its process is gone; another machine's when its last
    heartbeat (each epoch) is older than ``stale_after_s`` (0: never judged from here).
    """
    import optuna
    from optuna.trial import TrialState

    requeued = []
    study_id = storage.get_study_id_from_name(study.study_name)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker", "")
        alive = _alive(worker) if worker else None
        beat = t.user_attrs.get("heartbeat", 0)
        stale = alive is False or (alive is None and stale_after_s > 0 and time.time() - beat > stale_after_s)
        if not stale:
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        try:  # the why first (a finished trial takes no more attributes), then the state change, which only one worker wins
            storage.set_trial_user_attr(trial_id, "error", f"worker {worker or '?'} died during the trial; queued again")
            storage.set_trial_user_attr(trial_id, "status", "failed")
            if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker got there first
            continue
        if GRID_KEY in t.params:
            study.enqueue_trial({GRID_KEY: t.params[GRID_KEY]}, user_attrs={k: v for k, v in t.user_attrs.items()
                                                                          if k in ("label", "overrides")} | {"retry_of": t.number})
        requeued.append(t.number)
    return requeued


def claim_queued(study, storage):
    """The next queued trial, claimed atomically (WAITING -> RUNNING through the storage), or None.

    Written here because ``Study.ask`` creates a fresh trial when the queue is empty, which for a
    grid means a second run of some point when two workers race for the last one.
    """
    import optuna
    from optuna.trial import TrialState

    study_id = storage.get_study_id_from_name(study.study_name)
    for t in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        try:
            if storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                return optuna.Trial(study, trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def suggest(trial, grid: Grid) -> tuple[str, dict]:
    """The trial's (label, overrides): a grid point, or a draw from the search space."""
    if not grid.is_search:
        p = grid.points[trial.suggest_categorical(GRID_KEY, [p.index for p in grid.points])]
        return p.label, p.overrides
    ov, label = dict(grid.base), []
    for key, spec in grid.space.items():
        kind, arg = next(iter(spec.items()))
        if kind == "choice":
            labels = [str(a.get("name", i)) if isinstance(a, dict) else a for i, a in enumerate(arg)]
            picked = trial.suggest_categorical(key, labels)
            value = arg[labels.index(picked)]
            if isinstance(value, dict):
                ov.update({k: v for k, v in value.items() if k != "name"})
            else:
                ov[key] = value
            label.append(f"{key.rsplit('.', 1)[-1]}={picked}")
        elif kind == "int":
            ov[key] = trial.suggest_int(key, int(arg[0]), int(arg[1]))
            label.append(f"{key.rsplit('.', 1)[-1]}={ov[key]}")
        else:
            ov[key] = trial.suggest_float(key, float(arg[0]), float(arg[1]), log=kind == "log_uniform")
            label.append(f"{key.rsplit('.', 1)[-1]}={ov[key]:.3g}")
    return ", ".join(label), _with_resize(ov)


class Pruning:
    """The per-epoch callback of every fit() a trial runs: reports validation loss, prunes, beats."""

    def __init__(self, trial, single_objective: bool):
        self.trial, self.single, self.step = trial, single_objective, 0

    def __call__(self, ev: dict) -> None:
        if ev["event"] != "epoch":
            return
        self.trial.set_user_attr("heartbeat", time.time())
        if self.single:
            import optuna

            self.trial.report(ev["val_loss"], self.step)
            self.step += 1
            if self.trial.should_prune():
                raise optuna.TrialPruned(f"validation loss {ev['val_loss']:.4f} at step {self.step}")
        else:
            self.step += 1


def run_trial(study, trial, grid: Grid, sweep_dir: Path, data: str, config_files: list[str], extra: list[str]) -> str:
    """Train one trial through the kit's own stages; tell the study how it ended; returns the status."""
    import optuna

    from .flops import competition_gflops, count_params, true_gflops
    from .models import create_model
    from .stages import make_context, runner

    t0 = time.perf_counter()
    trial.set_user_attr("worker", _worker_id())
    trial.set_user_attr("heartbeat", time.time())
    try:
        label, overrides = suggest(trial, grid)
        trial.set_user_attr("label", label)
        trial.set_user_attr("overrides", overrides)
        run_name = f"t{trial.number:04d}"
        # the command line's --set wins over the grid file (as in train_local.py), e.g. fewer epochs for a quick look
        cfg = load_config(config_files, [f"data.root={data}", f"run.out_dir={sweep_dir / 'runs'}", f"run.name={run_name}",
                                         *overrides_list(overrides), *extra])
        mcfg = cfg.student.model if "student" in grid.stages or "hrank" in grid.stages else cfg.teacher.model
        size = cfg.data.image_size
        probe = create_model(mcfg.name, 8, mcfg.in_chans)
        cost = {"model": mcfg.name, "family": model_family(mcfg.name), "image_size": size, "in_chans": mcfg.in_chans,
                "competition_gflops": competition_gflops(probe, size, mcfg.in_chans), "true_gflops": true_gflops(probe, size, mcfg.in_chans),
                "params": count_params(probe)}
        del probe
        for k, v in cost.items():
            trial.set_user_attr(k, v)
        if grid.max_gflops is not None and cost["true_gflops"] > grid.max_gflops:
            trial.set_user_attr("status", "skipped")
            trial.set_user_attr("error", f"{cost['true_gflops']:.3f} true GFLOPs > max_gflops {grid.max_gflops}")
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return "skipped"
        ctx = make_context(cfg, resume=True, progress=False, stages=grid.stages)
        ctx.callbacks.append(Pruning(trial, len(grid.objectives) == 1))
        result = {}
        for stage in grid.stages:
            summary = runner(stage)(ctx)
            result = summary.get("overall") or result
            trial.set_user_attr(f"{stage}_cv", summary.get("overall"))
        metrics = {"val_loss": result["loss"], "val_acc": result["acc"], **cost}
        trial.set_user_attr("val_loss", metrics["val_loss"])
        trial.set_user_attr("val_acc", metrics["val_acc"])
        trial.set_user_attr("status", "ok")
        trial.set_user_attr("wall_s", round(time.perf_counter() - t0, 2))
        study.tell(trial, [metrics[o] for o in grid.objectives])
        return "ok"
    except optuna.TrialPruned as e:
        trial.set_user_attr("status", "pruned")
        trial.set_user_attr("error", str(e))
        trial.set_user_attr("wall_s", round(time.perf_counter() - t0, 2))
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return "pruned"
    except KeyboardInterrupt:
        trial.set_user_attr("status", "failed")
        trial.set_user_attr("error", "interrupted")
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        if GRID_KEY in trial.params:  # the point is not lost: the next start runs it
            study.enqueue_trial({GRID_KEY: trial.params[GRID_KEY]}, user_attrs={"retry_of": trial.number})
        raise
    except Exception as e:  # noqa: BLE001 - a failing trial is recorded, never fatal
        trial.set_user_attr("status", "failed")
        trial.set_user_attr("error", f"{type(e).__name__}: {e}".strip()[:2000])
        trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
        trial.set_user_attr("wall_s", round(time.perf_counter() - t0, 2))
        _logger.warning(f"sweep trial {trial.number} failed: {type(e).__name__}: {e}")
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return "failed"


def run_worker(grid: Grid, storage: str, name: str, sweep_dir: Path, data: str, config_files=(), extra=(),
               seed: int = 0, progress: bool = True, stale_after_s: float = 0) -> dict[str, int]:
    """Join the study and run trials until the grid is done (or the search has its trials); returns counts."""
    from optuna.trial import TrialState
    from tqdm.auto import tqdm

    store = open_storage(storage)
    study, created = open_study(grid, store, name, seed)
    requeued = requeue_dead_trials(study, store, stale_after_s)
    if requeued:
        _logger.warning(f"sweep: trial(s) {requeued} were left running by a worker that died: queued again")
    ran: dict[str, int] = {}
    total = len(grid.points) if not grid.is_search else grid.n_trials
    bar = tqdm(total=total, desc=f"sweep {name}", unit="trial", disable=not progress)

    def finished() -> int:
        return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)))

    while True:
        if grid.is_search:
            started = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)))
            if started >= grid.n_trials:
                break
            trial = claim_queued(study, store) or study.ask()
        else:
            trial = claim_queued(study, store)
            if trial is None:
                break
        status = run_trial(study, trial, grid, sweep_dir, data, list(config_files), list(extra))
        ran[status] = ran.get(status, 0) + 1
        bar.n = min(finished(), total)
        bar.refresh()
    bar.close()
    return ran


# ----------------------------------------------------------------------------- results
COLUMNS = ["trial", "state", "status", "label", "model", "family", "image_size", "in_chans", "competition_gflops", "true_gflops",
           "params", "val_loss", "val_acc", "pareto", "wall_s", "worker", "error"]


def pareto_mask(cost, metric, maximize: bool) -> list[bool]:
    """Points no other point beats on both cost (lower) and metric (higher if ``maximize``)."""
    out = []
    for i, (c, m) in enumerate(zip(cost, metric)):
        better = any((c2 <= c and (m2 >= m if maximize else m2 <= m)) and (c2 < c or m2 != m)
                     for j, (c2, m2) in enumerate(zip(cost, metric)) if j != i)
        out.append(not better)
    return out


def results_frame(study, flops: str = "true"):
    import pandas as pd

    rows = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        rows.append({"trial": t.number, "state": t.state.name, "status": a.get("status", t.state.name.lower()),
                     **{c: a.get(c) for c in COLUMNS if c not in ("trial", "state", "status", "pareto")}})
    df = pd.DataFrame(rows, columns=COLUMNS)
    ok = df["status"] == "ok"
    df["pareto"] = False
    if ok.any():
        sub = df[ok]
        df.loc[ok, "pareto"] = pareto_mask(sub[f"{flops}_gflops"].astype(float).tolist(), sub["val_acc"].astype(float).tolist(), True)
    return df


def aggregate(study, sweep_dir: Path, flops: str = "true"):
    """results.csv, results.md and the two GFLOPs scatter plots (Pareto front drawn), from the study."""
    df = results_frame(study, flops)
    with atomic_path(sweep_dir / "results.csv") as tmp:
        df.to_csv(tmp, index=False)

    def f(x, fmt, scale=1.0):
        return "" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x / scale, fmt)

    md = ["| trial | setting | status | GFLOPs (competition) | GFLOPs (true) | params (M) | val loss | val acc | Pareto | wall (s) |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for r in df.to_dict("records"):
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {str(r['error'])[:80]}"
        md.append(f"| {r['trial']} | {r['label']} | {status} | {f(r['competition_gflops'], '.7f')} | {f(r['true_gflops'], '.4f')} | "
                  f"{f(r['params'], '.2f', 1e6)} | {f(r['val_loss'], '.4f')} | {f(r['val_acc'], '.4f')} | "
                  f"{'*' if r['pareto'] else ''} | {f(r['wall_s'], '.1f')} |")
    with atomic_path(sweep_dir / "results.md") as tmp:
        tmp.write_text("\n".join(md) + "\n")
    plot_sweep(df[df["status"] == "ok"], sweep_dir, flops)
    return df


def plot_sweep(df, sweep_dir: Path, flops: str = "true") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if flops not in ("true", "competition"):
        raise ValueError("flops axis must be 'true' or 'competition'")
    xcol = f"{flops}_gflops"
    for metric, name, maximize in (("val_loss", "validation loss", False), ("val_acc", "validation accuracy", True)):
        fig, ax = plt.subplots(figsize=(8, 5.5))
        for j, (fam, g) in enumerate(sorted(df.groupby("family"), key=lambda t: t[0])):
            ax.scatter(g[xcol], g[metric], label=fam, color=f"C{j % 10}", s=40, alpha=0.85)
            for _, r in g.iterrows():
                ax.annotate(f"{r['model']}@{r['image_size']}", (r[xcol], r[metric]), fontsize=7, alpha=0.7,
                            xytext=(3, 3), textcoords="offset points")
        if len(df):
            front = df[pareto_mask(df[xcol].astype(float).tolist(), df[metric].astype(float).tolist(), maximize)].sort_values(xcol)
            ax.step(front[xcol], front[metric], where="post", color="black", lw=1.2, alpha=0.7, label="Pareto front")
            ax.scatter(front[xcol], front[metric], facecolors="none", edgecolors="black", s=110, lw=1.2)
            ax.legend(title="model family", fontsize=8)
        ax.set_xlabel(f"GFLOPs ({'competition thop number' if flops == 'competition' else 'true, FlopCounterMode'})")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.set_title(f"{name} against cost ({len(df)} trials; front: no other trial is cheaper and better)")
        fig.tight_layout()
        with atomic_path(sweep_dir / f"gflops_vs_{metric.split('_')[1]}.png") as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)
