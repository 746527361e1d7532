"""Cutting a long recording into utterance-sized segments at its pauses, with Silero VAD.

    from asrkit.segment import SegmentOptions, segment_file
    segment_file("lesson.wav", SegmentOptions(max_seconds=20))   # [Segment(start, end), ...] in seconds

The speech probability of each 32 ms chunk comes from Silero VAD (the `silero-vad` package; its
model ships inside the wheel and runs on torch, on the CPU). The recording is read in blocks of
about 33 s, a few minutes of them at a time, each block with one second of the audio before it so
that the VAD's recurrent state has settled when the block starts: memory stays bounded whatever
the length. Silero's own `get_speech_timestamps_from_probs` turns the probabilities into speech
stretches (hysteresis around `threshold`, pauses of at least `min_pause`, `pad` of context kept on
each side). Then a stretch longer than `max_seconds` is cut where the speech probability is lowest
(no piece shorter than `min_seconds`), and a segment shorter than `min_seconds` joins the neighbour
across the shorter pause, if together they stay within `max_seconds`.

A model decodes best what looks like its training utterances. Training measures them
(`measure_utterances`: their durations, and the silence before and after their speech, found by the
same VAD) into the model dir's utterances.json, and `UtteranceShape.options()` cuts segments alike:
as long, with as much silence at each edge. A model trained on isolated digits of half a second
gets segments of one digit with its own short edges, not the defaults' 1 s segments with 0.4 s of
context.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch

from asrkit.audio import SAMPLE_RATE, audio_info, load_audio
from asrkit.errors import DataError
from asrkit.fileio import write_json

CHUNK = 512  # samples per VAD probability at 16 kHz (32 ms)
BLOCK_CHUNKS = 1024  # a block: 32.8 s
CONTEXT_CHUNKS = 32  # audio before a block that the VAD hears first (1 s); its probabilities are dropped
BLOCKS_AT_ONCE = 8  # blocks run as one batch (4.4 min of audio, 17 MB)
SHAPE = "utterances.json"  # the training utterances' shape, in a model dir


@dataclass(frozen=True)
class SegmentOptions:
    max_seconds: float = 20.0  # no segment longer (about the longest training utterances)
    min_seconds: float = 1.0  # shorter ones join a neighbour
    min_pause: float = 0.3  # a pause shorter than this does not end a speech stretch
    pad: float = 0.4  # context kept before speech (split with the neighbour when the pause is short)
    threshold: float = 0.5  # speech probability above which a chunk is speech
    pad_after: float | None = None  # context kept after speech (None: pad)

    @property
    def pads(self) -> tuple[float, float]:
        return self.pad, self.pad if self.pad_after is None else self.pad_after

    def __post_init__(self):
        if not 0 < self.max_seconds:
            raise ValueError(f"the longest segment must be positive, got {self.max_seconds}")
        if not 0 <= self.min_seconds < self.max_seconds:
            raise ValueError(f"the shortest segment ({self.min_seconds} s) must be at least 0 and shorter than "
                             f"the longest ({self.max_seconds} s)")
        if min(self.pads) < 0 or self.min_pause < 0:
            raise ValueError(f"the context ({self.pad} s) and the shortest pause ({self.min_pause} s) cannot be "
                             "negative")
        if not 0 < self.threshold < 1:
            raise ValueError(f"the speech threshold must be between 0 and 1, got {self.threshold}")


class Segment(NamedTuple):
    start: float  # seconds from the recording's start
    end: float


@lru_cache(maxsize=1)
def silero():
    """The silero_vad module. Importing it sets torch to one thread, for the whole process (a training
    run that measured its utterances went on on one core): undone here, the one place it is imported."""
    threads = torch.get_num_threads()
    import silero_vad

    torch.set_num_threads(threads)
    return silero_vad


@lru_cache(maxsize=1)
def load_vad():
    """Silero VAD's TorchScript model."""
    return silero().load_silero_vad()


