"""Would int8 speed up the WavLM front end on CPU? One front-end layer (conv k=3 stride 2 + GELU, time-major
activations) in bf16 as the dumper runs it (oneDNN, GELU fused) against the same layer in int8: per-frame
activation scales, per-channel weight scales, an int8 matrix product (torch._int_mm) and the dequantization
in torch ops. Prints times and the ratio against bf16 (measured in this run), the int8 product alone, and each
output's relative RMS difference from float32.

    python bench/bench_int8_conv.py
"""
from __future__ import annotations

import argparse
import time

import torch

from machine import print_header  # bench/ is on the path as this script's folder


def bench(fn, reps: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def rel_rms(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.float() - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0, help="audio at the layer's input (3,200 frames/s)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print_header()
    torch.manual_seed(0)
    T = int(args.seconds * 3200)
    print(f"# one front-end layer, {T} input frames ({args.seconds:g} s), {args.threads} thread(s)")
    for C in (256, 512):
        x32 = torch.nn.functional.gelu(torch.randn(T, C))  # time-major, like the previous layer's output
        w = torch.randn(C, C, 3) / (3 * C) ** 0.5
        T_out = (T - 3) // 2 + 1
        with torch.inference_mode():
            ref = torch.nn.functional.gelu(torch.nn.functional.conv1d(x32.t()[None], w, stride=2))[0].t()
            xb = x32.bfloat16()
            wb = w.bfloat16()[:, :, None].contiguous(memory_format=torch.channels_last)
            xin = xb[None].transpose(1, 2)[:, :, None]  # (1, C, 1, T) channels-last view of time-major memory

            def bf16():
                y = torch.ops.mkldnn._convolution_pointwise(xin, wb, None, (0, 0), (1, 2), (1, 1), 1, "gelu", [], "none")
                return y[0, :, 0].t()

            w_scale = w.abs().amax(dim=(1, 2)) / 127  # per output channel
            wq = (w.permute(0, 2, 1).reshape(C, 3 * C) / w_scale[:, None]).round().to(torch.int8).t().contiguous()

            def int8():
                cols = xb.as_strided((T_out, 3 * C), (2 * C, 1)).float()  # the frames each output reads
                scale = cols.abs().amax(1, keepdim=True).clamp_(min=1e-8) / 127  # per frame
                q = (cols / scale).round_().to(torch.int8)
                y = torch._int_mm(q, wq).float().mul_(scale).mul_(w_scale)
                return torch.nn.functional.gelu(y).bfloat16()

            q0 = torch.randint(-127, 128, (T_out, 3 * C), dtype=torch.int8)
            t_bf16, t_int8 = bench(bf16, args.reps), bench(int8, args.reps)
            t_mm = bench(lambda: torch._int_mm(q0, wq), args.reps)
            flop = 2 * T_out * 3 * C * C
            print(f"{C} channels: bf16 {t_bf16 * 1e3:.1f} ms ({flop / t_bf16 / 1e9:.0f} GFLOP/s); int8 layer "
                  f"{t_int8 * 1e3:.1f} ms: {t_int8 / t_bf16:.2f}x the bf16 time; int8 product alone "
                  f"{t_mm * 1e3:.1f} ms ({flop / t_mm / 1e9:.0f} GOP/s, {t_mm / t_bf16:.2f}x the bf16 layer); "
                  f"relative RMS from float32: bf16 {rel_rms(bf16(), ref):.2e}, int8 {rel_rms(int8(), ref):.2e}")


if __name__ == "__main__":
    main()
