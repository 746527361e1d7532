"""Which device a command runs on, from its --ngpu."""
from __future__ import annotations

import torch

from asrkit.distributed import launch
from asrkit.errors import DataError


def first_device(ngpu: int) -> torch.device:
    """cuda:0 when ngpu > 0 (after checking that that many GPUs are visible), else cpu."""
    visible = torch.cuda.device_count() if ngpu > 0 else 0
    if ngpu > visible:
        raise DataError(f"--ngpu {ngpu} but {visible or 'no'} GPU(s) visible", "--ngpu", "use --ngpu 0 to run on CPU")
    return torch.device("cuda:0" if ngpu > 0 else "cpu")


def process_device(ngpu: int, share: int = 0) -> torch.device:
    """The device of this process: the CPU with ngpu 0; on GPUs, under torchrun/srun the GPU of its local
    rank, else that of the share it does (a process spawned per GPU does share r on GPU r)."""
    device = first_device(ngpu)
    if device.type != "cuda":
        return device
    _, world, local = launch()
    return torch.device("cuda", (local if world > 1 else share) % torch.cuda.device_count())