@dataclass(frozen=True)
class UtteranceShape:
    """What a model's training utterances are like, in seconds: their durations (the shortest, and the 99th
    percentile as the longest) and the silence before and after their speech (medians; the VAD finds the speech as
    it does in a long recording)."""
    shortest: float
    longest: float
    lead: float
    trail: float
    measured: int  # utterances whose edges were measured

    def options(self, **given) -> SegmentOptions:
        """Segments like these utterances; `given`: SegmentOptions fields that the user set. A stretch of
        speech is cut only when a quarter longer than the longest (an utterance of a slower speaker
        stays whole)."""
        longest = min(30.0, max(1.25 * self.longest, self.shortest + 1.0))
        return replace(SegmentOptions(max_seconds=longest, min_seconds=self.shortest, pad=self.lead,
                                      pad_after=self.trail), **given)

    def write(self, model_dir: str | Path) -> None:
        write_json(Path(model_dir) / SHAPE, asdict(self))

    @classmethod
    def read(cls, model_dir: str | Path) -> UtteranceShape | None:
        """The shape a model dir records; None for a model trained before it was recorded."""
        path = Path(model_dir) / SHAPE
        if not path.is_file():
            return None
        import json

        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError) as e:
            raise DataError(f"not a record of the training utterances ({e})", str(path),
                            "delete it to segment with the defaults") from None


def measure_utterances(records: list[dict], sample: int = 200, seed: int = 0,
                       opts: SegmentOptions = SegmentOptions()) -> UtteranceShape | None:
    """The shape of the utterances of a split list's records (with "duration", "audio", and maybe
    "start"/"end"): durations of all, edges of `sample` of them; None if no edge could be measured
    (unreadable audio, no speech found)."""
    durations = [float(r["duration"]) for r in records if r.get("duration")]
    picked = random.Random(seed).sample(records, min(sample, len(records)))
    vad, leads, trails = load_vad(), [], []
    for r in picked:
        try:
            wav = load_audio(r["audio"], r.get("start"), r.get("end"))
        except DataError:
            continue
        with torch.inference_mode():
            probs = vad.audio_forward(torch.from_numpy(wav)[None], SAMPLE_RATE)[0].numpy()
        stamps = silero().get_speech_timestamps_from_probs(
            [float(p) for p in probs], sampling_rate=SAMPLE_RATE, threshold=opts.threshold, min_speech_duration_ms=0,
            min_silence_duration_ms=int(opts.min_pause * 1000), speech_pad_ms=0, audio_length_samples=len(wav))
        if stamps:
            leads.append(stamps[0]["start"] / SAMPLE_RATE)
            trails.append((len(wav) - min(stamps[-1]["end"], len(wav))) / SAMPLE_RATE)
    if not leads or not durations:
        return None
    r3 = lambda x: round(float(x), 3)  # noqa: E731
    return UtteranceShape(r3(min(durations)), r3(np.percentile(durations, 99)), r3(np.median(leads)),
                          r3(np.median(trails)), len(leads))


def speech_probs(path: str, progress: Callable[[float], None] | None = None) -> np.ndarray:
    """The speech probability of each 32 ms chunk of the recording at `path`, read block by block;
    `progress(seconds)` after each batch of blocks."""
    sr, frames, _ = audio_info(path)
    seconds = frames / sr
    block_s, context_s = BLOCK_CHUNKS * CHUNK / SAMPLE_RATE, CONTEXT_CHUNKS * CHUNK / SAMPLE_RATE
    starts = list(np.arange(0.0, seconds, block_s))
    vad, out = load_vad(), []
    for i in range(0, len(starts), BLOCKS_AT_ONCE):
        batch = np.zeros((len(starts[i:i + BLOCKS_AT_ONCE]), (CONTEXT_CHUNKS + BLOCK_CHUNKS) * CHUNK), np.float32)
        for row, start in enumerate(starts[i:i + BLOCKS_AT_ONCE]):
            before = min(start, context_s)  # the first block has no context: zeros stand for it
            wav = load_audio(path, start - before, min(start + block_s, seconds))
            offset = (CONTEXT_CHUNKS * CHUNK) - int(round(before * SAMPLE_RATE))
            wav = wav[: batch.shape[1] - offset]
            batch[row, offset: offset + len(wav)] = wav
        with torch.inference_mode():
            probs = vad.audio_forward(torch.from_numpy(batch), SAMPLE_RATE).numpy()
        out.append(probs[:, CONTEXT_CHUNKS:].reshape(-1))
        if progress is not None:
            progress(min(seconds, starts[min(i + BLOCKS_AT_ONCE, len(starts)) - 1] + block_s))
    n = int(np.ceil(seconds * SAMPLE_RATE / CHUNK))
    return np.concatenate(out)[:n] if out else np.zeros(0, np.float32)


