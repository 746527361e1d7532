"""Feature dump throughput: the batched dumper against a naive one-utterance-at-a-time fp32 loop.

Both run the same random-weight WavLM over the same audio (FSDD recordings concatenated into
1-12 s utterances by default, or speech-like tones where FSDD is absent) and write the same HDF5 layout.
Figures are seconds of audio per second of wall time (x real time), then where the batched
dumper's time goes: reading audio, model compute (with host<->device copies), HDF5 writes.

    python bench/bench_dump.py --quick                                   # CPU, small WavLM
    python bench/bench_dump.py --preset base-plus --device cuda --minutes 120 --nj 8
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from asrkit.audio import SAMPLE_RATE, load_audio  # noqa: E402
from asrkit.features.dump import _BatchAudio, extract_shard, make_batches, plan_items  # noqa: E402
from asrkit.features.extractors import SSLExtractor  # noqa: E402
from asrkit.features.store import FeatureWriter  # noqa: E402
from asrkit.fileio import load_jsonl, resolve_audio_path, write_jsonl  # noqa: E402
from asrkit.ssl import save_random_wavlm  # noqa: E402

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


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def naive(model_dir, data, out, device, layer):
    """What one writes first: the HF model in fp32, one utterance at a time, then write it."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(model_dir).eval().to(device)
    attrs = SSLExtractor(model_dir, layer).attrs
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


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small", help="asrkit.ssl preset of the random WavLM")
    p.add_argument("--device", default="cpu")
    p.add_argument("--minutes", type=float, default=3.0, help="audio to dump")
    p.add_argument("--nj", type=int, default=1, help="DataLoader workers of the batched dumper")
    p.add_argument("--batch_seconds", type=float, default=0.0, help="0: 200 on GPU, 20 on CPU")
    p.add_argument("--layer", default="", help="layer spec (default: the last layer)")
    p.add_argument("--utt_seconds", default="1 12",
                   help="range of utterance lengths (FSDD recordings concatenated); '0 0': single recordings")
    p.add_argument("--rounds", type=int, default=2, help="alternating runs of each; the best counts")
    p.add_argument("--quick", action="store_true", help="1 minute of audio")
    args = p.parse_args()
    minutes = 1.0 if args.quick else args.minutes
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "wav").mkdir()
        data, source = make_corpus(tmp / "wav", minutes * 60, *map(float, args.utt_seconds.split()))
        model_dir = str(save_random_wavlm(tmp / "model", args.preset))
        gpu = args.device.startswith("cuda")
        batch_seconds = args.batch_seconds or (200.0 if gpu else 20.0)
        ext = SSLExtractor(model_dir, args.layer or "all", device=args.device)
        layer = args.layer or str(ext.config.num_hidden_layers)
        ext = SSLExtractor(model_dir, layer, device=args.device)
        items, _ = plan_items(data, [1.0])
        audio_s = sum(it.samples for it in items) / SAMPLE_RATE
        batches = make_batches(items, int(batch_seconds * SAMPLE_RATE))
        print(f"# {len(items)} utterances, {audio_s / 60:.1f} min of {source}; WavLM preset {args.preset} "
              f"({sum(p.numel() for p in ext.model.parameters()) / 1e6:.1f} M params), layer {layer}, "
              f"{args.device} ({torch.cuda.get_device_name() if gpu else os.cpu_count()} "
              f"{'' if gpu else 'cores'}), torch threads {torch.get_num_threads()}, nj {args.nj}")

        ext([np.zeros(SAMPLE_RATE, np.float32)])  # warm-up (cuDNN/cuBLAS handles)
        t_naive = t_batched = float("inf")
        for r in range(args.rounds):  # alternate, keep the best of each: the machine may be shared
            t_naive = min(t_naive, naive(model_dir, data, tmp / f"naive{r}.h5", args.device, layer))
            sync(args.device)
            t0 = time.perf_counter()
            extract_shard(ext, batches, tmp / f"batched{r}.h5", args.nj, 60 * SAMPLE_RATE, progress=False)
            sync(args.device)
            t_batched = min(t_batched, time.perf_counter() - t0)

        # where the batched time goes, each part alone
        audio = _BatchAudio(batches, ext)
        t0 = time.perf_counter()
        loaded = [[(k, a) for k, a, _, _ in audio[i]] for i in range(len(batches))]
        t_read = time.perf_counter() - t0
        sync(args.device)
        t0 = time.perf_counter()
        feats = [list(zip([k for k, _ in b], ext([a for _, a in b]))) for b in loaded]
        sync(args.device)
        t_compute = time.perf_counter() - t0
        t0 = time.perf_counter()
        writer = FeatureWriter(tmp / "write_only.h5", ext.attrs)
        for f in feats:
            writer.write(f)
        writer.close()
        t_write = time.perf_counter() - t0
        gb = os.path.getsize(tmp / "batched0.h5") / 1e9

    rtf = lambda t: audio_s / t  # noqa: E731
    print(f"naive loop (1 utt, fp32):      {rtf(t_naive):10.1f} x real time ({t_naive:.2f} s)")
    print(f"batched dumper ({ext.attrs['compute_dtype']}, nj {args.nj}): "
          f"{rtf(t_batched):10.1f} x real time ({t_batched:.2f} s)")
    print(f"ratio batched / naive:         {t_naive / t_batched:10.2f}")
    print(f"parts alone: reading audio in 1 process {rtf(t_read):.0f} x; model + copies {rtf(t_compute):.0f} x; "
          f"HDF5 writes {rtf(t_write):.0f} x ({gb / (audio_s / 3600):.3f} GB per hour of audio)")


if __name__ == "__main__":
    main()
