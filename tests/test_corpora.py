"""Generated corpora: eSpeak NG demo voices (pitch, rate, noise, determinism, resume) and FSDD
connected digits (text and audio follow the joined takes, held-out takes stay out of training)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asrkit.audio import load_audio
from asrkit_corpora.bin import make_connected_digits as cd_cli
from asrkit_corpora.bin import make_demo_corpus as demo_cli
from asrkit.cli import run_main
from asrkit_corpora import demo
from asrkit_corpora.espeak import Synthesizer, Voice
from asrkit_corpora.fsdd import group_takes, make_connected_digits, read_fsdd
from asrkit.errors import DataError
from asrkit.fileio import load_jsonl
from conftest import write_tone


def estimate_f0(wav: np.ndarray, sr: int = 16000) -> float:
    """Median autocorrelation F0 (Hz) over loud 40 ms frames with a clear period."""
    size, peak, f0s = int(0.04 * sr), np.abs(wav).max(), []
    lo, hi = int(sr / 500), int(sr / 60)
    for i in range(0, wav.size - size, size // 2):
        frame = wav[i:i + size] - wav[i:i + size].mean()
        if np.sqrt(np.mean(frame**2)) < 0.1 * peak:
            continue
        ac = np.correlate(frame, frame, "full")[size - 1:]
        k = lo + int(np.argmax(ac[lo:hi]))
        if ac[k] > 0.5 * ac[0]:
            f0s.append(sr / k)
    return float(np.median(f0s))


def test_espeak_rate_and_unknown_voice():
    tts = Synthesizer.get()
    slow = tts.synthesize("three one four one five", Voice("en-us", rate=100))
    fast = tts.synthesize("three one four one five", Voice("en-us", rate=300))
    assert slow.dtype == np.int16 and tts.sample_rate == 22050
    assert 1.5 < slow.size / tts.sample_rate < 6
    assert slow.size > 1.8 * fast.size  # 3x the words per minute: much shorter
    with pytest.raises(DataError, match="unknown eSpeak voice"):
        tts.synthesize("one", Voice("xx-nonexistent"))


def test_breathy_voices_are_the_same_in_every_process():
    """eSpeak NG seeds the noise of its breathy variants (female, child) from the clock when it
    starts: two helper processes started in different seconds must still give the same audio."""
    voices = [Voice("en-us+f5", pitch=60, range=80, rate=160), Voice("en+child3", pitch=60, range=90, rate=150)]
    first = Synthesizer()
    try:
        a = [first.synthesize("seven three", v) for v in voices]
    finally:
        first.close()
    time.sleep(1.1)
    second = Synthesizer()
    try:
        b = [second.synthesize("seven three", v) for v in voices[::-1]][::-1]  # order does not matter
    finally:
        second.close()
    for x, y in zip(a, b):
        assert x.size > 1000 and np.array_equal(x, y)


def test_child_like_voices_are_high_pitched():
    f0 = {"child": [], "adult": []}
    for i in range(12):
        spk = demo.make_speaker(i, seed=0, noisy_share=0.0)
        wav = demo.synthesize_utterance(spk, "show the red ball one two", np.random.default_rng(i))
        f0[spk.group].append(estimate_f0(wav))
    assert len(f0["child"]) >= 2 and len(f0["adult"]) >= 2
    assert min(f0["child"]) > max(f0["adult"]) + 30, f0
    assert all(230 < f < 450 for f in f0["child"]), f0  # children's F0 range, not an adult's


@pytest.mark.parametrize("kind", demo.NOISES)
def test_noisy_utterance_has_requested_snr(kind):
    spk = demo.make_speaker(0, seed=3, noisy_share=1.0, snr_range=(12.0, 12.0))
    clean_spk = demo.make_speaker(0, seed=3, noisy_share=0.0)
    spk = type(spk)(**{**spk.__dict__, "noise": kind})
    noisy = demo.synthesize_utterance(spk, "four five six", np.random.default_rng(7))
    clean = demo.synthesize_utterance(clean_spk, "four five six", np.random.default_rng(7))
    assert noisy.size == clean.size and np.abs(noisy).max() <= 1.0
    scale = noisy @ clean / (clean @ clean)  # the anti-clipping gain applies to speech and noise alike
    residual = noisy - scale * clean
    snr = 10 * np.log10(np.mean((scale * clean) ** 2) / np.mean(residual**2))
    assert abs(snr - 12.0) < 0.3, snr


def read_corpus(d: Path) -> tuple[list[dict], dict[str, bytes]]:
    records = load_jsonl(d / "manifest.jsonl")
    return records, {r["utt_id"]: (d / r["audio"]).read_bytes() for r in records}


def test_demo_corpus_contents_determinism_and_resume(tmp_path):
    a = demo.make_demo_corpus(tmp_path / "a", num_speakers=3, utts_per_speaker=3, seed=5, progress=False)
    records, wavs = read_corpus(a.parent)
    assert len(records) == 9 and len({r["speaker"] for r in records}) == 3
    vocab = set(demo.DIGITS) | set(demo.VERBS) | set(demo.COLORS) | set(demo.OBJECTS) | {"the"}
    for r in records:
        wav, sr = sf.read(a.parent / r["audio"])
        assert sr == 16000 and wav.ndim == 1
        assert r["duration"] == pytest.approx(wav.size / sr, abs=1e-3)
        assert 0.5 < r["duration"] < 5 and set(r["text"].split()) <= vocab
        assert (r["age"] < 12) == (r["group"] == "child")

    # same seed: identical; speakers are a prefix of a bigger corpus; another seed differs
    demo.make_demo_corpus(tmp_path / "b", num_speakers=4, utts_per_speaker=3, seed=5, progress=False)
    records_b, wavs_b = read_corpus(tmp_path / "b")
    assert records_b[:9] == records and all(wavs_b[u] == w for u, w in wavs.items())
    demo.make_demo_corpus(tmp_path / "c", num_speakers=3, utts_per_speaker=3, seed=6, progress=False)
    records_c, _ = read_corpus(tmp_path / "c")
    assert [r["voice"] for r in records_c] != [r["voice"] for r in records]

    # a finished corpus is up to date; an interrupted one (no manifest) keeps its wavs and redoes the missing
    stamp = a.stat().st_mtime_ns
    demo.make_demo_corpus(tmp_path / "a", num_speakers=3, utts_per_speaker=3, seed=5, progress=False)
    assert a.stat().st_mtime_ns == stamp
    first, lost = (a.parent / records[0]["audio"]), (a.parent / records[1]["audio"])
    kept_mtime = first.stat().st_mtime_ns
    a.unlink(), lost.unlink()
    demo.make_demo_corpus(tmp_path / "a", num_speakers=3, utts_per_speaker=3, seed=5, progress=False)
    assert read_corpus(a.parent) == (records, wavs) and first.stat().st_mtime_ns == kept_mtime
    # other options: the corpus is made afresh
    demo.make_demo_corpus(tmp_path / "a", num_speakers=2, utts_per_speaker=2, seed=5, progress=False)
    assert len(load_jsonl(a)) == 4


def test_demo_command_line_with_config(tmp_path):
    (tmp_path / "demo.yaml").write_text("num_speakers: 2\nutts_per_speaker: 2\ngrammar: digits\n")
    with pytest.raises(SystemExit) as e:
        run_main(demo_cli.main, ["--config", str(tmp_path / "demo.yaml"), "--out", str(tmp_path / "out"), "--seed", "1"])
    assert e.value.code == 0
    records = load_jsonl(tmp_path / "out" / "manifest.jsonl")
    assert len(records) == 4 and all(set(r["text"].split()) <= set(demo.DIGITS) for r in records)
    assert 2 <= min(len(r["text"].split()) for r in records) and max(len(r["text"].split()) for r in records) <= 5


# ---------------------------------------------------------------- FSDD connected digits

def find_take(wav: np.ndarray, take: np.ndarray, start: int, max_gap: int) -> int:
    """Offset in [start, start + max_gap] where `take` lies in `wav` (to 16-bit precision), else -1."""
    head = take[:64]
    for off in range(start, min(start + max_gap, wav.size - take.size) + 1):
        if np.abs(wav[off:off + 64] - head).max() < 2e-4 and np.abs(wav[off:off + take.size] - take).max() < 2e-4:
            return off
    return -1


def test_connected_digits_follow_the_takes(fsdd, tmp_path):
    manifest = make_connected_digits(fsdd, tmp_path / "cd", min_digits=2, max_digits=4, gap=(0.05, 0.1),
                                     heldout_take=45, valid_take=40, unseen_speakers=["theo"],
                                     speakers=["george", "theo"], progress=False)
    records = load_jsonl(manifest)
    takes = {t.take_id: t for t in read_fsdd(fsdd)}
    by_split = {}
    for r in records:
        by_split.setdefault(r["split"], []).append(r)
        used = [takes[t] for t in r["takes"]]
        assert 2 <= len(used) <= 4 and {t.speaker for t in used} == {r["speaker"]}
        assert r["text"].split() == [t.word for t in used]
        lo = {"train": 0, "valid": 40, "test": 45, "test_unseen": 0}[r["split"]]
        hi = {"train": 40, "valid": 45, "test": 50, "test_unseen": 50}[r["split"]]
        assert all(lo <= t.take < hi for t in used), (r["split"], r["takes"])
        assert (r["split"] == "test_unseen") == (r["speaker"] == "theo")
    assert set(by_split) == {"train", "valid", "test", "test_unseen"}
    train_takes = {t for r in by_split["train"] for t in r["takes"]}
    assert len(train_takes) == 400  # george's 10 digits x takes 0-39, every one used
    # the audio is the takes, in order, with 50-100 ms gaps
    for r in records[:: max(1, len(records) // 6)]:
        wav = load_audio(str(manifest.parent / r["audio"]))
        pos = 0
        for t in r["takes"]:
            take = np.round(load_audio(takes[t].path) * 32768) / 32768
            off = find_take(wav, take, pos + int(0.05 * 16000) - 1, int(0.05 * 16000) + 2)
            assert off >= 0, (r["utt_id"], t)
            pos = off + take.size
        assert 0.05 * 16000 - 1 <= wav.size - pos <= 0.1 * 16000 + 1


def test_group_takes_uses_every_take(tmp_path):
    pool = list(range(23))
    groups = group_takes(pool, np.random.default_rng(0), 2, 6, repeats=2)
    assert all(2 <= len(g) <= 6 for g in groups)
    used = [t for g in groups for t in g]
    assert all(used.count(t) >= 2 for t in pool) and len(used) < 46 + 2
    with pytest.raises(DataError, match="min_digits"):
        group_takes(pool, np.random.default_rng(0), 3, 2)


def test_fsdd_folder_without_manifest_and_bad_names(tmp_path, caplog):
    rec = tmp_path / "fsdd" / "recordings"
    for digit in (1, 2):
        for take in range(4):
            write_tone(rec / f"{digit}_kim_{take}.wav", seconds=0.3, sr=8000, freq=200 + 50 * digit, seed=take)
    write_tone(rec / "notes.wav", seconds=0.3, sr=8000)
    takes = read_fsdd(tmp_path / "fsdd")
    assert len(takes) == 8 and {t.word for t in takes} == {"one", "two"}
    assert "notes.wav is not named" in caplog.text
    assert cd_cli.main(["--fsdd", str(tmp_path / "fsdd"), "--out", str(tmp_path / "out"), "--heldout_take", "3",
                        "--valid_take", "-1", "--gap", "0.1", "--min_digits", "2", "--max_digits", "2"]) == 0
    records = load_jsonl(tmp_path / "out" / "manifest.jsonl")
    assert {r["split"] for r in records} == {"train", "test"}
    for r in records:  # two 0.3 s takes and three 0.1 s gaps, resampled to 16 kHz
        assert sf.info(tmp_path / "out" / r["audio"]).samplerate == 16000
        assert r["duration"] == pytest.approx(0.9, abs=0.002)
    with pytest.raises(DataError, match="not in FSDD"):
        make_connected_digits(tmp_path / "fsdd", tmp_path / "out2", unseen_speakers=["bob"], progress=False)
