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


def process_device(ngpu: int) -> torch.device:
    """first_device(ngpu), except under torchrun/srun on GPUs: the GPU of this process's local rank."""
    device = first_device(ngpu)
    return torch.device("cuda", launch()[2] % torch.cuda.device_count()) if device.type == "cuda" else device
