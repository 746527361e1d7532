"""Connected digits from the Free Spoken Digit Dataset (FSDD): 2-6 takes of one speaker, short gaps.

FSDD has isolated digits `<digit>_<speaker>_<take>.wav` (8 kHz, 50 takes of each digit per speaker).
Joining takes turns it into sequence recognition. Each utterance draws its takes from one pool
(speaker x split) so that held-out takes never leak into training:

    split = test_unseen  speaker in `unseen_speakers` (every take)
            test         take >= heldout_take        (held-out takes of seen speakers)
            valid        valid_take <= take < heldout_take
            train        the rest
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
from tqdm import tqdm

from asrkit.audio import SAMPLE_RATE, load_audio
from asrkit_corpora.writer import CorpusWriter
from asrkit.errors import DataError
from asrkit.fileio import read_jsonl, resolve_audio_path
from asrkit.normalize import number_to_words

log = logging.getLogger("asrkit.fsdd")
_NAME = re.compile(r"^(\d)_(.+)_(\d+)$")  # <digit>_<speaker>_<take>


@dataclass(frozen=True)
class Take:
    take_id: str  # the file's stem, e.g. 3_george_12
    word: str
    speaker: str
    take: int
    path: str


def read_fsdd(root: str | Path) -> list[Take]:
    """Every recording of an FSDD folder: from its manifest.jsonl, else from recordings/*.wav."""
    root = Path(root)
    manifest = root / "manifest.jsonl"
    if manifest.is_file():
        paths = [(resolve_audio_path(str(r.get("audio", "")), manifest), f"{manifest}:{n}")
                 for n, r in read_jsonl(manifest)]
    else:
        paths = [(str(p), str(p)) for p in sorted((root / "recordings").glob("*.wav"))]
    if not paths:
        raise DataError("no FSDD recordings found", str(root),
                        "give the folder of the free-spoken-digit-dataset (with recordings/ or manifest.jsonl)")
    takes, bad = [], 0
    for path, where in paths:
        m = _NAME.match(Path(path).stem)
        if not m:
            bad += 1
            log.warning("%s: %s is not named <digit>_<speaker>_<take>.wav; skipped", where, Path(path).name)
            continue
        takes.append(Take(Path(path).stem, number_to_words(int(m.group(1))), m.group(2), int(m.group(3)), path))
    if bad:
        log.warning("skipped %d of %d FSDD files with unexpected names", bad, len(paths))
    return takes


def assign_split(take: Take, heldout_take: int, valid_take: Optional[int], unseen_speakers: Iterable[str]) -> str:
    if take.speaker in set(unseen_speakers):
        return "test_unseen"
    if take.take >= heldout_take:
        return "test"
    if valid_take is not None and take.take >= valid_take:
        return "valid"
    return "train"


def group_takes(pool: list[Take], rng: np.random.Generator, min_digits: int, max_digits: int,
                repeats: int = 1) -> list[list[Take]]:
    """Shuffle `repeats` copies of the pool and cut them into groups of min..max takes; every take is
    used at least `repeats` times (a short last group is filled with other takes of the pool)."""
    if not 1 <= min_digits <= max_digits:
        raise DataError(f"bad digit counts {min_digits}..{max_digits}", "--min_digits/--max_digits",
                        "need 1 <= min_digits <= max_digits")
    order = [pool[i] for i in rng.permutation(len(pool) * repeats) % len(pool)]
    groups, i = [], 0
    while i < len(order):
        n = int(rng.integers(min_digits, max_digits + 1))
        groups.append(order[i:i + n])
        i += n
    short = min_digits - len(groups[-1]) if groups else 0
    if short > 0:
        groups[-1] += [pool[j] for j in rng.choice(len(pool), size=short, replace=len(pool) < short)]
    return groups


def join_takes(takes: list[Take], rng: np.random.Generator, gap: tuple[float, float]) -> np.ndarray:
    """The takes at 16 kHz with silences of gap[0]..gap[1] seconds between and around them."""
    def silence():
        return np.zeros(int(rng.uniform(*gap) * SAMPLE_RATE), np.float32)

    parts = [silence()]
    for t in takes:
        parts += [load_audio(t.path), silence()]
    return np.concatenate(parts)


def make_connected_digits(fsdd: str | Path, out: str | Path, min_digits: int = 2, max_digits: int = 6,
                          gap: tuple[float, float] = (0.05, 0.25), heldout_take: int = 45,
                          valid_take: Optional[int] = 40, unseen_speakers: Iterable[str] = (),
                          repeats: int = 1, seed: int = 0, speakers: Iterable[str] = (),
                          progress: bool = True) -> Path:
    """Write out/wav/<speaker>/<utt_id>.wav and out/manifest.jsonl; returns the manifest's path.

    Each line: utt_id, audio, text ("three one four"), speaker, split, takes (the FSDD stems joined,
    in order), duration. `speakers` limits the corpus to some speakers (all when empty).
    """
    if min(gap) < 0 or gap[0] > gap[1]:
        raise DataError(f"bad gap {gap}", "--gap", "give one duration or MIN MAX in seconds, MIN <= MAX")
    unseen, keep = sorted(set(unseen_speakers)), set(speakers)
    writer = CorpusWriter(out, dict(generator="fsdd_connected_digits", fsdd=str(Path(fsdd).resolve()),
                                    min_digits=min_digits, max_digits=max_digits, gap=gap,
                                    heldout_take=heldout_take, valid_take=valid_take, unseen_speakers=unseen,
                                    repeats=repeats, seed=seed, speakers=sorted(keep)))
    if writer.up_to_date:
        return writer.manifest
    takes = [t for t in read_fsdd(fsdd) if not keep or t.speaker in keep]
    missing = set(unseen) - {t.speaker for t in takes}
    if missing:
        raise DataError(f"unseen speaker(s) {sorted(missing)} not in FSDD", "--unseen_speakers",
                        f"choose among {sorted({t.speaker for t in takes})}")
    pools: dict[tuple[str, str], list[Take]] = {}
    for t in sorted(takes, key=lambda t: t.take_id):
        pools.setdefault((t.speaker, assign_split(t, heldout_take, valid_take, unseen)), []).append(t)

    jobs = []
    for k, ((speaker, split), pool) in enumerate(sorted(pools.items())):
        rng = np.random.default_rng([seed, k])
        for n, group in enumerate(group_takes(pool, rng, min_digits, max_digits, repeats)):
            jobs.append((f"{speaker}_{split}_{n:04d}", speaker, split, group))
    records = []
    for utt_id, speaker, split, group in tqdm(jobs, desc="joining digits", unit="utt", disable=not progress):
        rng = np.random.default_rng([seed, 1, len(records)])
        rel = f"wav/{speaker}/{utt_id}.wav"
        duration = writer.wav(rel, lambda: join_takes(group, rng, gap))
        records.append({"utt_id": utt_id, "audio": rel, "text": " ".join(t.word for t in group),
                        "speaker": speaker, "split": split, "takes": [t.take_id for t in group],
                        "duration": round(duration, 4)})
    return writer.finish(records)
