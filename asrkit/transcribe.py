"""Transcribe new audio with an experiment dir: the feature extractor the model was trained on (from
its feats_attrs.json), then the decoder; optional word timings (asrkit/timing.py): a Whisper
decoder's from its cross-attention, as openai-whisper's, another model's from its CTC head's forced
alignment (a model with neither gives one span per utterance). A long recording (a lesson, a session) is cut at
its pauses into utterance-sized segments (asrkit/segment.py), decoded in batches like stage 4's
utterances and joined, on the recording's own clock.

    from asrkit.transcribe import Transcriber
    asr = Transcriber("exp/<tag>")                      # joint CTC/attention, beam 10, on CPU
    asr.transcribe(["a.flac", "b.wav"], timings=True)   # [{"file", "text", "score", "words": [...]}]
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from asrkit.audio import SAMPLE_RATE, audio_info, load_audio
from asrkit.decode.search import DecodeOptions, check_model
from asrkit.errors import DataError
from asrkit.model_io import AVERAGE, load_model
from asrkit.nets.decoder import WhisperDecoder
from asrkit.segment import CHUNK, SegmentOptions, UtteranceShape, segments_from_probs, speech_probs
from asrkit.timing import attention_word_timings, clip_to_speech, ctc_word_timings

log = logging.getLogger(__name__)
LONG_SAMPLES = 30 * SAMPLE_RATE  # longer pieces are extracted in overlapping windows
GROUP_SECONDS = 300.0  # audio whose features are in memory at once


def extractor_from_attrs(attrs: dict, device: str | torch.device = "cpu"):
    """Rebuild the stage-1 extractor that a model's features came from, and check it is the same."""
    from asrkit.features.extractors import ExtractorSpec
    from asrkit.features.store import check_compatible

    ext = ExtractorSpec.from_attrs(attrs).build(device)
    check_compatible(ext.attrs, attrs, "feature extractor of the model dir")
    return ext


class Piece(NamedTuple):
    """What is decoded as one utterance: a whole file, or a segment of a long one (seconds)."""
    file: str
    start: float
    end: float | None  # None: to the end of the file


