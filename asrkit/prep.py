"""Stage 0: read a raw corpus (manifest or Kaldi data dir), normalize, filter, split by speaker.

Every utterance that does not make it into a split is kept in a list with the reason, so a run over
a large corpus never dies on one bad file and never loses an utterance silently.
"""
from __future__ import annotations

import csv
import logging
import random
import unicodedata
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from tqdm import tqdm

from asrkit.audio import audio_info, load_audio
from asrkit.errors import DataError
from asrkit.fileio import (atomic_open, escape_key, one_line, read_jsonl, read_lines, resolve_audio_path, write_json,
                           write_jsonl)

log = logging.getLogger("asrkit.prepare_data")
SPLITS = ("train", "valid", "test")
SPLIT_ALIASES = {"dev": "valid", "development": "valid", "validation": "valid", "eval": "test"}
REQUIRED = ("audio", "text")
# Kaldi files that are not per-utterance metadata
_KALDI_SKIP = {"utt2spk", "spk2utt", "utt2dur", "utt2num_frames", "wav.scp", "text", "segments"}


@dataclass
class Dropped:
    """Utterances left out, with where they came from and why."""

    rows: list[tuple[str, str, str]] = field(default_factory=list)  # (utt_id, where, reason)

    def add(self, utt_id: str, where: str, reason: str) -> None:
        self.rows.append((utt_id, where, reason))

    def add_error(self, err: DataError) -> None:
        self.add("", err.where, err.what)

    def counts(self) -> Counter:
        # "cannot read audio: <details>" and similar count under their first words
        return Counter(reason.split(":")[0] for _, _, reason in self.rows)


# ---------------------------------------------------------------- reading raw corpora

def read_corpus(raw: str | Path, dropped: Dropped) -> list[dict[str, Any]]:
    """Records {utt_id, audio, text_raw, speaker, [start, end], metadata..., _where} of a raw corpus."""
    raw = Path(raw)
    if raw.is_dir():
        return read_kaldi_dir(raw, dropped)
    if not raw.is_file():
        raise DataError("raw data not found", str(raw),
                        "give --raw_data a manifest (.jsonl/.csv/.tsv) or a Kaldi data dir")
    suffix = raw.suffix.lower()
    if suffix in (".jsonl", ".json"):
        rows = [(f"{raw}:{n}", r) for n, r in read_jsonl(raw, on_error=dropped.add_error)]
    elif suffix in (".csv", ".tsv", ".txt"):
        rows = read_table(raw, "," if suffix == ".csv" else "\t", dropped)
    else:
        raise DataError(f"unknown manifest type {suffix!r}", str(raw), "use .jsonl, .csv or .tsv, or a Kaldi dir")
    for column in REQUIRED:
        if rows and not any(column in r for _, r in rows):
            raise DataError(f"manifest has no {column!r} field", str(raw),
                            f"every line needs 'audio' and 'text'; found: {sorted(rows[0][1])}")
    records = []
    for where, r in rows:
        missing = [c for c in REQUIRED if r.get(c) in (None, "")]
        if missing:
            dropped.add(str(r.get("utt_id", "")), where, f"missing field: {', '.join(missing)}")
            continue
        record = {k: v for k, v in r.items() if v not in (None, "")}
        record["audio"] = resolve_audio_path(str(record["audio"]), raw)
        record["utt_id"] = str(record.get("utt_id") or default_utt_id(record["audio"], raw))
        record["text_raw"] = str(record.pop("text"))
        for key in ("start", "end"):
            if key in record:
                try:
                    record[key] = float(record[key])
                except (TypeError, ValueError):
                    dropped.add(record["utt_id"], where, f"bad {key}: {record[key]!r} is not a number of seconds")
                    break
        else:
            record["_where"] = where
            records.append(record)
    return records


def default_utt_id(audio: str, manifest: Path) -> str:
    """An id for a manifest line without utt_id: the audio path below the manifest's folder
    (wav/spk1/a.wav -> wav-spk1-a), so that files of the same name in other folders stay apart."""
    path = Path(audio).with_suffix("")
    try:
        name = "-".join(path.relative_to(manifest.resolve().parent).parts)
    except ValueError:
        name = path.name
    return "_".join(name.split())  # (an id holds no whitespace: "my file.wav" -> my_file)


