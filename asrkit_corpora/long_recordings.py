"""Long recordings made of utterances whose transcripts are known: the test material of long-file
transcription (a lesson's worth of audio with its reference and its true pauses).

    utts = join_utterances(records, "long.wav", pause=0.6)   # [{"utt_id", "text", "start", "end"}, ...]

The utterances' audio (16 kHz mono) is written one after another with `pause` seconds of silence
(or of low noise: `noise_db`) before, between and after them, streamed to the file, so an hour
costs no more memory than one utterance.
"""
from __future__ import annotations

import numpy as np
import soundfile as sf

from asrkit.audio import SAMPLE_RATE, load_audio


def join_utterances(records: list[dict], out_wav: str, pause: float = 0.6, noise_db: float | None = None,
                    seed: int = 0) -> list[dict]:
    """Write the records' audio (utt_id, audio, text; optional start/end) into one WAV with `pause`
    seconds before, between and after them; returns where each utterance lies in it (seconds): its
    file (start, end) and its speech (speech_start, speech_end: without the file's own silent edges)."""
    rng = np.random.default_rng(seed)
    gap = int(round(pause * SAMPLE_RATE))

    def silence():
        quiet = np.zeros(gap, np.float32)
        return quiet if noise_db is None else quiet + rng.normal(0, 10 ** (noise_db / 20), gap).astype(np.float32)

    placed, at = [], 0
    with sf.SoundFile(out_wav, "w", SAMPLE_RATE, 1, subtype="PCM_16") as f:
        for r in records:
            f.write(silence())
            at += gap
            wav = load_audio(r["audio"], r.get("start"), r.get("end"))
            f.write(wav)
            first, last = speech_extent(wav)
            placed.append({"utt_id": r["utt_id"], "text": r["text"], "start": at / SAMPLE_RATE,
                           "end": (at + len(wav)) / SAMPLE_RATE, "speech_start": (at + first) / SAMPLE_RATE,
                           "speech_end": (at + last) / SAMPLE_RATE})
            at += len(wav)
        f.write(silence())
    return placed


def off_pause(t: float, placed: list[dict]) -> float:
    """How far time t lies from the nearest true pause of a joined recording: the silence before,
    between or after the utterances' speech (0 inside one)."""
    pauses = zip([0.0] + [u["speech_end"] for u in placed], [u["speech_start"] for u in placed] + [float("inf")])
    return min(max(0.0, a - t, t - b) for a, b in pauses)


def speech_extent(wav: np.ndarray, floor_db: float = -40.0, frame: int = 160) -> tuple[int, int]:
    """First and last sample of the 10 ms frames louder than `floor_db` below the loudest one."""
    n = len(wav) // frame
    if n == 0:
        return 0, len(wav)
    rms = np.sqrt(np.mean(wav[: n * frame].reshape(n, frame) ** 2, axis=1) + 1e-12)
    loud = np.flatnonzero(20 * np.log10(rms / rms.max()) > floor_db)
    return int(loud[0]) * frame, (int(loud[-1]) + 1) * frame