class Transcriber:
    """A model dir ready to transcribe files with the search `search` (asrkit.decode.DecodeOptions).
    A file longer than `segment.max_seconds` is cut at its pauses (asrkit.segment) and its segments
    decoded as utterances. `segment`: "model" (segments shaped like the model's training utterances,
    from its utterances.json; SegmentOptions() for a model without one), a dict of SegmentOptions
    fields to set on those, SegmentOptions, or None to decode every file whole."""

    def __init__(self, model_dir, checkpoint: str = AVERAGE, device: str = "cpu",
                 segment: SegmentOptions | dict | str | None = "model", search: DecodeOptions = DecodeOptions()):
        self.device = torch.device(device)
        self.model, self.tokenizer, self.config, self.attrs = load_model(model_dir, checkpoint, self.device)
        self.extractor = extractor_from_attrs(self.attrs, self.device)
        self.opts = check_model(self.model, search, str(model_dir))
        self.frame_s = self.model.subsampling / float(self.attrs["frame_rate"])
        if segment == "model" or isinstance(segment, dict):
            shape = UtteranceShape.read(model_dir)
            given = {} if segment == "model" else segment
            try:
                segment = shape.options(**given) if shape else replace(SegmentOptions(), **given)
            except ValueError as e:
                raise DataError(f"segment options: {e}", str(model_dir),
                                "the options given must fit with those from the model's utterances.json") from None
        self.segment = segment

    @classmethod
    def from_pretrained(cls, source, device: str = "cpu", segment: SegmentOptions | dict | str | None = "model",
                        search: DecodeOptions | None = None) -> Transcriber:
        """A shared model (asrkit.package): a package folder, its archive, or a Hugging Face Hub id,
        decoded with its reported search unless `search` says otherwise."""
        from asrkit.package import WEIGHTS, resolve, search_of

        folder = resolve(source)
        return cls(folder, WEIGHTS, device, segment, search or search_of(folder))

    def pieces(self, path: str, progress: bool = False, speech: bool = False) -> tuple[list[Piece], float, np.ndarray | None]:
        """The pieces of a file, its length in seconds, and its speech probabilities (asrkit.segment.speech_probs)
        where they were needed to cut it or `speech` asks for them."""
        sr, frames, _ = audio_info(path)
        seconds = frames / sr
        if self.segment is None or seconds <= self.segment.max_seconds:
            return [Piece(path, 0.0, None)], seconds, speech_probs(path) if speech else None
        with tqdm(total=round(seconds), unit="s audio", desc="finding pauses", disable=not progress,
                  dynamic_ncols=True) as bar:
            probs = speech_probs(path, lambda done: bar.update(round(done) - bar.n))
        segments = segments_from_probs(probs, seconds, self.segment)
        log.info("%s: %.1f s cut into %d segments at its pauses", path, seconds, len(segments))
        return [Piece(path, s.start, s.end) for s in segments], seconds, probs

    def features(self, piece: Piece) -> np.ndarray:
        audio = load_audio(piece.file, piece.start or None, piece.end, sample_rate=SAMPLE_RATE)
        # the length check is on the samples: `prepare` returns what the extractor's batch step takes,
        # which for fbank is already frames
        if self.extractor.num_frames(len(audio)) < self.model.min_frames:
            raise DataError(f"too short ({len(audio) / SAMPLE_RATE:.2f} s) for this model", _where(piece))
        wav = self.extractor.prepare(audio)
        if len(audio) > LONG_SAMPLES and hasattr(self.extractor, "extract_long"):
            feats = self.extractor.extract_long(wav, LONG_SAMPLES)
        else:
            feats = self.extractor([wav])[0]
        return np.asarray(feats, dtype=np.float32)

    @torch.no_grad()
    def transcribe(self, paths, timings: bool = False, batch_size: int = 8, progress: bool = False) -> list[dict]:
        """One record per file, in order: {"file", "text", "score"[, "words"][, "segments"]}; a file
        that cannot be read or decoded gets {"file", "error"} instead. Files (or the segments of long
        ones, each {"start", "end", "text"}, with "error" if it failed) are decoded `batch_size` at a
        time (the search batches utterances x beams), a few minutes of audio at a time; word timings
        and segments are on each file's own clock."""
        paths = [str(p) for p in paths]
        out: dict[str, dict] = {}
        files: dict[str, list[Piece]] = {}
        seconds: dict[str, float] = {}
        speech: dict[str, np.ndarray | None] = {}
        for path in dict.fromkeys(paths):
            try:
                files[path], seconds[path], speech[path] = self.pieces(path, progress, speech=timings)
            except DataError as e:
                log.warning("%s", e)
                out[path] = {"file": path, "error": str(e)}
        done: dict[Piece, dict] = {}
        with tqdm(total=round(sum(seconds.values())), unit="s audio", desc="transcribing", disable=not progress,
                  dynamic_ncols=True) as bar:
            for group in _groups([p for found in files.values() for p in found], GROUP_SECONDS, seconds):
                done.update(self._decode(group, timings, batch_size))
                bar.update(round(sum(_seconds(p, seconds) for p in group)))
        for path, found in files.items():
            out[path] = _file_record(path, [(p, done[p]) for p in found], timings)
            if timings and "words" in out[path]:
                out[path]["words"] = clip_to_speech(out[path]["words"], speech[path], CHUNK / SAMPLE_RATE,
                                                    (self.segment or SegmentOptions()).threshold)
        return [out[p] for p in paths]

    def _decode(self, pieces: list[Piece], timings: bool, batch_size: int) -> dict[Piece, dict]:
        """{piece: {"text", "score"[, "words"]} or {"error"}} of one group of pieces."""
        from asrkit.decode.runner import Utterance, decode_utterances

        feats, out = {}, {}
        for piece in pieces:
            try:
                feats[piece] = self.features(piece)
            except DataError as e:
                log.warning("%s", e)
                out[piece] = {"error": str(e)}
        # each piece is decoded as an utterance whose id is the piece itself
        rate = float(self.attrs["frame_rate"])
        utts = [Utterance(piece, f.shape[-2], f.shape[-2] / rate) for piece, f in feats.items()]
        failed: list[tuple[Piece, str]] = []
        encoded: dict | None = {} if timings else None
        decoded = []
        for u, nbest, _ in decode_utterances(self.model, utts, feats.__getitem__, self.opts, batch_size,
                                             self.device, failed, progress=False, encoded=encoded):
            h = nbest[0] if nbest else None
            out[u.utt_id] = {"text": self.tokenizer.decode(h.tokens) if h else "", "score": h.score if h else None}
            decoded.append((u, h))
        if timings:
            self._add_words(decoded, encoded, out, batch_size)
        out.update({piece: {"error": why} for piece, why in failed})
        return out

    def _add_words(self, decoded: list, encoded: dict, out: dict[Piece, dict], batch_size: int) -> None:
        """Each decoded piece's words with timings on its file's clock (asrkit/timing.py), from its encoder
        output: a Whisper decoder's from its cross-attention (`batch_size` pieces at a time), another
        model's from its CTC head's forced alignment; one span for the piece where the model has neither,
        or its CTC cannot align the hypothesis."""
        whisper = isinstance(self.model.decoder, WhisperDecoder)
        todo = [(u, h) for u, h in decoded if h is not None and out[u.utt_id]["text"]]
        for u, _ in decoded:
            out[u.utt_id]["words"] = []
        for i in range(0, len(todo), batch_size):
            chunk = todo[i: i + batch_size]
            encs, ids = [encoded[u.utt_id] for u, _ in chunk], [h.tokens for _, h in chunk]
            strs = [[self.tokenizer.tokens[t] for t in h.tokens] for _, h in chunk]
            kind = self.tokenizer.token_type
            if whisper:
                found = attention_word_timings(self.model, encs, ids, strs, kind, self.frame_s)
            elif self.model.ctc is not None:
                found = [ctc_word_timings(self.model.ctc_log_probs(enc[None])[0], t, s, kind, self.frame_s, self.model.blank)
                         for enc, t, s in zip(encs, ids, strs)]
            else:
                found = [None] * len(chunk)
            for (u, _), words in zip(chunk, found):
                piece, rec = u.utt_id, out[u.utt_id]
                if words is None:
                    words = [{"word": rec["text"], "start": 0.0, "end": round(u.seconds, 3), "confidence": None}]
                rec["words"] = [{**w, "start": round(w["start"] + piece.start, 3), "end": round(w["end"] + piece.start, 3)}
                                for w in words]


