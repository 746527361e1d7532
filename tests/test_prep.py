"""Stage 0: readers, filters, splits, and what bad input does (a clear message, nothing else lost)."""
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asrkit.bin.prepare_data import main as prepare_data
from asrkit.errors import DataError
from asrkit.fileio import load_jsonl
from conftest import write_manifest, write_tone


def run(raw, out, *extra):
    assert prepare_data(["--raw_data", str(raw), "--out_dir", str(out), *extra]) == 0
    return {s: load_jsonl(out / f"{s}.jsonl") for s in ("train", "valid", "test")}


def dropped(out):
    lines = (out / "dropped.tsv").read_text(encoding="utf-8").splitlines()[1:]
    return [tuple(line.split("\t")) for line in lines]


def test_split_is_speaker_disjoint_complete_and_deterministic(tiny_corpus, tmp_path):
    a = run(tiny_corpus, tmp_path / "a")
    speakers = [{r["speaker"] for r in rs} for rs in a.values()]
    assert all(speakers) and not (speakers[0] & speakers[1] or speakers[0] & speakers[2] or speakers[1] & speakers[2])
    assert sum(len(rs) for rs in a.values()) == 24
    assert a == run(tiny_corpus, tmp_path / "b")                     # same seed, same split
    other = run(tiny_corpus, tmp_path / "c", "--seed", "5")
    assert {r["utt_id"] for r in other["test"]} != {r["utt_id"] for r in a["test"]}


def test_records_follow_the_design_format(tiny_corpus, tmp_path):
    rec = run(tiny_corpus, tmp_path / "d")["train"][0]
    assert list(rec)[:6] == ["utt_id", "audio", "duration", "speaker", "text", "text_raw"]
    assert Path(rec["audio"]).is_absolute() and Path(rec["audio"]).is_file()
    assert rec["text"] == rec["text_raw"].lower().rstrip(".")       # basic normalizer
    assert rec["duration"] == pytest.approx(sf.info(rec["audio"]).duration, abs=1e-3)
    assert "age" in rec                                               # metadata kept as is
    report = json.loads((tmp_path / "d" / "prep_report.json").read_text())
    assert sum(s["utterances"] for s in report["splits"].values()) == 24


def test_bad_utterances_are_dropped_with_reasons_and_the_rest_survive(tiny_corpus, tmp_path):
    root = tiny_corpus.parent
    good = load_jsonl(tiny_corpus)
    (root / "corrupt.wav").write_bytes(b"RIFF not really a wav file")
    sf.write(root / "silent.wav", np.zeros(16000, dtype=np.float32), 16000)
    write_tone(root / "long.wav", seconds=3.0)
    bad = [
        {"utt_id": "missing", "audio": "nope/missing.wav", "text": "one"},
        {"utt_id": "corrupt", "audio": "corrupt.wav", "text": "one"},
        {"utt_id": "silent", "audio": "silent.wav", "text": "one"},
        {"utt_id": "empty", "audio": good[0]["audio"], "text": " ?! "},
        {"utt_id": "toolong", "audio": "long.wav", "text": "one"},
        {"utt_id": good[0]["utt_id"], "audio": good[1]["audio"], "text": "dup"},
        {"utt_id": "notext", "audio": good[0]["audio"]},
    ]
    raw = write_manifest(root / "bad.jsonl", good + bad)
    with open(raw, "ab") as f:
        f.write(b'{"utt_id": "latin1", "audio": "x.wav", "text": "caf\xe9"}\n')
    out = tmp_path / "out"
    splits = run(raw, out, "--max_duration", "2.5")
    assert sum(len(rs) for rs in splits.values()) == len(good)         # every good one survives
    reasons = {utt or where: reason for utt, where, reason in dropped(out)}
    assert reasons["missing"].startswith("cannot read audio") and "missing.wav" in reasons["missing"]
    assert reasons["corrupt"].startswith("cannot read audio")
    assert reasons["silent"].startswith("silent audio")
    assert reasons["empty"] == "empty text after normalization"
    assert reasons["toolong"].startswith("longer than max_duration")
    assert reasons[good[0]["utt_id"]] == f"duplicate utt_id (first at {raw}:1)"
    assert reasons["notext"] == "missing field: text"
    assert reasons[f"{raw}:{len(good) + len(bad) + 1}"].startswith("not valid UTF-8")