def segments_from_probs(probs: np.ndarray, seconds: float, opts: SegmentOptions = SegmentOptions()) -> list[Segment]:
    """The segments of a recording of `seconds` whose chunks have these speech probabilities."""
    samples = int(round(seconds * SAMPLE_RATE))
    stamps = silero().get_speech_timestamps_from_probs(
        [float(p) for p in probs], sampling_rate=SAMPLE_RATE, threshold=opts.threshold,
        min_speech_duration_ms=int(min(250, max(0.0, opts.min_seconds - sum(opts.pads)) * 1000)),
        min_silence_duration_ms=int(opts.min_pause * 1000), speech_pad_ms=0, audio_length_samples=samples)
    spans = [(s / SAMPLE_RATE, min(e, samples) / SAMPLE_RATE) for s, e in _padded(stamps, opts, samples)]
    pieces = [p for s, e in spans for p in _split(s, e, probs, opts)]
    return [Segment(round(s, 3), round(e, 3)) for s, e in _merge_short(pieces, opts)]


def segment_file(path: str, opts: SegmentOptions = SegmentOptions(),
                 progress: Callable[[float], None] | None = None) -> list[Segment]:
    sr, frames, _ = audio_info(path)
    return segments_from_probs(speech_probs(path, progress), frames / sr, opts)


def _padded(stamps: list[dict], opts: SegmentOptions, samples: int) -> list[tuple[int, int]]:
    """Speech stretches (samples) with their context: `pad` before, `pad_after` after; a pause too short
    for both is shared between them in proportion (with equal pads, as Silero's speech_pad_ms does)."""
    before, after = (int(p * SAMPLE_RATE) for p in opts.pads)
    spans = [[s["start"], s["end"]] for s in stamps]
    for i, span in enumerate(spans):
        if i == 0:
            span[0] = max(0, span[0] - before)
        if i + 1 == len(spans):
            span[1] = min(samples, span[1] + after)
            continue
        nxt = spans[i + 1]
        pause = nxt[0] - span[1]
        if pause < before + after:  # (each side's share rounded down, as Silero does)
            span[1] += pause * after // (before + after)
            nxt[0] -= pause * before // (before + after)
        else:
            span[1] += after
            nxt[0] -= before
    return [(s, e) for s, e in spans]


def _split(start: float, end: float, probs: np.ndarray, opts: SegmentOptions) -> list[tuple[float, float]]:
    """A stretch cut into pieces of at most max_seconds, each where the speech probability is lowest
    between min_seconds and max_seconds from the last cut (the latest such place, within 0.02)."""
    out, chunk_s = [], CHUNK / SAMPLE_RATE
    while end - start > opts.max_seconds:
        first = int(np.ceil((start + opts.min_seconds) / chunk_s))
        last = max(first + 1, int((start + opts.max_seconds) / chunk_s))
        window = probs[first:last]
        lowest = np.flatnonzero(window <= window.min() + 0.02)  # the latest of the lowest: pieces long
        cut = (first + int(lowest[-1]) + 0.5) * chunk_s
        out.append((start, cut))
        start = cut
    return out + [(start, end)]


def _merge_short(pieces: list[tuple[float, float]], opts: SegmentOptions) -> list[tuple[float, float]]:
    """Each piece shorter than min_seconds joined to the neighbour across the shorter pause, while
    the result stays within max_seconds."""
    pieces = list(pieces)
    i = 0
    while i < len(pieces):
        s, e = pieces[i]
        if e - s >= opts.min_seconds:
            i += 1
            continue
        gaps = [(s - pieces[i - 1][1], i - 1) if i > 0 else None,
                (pieces[i + 1][0] - e, i + 1) if i + 1 < len(pieces) else None]
        fits = [(gap, j) for gap, j in filter(None, gaps)
                if max(e, pieces[j][1]) - min(s, pieces[j][0]) <= opts.max_seconds]
        if not fits:
            i += 1
            continue
        j = min(fits)[1]
        merged = (min(s, pieces[j][0]), max(e, pieces[j][1]))
        lo = min(i, j)
        pieces[lo: lo + 2] = [merged]
        i = lo  # the merged piece may still be short
    return pieces
