"""Feature dump throughput: the batched dumper against a naive one-utterance-at-a-time fp32 loop.

Both run the same random-weight WavLM over the same audio (FSDD recordings concatenated into
1-12 s utterances by default, or speech-like tones where FSDD is absent) and write the same HDF5
layout. Figures are seconds of audio per second of wall time (x real time). The two take turns
(naive first in even rounds, batched first in odd ones) so that load from other processes hits
both alike; each round gives a ratio, and the median and range of those ratios are printed.

Both get the whole machine by default: the naive loop torch's threads (one per core), the dumper
`--nj` jobs (one per core, as `dump_feats` runs on CPU). `--threads 1 --nj 1` compares one core
with one core. The CPU time of this process and its finished children is printed too: on a shared
machine it varies less than wall time.

Then where the time goes, each part timed alone (medians over the rounds): reading audio, model
compute (naive HF fp32 one at a time; the dumper's extractor in float32 and in its compute dtype,
batched, with the host copies and fp16 conversion), HDF5 writes, padding, and how far the
compute dtype's features are from float32 ones. Last, the ceiling: the model's FLOPs per second of
audio, and what the dumper would reach if every FLOP ran as fast as a large matrix product does on
this machine in its compute dtype.

    python bench/bench_dump.py --quick                                   # CPU, small WavLM
    python bench/bench_dump.py --preset base-plus --device cuda --minutes 120 --nj 8

dump_feats sets THP_MEM_ALLOC_ENABLE=1 (large tensors on huge pages) before loading torch; this
script leaves the environment as it finds it, and both loops run in this one process under it.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from typing import NamedTuple
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from asrkit.audio import SAMPLE_RATE, load_audio  # noqa: E402
from asrkit.cli import usable_cores  # noqa: E402
from asrkit.features.dump import extract_shard, make_batches, plan_items, read_batch  # noqa: E402
from asrkit.features.extractors import SSLExtractor, cpu_has_native_bf16  # noqa: E402
from asrkit.features.store import FeatureWriter  # noqa: E402
from asrkit.fileio import load_jsonl, resolve_audio_path, write_jsonl  # noqa: E402
from asrkit.random_models import save_random_ssl  # noqa: E402
from machine import cpu_name, matmul_gflops, print_header, sync  # noqa: E402

FSDD = Path(os.environ.get("ASRKIT_FSDD", Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd"))


def make_corpus(out: Path, seconds: float, lo: float, hi: float, seed: int = 0) -> tuple[Path, str]:
    """Utterances of lo-hi s (16 kHz wav; 0 0: single recordings) adding up to `seconds`, and their source."""
    rng = np.random.default_rng(seed)
    pool, source = [], "synthetic tones"
    if (FSDD / "manifest.jsonl").is_file():
        recs = load_jsonl(FSDD / "manifest.jsonl")
        pool = [load_audio(resolve_audio_path(r["audio"], FSDD / "manifest.jsonl"))
                for r in rng.choice(recs, size=min(300, len(recs)), replace=False)]
        source = f"FSDD recordings ({FSDD})"
    else:
        t = np.arange(SAMPLE_RATE // 2) / SAMPLE_RATE
        pool = [(0.2 * np.sin(2 * np.pi * f * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
                for f in rng.uniform(100, 400, 50)]
    records, total, i = [], 0.0, 0
    while total < seconds:
        target = rng.uniform(lo, hi) * SAMPLE_RATE
        parts, n = [], 0
        while not parts or n < target:
            parts.append(pool[rng.integers(len(pool))])
            n += len(parts[-1])
        wav = np.concatenate(parts)
        sf.write(out / f"u{i:05d}.wav", wav, SAMPLE_RATE, subtype="PCM_16")
        records.append(dict(utt_id=f"u{i:05d}", audio=f"u{i:05d}.wav", duration=len(wav) / SAMPLE_RATE))
        total += len(wav) / SAMPLE_RATE
        i += 1
    write_jsonl(out / "list.jsonl", records)
    return out / "list.jsonl", source


def naive(model, attrs, data, out, device, layer):
    """What one writes first: the HF model in fp32, one utterance at a time, then write it."""
    writer = FeatureWriter(out, attrs)
    sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for r in load_jsonl(data):
            wav = torch.from_numpy(load_audio(resolve_audio_path(r["audio"], data)))[None].to(device)
            hidden = model(wav, output_hidden_states=True).hidden_states[int(layer)]
            writer.write([(r["utt_id"], hidden[0].half().cpu().numpy())])
    sync(device)
    writer.close()
    return time.perf_counter() - t0


def timed(fn, device):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the dumper's DataLoader workers)."""
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