def id_problem(utt_id: str) -> str:
    """Why `utt_id` cannot be an utterance id ('' if it can): ids are written in tab-separated lists
    (the store's done lists, skipped.txt, Kaldi-style files), so no whitespace or control character."""
    if not utt_id:
        return "empty utt_id"
    if any(c.isspace() or unicodedata.category(c)[0] == "C" for c in utt_id):
        return (f"utt_id {utt_id!r} holds whitespace or a control character (ids go into tab-separated "
                "lists): rename it")
    return ""


def read_table(path: Path, delimiter: str, dropped: Dropped) -> list[tuple[str, dict[str, str]]]:
    """(where, row) of a CSV/TSV manifest with a header line."""
    lines = list(read_lines(path, on_error=dropped.add_error))
    if not lines:
        return []
    header_no, header = lines[0]
    columns = [c.strip() for c in next(csv.reader([header], delimiter=delimiter))]
    for column in REQUIRED:
        if column not in columns:
            raise DataError(f"manifest has no {column!r} column", f"{path}:{header_no}",
                            f"the first line must name the columns, with 'audio' and 'text'; found: {columns}")
    rows = []
    for lineno, values in zip((n for n, _ in lines[1:]), csv.reader([l for _, l in lines[1:]], delimiter=delimiter)):
        if not any(v.strip() for v in values):
            continue
        if len(values) != len(columns):
            dropped.add("", f"{path}:{lineno}", f"expected {len(columns)} columns, found {len(values)}")
            continue
        rows.append((f"{path}:{lineno}", {c: v.strip() for c, v in zip(columns, values)}))
    return rows


def _kaldi_table(path: Path, dropped: Dropped) -> dict[str, tuple[str, str]]:
    """key -> (rest of line, where) of a Kaldi 'key value...' file."""
    table = {}
    for lineno, line in read_lines(path, on_error=dropped.add_error):
        key, _, value = line.strip().partition(" ")
        if key:
            table[key] = (value.strip(), f"{path}:{lineno}")
    return table


def read_kaldi_dir(d: Path, dropped: Dropped) -> list[dict[str, Any]]:
    """Records of a Kaldi data dir: wav.scp, text, utt2spk, optional segments and utt2*/spk2* metadata."""
    for name in ("wav.scp", "text"):
        if not (d / name).is_file():
            raise DataError(f"Kaldi data dir has no {name}", str(d), "a Kaldi dir needs wav.scp, text and utt2spk")
    wavs = _kaldi_table(d / "wav.scp", dropped)
    texts = _kaldi_table(d / "text", dropped)
    utt2spk = _kaldi_table(d / "utt2spk", dropped) if (d / "utt2spk").is_file() else {}
    segments = _kaldi_table(d / "segments", dropped) if (d / "segments").is_file() else None
    meta = {}
    for f in sorted(d.iterdir()):
        if f.name.startswith(("utt2", "spk2")) and f.name not in _KALDI_SKIP and f.is_file():
            meta[f.name] = _kaldi_table(f, dropped)

    records = []
    utts = segments if segments is not None else wavs
    for utt, (value, where) in utts.items():
        if segments is not None:
            parts = value.split()
            if len(parts) != 3:
                dropped.add(utt, where, "a segments line must be: utt_id recording_id start end")
                continue
            rec_id, start, end = parts
            if rec_id not in wavs:
                dropped.add(utt, where, f"recording {rec_id!r} is not in wav.scp")
                continue
            audio = wavs[rec_id][0]
            seg = {"start": float(start), "end": float(end)}
        else:
            audio, seg = value, {}
        if audio.endswith("|"):
            dropped.add(utt, where, "pipe commands in wav.scp are not supported: convert them to audio files")
            continue
        if utt not in texts:
            dropped.add(utt, where, "no transcript in text")
            continue
        speaker = utt2spk.get(utt, (utt, ""))[0]
        record = {"utt_id": utt, "audio": resolve_audio_path(audio, d / "wav.scp"),
                  "text_raw": texts[utt][0], "speaker": speaker, **seg, "_where": where}
        for name, table in meta.items():
            key = utt if name.startswith("utt2") else speaker
            if key in table:
                record[name[4:]] = table[key][0]
        records.append(record)
    return records


# ---------------------------------------------------------------- audio checks

