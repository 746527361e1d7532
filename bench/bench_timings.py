"""Word timings of a Whisper model against known word positions: Whisper-base fine-tuned at full depth
(egs/child's default recipe: every encoder layer on the stored stem output, with Whisper's decoder, its
config with a faster schedule, one short epoch by default) on FSDD connected digits of three speakers, then 8
files of 5 held-out takes joined with 0.2 s pauses, through transcribe with word timings. Each digit's
true place is its take's speech in the joined file (asrkit_corpora.long_recordings).

    tools/venv/bin/python bench/bench_timings.py [--seeds 0,1] [--epochs 1] [--work DIR]

Three readings of the same hypotheses and cross-attention (asrkit/timing.py): where the dynamic time
warping path enters each token's row (openai-whisper's reading: the baseline), each row's onset, and
the onsets with the word edges on silence moved to the speech (what transcribe gives). Reported per
reading: the digits named on their own take, the median distance of their start and end to the true
ones, and the share with both within 0.1 s.
"""
from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from machine import print_header  # noqa: E402
from asrkit.fileio import load_jsonl, write_jsonl  # noqa: E402
from asrkit.normalize import get_normalizer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
WHISPER_BASE = SHARED / "models" / "whisper-base"
SPEAKERS = ["jackson", "nicolas", "theo"]


def digits_model(fsdd: Path, work: Path, seed: int = 0, epochs: int = 1, model: Path = WHISPER_BASE) -> Path:
    """An experiment dir: `model` fine-tuned at full depth on 100 connected-digit utterances (their
    takes before 40) for `epochs` epochs, egs/child's recipe without its time masks and with label
    smoothing 0.1 (its settings before 2026-12-07, evening: what is measured is the timings of a
    briefly trained model, which regularizers made for 4 epochs slow down); kept in work/exp_seed<seed>
    (a rerun trains no more)."""
    from asrkit.bin import train
    from asrkit.features.dump import dump
    from asrkit.features.extractors import ExtractorSpec
    from asrkit.tokenizer import build_token_list

    corpus = work / "connected_digits"
    if not (corpus / "manifest.jsonl").is_file():
        subprocess.run([sys.executable, "-m", "asrkit_corpora.bin.make_connected_digits", "--fsdd", str(fsdd), "--out",
                        str(corpus), "--speakers", *SPEAKERS], check=True, capture_output=True, timeout=600)
    made = [dict(r, audio=str(corpus / r["audio"])) for r in load_jsonl(corpus / "manifest.jsonl")]
    splits = {"train": [r for r in made if r["split"] == "train"][:100],
              "valid": [r for r in made if r["split"] == "valid"][:10]}
    stem = ExtractorSpec(ssl_model=str(model), ssl_layer="0", whisper_input="trimmed")
    for name, records in splits.items():
        if not (work / f"{name}.h5").is_file():
            write_jsonl(work / f"{name}.jsonl", records)
            dump(str(work / f"{name}.jsonl"), str(work / f"{name}.h5"), stem, nj=0, progress=False)
    if not (work / "tokens").is_dir():
        build_token_list([r["text"] for r in splits["train"]], "whisper", work / "tokens", ssl_model=str(model))
    exp = work / f"exp_seed{seed}"
    train.main([f"--config={REPO / 'egs' / 'child' / 'conf' / 'train_whisper_top.yaml'}", "--ngpu=0",
                f"--token_dir={work / 'tokens'}", f"--exp_dir={exp}", "--num_workers=0", f"--seed={seed}",
                f"--max_epoch={epochs}", "--batch_bins=1000", "--optim_conf.lr=0.0001",
                "--specaug=none", "--model_conf.lsm_weight=0.1",  # (as measured: no regularizer slowing 1 epoch)
                "--scheduler_conf.warmup_steps=5", "--tensorboard=false",
                *(f"--{s}_{kind}={work / s}.{ext}" for s in splits for kind, ext in (("data", "jsonl"), ("feats", "h5")))])
    return exp


