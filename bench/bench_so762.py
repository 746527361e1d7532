"""Real speech, a real pretrained encoder: asrkit's egs/child recipe on so762_dev (../shared: 1.1 h of
non-native read English, 54 speakers aged 13-43, phone microphones) with the pretrained Whisper-base
as its stage-1 front end, against Whisper-base itself, zero-shot, on the same test speakers.

    tools/venv/bin/python bench/bench_so762.py [--seeds 0,1] [--work DIR] [--recipe_args "..."]

The split is by speaker and fixed: the speakers sorted by id, the i-th is a test speaker when i % 9 is
0 or 4 (12 speakers, 240 utterances: 4 aged 13-15 and 8 adults), valid when i % 13 is 7 (4), the
rest train (38 speakers, 760 utterances, 0.79 h: the size of a small children's corpus).

The baseline, measured in the same run on the same audio: Whisper-base's own decoder, zero-shot
(transformers' generate, English, greedy and beam 5, with openai-whisper's temperature fallback on
repetition and low log-probability; the Whisper filter's decoding). Both are scored by
asrkit's scoring on the same references under the same normalizer (egs/child's `child`); the recipe
runs once per seed (`bash egs/child/run.sh ... --seed S`) with its defaults for a Whisper checkpoint
(every layer of Whisper's encoder and its decoder fine-tuned on the stored output of the encoder's
convolution stem: conf/train_whisper_top.yaml), about 9 minutes a seed on 2 CPU cores. --recipe_args
adds or overrides options, e.g. the light model trained from scratch: --recipe_args "--ssl_layer all
--token_type char --train_config conf/train_conformer_small.yaml --decode_config conf/decode.yaml".
Work is kept in --work: a rerun skips what is done and reports what an earlier run measured (each
experiment's bench_row.json).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from machine import print_header  # noqa: E402
from asrkit.fileio import load_jsonl  # noqa: E402
from asrkit.normalize import get_normalizer  # noqa: E402
from asrkit.scoring import score_set, total  # noqa: E402
from asrkit_corpora.whisper_filter import transcribe  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def split_lists(manifest: Path, work: Path) -> dict[str, Path]:
    """The fixed speaker split: files of speaker ids for test and valid (the rest is train)."""
    speakers = sorted({r["speaker"] for r in load_jsonl(manifest)})
    lists = {"test": [s for i, s in enumerate(speakers) if i % 9 in (0, 4)],
             "valid": [s for i, s in enumerate(speakers) if i % 13 == 7]}
    paths = {}
    for name, ids in lists.items():
        paths[name] = work / f"{name}.speakers"
        paths[name].write_text("".join(s + "\n" for s in ids))
    return paths


def score(refs: list[dict], hyps: dict[str, str], normalizer: str) -> tuple[float, float]:
    """(WER, CER) in percent of hypotheses against the raw reference texts, both normalized alike."""
    scores, missing = score_set({r["utt_id"]: dict(r, text=r["text_raw"]) for r in refs}, hyps,
                                get_normalizer(normalizer))
    assert not missing, f"no hypothesis for {len(missing)} utterances"
    return total(scores, "word").rate, total(scores, "char").rate


def zero_shot(refs: list[dict], model: str, work: Path, beams: int, normalizer: str) -> tuple[float, float, float | None]:
    """(WER, CER, seconds) of Whisper zero-shot: the seconds of the run that decoded them (kept in
    seconds.json; None when that run did not keep them)."""
    out = work / f"zero_shot_beam{beams}_fallback"
    timing, decoded = out / "seconds.json", (out / "hyp.tsv").is_file()
    t0 = time.perf_counter()
    hyps = transcribe(refs, model, out / "hyp.tsv", num_beams=beams, progress=False)
    if not decoded:
        timing.write_text(json.dumps(time.perf_counter() - t0))
    seconds = json.loads(timing.read_text()) if timing.is_file() else None
    return (*score(refs, {u: h for u, (h, _) in hyps.items()}, normalizer), seconds)


def recipe(manifest: Path, model: str, lists: dict[str, Path], work: Path, seed: int, extra: list[str],
           normalizer: str, tag: str) -> dict:
    """egs/child with this front end, seed and options, as experiment `tag`: WER, CER, seconds, the
    mean seconds per training epoch, the peak memory of the recipe's processes, the parameters trained.
    The row is kept in the experiment (bench_row.json): a rerun with the same options reports it as measured."""
    kept = work / "exp" / tag / "bench_row.json"
    if kept.is_file() and (row := json.loads(kept.read_text()))["args"] == extra:
        print(f"{tag}: measured {row['date']}, kept in {kept}", flush=True)
        return {k: v for k, v in row.items() if k not in ("args", "date")}
    cmd = ["bash", str(REPO / "egs" / "child" / "run.sh"), "--raw_data", str(manifest),
           "--split_lists", ",".join(f"{k}={v}" for k, v in lists.items()), "--ssl_model", model,
           "--seed", str(seed), "--tag", tag, "--datadir", str(work / "data"), "--dumpdir", str(work / "dump"),
           "--expdir", str(work / "exp"), *extra]
    print("$ " + shlex.join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)  # (its peak memory: the largest of the processes it waited for)
    if status:
        raise SystemExit(f"the recipe failed (seed {seed}): see its log above and in {work / 'exp' / 'logs'}")
    seconds = time.perf_counter() - t0
    exp = work / "exp" / tag
    refs = load_jsonl(work / "data" / "test.jsonl")
    hyps = {r["utt_id"]: r["text"] for r in load_jsonl(next(exp.glob("decode_test_*/hyp.jsonl")))}
    epochs = [r["time_s"] for r in load_jsonl(exp / "train_log.jsonl") if r.get("kind") == "epoch"]
    trained = re.search(r"\(([\d.]+)M trained\)", (exp / "train.log").read_text())
    wer, cer = score(refs, hyps, normalizer)
    row = dict(wer=wer, cer=cer, seconds=seconds, epoch_s=float(np.mean(epochs)) if epochs else float("nan"),
               peak_gb=usage.ru_maxrss / 1e6, trained_m=float(trained.group(1)) if trained else float("nan"))
    kept.write_text(json.dumps({**row, "args": extra, "date": time.strftime("%Y-%m-%d %H:%M")}))
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default=str(SHARED / "data" / "so762_dev"), help="so762_dev's folder")
    p.add_argument("--model", default=str(SHARED / "models" / "whisper-base"), help="the Whisper checkpoint")
    p.add_argument("--seeds", default="0,1", help="training seeds of the recipe, comma-separated")
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "asrkit_bench_so762"),
                   help="working folder (kept: a rerun skips what is done)")
    p.add_argument("--recipe_args", default="", help="more options for egs/child/run.sh (default: none, its "
                                                     "defaults for a Whisper checkpoint)")
    p.add_argument("--normalizer", default="child", help="the text normalizer of both systems' scoring")
    p.add_argument("--variants", default="", help="several recipes compared in one run, 'NAME=ARGS;NAME=ARGS', "
                                                  "e.g. 'frozen=;top2=--top_layers 2' (replaces --recipe_args)")
    a = p.parse_args()
    print_header()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    manifest = Path(a.corpus) / "manifest.jsonl"
    lists = split_lists(manifest, work)
    variants = [v.split("=", 1) for v in a.variants.split(";") if v.strip()] if a.variants else \
        [("egs/child" + (" " + a.recipe_args if a.recipe_args else ""), a.recipe_args)]
    rows = []
    for name, args in variants:
        for seed in [int(s) for s in a.seeds.split(",")]:
            tag = f"so762_seed{seed}" if not a.variants else f"so762_{name.strip()}_seed{seed}"
            rows.append(dict(system=name.strip(), seed=seed, **recipe(manifest, a.model, lists, work, seed,
                                                                   shlex.split(args), a.normalizer, tag)))
    refs = load_jsonl(work / "data" / "test.jsonl")  # stage 0's test list: the same utterances and texts
    zero = []
    for beams in (1, 5):
        wer, cer, seconds = zero_shot(refs, a.model, work, beams, a.normalizer)
        zero.append(dict(system=f"Whisper-base zero-shot, {'greedy' if beams == 1 else f'beam {beams}'} + fallback",
                         wer=wer, cer=cer, seconds=seconds))
    speakers = len({r["speaker"] for r in refs})
    print(f"\nso762_dev test: {len(refs)} utterances of {speakers} unseen speakers, "
          f"{sum(r['duration'] for r in refs) / 60:.1f} min; normalizer {a.normalizer}")
    print("| system | seed | WER | CER | time (s) | s/epoch | peak memory | trained params |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['system']} | {r['seed']} | {r['wer']:.1f}% | {r['cer']:.1f}% | {r['seconds']:.0f} | "
              f"{r['epoch_s']:.0f} | {r['peak_gb']:.1f} GB | {r['trained_m']:.2f}M |")
    for r in zero:
        seconds = f"{r['seconds']:.0f}" if r["seconds"] is not None else ""
        print(f"| {r['system']} | | {r['wer']:.1f}% | {r['cer']:.1f}% | {seconds} | | | |")
    for name, _ in variants:
        mine = [r for r in rows if r["system"] == name.strip()]
        if len(mine) > 1:
            w, c = np.array([r["wer"] for r in mine]), np.array([r["cer"] for r in mine])
            print(f"| {name.strip()}, mean of {len(w)} seeds (min-max) | | {w.mean():.1f}% ({w.min():.1f}-{w.max():.1f}) "
                  f"| {c.mean():.1f}% ({c.min():.1f}-{c.max():.1f}) | | | | |")
    (work / "results.json").write_text(json.dumps(rows + zero, indent=1))


if __name__ == "__main__":
    main()
