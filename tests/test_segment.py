"""Long recordings: cut at their pauses by Silero VAD, decoded segment by segment on the recording's clock."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from asrkit.audio import audio_info, load_audio
from asrkit.decode import DecodeOptions
from asrkit.fileio import load_jsonl
from asrkit.segment import CHUNK, SegmentOptions, segment_file, segments_from_probs
from asrkit.subtitles import timestamp
from asrkit_corpora.long_recordings import join_utterances, off_pause

CHUNK_S = CHUNK / 16000


def fsdd_recording(fsdd, tmp_path, n: int, seed: int = 0):
    """n FSDD digits of every speaker, 0.6 s apart, in one WAV: (path, placed utterances)."""
    records = [dict(r, audio=str(fsdd / r["audio"])) for r in load_jsonl(fsdd / "manifest.jsonl")]
    random.Random(seed).shuffle(records)
    path = tmp_path / "long.wav"
    return path, join_utterances(records[:n], str(path), pause=0.6)


def test_boundaries_fall_in_the_true_pauses_of_real_speech(fsdd, tmp_path):
    path, placed = fsdd_recording(fsdd, tmp_path, 80)
    segs = segment_file(str(path), SegmentOptions(min_seconds=0.3))
    assert max(off_pause(t, placed) for s in segs for t in (s.start, s.end)) <= 0.3
    assert 0.9 * len(placed) <= len(segs) <= len(placed)  # one digit each, at most a few run together
    covered = [u for u in placed if any(s.start < u["end"] and u["start"] < s.end for s in segs)]
    assert len(covered) >= 0.95 * len(placed)  # (the VAD may doubt a mumbled digit)
    # the default keeps segments of at least a second: short digits joined across the shorter pause
    joined = segment_file(str(path))
    assert all(s.end - s.start >= 1.0 for s in joined) and len(joined) < len(segs)
    assert max(off_pause(t, placed) for s in joined for t in (s.start, s.end)) <= 0.3


def test_a_stretch_without_pause_is_cut_where_speech_is_least_likely():
    probs = np.full(int(50 / CHUNK_S), 0.02, np.float32)  # 50 s: silence, 30 s of speech, silence
    first, last = int(5 / CHUNK_S), int(35 / CHUNK_S)
    probs[first:last] = 0.95
    dip = int(17 / CHUNK_S)
    probs[dip] = 0.2  # one chunk where the VAD doubts (too short to be a pause)
    segs = segments_from_probs(probs, 50.0, SegmentOptions(max_seconds=20, min_seconds=1, pad=0.2))
    assert len(segs) == 2 and segs[0].end == segs[1].start == pytest.approx((dip + 0.5) * CHUNK_S, abs=1e-3)
    assert segs[0].start == pytest.approx(5 - 0.2, abs=0.05) and segs[1].end == pytest.approx(35 + 0.2, abs=0.05)
    # no dip: still cut, within [min, max] of the start
    probs[dip] = 0.95
    segs = segments_from_probs(probs, 50.0, SegmentOptions(max_seconds=12, min_seconds=1))
    assert len(segs) == 3 and all(s.end - s.start <= 12 for s in segs)
    # a short burst joins the neighbour across the shorter pause, if they fit within max_seconds
    probs = np.full(int(20 / CHUNK_S), 0.02, np.float32)
    for a, b in [(1.0, 4.0), (4.6, 5.0), (6.5, 9.0)]:
        probs[int(a / CHUNK_S):int(b / CHUNK_S)] = 0.95
    segs = segments_from_probs(probs, 20.0, SegmentOptions(min_seconds=1.0, min_pause=0.3, pad=0.1))
    assert len(segs) == 2 and segs[0].start == pytest.approx(0.9, abs=0.05) and segs[0].end == pytest.approx(5.1, abs=0.1)


def test_segments_are_ordered_and_within_their_bounds_for_any_valid_options():
    """Random speech probabilities (92 s) under short and long, padded and unpadded options: every
    segment has a positive length within max_seconds, and none overlaps the next (with max 2 and min 5
    it used to make one of negative length and decode overlapping audio twice)."""
    rng = np.random.default_rng(0)
    probs = np.repeat(rng.random(92 * 16000 // CHUNK // 8) > 0.3, 8).astype(np.float32) * 0.9
    for max_s, min_s, pad in [(2, 1, 0.4), (2, 0, 0.0), (20, 1, 0.4), (3, 2.9, 0.2), (0.5, 0.2, 0.1)]:
        segs = segments_from_probs(probs, 92.0, SegmentOptions(max_s, min_s, pad=pad))
        assert segs and all(0 < s.end - s.start <= max_s + 2 * pad + 1e-6 for s in segs), (max_s, min_s, pad)
        assert all(a.end <= b.start for a, b in zip(segs, segs[1:])), (max_s, min_s, pad)


@pytest.mark.parametrize("argv,message", [
    (["--max_segment", "2", "--min_segment", "5"], "the shortest segment (5.0 s) must be at least 0 and shorter"),
    (["--segment_pad", "-1"], "--segment_pad: must be >= 0, got -1"),
    (["--max_segment", "-3"], "--max_segment: must be >= 0, got -3"),
    (["--beam", "0"], "beam must be at least 1"),
    (["--beam", "2", "--nbest", "3"], "nbest must be between 1 and the beam (2)"),
    (["--batch_size", "0"], "--batch_size: must be >= 1, got 0"),
])
def test_impossible_options_exit_2_before_any_model_or_file_is_read(argv, message, tmp_path, capsys, monkeypatch):
    from asrkit import transcribe
    from asrkit.bin import transcribe as cli
    from asrkit.cli import run_main

    monkeypatch.setattr(transcribe, "Transcriber", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(SystemExit) as e:
        run_main(cli.main, ["--model_dir", str(tmp_path / "exp"), str(tmp_path / "a.wav"), *argv])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_silence_and_noise_give_no_segment(tmp_path):
    path = tmp_path / "quiet.wav"
    rng = np.random.default_rng(0)
    import soundfile as sf

    sf.write(path, (rng.normal(0, 1e-3, 16000 * 40)).astype(np.float32), 16000)
    assert segment_file(str(path)) == []


def test_a_long_recording_is_transcribed_segment_by_segment_on_its_clock(fsdd, tmp_path, tiny_corpus, tiny_wavlm,
                                                                          capsys):
    """A recording of a few minutes (FSDD digits): transcribe cuts it where segment_file does, decodes
    each segment as the same audio cut out into a file of its own would be, and gives words, segments
    and subtitle cues on the recording's clock."""
    from asrkit.bin import transcribe
    from asrkit.transcribe import Transcriber
    from test_transcribe import make_exp

    exp = make_exp(tmp_path, tiny_corpus, tiny_wavlm, "fbank", "conformer")[0]
    path, placed = fsdd_recording(fsdd, tmp_path, 240)
    seconds = audio_info(str(path))[1] / 16000
    assert seconds > 150
    out = tmp_path / "subs"
    assert transcribe.main([f"--model_dir={exp}", "--mode=ctc_greedy", "--json", str(path), f"--output_dir={out}",
                            "--output_format=srt,json"]) == 0
    std = capsys.readouterr()
    rec = json.loads(std.out)
    assert "transcribing" in std.err  # the progress bar
    segs = segment_file(str(path))
    assert [(s["start"], s["end"]) for s in rec["segments"]] == [(s.start, s.end) for s in segs]
    assert rec["text"] == " ".join(s["text"] for s in rec["segments"] if s["text"])
    for s in rec["segments"]:
        assert all(s["start"] - 0.05 <= w["start"] <= w["end"] <= s["end"] + 0.05 for w in rec["words"]
                   if s["start"] <= w["start"] < s["end"])
    assert rec["words"] and rec["words"][-1]["end"] > seconds - 30  # the clock runs to the recording's end

    import soundfile as sf

    asr = Transcriber(exp, segment=None, search=DecodeOptions(mode="ctc_greedy"))
    for i in sorted(random.Random(1).sample(range(len(segs)), 5)):  # a few segments, as files of their own
        one = tmp_path / f"seg{i}.wav"
        sf.write(one, load_audio(str(path), segs[i].start, segs[i].end), 16000)
        assert asr.transcribe([one])[0]["text"] == rec["segments"][i]["text"]
    times = [line.split(" --> ") for line in (out / "long.srt").read_text().splitlines() if " --> " in line]
    bad = [(a, b) for a, b in zip(times, times[1:]) if b < a]
    assert not bad, bad[:3]
    assert times[-1][0] > "00:02:00" and max(end for _, end in times) < timestamp(seconds + 0.05, ",")


