"""Loader throughput: frames/s that the training Dataset + batch sampler + collate deliver from an HDF5
store with 0, 2 and 4 DataLoader workers, against the frames/s that a training step consumes.

The store holds fp16 features in the wavlm-base-plus layout (768-dim, one layer, 50 frames/s;
`--layers 13` for every layer stacked), utterances of 1-12 s, written with the store's own writer
(random values: read cost depends on sizes only). The consumer is the shipped Conformer config
training on the same batches held in memory (pure compute, no loading). The file is read from the
page cache, as a store that fits in RAM is after the first epoch.

    python bench/bench_loader.py --quick
    python bench/bench_loader.py --hours 2 --device cuda
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from machine import print_header  # noqa: E402
from bench_train import WORDS, Meter, build_trainer, compare  # noqa: E402

from asrkit.data import collate  # noqa: E402
from asrkit.features.store import FeatureWriter, finalize_store  # noqa: E402
from asrkit.fileio import write_jsonl  # noqa: E402
from asrkit.tokenizer import build_token_list  # noqa: E402

ATTRS = dict(feats_type="wavlm", ssl_model="bench", weights_hash="bench", layer_reduce="stack",
             sample_rate=16000, frame_rate=50.0, dtype="float16", asrkit_version="bench")


def make_store(root: Path, seconds: float, dim: int, layers: int, codec: str = "none") -> dict:
    rng = np.random.default_rng(0)
    attrs = dict(ATTRS, dim=dim, num_layers=layers, layers=list(range(layers)),
                 layer_reduce="stack" if layers > 1 else "none", store_codec=codec)
    shard = root / "train.h5.partial" / "shard0.h5"
    w = FeatureWriter(shard, attrs)
    records, total, i = [], 0.0, 0
    while total < seconds:
        dur = rng.uniform(1, 12)
        frames = int(dur * 50)
        shape = (layers, frames, dim) if layers > 1 else (frames, dim)
        w.write([(f"u{i:06d}", rng.standard_normal(shape, dtype=np.float32).astype(np.float16))])
        text = " ".join(rng.choice(WORDS, size=max(1, int(2.5 * dur))))
        records.append(dict(utt_id=f"u{i:06d}", audio=f"u{i:06d}.wav", duration=dur, text=text))
        total, i = total + dur, i + 1
    w.close()
    finalize_store([shard], root / "train.h5", attrs, [])
    write_jsonl(root / "train.jsonl", records)
    build_token_list([r["text"] for r in records], "char", root / "tokens")
    return dict(data=root / "train.jsonl", feats=root / "train.h5", tokens=root / "tokens")


def loader_rate(dataset, sampler, workers: int, pin: bool, epochs: int) -> dict:
    """Frames/s over `epochs` whole epochs, after one untimed epoch that starts the workers."""
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
                        pin_memory=pin, persistent_workers=workers > 0, prefetch_factor=4 if workers else None)
    for _ in loader:
        pass
    frames = utts = nbytes = 0
    t0 = time.perf_counter()
    for _ in range(epochs):
        for batch in loader:  # the next epoch's prefetching happens inside the timed region
            frames += int(batch["feat_lens"].sum())
            utts += len(batch["utt_ids"])
            nbytes += batch["feats"].numel() * batch["feats"].element_size()
    dt = time.perf_counter() - t0
    return dict(frames_s=frames / dt, utts_s=utts / dt, mb_s=nbytes / dt / 2**20)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="10 minutes of features, small batches")
    p.add_argument("--hours", type=float, default=None, help="features in the store (default 1, quick 1/6)")
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--layers", type=int, default=1, help="stacked layers per utterance")
    p.add_argument("--store_codec", default="none", help="how the store keeps the arrays (features/codecs.py)")
    p.add_argument("--batch_bins", type=int, default=None, help="default: the config's (4000 with --quick)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--config", default=str(REPO / "conf/train_conformer.yaml"))
    p.add_argument("--steps", type=int, default=None, help="timed training steps (default 10, quick 2)")
    p.add_argument("--epochs", type=int, default=3, help="timed loader epochs")
    a = p.parse_args()
    device = torch.device(a.device)
    print_header(a.device)
    hours = a.hours or (1 / 6 if a.quick else 1.0)
    batch_bins = a.batch_bins or (4000 if a.quick else None)
    steps = a.steps or (2 if a.quick else 10)
    with tempfile.TemporaryDirectory() as tmp:
        d = make_store(Path(tmp), hours * 3600, a.dim, a.layers, a.store_codec)
        overrides = ["--num_workers", "0", "--preflight_batches", "0"]
        if batch_bins:
            overrides += ["--batch_bins", str(batch_bins)]
        trainer = build_trainer(a.config, d, device, Path(tmp) / "exp", *overrides)
        ds, sampler = trainer.train_set, trainer.train_sampler
        size = d["feats"].stat().st_size / 2**30
        print(f"store: {len(ds)} utterances, {hours:.2f} h, {a.layers} x {a.dim}-dim fp16 (store codec {a.store_codec}), {size:.2f} GiB; "
              f"{len(sampler)} batches of <= {trainer.opts.batch_bins} frames", flush=True)
        rates = {}
        for w in a.workers:
            rates[w] = loader_rate(ds, sampler, w, device.type == "cuda", a.epochs)
            print(f"  loader, {w} workers: {rates[w]['frames_s']:10.0f} frames/s {rates[w]['utts_s']:8.1f} utt/s "
                  f"{rates[w]['mb_s']:8.0f} MiB/s", flush=True)
        batches = [collate([ds[i] for i in idx]) for idx in sampler.epoch_batches()[: steps + 1]]
        train = compare([Meter(trainer, iter(batches))], 1, steps)[0]
        print(f"  training step ({Path(a.config).stem}, {device}, amp {trainer.amp}): "
              f"{train['frames_s']:10.0f} frames/s consumed")
        best = max(rates, key=lambda w: rates[w]["frames_s"])
        print("ratio loader / training: " + ", ".join(
            f"{w} workers {rates[w]['frames_s'] / train['frames_s']:.1f}x" for w in rates)
            + f" (per training process; best with {best} workers)")


if __name__ == "__main__":
    main()
