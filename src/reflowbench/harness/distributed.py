"""``torchrun`` support: the process group from the environment torchrun sets, and the one rank that writes.

Under ``torchrun --nproc-per-node K reflowbench prune|run ...`` every rank runs the same runs in the same order; the
Hessian pruners shard their gradient rows and layers across the ranks (:mod:`reflowbench.hessian.distributed_fisher`); rank 0
alone claims runs, writes files and prints.
"""

from __future__ import annotations

import os
from typing import TypeVar

import torch
import torch.distributed as dist

from reflowbench.hessian.distributed_fisher import is_distributed

T = TypeVar("T")


def init_from_env() -> bool:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1): nccl where CUDA is present (each rank on
    ``cuda:LOCAL_RANK``), else gloo. Returns whether this process is one of several."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return is_distributed()
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


def join_launched_group() -> bool:
    """Where torchrun launched this process (``WORLD_SIZE`` > 1), join its group; progress bars stay on rank 0 only.
    Returns whether this process is the one that prints and writes (rank 0, or a single process)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return True
    init_from_env()
    if not is_main_rank():
        os.environ["TQDM_DISABLE"] = "1"
        return False
    return True


def is_main_rank() -> bool:
    """True in a single process and on rank 0 of a group."""
    return not is_distributed() or dist.get_rank() == 0


def from_main_rank(value: T) -> T:
    """Rank 0's ``value`` on every rank (a decision only rank 0 takes: which runs are left, whether it claimed one)."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
