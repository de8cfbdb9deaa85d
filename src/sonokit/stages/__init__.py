"""Pipeline stages: each is ``run_<stage>(ctx) -> summary``, called by train_local.py, the sweep
and the generated Kaggle notebooks alike."""
from .common import Context, make_context
from .flops_stage import run_flops
from .hrank import run_hrank
from .infer import run_infer
from .package_stage import run_package
from .student import run_student
from .teacher import run_teacher

__all__ = ["Context", "make_context", "run_flops", "run_hrank", "run_infer", "run_package", "run_student", "run_teacher"]
