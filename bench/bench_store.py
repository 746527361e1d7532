"""Feature store codecs (`dump_feats --store_codec`): bytes per hour of audio, error against the
plain float16 store, write and read speed, for WavLM-Base+-shaped features (all 13 hidden states of
a random-weight wavlm-base-plus, 768-dim, 50 frames/s) and 80-dim fbank, on the same audio.

    tools/venv/bin/python bench/bench_store.py [--minutes 1] [--codecs none,int8,int8f]

The plain store (codec none, float16) is the baseline measured in the same run: sizes and speeds
are given as ratios to it. Error: RMS of (decoded - float16) over RMS of float16, all values.
Speeds: utterances written (encode + HDF5) and read (HDF5 + decode) per second, as seconds of audio
per second. Audio: FSDD recordings concatenated into 2-10 s utterances (../shared/data/fsdd or
$ASRKIT_FSDD), or tones where it is absent.

With --wer, also an FSDD connected-digit model (fbank, the tiny Conformer of conf/tuning, 16 epochs
on CPU; until 2026-12-05 the recipe of tests/test_real_speech.py) trained and decoded through run.sh once per codec, the
same options but `--dump_args "--store_codec C"`, for each of --seeds: WER on held-out takes and on
2 unseen speakers, and their mean over the seeds (a few minutes per codec and seed).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from machine import print_header  # noqa: E402
from asrkit.audio import SAMPLE_RATE  # noqa: E402
from asrkit.features.codecs import CODECS  # noqa: E402
from asrkit.features.extractors import FbankExtractor, SSLExtractor  # noqa: E402
from asrkit.features.store import FeatureReader, FeatureWriter, finalize_store  # noqa: E402
from asrkit.random_models import save_random_ssl  # noqa: E402


def audio(minutes: float, seed: int = 0) -> list[np.ndarray]:
    from asrkit.audio import load_audio
    from asrkit.fileio import load_jsonl, resolve_audio_path

    fsdd = Path(os.environ.get("ASRKIT_FSDD", Path(__file__).resolve().parents[2] / "shared/data/fsdd"))
    rng = np.random.default_rng(seed)
    if (fsdd / "manifest.jsonl").is_file():
        recs = load_jsonl(fsdd / "manifest.jsonl")
        pool = [load_audio(resolve_audio_path(r["audio"], fsdd / "manifest.jsonl"))
                for r in rng.choice(recs, size=min(200, len(recs)), replace=False)]
    else:
        t = np.arange(SAMPLE_RATE // 2) / SAMPLE_RATE
        pool = [(0.2 * np.sin(2 * np.pi * f * t)).astype(np.float32) for f in rng.uniform(100, 400, 50)]
    wavs, total = [], 0.0
    while total < minutes * 60:
        target, parts = rng.uniform(2, 10) * SAMPLE_RATE, []
        while sum(map(len, parts)) < target:
            parts.append(pool[rng.integers(len(pool))])
        wavs.append(np.concatenate(parts))
        total += len(wavs[-1]) / SAMPLE_RATE
    return wavs


def store_row(feats: dict[str, np.ndarray], attrs: dict, codec: str, tmp: Path, seconds: float, ref=None):
    """Write a store with `codec`, read it back: (bytes per hour, error vs ref, write and read x real time)."""
    path = tmp / f"{codec}.h5"
    t0 = time.perf_counter()
    writer = FeatureWriter(tmp / f"{codec}.partial.h5", {**attrs, "store_codec": codec})
    keys = list(feats)
    for i in range(0, len(keys), 8):
        writer.write([(k, feats[k]) for k in keys[i: i + 8]])
    writer.close()
    finalize_store([tmp / f"{codec}.partial.h5"], path, {**attrs, "store_codec": codec}, [])
    t_write = time.perf_counter() - t0
    reader = FeatureReader(path)
    t0 = time.perf_counter()
    back = {k: reader[k] for k in keys}
    t_read = time.perf_counter() - t0
    size = path.stat().st_size
    err = 0.0
    if ref is not None:
        num = sum(float(np.sum((back[k].astype(np.float32) - ref[k].astype(np.float32)) ** 2)) for k in keys)
        den = sum(float(np.sum(ref[k].astype(np.float32) ** 2)) for k in keys)
        err = (num / den) ** 0.5
    os.remove(path)
    return size / (seconds / 3600), err, seconds / t_write, seconds / t_read, back


def wer_rows(codecs: list[str], tmp: Path, seeds: list[int]) -> list[tuple[str, int, float, float]]:
    """(codec, seed, WER held-out takes, WER unseen speakers) of the FSDD connected-digit recipe."""
    import re
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    fsdd = Path(os.environ.get("ASRKIT_FSDD", repo.parent / "shared/data/fsdd"))
    corpus = tmp / "digits"
    subprocess.run([sys.executable, "-m", "asrkit_corpora.bin.make_connected_digits", "--fsdd", str(fsdd), "--out",
                    str(corpus), "--unseen_speakers", "theo", "yweweler"], check=True, capture_output=True)
    rows = []
    for codec, seed in ((c, s) for s in seeds for c in codecs):
        work = tmp / f"run_{codec}_{seed}"
        work.mkdir()
        p = subprocess.run([str(repo / "run.sh"), "--raw_data", str(corpus / "manifest.jsonl"), "--split_field",
                            "split", "--test_sets", "test test_unseen", "--feats_type", "fbank", "--token_type",
                            "char", "--ngpu", "0", "--nj", "2", "--dump_args", f"--store_codec {codec}",
                            "--train_config", str(repo / "conf/tuning/train_conformer_tiny.yaml"),
                            "--train_args", "--num_workers 0", "--decode_args", "--beam 4", "--seed", str(seed)],
                           cwd=work, capture_output=True, text=True)
        if p.returncode:
            raise SystemExit(f"run.sh failed for codec {codec}:\n{p.stdout[-3000:]}{p.stderr[-3000:]}")
        results = next(work.glob("exp/*/RESULTS.md")).read_text()
        wers = [float(re.search(r"^\|decode_%s_\S*?\|(?:[^|]*\|){6}([\d.]+)\|" % t, results, re.M).group(1))
                for t in ("test", "test_unseen")]
        rows.append((codec, seed, *wers))
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=1.0, help="audio to extract")
    p.add_argument("--codecs", default=",".join(CODECS), help="comma-separated; none is always measured")
    p.add_argument("--wer", action="store_true", help="also train and score the FSDD digit model per codec")
    p.add_argument("--seeds", default="0", help="with --wer: training seeds (run.sh --seed), comma-separated")
    a = p.parse_args()
    print_header()
    codecs = ["none"] + [c for c in a.codecs.split(",") if c and c != "none"]
    wavs = audio(a.minutes)
    seconds = sum(map(len, wavs)) / SAMPLE_RATE
    print(f"{len(wavs)} utterances, {seconds / 60:.1f} min of audio")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ssl = SSLExtractor(str(save_random_ssl(tmp / "wavlm", "base-plus")), "all", dtype="float16")
        fbank = FbankExtractor(80, dtype="float16")
        sets = []
        t0 = time.perf_counter()
        sets.append(("wavlm-base-plus, 13 layers x 768", ssl.attrs,
                     {f"u{i}": ssl([ssl.prepare(w)])[0] for i, w in enumerate(wavs)}))
        print(f"(extracted the WavLM features in {time.perf_counter() - t0:.0f} s)")
        sets.append(("fbank, 80", fbank.attrs, {f"u{i}": fbank.prepare(w) for i, w in enumerate(wavs)}))
        print("\n| features | codec | GB per hour of audio | size vs none | RMS error vs none | write x real time "
              "| read x real time | read vs none |\n|---|---|---|---|---|---|---|---|")
        for name, attrs, feats in sets:
            base = None
            for codec in codecs:
                size, err, w, r, back = store_row(feats, attrs, codec, tmp, seconds, None if base is None else base[4])
                if base is None:
                    base = (size, err, w, r, back)
                print(f"| {name} | {codec} | {size / 1e9:.3f} | {size / base[0]:.1%} | {err:.2e} | {w:.0f} | {r:.0f} "
                      f"| {r / base[3]:.2f}x |")
        if a.wer:
            print("\n| FSDD connected digits, fbank, tiny Conformer | seed | WER held-out takes | WER unseen speakers |"
                  "\n|---|---|---|---|")
            rows = wer_rows(codecs, tmp, [int(x) for x in a.seeds.split(",")])
            for codec, seed, seen, unseen in rows:
                print(f"| store codec {codec} | {seed} | {seen:.1f}% | {unseen:.1f}% |")
            for codec in codecs:  # the mean over seeds: one seed's run-to-run noise is larger than a point
                mine = [r for r in rows if r[0] == codec]
                print(f"| store codec {codec} | mean of {len(mine)} | {np.mean([r[2] for r in mine]):.1f}% | "
                      f"{np.mean([r[3] for r in mine]):.1f}% |")


if __name__ == "__main__":
    main()
