"""Whisper's encoder as a front end: what the 30 s padding costs, and what trimming it changes.

    tools/venv/bin/python bench/bench_whisper.py [--preset base] [--seconds 1,2,5,10] [--utts 3]

Baseline, measured in the same run: transformers' own path, as Whisper runs: the log-mel of the
utterance padded to a 30 s window (WhisperFeatureExtractor) through `WhisperModel`'s encoder
(`hidden_states`), the utterance's frames kept. Against it, stage 1's WhisperExtractor: the log-mel
frames of the utterance alone (the padded window's first frames, exactly) through the same
encoder modules. Per duration: milliseconds per utterance for each (log-mel + encoder, one
utterance at a time, fp32, torch's threads), the ratio, and how much the states differ: RMS of
(trimmed - padded) over RMS of padded, and their mean cosine similarity per frame, at the middle
layer and the last. A random-weight model (`--preset base`: whisper-base's shape) shows the cost
faithfully, but not the difference a trained model would show: measure that on the real
checkpoint (`--model openai/whisper-base` on a machine that has it).
Audio: FSDD recordings joined to each duration (../shared/data/fsdd or $ASRKIT_FSDD), or tones.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_store import audio  # noqa: E402
from machine import print_header  # noqa: E402
from asrkit.audio import SAMPLE_RATE  # noqa: E402
from asrkit.features.extractors import WhisperExtractor  # noqa: E402
from asrkit.random_models import save_random_whisper  # noqa: E402


def clip(pool: list[np.ndarray], seconds: float, k: int) -> np.ndarray:
    joined = np.concatenate(pool[k:] + pool[:k])
    return joined[:int(seconds * SAMPLE_RATE)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="base", help="random-weight size (ignored with --model)")
    p.add_argument("--model", default="", help="a Whisper checkpoint id or dir instead of random weights")
    p.add_argument("--seconds", default="1,2,5,10", help="utterance durations")
    p.add_argument("--utts", type=int, default=3, help="utterances per duration")
    args = p.parse_args()
    print_header()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(save_random_whisper(Path(tmp) / "whisper", args.preset))
        ext = WhisperExtractor(model, "all", dtype="float32", compute_dtype="float32", whisper_input="trimmed")
    encoder, fe = ext.encoder, ext.fe
    top, mid = len(ext.layers) - 1, (len(ext.layers) - 1) // 2
    pool = audio(0.5)
    print(f"\nWhisper encoder ({'random ' + args.preset if not args.model else args.model}, "
          f"{encoder.config.encoder_layers} layers, {encoder.config.d_model}-dim), fp32, {torch.get_num_threads()} threads")
    print("| seconds | padded to 30 s (ms/utt) | trimmed (ms/utt) | speed-up | rel. diff layer "
          f"{mid} / {top} | cosine layer {mid} / {top} |")
    print("|---|---|---|---|---|---|")
    with torch.inference_mode():
        for seconds in [float(s) for s in args.seconds.split(",")]:
            t_pad = t_trim = 0.0
            diffs, coss = [], []
            for k in range(args.utts):
                wav = clip(pool, seconds, k)
                t0 = time.perf_counter()
                mel = fe(wav, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
                stock = encoder(mel, output_hidden_states=True).hidden_states
                t1 = time.perf_counter()
                ours = ext([ext.prepare(wav)])[0]
                t2 = time.perf_counter()
                t_pad, t_trim = t_pad + t1 - t0, t_trim + t2 - t1
                n = ours.shape[1]
                for layer in (mid, top):
                    a, b = ours[layer], stock[layer][0, :n].numpy()
                    diffs.append(np.sqrt(((a - b) ** 2).mean() / (b ** 2).mean()))
                    coss.append(np.mean((a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))))
            d, c = np.array(diffs).reshape(-1, 2).mean(0), np.array(coss).reshape(-1, 2).mean(0)
            print(f"| {seconds:g} | {1000 * t_pad / args.utts:.0f} | {1000 * t_trim / args.utts:.0f} | "
                  f"{t_pad / t_trim:.1f}x | {d[0]:.3f} / {d[1]:.3f} | {c[0]:.3f} / {c[1]:.3f} |")


if __name__ == "__main__":
    main()
