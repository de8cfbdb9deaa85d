"""DDP environment: torchrun-compatible (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT)."""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_from_vars() -> DistEnv:
    return DistEnv(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


_TRAIN_GROUP = None  # the short-timeout group every training collective uses


def init_distributed(device: torch.device, collective_timeout_s: float = 60, wait_timeout_s: float = 86400) -> DistEnv:
    """Join the process group described by the torchrun variables (no-op for one process).

    Two groups over the same processes, because they need opposite timeouts:

    * the default group, with ``wait_timeout_s`` (a day by default), only for waiting on one-off
      work a single rank does while the others have nothing to do (:func:`wait_for_peers`):
      data preparation of any length, HRank's rank statistics;
    * the training group, with ``collective_timeout_s`` (a minute by default), for DDP and every
      collective of the training loop, so a run whose peer died or hung ends within about that.
    """
    global _TRAIN_GROUP
    env = env_from_vars()
    if env.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=wait_timeout_s))
        _TRAIN_GROUP = dist.new_group(timeout=datetime.timedelta(seconds=collective_timeout_s))
    return env


def train_group():
    """The process group for training collectives (None = the default group, or no DDP)."""
    return _TRAIN_GROUP


def current() -> DistEnv:
    if dist.is_available() and dist.is_initialized():
        return DistEnv(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return DistEnv()


def _on() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    if not _on():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, group=_TRAIN_GROUP)
    return t.tolist()


def all_gather_objects(obj, patient: bool = False):
    """Every rank's ``obj``. ``patient=True`` waits as long as one-off work may take (see
    :func:`init_distributed`); use it where one rank computes while the others wait."""
    if not _on():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj, group=None if patient else _TRAIN_GROUP)
    return out


def barrier() -> None:
    """A training-time barrier (short timeout)."""
    if _on():
        dist.barrier(group=_TRAIN_GROUP)


def wait_for_peers() -> None:
    """Wait for every rank without the short collective timeout (after one-off, one-rank work)."""
    if _on():
        dist.barrier()


def resolve_device(spec: str = "auto", local_rank: int = 0) -> torch.device:
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {spec!r} asked for, but CUDA is not available here")
    return dev