def _seconds(piece: Piece, file_seconds: dict[str, float]) -> float:
    return (file_seconds[piece.file] if piece.end is None else piece.end) - piece.start


def _groups(pieces: list[Piece], max_seconds: float, file_seconds: dict[str, float]) -> list[list[Piece]]:
    """Consecutive pieces, each group at most max_seconds of audio (or one piece): what is in memory at once."""
    groups, total = [], 0.0
    for p in pieces:
        if not groups or total + _seconds(p, file_seconds) > max_seconds:
            groups.append([])
            total = 0.0
        groups[-1].append(p)
        total += _seconds(p, file_seconds)
    return groups


def _where(piece: Piece) -> str:
    return piece.file if piece.end is None else f"{piece.file} [{piece.start:.2f}-{piece.end:.2f} s]"


def _file_record(path: str, decoded: list[tuple[Piece, dict]], timings: bool) -> dict:
    """A file's record from its pieces' (in order)."""
    if len(decoded) == 1 and decoded[0][0].end is None:  # decoded whole
        rec = decoded[0][1]
        return {"file": path, **rec}
    ok = [r for _, r in decoded if "error" not in r]
    if decoded and not ok:
        return {"file": path, "error": f"every segment failed; the first: {decoded[0][1]['error']}"}
    rec = {"file": path, "text": " ".join(r["text"] for r in ok if r["text"]),
           "score": sum(r["score"] or 0.0 for r in ok)}
    if timings:
        rec["words"] = [w for r in ok for w in r.get("words", [])]
    rec["segments"] = [{"start": p.start, "end": p.end, **({"error": r["error"]} if "error" in r else {"text": r["text"]})}
                       for p, r in decoded]
    return rec
