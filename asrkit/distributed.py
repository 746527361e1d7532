"""Process group setup for torchrun (and Slurm's srun) launches; one process also works without it."""
from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launch() -> tuple[int, int, int]:
    """(rank, world size, local rank) of this process under torchrun or srun; (0, 1, 0) alone."""
    def env(*names: str, default: int) -> int:
        return next((int(os.environ[n]) for n in names if n in os.environ), default)

    return (env("RANK", "SLURM_PROCID", default=0), env("WORLD_SIZE", "SLURM_NTASKS", default=1),
            env("LOCAL_RANK", "SLURM_LOCALID", default=0))


def init_distributed(ngpu: int | None = None, backend: str = "auto", timeout_min: float = 30) -> DistInfo:
    """Join the process group that torchrun (RANK/WORLD_SIZE/LOCAL_RANK) or srun (SLURM_*) describes.

    ngpu=0 trains on CPU with gloo; otherwise each process takes the GPU of its local rank with NCCL.
    None means: the GPUs if there are any.
    """
    rank, world, local_rank = launch()
    use_cuda = torch.cuda.is_available() if ngpu is None else ngpu > 0
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError(f"--ngpu {ngpu} asked for GPUs but CUDA has none here; use --ngpu 0 for CPU")
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:
            raise RuntimeError("a multi-process launch needs MASTER_ADDR and MASTER_PORT (torchrun sets them; "
                               "under srun export them, e.g. the first node of $SLURM_JOB_NODELIST)")
        if backend == "auto":
            backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(minutes=timeout_min),
                                device_id=device if backend == "nccl" else None)
        log.info("rank %d of %d (local %d) on %s, backend %s", rank, world, local_rank, device, backend)
    return DistInfo(rank, local_rank, world, device)


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t)
    return t


def all_gather_objects(obj):
    """A list with every rank's `obj` (a one-element list in a single process)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
