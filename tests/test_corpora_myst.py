"""MyST data prep on a fake tree with the LDC2021S05 layout: skipping, dropping, filters, the test
list, and the manifest going through stage 0 with the `child` normalizer."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from asrkit.bin import prepare_data
from asrkit_corpora.bin import prepare_myst
from asrkit_corpora.myst import find_data_dir, scan_myst
from asrkit.errors import DataError
from asrkit.fileio import load_jsonl
from corpora_fixtures import FAKE_MYST, make_fake_myst, myst_utt_id


@pytest.fixture
def fake_myst(tmp_path):
    return make_fake_myst(tmp_path / "LDC2021S05")


def expected(outcome):
    return {myst_utt_id(s, n) for _, s, n, _, _, o in FAKE_MYST if o == outcome}


def test_scan_skips_drops_and_filters(fake_myst):
    records, dropped, counts = scan_myst(fake_myst, progress=False)
    kept = {r["utt_id"]: r for r in records}
    assert set(kept) == expected("kept")
    assert counts["audio files"] == len(FAKE_MYST)
    assert counts["no transcript (skipped)"] == len(expected("no transcript")) == 3
    reasons = {u: reason for u, _, reason in dropped}
    for outcome in ("marked <no_signal>", "marked <discard>", "fewer than 3 words", "longer than 30s",
                    "no words in transcript", "unreadable"):
        got = {u for u, r in reasons.items() if r.startswith(outcome)}
        assert got == expected(outcome), outcome
    assert "not valid UTF-8" in reasons[myst_utt_id("000101", 7)]
    assert Counter(r["split"] for r in records) == {"train": 2, "valid": 1, "test": 3}
    r = kept[myst_utt_id("000101", 1)]
    assert r["text"] == "um the *magnet* (( )) sticks to +um+ the <laugh> metal"  # raw: stage 0 cleans it
    assert r["speaker"] == "000101" and r["session"] == myst_utt_id("000101", 1).rsplit("_", 1)[0]
    assert r["duration"] == pytest.approx(1.5) and r["audio"].endswith(".flac")
    # the whole test set is kept; its filtered subset leaves out the short and the long one
    flags = {u: r["test_filtered"] for u, r in kept.items() if r["split"] == "test"}
    assert flags == {myst_utt_id("000301", 1): True, myst_utt_id("000301", 2): False,
                     myst_utt_id("000301", 3): False}
    assert counts["test_filtered (filters)"] == 1


def test_test_list_and_layout_variants(fake_myst, tmp_path, caplog):
    ids = tmp_path / "test.list"
    ids.write_text(f"{myst_utt_id('000301', 2)}\n{myst_utt_id('000301', 3)} some text\nmyst_999_missing\n")
    records, _, counts = scan_myst(fake_myst / "myst_child_conv_speech" / "data", min_words=1,
                                   test_ids=prepare_myst.read_id_list(ids), progress=False)
    flagged = {r["utt_id"] for r in records if r.get("test_filtered")}
    assert flagged == {myst_utt_id("000301", 2), myst_utt_id("000301", 3)}
    assert "1 of the 3 ids of the test list are not among" in caplog.text
    # min_words=1 keeps the 2-word train utterance now
    assert myst_utt_id("000101", 4) in {r["utt_id"] for r in records}
    assert find_data_dir(fake_myst / "myst_child_conv_speech") == fake_myst / "myst_child_conv_speech" / "data"
    with pytest.raises(DataError, match="not a MyST corpus folder"):
        find_data_dir(tmp_path)


def test_prepare_myst_command_and_stage0(fake_myst, tmp_path, capsys):
    out = tmp_path / "local"
    assert prepare_myst.main(["--myst_root", str(fake_myst), "--out", str(out)]) == 0
    records = load_jsonl(out / "manifest.jsonl")
    assert {r["utt_id"] for r in records} == expected("kept")
    assert (out / "test_filtered.ids").read_text().split() == [myst_utt_id("000301", 1)]
    rows = [line.split("\t") for line in (out / "dropped.tsv").read_text().splitlines()]
    assert rows[0] == ["utt_id", "where", "reason"]
    assert {r[0] for r in rows[1:]} == {myst_utt_id(s, n) for _, s, n, _, trn, o in FAKE_MYST
                                        if o != "kept" and trn is not None}
    assert json.loads((out / "myst_report.json").read_text())["kept: test"] == 3
    assert "no transcript (skipped)" in capsys.readouterr().out

    # stage 0 takes the corpus's own split and cleans the markup with the child normalizer
    data = tmp_path / "data"
    assert prepare_data.main(["--raw_data", str(out / "manifest.jsonl"), "--out_dir", str(data),
                              "--split_field", "split", "--normalizer", "child", "--max_duration", "3600",
                              "--nj", "1"]) == 0
    train = {r["utt_id"]: r for r in load_jsonl(data / "train.jsonl")}
    assert train[myst_utt_id("000101", 1)]["text"] == "um the magnet sticks to the metal"
    assert train[myst_utt_id("000102", 1)]["text"] == "they're attracted to it three times"
    assert len(load_jsonl(data / "valid.jsonl")) == 1 and len(load_jsonl(data / "test.jsonl")) == 3


def test_empty_tree_is_an_error(tmp_path):
    for part in ("train", "development", "test"):
        (tmp_path / "data" / part).mkdir(parents=True)
    with pytest.raises(DataError, match="no usable utterance"):
        prepare_myst.main(["--myst_root", str(tmp_path), "--out", str(tmp_path / "out")])
