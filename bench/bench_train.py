"""Training throughput on stored features against the same model fed by a frozen WavLM on every batch.

The method's main claim: once WavLM's hidden states are in HDF5, a training step costs only the light
model. Both sides train the same model (a shipped config: BiLSTM or Conformer) on the same batches,
with the same optimizer step, AMP and device; the baseline computes the features of each batch with
a frozen random-weight WavLM (same layer) from waveforms held in memory, as on-the-fly SSL front ends
do, while the stored side reads them from the HDF5 store through the training DataLoader. Figures:
frames/s and utterances/s of training (and x real time), peak memory, and the ratio.

    python bench/bench_train.py --quick                                   # CPU, small WavLM
    python bench/bench_train.py --device cuda --preset base-plus --seconds 1800 --steps 30
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from bench_dump import make_corpus  # noqa: E402
from machine import print_header, sync  # noqa: E402

from asrkit.audio import load_audio  # noqa: E402
from asrkit.bin.train import get_parser  # noqa: E402
from asrkit.train.config import resolve_config  # noqa: E402
from asrkit.train.experiment import model_config, seed_everything  # noqa: E402
from asrkit.data import SpeechDataset, collate  # noqa: E402
from asrkit.features.dump import dump  # noqa: E402
from asrkit.features.extractors import ExtractorSpec, SSLExtractor  # noqa: E402
from asrkit.features.store import FeatureReader  # noqa: E402
from asrkit.fileio import load_jsonl, resolve_audio_path, write_jsonl  # noqa: E402
from asrkit.model_io import build_from_config  # noqa: E402
from asrkit.random_models import PRESETS, save_random_ssl  # noqa: E402
from asrkit.tokenizer import Tokenizer, build_token_list  # noqa: E402
from asrkit.distributed import init_distributed  # noqa: E402
from asrkit.train.trainer import Trainer  # noqa: E402

WORDS = "zero one two three four five six seven eight nine".split()


def make_data(root: Path, seconds: float, preset: str, layer: str, device: torch.device, nj: int) -> dict:
    """Utterances of 1-12 s with digit-word transcripts (~2.5 words/s), their WavLM store, a char
    token list and the random WavLM itself."""
    corpus = root / "corpus"
    corpus.mkdir(parents=True)
    make_corpus(corpus, seconds, 1.0, 12.0)
    rng = np.random.default_rng(0)
    recs = load_jsonl(corpus / "list.jsonl")
    for r in recs:
        r["text"] = " ".join(rng.choice(WORDS, size=max(1, int(2.5 * r["duration"]))))
    write_jsonl(corpus / "list.jsonl", recs)
    wavlm = save_random_ssl(root / "wavlm", preset)
    store = root / "train.h5"
    dump(str(corpus / "list.jsonl"), str(store), ExtractorSpec("wavlm", str(wavlm), layer), nj=nj,
         ngpu=int(device.type == "cuda"), progress=False)
    build_token_list([r["text"] for r in recs], "char", root / "tokens")
    return dict(data=corpus / "list.jsonl", feats=store, tokens=root / "tokens", wavlm=wavlm)


def build_trainer(config: str, d: dict, device: torch.device, exp_dir: Path, *overrides: str) -> Trainer:
    """A Trainer for a shipped config on the bench data, built as asrkit.bin.train builds it."""
    argv = ["--config", config, "--train_data", str(d["data"]), "--train_feats", str(d["feats"]),
            "--valid_data", str(d["data"]), "--valid_feats", str(d["feats"]), "--token_dir", str(d["tokens"]),
            "--exp_dir", str(exp_dir), "--ngpu", str(int(device.type == "cuda")), *overrides]
    _, opts, sections = resolve_config(get_parser(), argv)
    tok = Tokenizer.load(opts.token_dir)
    data = SpeechDataset(opts.train_data, opts.train_feats, tok)
    seed_everything(0)
    store = FeatureReader(opts.train_feats)
    model = build_from_config(model_config(sections, store, tok), store.attrs)
    return Trainer(opts, model, data, data, tok, init_distributed(opts.ngpu))


class Meter:
    """Times training steps that include getting their batch; on GPU also each step's working memory
    (peak allocated during the step above what was allocated before it: activations, workspace)."""

    def __init__(self, trainer: Trainer, batches):
        self.trainer, self.batches = trainer, batches
        self.seconds = self.frames = self.utts = self.steps = 0
        self.work_mem = 0.0

    def step(self, timed: bool) -> None:
        tr, device = self.trainer, self.trainer.device
        tr.model.train()
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        batch = next(self.batches)
        tr.backward(batch, sync=True)
        tr.update()
        sync(device)
        if timed:
            self.seconds += time.perf_counter() - t0
            self.frames += int(batch["feat_lens"].sum())
            self.utts += len(batch["utt_ids"])
            self.steps += 1
            if device.type == "cuda":
                self.work_mem = max(self.work_mem, (torch.cuda.max_memory_allocated() - before) / 2**30)

    def result(self) -> dict:
        return dict(frames_s=self.frames / self.seconds, utts_s=self.utts / self.seconds,
                    step_s=self.seconds / self.steps, work_mem=self.work_mem)


def compare(meters: list[Meter], warmup: int, steps: int) -> list[dict]:
    """Alternate the sides step by step, so that a drift in machine load hits both alike."""
    for i in range(warmup + steps):
        for m in meters:
            m.step(timed=i >= warmup)
    return [m.result() for m in meters]


def on_the_fly(trainer: Trainer, ssl: SSLExtractor, audio: dict):
    """The same batches, their features computed by the frozen WavLM from waveforms in memory (the
    dumper's batched extractor: padding-safe, autocast on GPU; its output makes one trip through
    host memory, a few ms per batch)."""
    ds = trainer.train_set
    for idx in trainer.train_sampler.epoch_batches():
        feats = ssl([audio[ds.utt_ids[i]] for i in idx])
        yield collate([{"utt_id": ds.utt_ids[i], "feats": f, "ys": ds.tokens[i]} for i, f in zip(idx, feats)])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="CPU-sized: 150 s of audio, 3 timed steps, batches of 1200 frames")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--preset", default=None, help="WavLM size: tiny, small, base-plus (default: small on CPU)")
    p.add_argument("--ssl_layer", type=int, default=None, help="stored layer (default: 9, or the last)")
    p.add_argument("--seconds", type=float, default=None, help="audio in the bench corpus")
    p.add_argument("--batch_bins", type=int, default=None, help="default: the configs' (1200 with --quick)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--nj", type=int, default=4, help="dump jobs and training DataLoader workers")
    p.add_argument("--configs", nargs="+", default=[str(REPO / "conf/train_bilstm.yaml"),
                                                    str(REPO / "conf/train_conformer.yaml")])
    a = p.parse_args(argv)
    device = torch.device(a.device)
    print_header(a.device)
    cpu = device.type == "cpu"
    preset = a.preset or ("small" if cpu else "base-plus")
    seconds = a.seconds or (150 if a.quick else 900)
    steps = a.steps or (3 if a.quick else 20)
    batch_bins = a.batch_bins or (1200 if a.quick else None)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        n_layers = PRESETS[preset].get("num_hidden_layers", 12)
        layer = a.ssl_layer if a.ssl_layer is not None else min(9, n_layers)
        t0 = time.time()
        d = make_data(root, seconds, preset, str(layer), device, a.nj)
        print(f"bench data: {seconds:.0f} s of audio, WavLM {preset} layer {layer}, dumped in "
              f"{time.time() - t0:.0f}s; device {device}"
              f"{' (' + torch.cuda.get_device_name() + ')' if not cpu else ''}", flush=True)
        ssl = SSLExtractor(str(d["wavlm"]), str(layer), str(device), compute_dtype="float32" if cpu else "bfloat16")
        audio = {r["utt_id"]: load_audio(resolve_audio_path(r["audio"], d["data"])) for r in load_jsonl(d["data"])}
        frame_rate = ssl.attrs["frame_rate"]
        overrides = ["--num_workers", str(a.nj), "--preflight_batches", "0"]
        if batch_bins:
            overrides += ["--batch_bins", str(batch_bins)]
        rows = []
        for config in a.configs:
            name = Path(config).stem
            stored_tr = build_trainer(config, d, device, root / "exp", *overrides)
            otf_tr = build_trainer(config, d, device, root / "exp", *overrides)
            if len(stored_tr.train_sampler) < a.warmup + steps:
                sys.exit(f"only {len(stored_tr.train_sampler)} batches: raise --seconds or lower --batch_bins")
            stored_tr.train_sampler.set_epoch(0)
            otf_tr.train_sampler.set_epoch(0)
            stored, otf = compare([Meter(stored_tr, iter(stored_tr.train_loader)),
                                   Meter(otf_tr, on_the_fly(otf_tr, ssl, audio))], a.warmup, steps)
            rows.append((name, stored, otf))
            print(f"{name}: {sum(p.numel() for p in otf_tr.module.parameters()) / 1e6:.1f}M params, "
                  f"amp {otf_tr.amp}, {steps} timed steps each, batch_bins {otf_tr.opts.batch_bins}", flush=True)
            for label, r in (("stored features", stored), ("WavLM on the fly", otf)):
                mem = f"   step memory {r['work_mem']:.2f} GiB" if not cpu else ""
                print(f"  {label:17s} {r['frames_s']:10.0f} frames/s {r['utts_s']:8.2f} utt/s "
                      f"{r['frames_s'] / frame_rate:8.2f} x real time {r['step_s']:7.3f} s/step{mem}")
            print(f"  ratio (stored / on the fly): {stored['frames_s'] / otf['frames_s']:.2f}x", flush=True)
            del stored_tr, otf_tr
        if cpu:
            print(f"peak process memory (RSS): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
        print("\nsummary: " + "; ".join(f"{n} {s['frames_s'] / o['frames_s']:.2f}x" for n, s, o in rows))


if __name__ == "__main__":
    main()
