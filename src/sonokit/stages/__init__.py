"""Pipeline stages: each is ``run_<stage>(ctx) -> summary``, called by train_local.py, the sweep
and the generated Kaggle notebooks alike.

Stages are imported on first use (:func:`runner`, or attribute access): a run imports only the
stages it runs, so a teacher notebook never imports thop or torch-pruning, which Kaggle's image
may lack.
"""
from __future__ import annotations

import importlib

from .common import Context, make_context

#: stage name -> (module, function), in pipeline order
STAGES = {
    "teacher": (".teacher", "run_teacher"),
    "student": (".student", "run_student"),
    "hrank": (".hrank", "run_hrank"),
    "infer": (".infer", "run_infer"),
    "flops": (".flops_stage", "run_flops"),
    "package": (".package_stage", "run_package"),
    "report": (".report_stage", "run_report"),
}
_BY_FUNCTION = {fn: (mod, fn) for mod, fn in STAGES.values()}


def runner(stage: str):
    """The ``run_<stage>`` function of ``stage``, importing only its module."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose from {', '.join(STAGES)}")
    mod, fn = STAGES[stage]
    return getattr(importlib.import_module(mod, __name__), fn)


def __getattr__(name: str):
    if name in _BY_FUNCTION:
        mod, fn = _BY_FUNCTION[name]
        return getattr(importlib.import_module(mod, __name__), fn)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Context", "STAGES", "make_context", "runner", *_BY_FUNCTION]
