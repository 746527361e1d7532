"""Long recordings: `transcribe` on one long WAV made of utterances whose transcripts are known,
against the same utterances transcribed one by one with the same model and search.

    tools/venv/bin/python bench/bench_long.py [--model_dir egs/mini/exp/fbank_char] \
        [--data egs/mini/data/test.jsonl] [--minutes 5] [--pause 0.6] [--whole] [--work DIR]

The recording is the --data list's utterances (repeated if --minutes asks for more) joined with
--pause seconds of silence (asrkit_corpora.long_recordings). The long file goes through the command
line users run (`python -m asrkit.bin.transcribe --json`, in a child process: its wall time with the
model's loading, and its peak memory; the model's loading is timed apart in this process); --whole also runs it with `--max_segment 0` (the whole file as one utterance,
as before segmentation). Reported: WER and CER (the list's own normalizer, `basic` by
default) of the joined text against the joined references, the real-time factor, peak memory, the
segments and how far their boundaries lie from the true pauses (the silence between two utterances'
speech: the pause put between them and their files' own silent edges), and how many of the words
(--json's timings) lie within the speech of one utterance. The defaults are the offline demo's
filterbank model (`./run.sh` makes it) on its 20 unseen test voices.
"""
from __future__ import annotations

import argparse
import json
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from machine import print_header  # noqa: E402
from asrkit.audio import audio_info  # noqa: E402
from asrkit.fileio import load_jsonl, resolve_audio_path  # noqa: E402
from asrkit.normalize import get_normalizer  # noqa: E402
from asrkit.scoring import score_set, score_utt, total  # noqa: E402
from asrkit.transcribe import Transcriber  # noqa: E402
from asrkit_corpora.long_recordings import join_utterances, off_pause  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def recording_records(data: Path, minutes: float, pause: float) -> list[dict]:
    """The list's utterances in order, repeated until they and their pauses make `minutes`."""
    base = [dict(r, audio=resolve_audio_path(r["audio"], data)) for r in load_jsonl(data)]
    out, seconds, i = [], 0.0, 0
    while seconds < minutes * 60:
        r = base[i % len(base)]
        out.append(dict(r, utt_id=f"{r['utt_id']}#{i // len(base)}", source=r["utt_id"]))
        sr, frames, _ = audio_info(r["audio"])
        seconds += frames / sr + pause
        i += 1
    return out


def run_cli(args: list[str]) -> tuple[dict, float, float]:
    """transcribe's JSON record of one file, wall seconds, peak RSS in GB of the child process."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "asrkit.bin.transcribe", "--json", "--progress", "false", *args],
                          capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6  # (KB) the largest child so far
    return json.loads(proc.stdout), seconds, peak


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_dir", default=str(REPO / "egs" / "mini" / "exp" / "fbank_char"))
    p.add_argument("--data", default=str(REPO / "egs" / "mini" / "data" / "test.jsonl"))
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--pause", type=float, default=0.6)
    p.add_argument("--normalizer", default="basic")
    p.add_argument("--whole", action="store_true", help="also the whole file as one utterance (slow)")
    p.add_argument("--transcribe_args", default="", help="more options for the long file's transcribe, e.g. "
                                                         "'--segment_pad 0.2' or '--min_segment 3'")
    p.add_argument("--work", default=None, help="where the recording goes (default: a temporary dir)")
    a = p.parse_args()
    print_header()
    work = Path(a.work or tempfile.mkdtemp(prefix="bench_long_"))
    work.mkdir(parents=True, exist_ok=True)
    records = recording_records(Path(a.data), a.minutes, a.pause)
    wav = work / "long.wav"
    placed = join_utterances(records, str(wav), pause=a.pause)
    sr, frames, _ = audio_info(str(wav))
    audio_s = frames / sr
    print(f"{wav}: {audio_s / 60:.1f} min, {len(records)} utterances of {a.data} ({len({r['source'] for r in records})} "
          f"distinct), {a.pause} s pauses; model {a.model_dir}")
    normalize = get_normalizer(a.normalizer)
    ref = normalize(" ".join(r["text"] for r in records))
    rows = []

    # one by one: each distinct utterance once, through the same Transcriber (whole files)
    t0 = time.perf_counter()
    asr = Transcriber(a.model_dir, segment=None)
    load_s = time.perf_counter() - t0
    sources = {r["source"]: r["audio"] for r in records}
    out = asr.transcribe(list(sources.values()))
    by_source = dict(zip(sources, (o.get("text", "") for o in out)))
    seconds = time.perf_counter() - t0
    scores, _ = score_set({r["utt_id"]: r for r in records}, {r["utt_id"]: by_source[r["source"]] for r in records},
                          normalize)
    distinct_s = sum(audio_info(x)[1] / audio_info(x)[0] for x in sources.values())
    rows.append(("utterances one by one", total(scores, "word").rate, total(scores, "char").rate,
                 seconds / distinct_s, None, len(sources), "", ""))

    for name, extra in [("long file, cut at pauses", []), ("long file, whole", ["--max_segment", "0"])][:2 if a.whole else 1]:
        rec, seconds, peak = run_cli(["--model_dir", a.model_dir, *shlex.split(a.transcribe_args), *extra, str(wav)])
        hyp = normalize(rec.get("text", ""))
        s = score_utt("long", ref, hyp, {})
        segs = rec.get("segments", [])
        dist = [off_pause(t, placed) for g in segs for t in (g["start"], g["end"])]
        where = (f"{sum(d <= 0.3 for d in dist)}/{len(dist)} boundaries within 0.3 s of a true pause (max "
                 f"{max(dist):.2f} s)") if dist else ""
        words = rec.get("words", [])
        inside = sum(any(p["speech_start"] - 0.1 <= w["start"] <= w["end"] <= p["speech_end"] + 0.1 for p in placed)
                     for w in words)
        rows.append((name, s.word.rate, s.char.rate, seconds / audio_s, peak, len(segs) or 1, where,
                     f"{inside} of {len(words)}"))

    print("\n| transcription | WER | CER | RTF (2 cores) | peak memory | pieces | segment boundaries | "
          "words within an utterance's speech (±0.1 s) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, wer, cer, rtf, peak, n, where, inside in rows:
        mem = f"{peak:.2f} GB" if peak is not None else ""
        print(f"| {name} | {wer:.1f}% | {cer:.1f}% | {rtf:.4f} ({1 / rtf:.0f}x real time) | {mem} | {n} | {where} | {inside} |")
    print(f"\nIn these times: loading the model {load_s:.1f} s (with the imports its classes need; measured in this "
          f"process; the long file's command starts, imports and loads alike).")


if __name__ == "__main__":
    main()