def model_gflop(model, device) -> float:
    """GFLOP (matmuls and convolutions, as torch counts them) per second of audio, on a 10 s input."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:  # (inference_mode trips weight norm)
        model(torch.zeros(1, 10 * SAMPLE_RATE, device=device), output_hidden_states=True)
    return counter.get_total_flops() / 10 / 1e9


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small", help="asrkit.ssl preset of the random WavLM")
    p.add_argument("--device", default="cpu")
    p.add_argument("--minutes", type=float, default=3.0, help="audio to dump")
    p.add_argument("--nj", type=int, default=usable_cores(),
                   help="the dumper's jobs, as dump_feats --nj (default: the cores; on GPU: readers)")
    p.add_argument("--batch_seconds", type=float, default=0.0, help="0: 200 on GPU, 20 on CPU")
    p.add_argument("--compute_dtype", default="auto", help="the batched dumper's (auto: as dump_feats)")
    p.add_argument("--layer", default="", help="layer spec (default: the last layer)")
    p.add_argument("--utt_seconds", default="1 12",
                   help="range of utterance lengths (FSDD recordings concatenated); '0 0': single recordings")
    p.add_argument("--rounds", type=int, default=5, help="rounds of the two taking turns; medians count")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads of the naive loop (and of the dumper with --nj 0); 0: torch's default")
    p.add_argument("--quick", action="store_true", help="1 minute of audio")
    return p.parse_args()


class Bench(NamedTuple):
    """What both measurements run on: the corpus, the model, the extractors and the batches."""
    tmp: Path
    data: Path
    layer: str
    model: object  # the stock HF model, for the naive loop
    ext: SSLExtractor  # the dumper's (its compute dtype)
    ext32: SSLExtractor  # the dumper's in float32
    stock: SSLExtractor  # the dumper's without features/speedups.py
    batches: list
    audio_s: float
    padded_s: float


def setup(args, tmp: Path) -> Bench:
    dev, minutes = args.device, 1.0 if args.quick else args.minutes
    gpu = dev.startswith("cuda")
    (tmp / "wav").mkdir()
    data, source = make_corpus(tmp / "wav", minutes * 60, *map(float, args.utt_seconds.split()))
    model_dir = str(save_random_ssl(tmp / "model", args.preset))
    batch_seconds = args.batch_seconds or (200.0 if gpu else 20.0)
    ext = SSLExtractor(model_dir, args.layer or "all", device=dev, compute_dtype=args.compute_dtype)
    layer = args.layer or str(ext.config.num_hidden_layers)
    ext = SSLExtractor(model_dir, layer, device=dev, compute_dtype=args.compute_dtype)
    ext32 = SSLExtractor(model_dir, layer, device=dev, compute_dtype="float32")
    stock = SSLExtractor(model_dir, layer, device=dev, compute_dtype=ext.attrs["compute_dtype"],
                         speedups=False)  # without features/speedups.py
    from transformers import AutoModel

    model = AutoModel.from_pretrained(model_dir).eval().to(dev)
    items, _ = plan_items(data, [1.0])
    audio_s = sum(it.samples for it in items) / SAMPLE_RATE
    batches = make_batches(items, int(batch_seconds * SAMPLE_RATE))
    padded_s = sum(len(b) * b[0].samples for b in batches) / SAMPLE_RATE
    hw = torch.cuda.get_device_name() if gpu else \
        f"{cpu_name()}, {usable_cores()} cores, native bf16: {'yes' if cpu_has_native_bf16() else 'no'}"
    print(f"# {len(items)} utterances, {audio_s / 60:.1f} min of {source}; WavLM preset {args.preset} "
          f"({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params), layer {layer}")
    print(f"# {dev} ({hw}); torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', '')!r}; "
          f"dumper: {ext.attrs['compute_dtype']}, nj {args.nj}, {len(batches)} batches")
    for e in (ext, ext32, stock):
        e([np.zeros(SAMPLE_RATE, np.float32)])  # warm-up (oneDNN kernels, cuDNN/cuBLAS handles)
    return Bench(tmp, data, layer, model, ext, ext32, stock, batches, audio_s, padded_s)


def race(args, b: Bench) -> tuple[list, list, dict]:
    """The naive loop and the batched dumper taking turns (the machine may be shared): their wall
    seconds per round, and the CPU seconds of each."""
    dev, t_naive, t_batched, cpu = args.device, [], [], {"naive": [], "batched": []}
    for r in range(args.rounds):
        runs = [("naive", lambda: naive(b.model, b.ext.attrs, b.data, b.tmp / f"naive{r}.h5", dev, b.layer)),
                ("batched", lambda: timed(lambda: extract_shard(
                    b.ext, b.batches, b.tmp / f"batched{r}.h5", args.nj, 60 * SAMPLE_RATE, progress=False), dev)[0])]
        for name, run in runs if r % 2 == 0 else runs[::-1]:
            c0 = cpu_seconds()
            (t_naive if name == "naive" else t_batched).append(run())
            cpu[name].append(cpu_seconds() - c0)
        print(f"  round {r}: naive {b.audio_s / t_naive[-1]:.1f}x, batched {b.audio_s / t_batched[-1]:.1f}x real "
              f"time, ratio {t_naive[-1] / t_batched[-1]:.2f}; CPU time ratio "
              f"{cpu['naive'][-1] / cpu['batched'][-1]:.2f}", flush=True)
    return t_naive, t_batched, cpu


def parts_alone(args, b: Bench) -> tuple[dict, list, list]:
    """Where the time goes, each part alone, the parts taking turns as in the race: seconds per part and
    round, and the features of the dumper in its compute dtype and in float32."""
    dev, low = args.device, b.ext.attrs["compute_dtype"]
    loaded = [[(k, a) for k, a, _, _ in read_batch(batch, b.ext)] for batch in b.batches]
    wavs = [a for batch in loaded for _, a in batch]
    parts = {k: [] for k in ("read", "naive fp32 compute", "dumper fp32 compute", f"dumper {low} compute",
                             f"dumper {low} compute, speedups off", "HDF5 writes")}

    def hf_fp32():
        with torch.inference_mode():
            return [b.model(torch.from_numpy(w)[None].to(dev), output_hidden_states=True)
                    .hidden_states[int(b.layer)][0].half().cpu().numpy() for w in wavs]

    def write(feats):
        writer = FeatureWriter(b.tmp / "write_only.h5", b.ext.attrs)
        for batch, f in zip(loaded, feats):
            writer.write(list(zip([k for k, _ in batch], f)))
        writer.close()
        os.remove(b.tmp / "write_only.h5")
        os.remove(b.tmp / "write_only.h5.done")

    feats = feats32 = None
    for r in range(args.rounds):
        steps = [("read", lambda: [read_batch(batch, b.ext) for batch in b.batches]),
                 ("naive fp32 compute", hf_fp32),
                 ("dumper fp32 compute", lambda: [b.ext32([a for _, a in batch]) for batch in loaded]),
                 (f"dumper {low} compute", lambda: [b.ext([a for _, a in batch]) for batch in loaded]),
                 (f"dumper {low} compute, speedups off", lambda: [b.stock([a for _, a in batch]) for batch in loaded])]
        for name, fn in steps if r % 2 == 0 else steps[::-1]:
            t, out = timed(fn, dev)
            parts[name].append(t)
            if name.startswith("dumper fp32"):
                feats32 = out
            elif name == f"dumper {low} compute":
                feats = out
        parts["HDF5 writes"].append(timed(lambda: write(feats), dev)[0])
    return parts, feats, feats32


def report(args, b: Bench, t_naive, t_batched, cpu, parts, feats, feats32, gb: float) -> None:
    med, audio_s, low = statistics.median, b.audio_s, b.ext.attrs["compute_dtype"]
    ratios = sorted(n / x for n, x in zip(t_naive, t_batched))
    print(f"naive loop (1 utt, fp32):  {audio_s / med(t_naive):7.1f} x real time (median of {args.rounds})")
    print(f"batched dumper ({low}):  {audio_s / med(t_batched):7.1f} x real time")
    print(f"ratio batched / naive:     {med(ratios):7.2f} (median of the rounds' ratios; "
          f"range {ratios[0]:.2f}-{ratios[-1]:.2f})")
    cpu_ratios = sorted(n / x for n, x in zip(cpu["naive"], cpu["batched"]))
    print(f"CPU time ratio:            {med(cpu_ratios):7.2f} (range {cpu_ratios[0]:.2f}-{cpu_ratios[-1]:.2f}; "
          f"CPU seconds of this process and its workers, less sensitive to other processes' load)")
    print("parts alone (x real time, median): " + "; ".join(f"{k} {audio_s / med(v):.0f}"
                                                             for k, v in parts.items()))
    on, off = (med(parts[f"dumper {low} compute{s}"]) for s in ("", ", speedups off"))
    print(f"speedups (asrkit/features/speedups.py, on by default on CPU): compute {off / on:.2f}x faster than the "
          f"stock HF layers in {low}")
    print(f"padding: batches hold {b.padded_s / audio_s - 1:.1%} padding; the store: "
          f"{gb / (audio_s / 3600):.3f} GB per hour of audio")
    diff = np.concatenate([(x.astype(np.float32) - y.astype(np.float32)).ravel()
                           for fa, fb in zip(feats, feats32) for x, y in zip(fa, fb)])
    ref = np.concatenate([y.astype(np.float32).ravel() for fb in feats32 for y in fb])
    # the ceiling: every FLOP at the rate of a large matrix product in the dumper's compute dtype
    dev, gpu = args.device, args.device.startswith("cuda")
    gflop = model_gflop(b.model, dev)
    threads = torch.get_num_threads()
    peak32 = matmul_gflops(torch.float32, dev, threads)
    if gpu or args.nj == 0:  # the dumper computes in this process
        peak_low, where = matmul_gflops(b.ext.compute_dtype, dev, threads), "GPU" if gpu else f"{threads} thread(s)"
    else:  # in args.nj jobs of one thread each
        jobs = min(args.nj, usable_cores())
        peak_low, where = jobs * matmul_gflops(b.ext.compute_dtype, dev, 1), f"{jobs} single-thread job(s)"
    naive_rate, best = gflop * audio_s / med(t_naive), peak_low / gflop
    most = best * med(t_naive) / audio_s
    print(f"ceiling: the model does {gflop:.2f} GFLOP per second of audio. The naive loop ran at {naive_rate:.0f} "
          f"GFLOP/s ({naive_rate / peak32:.0%} of an fp32 matmul on its {threads} thread(s), {peak32:.0f} GFLOP/s). "
          f"A {low} matmul on the dumper's {where} runs at {peak_low:.0f} GFLOP/s: with "
          f"every FLOP that fast the dumper would reach {best:.0f}x real time, {most:.2f}x the naive loop at most "
          f"(the median ratio above is {med(ratios) / most:.0%} of that)")
    print(f"{low} vs float32 features (both stored fp16): relative RMS difference "
          f"{np.sqrt(np.mean(diff ** 2) / np.mean(ref ** 2)):.2e}, largest {np.abs(diff).max():.3f} "
          f"(features' RMS {np.sqrt(np.mean(ref ** 2)):.3f})")


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print_header(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        b = setup(args, Path(tmp))
        t_naive, t_batched, cpu = race(args, b)
        gb = os.path.getsize(b.tmp / "batched0.h5") / 1e9
        parts, feats, feats32 = parts_alone(args, b)
    report(args, b, t_naive, t_batched, cpu, parts, feats, feats32, gb)


if __name__ == "__main__":
    main()
