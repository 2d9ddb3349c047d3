"""Run on torch.distributed when a launcher started us (torchrun, accelerate launch, deepspeed, srun + env).

Launchers export RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `init()` joins that process group
(NCCL on GPUs, gloo on CPUs) and pins each rank to its local GPU. Without a launcher everything here is a
no-op: rank 0 of a world of 1. grads never starts processes itself.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist

# scoring a shard can take hours; ranks that finish early wait at a barrier for the others
BARRIER_TIMEOUT = timedelta(hours=float(os.environ.get("GRADS_DIST_TIMEOUT_HOURS", "24")))


def launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def by_a_launcher() -> bool:
    """A launcher started this process, even as a world of one (torchrun --nproc_per_node 1 exports its rendezvous
    too)."""
    return "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def init(group_of_one: bool = False) -> None:
    """Join the launcher's process group once (idempotent); pin this rank to its GPU. A world of one joins no group
    (nothing to share) unless group_of_one: --fsdp shards over a group of one as over W ranks."""
    if dist.is_initialized() or not (launched() or group_of_one and by_a_launcher()):
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


def _device_type() -> str:
    """Where this process group's tensors live: CUDA under NCCL, else the CPU (gloo)."""
    return "cuda" if dist.get_backend() == "nccl" else "cpu"


def most_over_ranks(n: int) -> int:
    """The largest n of any rank (n itself without a launcher)."""
    if not dist.is_initialized():
        return n
    value = torch.tensor([n], device=_device_type())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return int(value.item())


def fsdp_requested(flag: bool) -> bool:
    """--fsdp, or a launch by `accelerate launch` with the FSDP plugin in its config."""
    return flag or os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")


def shard_model(model):
    """Shard the parameters over every rank with FSDP2 (`fully_shard`): each decoder layer (the classes HF names
    in `_no_split_modules`), then the model itself (embedding, head, final norm). At rest a rank holds about 1/W of
    the parameters; a layer's are gathered while it runs (forward, and the backward to activations)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from grads.errors import GradsError

    init(group_of_one=True)  # under torchrun --nproc_per_node 1: a group of one, so --fsdp runs as on W ranks
    if not dist.is_initialized():
        raise GradsError("--fsdp shards the model across the ranks of a launched job; this is one process",
                         hint="start it with torchrun --nproc_per_node N (or accelerate launch), or drop --fsdp")
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(hf, "_no_split_modules", None) or [])
    layers = [m for m in hf.modules() if type(m).__name__ in names]
    if not layers:
        raise GradsError(f"--fsdp: {type(hf).__name__} does not name its decoder layers (_no_split_modules)",
                         hint="score without --fsdp")
    mesh = init_device_mesh(_device_type(), (world_size(),))
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def is_sharded(model) -> bool:
    """The model's parameters are sharded over the ranks (shard_model): each forward needs every rank."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextmanager
def gathered(model):
    """The sharded model's own parameters (embedding, head, final norm) whole while inside; the layers gather
    theirs as they run. Every rank must enter together. A no-op for a model that is not sharded."""
    if not is_sharded(model):
        yield
        return
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


def parameter_bytes(model) -> int:
    """Bytes of parameters this rank holds (its shards only, for a sharded model)."""
    total = 0
    for p in model.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        total += local.numel() * local.element_size()
    return total
