"""Run on torch.distributed when a launcher started us (torchrun, accelerate launch, deepspeed, srun + env).

Launchers export RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `init()` joins that process group
(NCCL on GPUs, gloo on CPUs) and pins each rank to its local GPU. Without a launcher everything here is a
no-op: rank 0 of a world of 1. grads never starts processes itself.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

# scoring a shard can take hours; ranks that finish early wait at a barrier for the others
BARRIER_TIMEOUT = timedelta(hours=float(os.environ.get("GRADS_DIST_TIMEOUT_HOURS", "24")))


def launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init() -> None:
    """Join the launcher's process group once (idempotent); pin this rank to its GPU."""
    if not launched() or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, timeout=BARRIER_TIMEOUT)


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shard(n_items: int) -> list[int]:
    """This rank's items of 0..n_items-1: round-robin, so length-sorted work spreads evenly over ranks."""
    return list(range(rank(), n_items, world_size()))
