"""Transcript files from transcribe's records: plain text, SRT and WebVTT subtitles, JSON.

A record is what `Transcriber.transcribe` returns for a file: {"file", "text", "words": [{"word",
"start", "end", "confidence"}, ...]}. Subtitles group the words into cues of at most `max_chars`
characters (42, the usual broadcast line) and start a new cue at a pause of `max_gap` seconds, so a
child's long pauses and restarts show as separate lines.
"""
from __future__ import annotations

import json
from pathlib import Path

from asrkit.fileio import atomic_open

FORMATS = ("txt", "srt", "vtt", "json")


def cues(words: list[dict], max_chars: int = 42, max_gap: float = 1.0) -> list[tuple[float, float, str]]:
    """(start, end, text) per subtitle cue, in order."""
    out: list[tuple[float, float, str]] = []
    for w in words:
        if out:
            start, end, text = out[-1]
            if w["start"] - end < max_gap and len(text) + 1 + len(w["word"]) <= max_chars:
                out[-1] = (start, w["end"], f"{text} {w['word']}")
                continue
        out.append((w["start"], w["end"], w["word"]))
    return out


def timestamp(seconds: float, sep: str) -> str:
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def render(rec: dict, fmt: str) -> str:
    if fmt == "txt":
        return rec["text"] + "\n"
    if fmt == "json":
        return json.dumps(rec, ensure_ascii=False, indent=1) + "\n"
    sep = "," if fmt == "srt" else "."
    blocks = [f"{timestamp(a, sep)} --> {timestamp(b, sep)}\n{text}\n" for a, b, text in cues(rec.get("words", []))]
    if fmt == "srt":
        return "\n".join(f"{i}\n{block}" for i, block in enumerate(blocks, 1))
    return "WEBVTT\n\n" + "\n".join(blocks)


def write_transcripts(rec: dict, out_dir: str | Path, formats: list[str]) -> list[Path]:
    """<out_dir>/<audio file's stem>.<fmt> for each format; each file written whole or not at all."""
    written = []
    for fmt in formats:
        path = Path(out_dir) / f"{Path(rec['file']).stem}.{fmt}"
        with atomic_open(path) as f:
            f.write(render(rec, fmt))
        written.append(path)
    return written