def check_audio(record: dict[str, Any], check_silence: bool) -> tuple[float, str]:
    """(duration in seconds, '' or the reason the audio is unusable)."""
    try:
        sr, frames, _ = audio_info(record["audio"])
        start, end = record.get("start", 0.0), record.get("end")
        length = frames / sr
        if end is not None and end > length + 0.01:
            return 0.0, f"segment end {end:.2f}s is past the end of the audio ({length:.2f}s)"
        duration = (length if end is None else end) - start
        if duration <= 0:
            return 0.0, "empty audio (no samples)"
        if check_silence:
            wav = load_audio(record["audio"], record.get("start"), end, sample_rate=sr)
            if wav.size == 0 or float(np.max(np.abs(wav))) < 1e-4:
                return duration, "silent audio (all samples below 1e-4)"
        return round(duration, 4), ""
    except DataError as e:
        return 0.0, f"cannot read audio: {e.what}"


# ---------------------------------------------------------------- splitting

def split_by_ratio(records: list[dict[str, Any]], ratios: dict[str, float], seed: int) -> dict[str, list]:
    """Speaker-disjoint split whose per-split audio hours follow `ratios`, the same for the same seed."""
    hours: dict[str, float] = defaultdict(float)
    for r in records:
        hours[r["speaker"]] += r["duration"]
    speakers = sorted(hours)
    random.Random(seed).shuffle(speakers)
    wanted = [s for s, v in ratios.items() if v > 0]
    total = sum(hours.values()) or 1.0
    got: dict[str, float] = {s: 0.0 for s in wanted}
    assign = {}
    # One speaker first to each split, smallest split first, so that no requested split is empty...
    for name, spk in zip(sorted(wanted, key=lambda s: ratios[s]), speakers):
        assign[spk] = name
        got[name] += hours[spk]
    # ...then each next speaker to the split furthest below its share.
    norm = sum(ratios[s] for s in wanted)
    for spk in speakers[len(assign):]:
        name = max(wanted, key=lambda s: ratios[s] / norm - got[s] / total)
        assign[spk] = name
        got[name] += hours[spk]
    out: dict[str, list] = {name: [] for name in ratios}
    for r in records:
        out[assign[r["speaker"]]].append(r)
    return out


def split_by_field(records: list[dict[str, Any]], field_name: str, dropped: Dropped) -> dict[str, list]:
    """Split as the corpus says, in a per-utterance field (e.g. MyST's train/development/test)."""
    out: dict[str, list] = defaultdict(list)
    for r in records:
        value = str(r.get(field_name, "")).strip()
        if not value:
            dropped.add(r["utt_id"], r["_where"], f"no {field_name!r} field to choose its split")
            continue
        out[SPLIT_ALIASES.get(value, value)].append(r)
    return dict(out)


def split_by_lists(records: list[dict[str, Any]], lists: dict[str, Path]) -> dict[str, list]:
    """Split by files of utterance ids or speaker ids (one a line); the rest goes to train."""
    owner = {}
    for name, path in lists.items():
        for _, line in read_lines(path):
            if line.strip():
                owner[line.strip()] = name
    out: dict[str, list] = {name: [] for name in ("train", *lists)}
    for r in records:
        out[owner.get(r["utt_id"], owner.get(r["speaker"], "train"))].append(r)
    return out


# ---------------------------------------------------------------- the whole stage

def prepare(records: list[dict[str, Any]], normalize: Callable[[str], str], dropped: Dropped, *,
            min_duration: float = 0.0, max_duration: float = float("inf"), min_words: int = 1,
            check_silence: bool = True, nj: int = 4, progress: bool = True) -> list[dict[str, Any]]:
    """Normalize and filter records; every one left out goes to `dropped` with its reason."""
    seen: dict[str, str] = {}
    kept = []
    for r in records:
        if problem := id_problem(r["utt_id"]):
            dropped.add(r["utt_id"], r["_where"], problem)
            continue
        if r["utt_id"] in seen:
            dropped.add(r["utt_id"], r["_where"], f"duplicate utt_id (first at {seen[r['utt_id']]})")
            continue
        seen[r["utt_id"]] = r["_where"]
        r["text"] = normalize(r["text_raw"])
        if not r["text"]:
            dropped.add(r["utt_id"], r["_where"], "empty text after normalization")
        elif len(r["text"].split()) < min_words:
            dropped.add(r["utt_id"], r["_where"], f"fewer than {min_words} words")
        else:
            r.setdefault("speaker", r["utt_id"])
            r["speaker"] = str(r["speaker"])
            kept.append(r)

    with ThreadPoolExecutor(max(1, nj)) as pool:
        checks = pool.map(lambda r: check_audio(r, check_silence), kept)
        checks = list(tqdm(checks, total=len(kept), desc="checking audio", unit="utt", disable=not progress))
    out = []
    for r, (duration, problem) in zip(kept, checks):
        r["duration"] = duration
        if problem:
            dropped.add(r["utt_id"], r["_where"], problem)
        elif duration < min_duration:
            dropped.add(r["utt_id"], r["_where"], f"shorter than min_duration {min_duration}s")
        elif duration > max_duration:
            dropped.add(r["utt_id"], r["_where"], f"longer than max_duration {max_duration}s")
        else:
            out.append(r)
    return out