def joined_takes(fsdd: Path, work: Path, files: int = 8, per_file: int = 5, pause: float = 0.2) -> tuple[list[Path], list[list[dict]]]:
    """Files of held-out takes (45 on) of the same speakers joined with pauses, and where each take's
    speech lies in its file."""
    from asrkit_corpora.long_recordings import join_utterances

    takes = [dict(r, audio=str(fsdd / r["audio"])) for r in load_jsonl(fsdd / "manifest.jsonl")
             if r["speaker"] in SPEAKERS and int(r["utt_id"].rsplit("_", 1)[1]) >= 45]
    takes = random.Random(0).sample(takes, files * per_file)
    paths = [work / f"joined{i}.wav" for i in range(files)]
    placed = [join_utterances(takes[i * per_file: (i + 1) * per_file], str(p), pause=pause) for i, p in enumerate(paths)]
    return paths, placed


def edge_errors(words_per_file: list[list[dict]], placed: list[list[dict]]) -> np.ndarray:
    """(start, end) distances in seconds to the true ones of each word that names the take it overlaps most."""
    normalize, edges = get_normalizer("child"), []
    for words, takes in zip(words_per_file, placed):
        for w in words:
            take = max(takes, key=lambda t: min(w["end"], t["speech_end"]) - max(w["start"], t["speech_start"]))
            if take["text"] == normalize(w["word"]):
                edges.append((abs(w["start"] - take["speech_start"]), abs(w["end"] - take["speech_end"])))
    return np.array(edges).reshape(-1, 2)


def readings(exp: Path, paths: list[Path]) -> dict[str, list[list[dict]]]:
    """Each file's words under the three readings (the module docstring)."""
    from asrkit.timing import attention_word_timings
    from asrkit.transcribe import Piece, Transcriber

    asr = Transcriber(exp, segment=None)  # (each file decoded whole, as one utterance)
    out = {"path changes (openai-whisper's reading)": [], "onsets": []}
    records = asr.transcribe(paths, timings=True)
    encs, ids = [], []
    for path, rec in zip(paths, records):
        feats = torch.from_numpy(asr.features(Piece(str(path), 0.0, None))[None])
        enc, lens = asr.model.encode(feats, torch.tensor([feats.shape[-2]]))
        encs.append(enc[0, : int(lens[0])])
        ids.append(asr.tokenizer.encode(rec["text"]))
    strs = [[asr.tokenizer.tokens[t] for t in i] for i in ids]
    for reading, key in (("path", "path changes (openai-whisper's reading)"), ("onsets", "onsets")):
        out[key] = attention_word_timings(asr.model, encs, ids, strs, asr.tokenizer.token_type, asr.frame_s, reading)
    return {**out, "onsets, edges off silence (transcribe)": [rec["words"] for rec in records]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fsdd", default=str(SHARED / "data" / "fsdd"))
    p.add_argument("--seeds", default="0,1", help="training seeds, comma-separated")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "asrkit_bench_timings"))
    a = p.parse_args()
    print_header()
    work, fsdd = Path(a.work), Path(a.fsdd)
    work.mkdir(parents=True, exist_ok=True)
    paths, placed = joined_takes(fsdd, work)
    rows = []
    for seed in (int(s) for s in a.seeds.split(",")):
        t0 = time.perf_counter()
        exp = digits_model(fsdd, work, seed, a.epochs)
        print(f"seed {seed}: trained in {time.perf_counter() - t0:.0f} s", flush=True)
        for name, words in readings(exp, paths).items():
            e = edge_errors(words, placed)
            rows.append((name, seed, len(e), np.median(e[:, 0]), np.median(e[:, 1]), (e.max(1) <= 0.1).mean()))
    takes = sum(len(t) for t in placed)
    print(f"\n{takes} held-out FSDD digits in {len(paths)} files (0.2 s pauses); Whisper-base, {a.epochs} epochs on "
          f"100 connected-digit utterances")
    print("| reading | seed | digits named on their take | start off (median) | end off (median) | both within 0.1 s |")
    print("|---|---|---|---|---|---|")
    for name, seed, n, start, end, share in rows:
        print(f"| {name} | {seed} | {n} of {takes} | {start:.3f} s | {end:.3f} s | {share:.0%} |")


if __name__ == "__main__":
    main()
