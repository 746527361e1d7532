"""What machine a figure comes from: every benchmark prints this header before its figures.

CPU model, the vector extensions that decide its speed (AVX2, AVX-512, AVX512-BF16, AMX), the
cores this process may use, torch's threads, and the measured rate of a square matrix product in
float32 and bfloat16 (on a CPU without native bf16, bf16 is emulated at well under 1 GFLOP/s: a
figure that is fast on one machine can be hundreds of times slower on another).

    python bench/machine.py             # the header alone
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from asrkit.cli import usable_cores  # noqa: E402

EXTENSIONS = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_bf16": "AVX512-BF16", "avx512_vnni": "AVX512-VNNI",
              "amx_tile": "AMX", "amx_bf16": "AMX-BF16"}


def cpuinfo_field(field: str) -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_name() -> str:
    return cpuinfo_field("model name") or "CPU"


def cpu_extensions() -> list[str]:
    flags = set(cpuinfo_field("flags").split())
    return [label for flag, label in EXTENSIONS.items() if flag in flags]


def sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def matmul_gflops(dtype: torch.dtype, device: str = "cpu", threads: int | None = None,
                  n: int | None = None, budget_s: float = 0.5) -> float:
    """GFLOP/s of an n x n matrix product (the best case for the hardware) on `threads` threads.
    n defaults to 8192 on a GPU and 2048 on a CPU, or 256 where a first small product shows the dtype
    is emulated (a 2048 bf16 product would take a minute there); repeats fill about `budget_s`."""
    device = str(device)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        if n is None:
            n = 8192 if device.startswith("cuda") else 2048
            if not device.startswith("cuda") and matmul_gflops(dtype, device, None, 256, 0.05) < 5:
                n = 256
        a = torch.randn(n, n, device=device).to(dtype)
        a @ a
        sync(device)
        reps, elapsed = 0, 0.0
        t0 = time.perf_counter()
        while elapsed < budget_s or reps < 2:
            a @ a
            reps += 1
            sync(device)
            elapsed = time.perf_counter() - t0
    finally:
        torch.set_num_threads(before)
    return reps * 2 * n ** 3 / elapsed / 1e9


def header(device: str = "cpu") -> str:
    """The lines every benchmark prints first."""
    lines = [f"machine: {cpu_name()}; extensions: {', '.join(cpu_extensions()) or 'none of ' + '/'.join(EXTENSIONS.values())}; "
             f"{usable_cores()} usable core(s), torch {torch.__version__} on {torch.get_num_threads()} thread(s)"]
    fp32_1, bf16_1 = (matmul_gflops(dt, "cpu", 1) for dt in (torch.float32, torch.bfloat16))
    fp32_all = matmul_gflops(torch.float32, "cpu")
    lines.append(f"matmul: float32 {fp32_1:.0f} GFLOP/s on one thread, {fp32_all:.0f} on {torch.get_num_threads()}; "
                 f"bfloat16 {bf16_1:.1f} GFLOP/s on one thread ({bf16_1 / fp32_1:.2f}x float32)")
    if str(device).startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        rates = {dt: matmul_gflops(dt, "cuda") / 1000 for dt in (torch.float32, torch.bfloat16, torch.float16)}
        lines.append(f"gpu: {props.name}, {props.total_memory / 2 ** 30:.0f} GiB, CUDA {torch.version.cuda}; "
                     f"matmul TFLOP/s float32 {rates[torch.float32]:.0f}, bfloat16 {rates[torch.bfloat16]:.0f}, "
                     f"float16 {rates[torch.float16]:.0f}")
    return "\n".join(lines)


def print_header(device: str = "cpu") -> None:
    print(header(device), flush=True)


if __name__ == "__main__":
    print_header("cuda" if torch.cuda.is_available() else "cpu")