def output_record(r: dict[str, Any]) -> dict[str, Any]:
    """The split-list line of docs/INTERNALS.md (file formats): fixed keys first, corpus metadata after."""
    head = {k: r[k] for k in ("utt_id", "audio", "duration", "speaker", "text", "text_raw")}
    seg = {k: r[k] for k in ("start", "end") if k in r}
    rest = {k: v for k, v in r.items() if k not in head and k not in seg and not k.startswith("_")}
    return {**head, **seg, **rest}


def summarize(splits: dict[str, list], dropped: Dropped) -> dict[str, Any]:
    """The stage-0 report: per split utterances, hours, speakers; dropped counts by reason."""
    return {
        "splits": {name: {"utterances": len(rs), "hours": round(sum(r["duration"] for r in rs) / 3600, 4),
                          "speakers": len({r["speaker"] for r in rs})} for name, rs in splits.items()},
        "dropped": dict(dropped.counts().most_common()),
        "dropped_total": len(dropped.rows),
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as a console table."""
    lines = [f"{'split':<12}{'utts':>8}{'hours':>10}{'speakers':>10}"]
    for name, s in report["splits"].items():
        lines.append(f"{name:<12}{s['utterances']:>8}{s['hours']:>10.3f}{s['speakers']:>10}")
    lines.append(f"dropped: {report['dropped_total']}")
    lines += [f"  {n:>6}  {reason}" for reason, n in report["dropped"].items()]
    return "\n".join(lines)


def iter_speaker_overlaps(splits: dict[str, list]) -> Iterable[tuple[str, str, set]]:
    """(split a, split b, shared speakers) for each pair of splits that share a speaker."""
    spk = {name: {r["speaker"] for r in rs} for name, rs in splits.items()}
    names = sorted(spk)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if spk[a] & spk[b]:
                yield a, b, spk[a] & spk[b]


def prepare_corpus(raw_data, out_dir, normalize: Callable[[str], str], splitter: tuple[str, Any], seed: int = 0,
                   **filters) -> dict[str, Any]:
    """Stage 0 as a whole: read `raw_data`, normalize and filter (`filters`: prepare's options), split
    (`splitter`: ("ratios", {split: share}), ("field", name) or ("lists", {split: path})), and write
    <out_dir>/{train,valid,test}.jsonl, dropped.tsv and prep_report.json; prints and returns the report."""
    out_dir = Path(out_dir)
    dropped = Dropped()
    records = read_corpus(raw_data, dropped)
    log.info("read %d utterances from %s", len(records), raw_data)
    records = prepare(records, normalize, dropped, **filters)
    if not records:
        _write_dropped(out_dir, dropped)
        raise DataError("no usable utterance left", str(raw_data),
                        f"every one was dropped: see the reasons in {out_dir / 'dropped.tsv'}")
    kind, how = splitter
    if kind == "field":
        splits = split_by_field(records, how, dropped)
    elif kind == "lists":
        splits = split_by_lists(records, how)
    else:
        splits = split_by_ratio(records, how, seed)
    for a, b, shared in iter_speaker_overlaps(splits):
        log.warning("splits %s and %s share %d speaker(s), e.g. %s", a, b, len(shared), sorted(shared)[:3])
    for name, rs in splits.items():
        if not rs:
            log.warning("split %s is empty (too few speakers for the ratios?)", name)
        write_jsonl(out_dir / f"{name}.jsonl", (output_record(r) for r in rs))
    _write_dropped(out_dir, dropped)
    report = summarize(splits, dropped)
    write_json(out_dir / "prep_report.json", report)
    print(format_report(report))
    if dropped.rows:
        print(f"(each dropped utterance and its reason: {out_dir / 'dropped.tsv'})")
    return report


def _write_dropped(out_dir: Path, dropped: Dropped) -> None:
    with atomic_open(out_dir / "dropped.tsv") as f:
        f.write("utt_id\twhere\treason\n")
        for utt_id, where, reason in dropped.rows:
            f.write(f"{escape_key(utt_id)}\t{one_line(where)}\t{one_line(reason)}\n")
