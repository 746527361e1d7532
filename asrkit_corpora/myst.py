"""The My Science Tutor corpus (MyST, LDC2021S05) as distributed, to a raw manifest for stage 0.

Layout: <root>/data/{train,development,test}/<student>/<session>/<utt>.flac, with <utt>.trn beside
each transcribed file (many have none: they are skipped and counted). The transcripts keep their
markup (the `child` normalizer of stage 0 cleans it); utterances marked <no_signal> or <discard>
are dropped. Train and development are filtered (at least `min_words` words after normalization,
at most `max_duration` seconds); test is kept whole, and its filtered subset (the same filters, or
a given list of utterance ids such as the one of a paper) is flagged `test_filtered`.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any, Optional

from tqdm import tqdm

from asrkit.audio import audio_info
from asrkit.errors import DataError
from asrkit.fileio import read_lines
from asrkit.normalize import get_normalizer

log = logging.getLogger("asrkit.myst")

PARTITIONS = {"train": "train", "development": "valid", "test": "test"}
AUDIO_SUFFIXES = (".flac", ".wav")
DROP_TAGS = re.compile(r"<\s*(no_signal|discard)\s*>", re.IGNORECASE)


def find_data_dir(root: str | Path) -> Path:
    """The folder holding train/ development/ test/: root itself, root/data or the LDC package's."""
    root = Path(root)
    for d in (root, root / "data", root / "myst_child_conv_speech" / "data"):
        if all((d / p).is_dir() for p in PARTITIONS):
            return d
    raise DataError("not a MyST corpus folder", str(root),
                    "give the folder that holds data/train, data/development and data/test "
                    "(LDC2021S05: .../myst_child_conv_speech)")


def read_transcript(path: Path) -> str:
    """A .trn file's text on one line; a file that is not UTF-8 raises DataError naming it."""
    return " ".join(line.strip() for _, line in read_lines(path)).strip()


def read_id_list(path: str | Path) -> set[str]:
    """Utterance ids, one a line (the first field, so a Kaldi `text` or `wav.scp` works too)."""
    return {line.split()[0] for _, line in read_lines(path) if line.strip()}


def scan_myst(root: str | Path, min_words: int = 3, max_duration: float = 30.0,
              test_ids: Optional[set[str]] = None, progress: bool = True
              ) -> tuple[list[dict[str, Any]], list[tuple[str, str, str]], Counter]:
    """(records, dropped (utt_id, where, reason), counts) of a MyST tree.

    A record: utt_id, audio (absolute), text (raw transcript), speaker (student), session, split
    (train/valid/test), duration, and for test utterances `test_filtered` (in the filtered subset).
    """
    data = find_data_dir(root)
    count_words = get_normalizer("child")
    records, dropped, counts = [], [], Counter()
    files = [(p, s) for part, s in PARTITIONS.items()
             for p in sorted((data / part).glob("*/*/*")) if p.suffix.lower() in AUDIO_SUFFIXES]
    for audio, split in tqdm(files, desc="scanning MyST", unit="file", disable=not progress):
        counts["audio files"] += 1
        utt_id, trn = audio.stem, audio.with_suffix(".trn")
        if not trn.is_file():
            counts["no transcript (skipped)"] += 1
            continue

        def drop(reason: str) -> None:
            dropped.append((utt_id, str(trn), reason))
            counts[f"dropped: {reason.split(':')[0]}"] += 1

        try:
            text = read_transcript(trn)
            sr, frames, _ = audio_info(str(audio))
        except DataError as e:
            drop(f"unreadable: {e.where}: {e.what}")
            continue
        duration, words = frames / sr, len(count_words(text).split())
        tag = DROP_TAGS.search(text)
        passes = words >= min_words and duration <= max_duration
        if tag:
            drop(f"marked <{tag.group(1).lower()}>")
        elif not text or words == 0:
            drop("no words in transcript")
        elif split != "test" and not passes:
            drop(f"fewer than {min_words} words" if words < min_words else f"longer than {max_duration:g}s")
        else:
            record = {"utt_id": utt_id, "audio": str(audio.resolve()), "text": text,
                      "speaker": audio.parent.parent.name, "session": audio.parent.name, "split": split,
                      "duration": round(duration, 4)}
            if split == "test":
                record["test_filtered"] = (utt_id in test_ids) if test_ids is not None else passes
            records.append(record)
            counts[f"kept: {split}"] += 1
    if test_ids is not None:
        found = {r["utt_id"] for r in records if r.get("test_filtered")}
        if len(found) < len(test_ids):
            log.warning("%d of the %d ids of the test list are not among the kept test utterances, e.g. %s",
                        len(test_ids) - len(found), len(test_ids), sorted(test_ids - found)[:3])
        counts["test_filtered (from list)"] = len(found)
    else:
        counts["test_filtered (filters)"] = sum(1 for r in records if r.get("test_filtered"))
    return records, dropped, counts