@pytest.mark.slow
def test_a_model_of_short_clips_transcribes_a_long_recording_as_well_as_the_clips(fsdd, tmp_path):
    """A model trained on isolated FSDD digits (about half a second each, tight edges) transcribes 80
    held-out takes joined with 1 s pauses within 5 points of the same takes one by one: training records
    its utterances' shape (utterances.json) and the segments are cut alike. With the fixed defaults
    (segments of 1 s or more, 0.4 s of context) the same model made digit pairs it had never seen."""
    import jiwer
    import yaml

    from asrkit.bin import train
    from asrkit.features.dump import dump
    from asrkit.features.extractors import ExtractorSpec
    from asrkit.fileio import write_jsonl
    from asrkit.segment import UtteranceShape
    from asrkit.tokenizer import build_token_list
    from asrkit.transcribe import Transcriber
    from conftest import REPO

    records = [dict(r, audio=str(fsdd / r["audio"])) for r in load_jsonl(fsdd / "manifest.jsonl")]
    take = lambda r: int(r["utt_id"].rsplit("_", 1)[1])  # noqa: E731
    splits = {"train": [r for r in records if take(r) < 10], "valid": [r for r in records if 40 <= take(r) < 42],
              "test": random.Random(0).sample([r for r in records if take(r) >= 42], 80)}
    for name, rs in splits.items():
        write_jsonl(tmp_path / f"{name}.jsonl", rs)
        dump(str(tmp_path / f"{name}.jsonl"), str(tmp_path / f"{name}.h5"), ExtractorSpec("fbank"), nj=0,
             progress=False)
    build_token_list([r["text"] for r in splits["train"]], "word", tmp_path / "tokens")
    conf = yaml.safe_load((REPO / "conf" / "tuning" / "train_conformer_tiny.yaml").read_text())
    conf.update(max_epoch=20, batch_bins=4000, scheduler_conf={"warmup_steps": 100})
    conf["encoder_conf"].update(num_blocks=1, linear_units=288)
    (tmp_path / "conf.yaml").write_text(yaml.safe_dump(conf))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        train.main([f"--config={tmp_path / 'conf.yaml'}", f"--token_dir={tmp_path / 'tokens'}", "--ngpu=0",
                    f"--exp_dir={tmp_path / 'exp'}", "--num_workers=0",
                    *(f"--{s}_{kind}={tmp_path / s}.{ext}" for s in ("train", "valid")
                      for kind, ext in (("data", "jsonl"), ("feats", "h5")))])
    finally:
        torch.set_num_threads(threads)
    shape = UtteranceShape.read(tmp_path / "exp")
    assert shape.shortest < 0.4 and shape.longest < 1.5 and shape.lead < 0.2 and shape.measured > 150
    ref = " ".join(r["text"] for r in splits["test"])
    greedy = DecodeOptions(mode="ctc_greedy")
    one = Transcriber(tmp_path / "exp", segment=None, search=greedy).transcribe([r["audio"] for r in splits["test"]])
    one_wer = jiwer.wer(ref, " ".join(o["text"] for o in one))
    long = tmp_path / "long.wav"
    placed = join_utterances(splits["test"], str(long), pause=1.0)
    recs = {name: Transcriber(tmp_path / "exp", segment=seg, search=greedy).transcribe([long], timings=True)[0]
            for name, seg in (("shaped", "model"), ("defaults", SegmentOptions()))}
    wer = {name: jiwer.wer(ref, rec["text"]) for name, rec in recs.items()}
    assert one_wer < 0.25, one_wer  # (the model learned the digits)
    assert wer["shaped"] - one_wer <= 0.05, (one_wer, wer)
    assert wer["defaults"] - one_wer > 0.15, (one_wer, wer)
    # word timings on the recording's clock: each word lies on the take it names, within 0.1 s
    words = recs["shaped"]["words"]
    on = [w for w in words if any(p["start"] - 0.1 <= w["start"] <= w["end"] <= p["end"] + 0.1
                                  and p["text"] == w["word"] for p in placed)]
    assert len(words) >= 0.9 * len(placed) and len(on) >= 0.85 * len(placed), (len(on), words[:10], placed[:10])


def test_measuring_utterances_leaves_torch_its_threads(tmp_path):
    """Importing silero_vad sets torch to one thread for the whole process: a training run that
    measured its utterances (utterances.json) trained on one core. In a fresh process, as training's."""
    import os
    import subprocess
    import sys

    from conftest import write_tone

    wav = write_tone(tmp_path / "a.wav", seconds=1.0)
    code = ("import torch; torch.set_num_threads(2); from asrkit.segment import measure_utterances, segment_file; "
            f"measure_utterances([{{'audio': {str(wav)!r}, 'duration': 1.0}}]); segment_file({str(wav)!r}); "
            "print(torch.get_num_threads())")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.stdout.split()[-1] == "2", out.stdout + out.stderr