def test_odd_ids_are_listed_in_dropped_tsv_and_the_rest_kept(tiny_corpus, tmp_path):
    """Ids that cannot go into tab-separated lists (tab, newline, space, control characters) are dropped
    with their reason, the id escaped so that dropped.tsv stays a line per utterance; '.' and ids with
    '/' or '%' are kept (the store escapes them); a path with spaces gives an id without."""
    from asrkit.fileio import unescape_key

    good = load_jsonl(tiny_corpus)
    audio = good[0]["audio"]
    odd = ["tab\there", "new\nline", "a space", "bell\x07", "\u2028sep"]
    kept = [".", "a/b%c"]
    (tiny_corpus.parent / "my file.wav").write_bytes((tiny_corpus.parent / audio).read_bytes())
    raw = write_manifest(tiny_corpus.parent / "odd.jsonl", good + [
        {"utt_id": u, "audio": audio, "text": "one", "speaker": "spk9"} for u in odd + kept] + [
        {"audio": "my file.wav", "text": "two", "speaker": "spk9"}])
    out = tmp_path / "out"
    splits = run(raw, out, "--split_ratios", "1,0,0")
    ids = {r["utt_id"] for r in splits["train"]}
    assert set(kept) | {"my_file"} <= ids and len(ids) == len(good) + 3
    rows = dropped(out)
    assert all(len(row) == 3 for row in rows) and len(rows) == len(odd)
    assert sorted(unescape_key(u) for u, _, _ in rows) == sorted(odd)
    assert all("whitespace or a control character" in reason for _, _, reason in rows)


def test_manifest_without_a_needed_column_says_which(tmp_path, tiny_corpus):
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("path,transcript\na.wav,hello\n")
    with pytest.raises(DataError, match=r"m\.csv:1: manifest has no 'audio' column.*found: \['path', 'transcript'\]"):
        prepare_data(["--raw_data", str(csv_path), "--out_dir", str(tmp_path / "o")])
    no_text = write_manifest(tmp_path / "n.jsonl", [{"audio": "a.wav", "words": "x"}])
    with pytest.raises(DataError, match="n.jsonl: manifest has no 'text' field"):
        prepare_data(["--raw_data", str(no_text), "--out_dir", str(tmp_path / "o")])


def test_unknown_normalizer_is_refused_by_the_command_line(tiny_corpus, tmp_path, capsys):
    with pytest.raises(SystemExit):
        prepare_data(["--raw_data", str(tiny_corpus), "--normalizer", "kids"])
    assert "invalid choice: 'kids'" in capsys.readouterr().err


def test_csv_and_tsv_manifests(tiny_corpus, tmp_path):
    recs = load_jsonl(tiny_corpus)
    for sep, ext in ((",", "csv"), ("\t", "tsv")):
        lines = [sep.join(["audio", "text", "speaker", "grade"])]
        lines += [sep.join([r["audio"], r["text"], r["speaker"], "K"]) for r in recs]
        lines.insert(3, sep.join(["only", "two"]))                     # a short row is dropped
        path = tiny_corpus.parent / f"m.{ext}"
        path.write_text("\n".join(lines) + "\n")
        out = tmp_path / ext
        splits = run(path, out)
        rows = [r for rs in splits.values() for r in rs]
        assert len(rows) == len(recs) and all(r["grade"] == "K" for r in rows)
        assert dropped(out) == [("", f"{path}:4", "expected 4 columns, found 2")]


def test_kaldi_dir_with_segments_and_metadata(tmp_path):
    d = tmp_path / "kaldi"
    d.mkdir()
    wav_lines, seg, text, u2s = [], [], [], []
    for s in range(3):
        rec = f"rec{s}"
        write_tone(tmp_path / "audio" / f"{rec}.wav", seconds=3.0, sr=8000, freq=200 + 50 * s)
        wav_lines.append(f"{rec} {tmp_path / 'audio' / f'{rec}.wav'}")
        for k in range(2):
            utt = f"spk{s}-{rec}-{k}"
            seg.append(f"{utt} {rec} {k * 1.5:.2f} {k * 1.5 + 1.2:.2f}")
            text.append(f"{utt} HELLO THERE {k}")
            u2s.append(f"{utt} spk{s}")
    seg.append("ghost rec9 0 1")
    (d / "wav.scp").write_text("\n".join(wav_lines) + "\n")
    (d / "segments").write_text("\n".join(seg) + "\n")
    (d / "text").write_text("\n".join(text) + "\n")
    (d / "utt2spk").write_text("\n".join(u2s) + "\n")
    (d / "spk2age").write_text("spk0 6\nspk1 8\nspk2 10\n")
    out = tmp_path / "data"
    splits = run(d, out, "--normalizer", "child")
    rows = {r["utt_id"]: r for rs in splits.values() for r in rs}
    assert len(rows) == 6
    r = rows["spk1-rec1-1"]
    assert (r["start"], r["end"], r["duration"]) == (1.5, 2.7, pytest.approx(1.2))
    assert r["age"] == "8" and r["text"] == "hello there one"
    assert dropped(out) == [("ghost", f"{d / 'segments'}:7", "recording 'rec9' is not in wav.scp")]
