"""Every benchmark prints the machine its figures come from: CPU, extensions, matmul rates."""
import sys

import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import machine  # noqa: E402


def test_header_names_the_cpu_its_extensions_and_measured_rates(monkeypatch):
    flags = "fpu sse2 avx2 fma avx512f avx512_bf16 amx_tile"
    monkeypatch.setattr(machine, "cpuinfo_field", lambda f: {"model name": "Test CPU 9000", "flags": flags}[f])
    assert machine.cpu_extensions() == ["AVX2", "AVX-512", "AVX512-BF16", "AMX"]
    text = machine.header()
    assert text.startswith("machine: Test CPU 9000; extensions: AVX2, AVX-512, AVX512-BF16, AMX;")
    rates = [float(x) for x in __import__("re").findall(r"([\d.]+) GFLOP/s", text)]
    assert len(rates) == 2 and all(r > 0 for r in rates), text


def test_matmul_rate_is_flops_over_time(monkeypatch):
    # with a fake clock a product takes 1 s, so an n x n product runs at 2 n^3 / 1e9 GFLOP/s
    ticks = iter(range(1000))
    monkeypatch.setattr(machine.time, "perf_counter", lambda: float(next(ticks)))
    assert machine.matmul_gflops(torch.float32, n=100, budget_s=0.5) == 2 * 100 ** 3 / 1e9
