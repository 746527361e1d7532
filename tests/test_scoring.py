"""Scoring against edit distances computed by hand."""
from __future__ import annotations

import json

import pytest

from asrkit.bin import score
from asrkit.fileio import write_jsonl
from asrkit.normalize import get_normalizer
from asrkit.scoring import bootstrap_ci, breakdowns, score_set, total

REFS = [
    {"utt_id": "u1", "text": "The cat sat.", "speaker": "A", "duration": 1.0, "age": 7},
    {"utt_id": "u2", "text": "a b c d", "speaker": "A", "duration": 3.0, "age": 8},
    {"utt_id": "u3", "text": "hello", "speaker": "B", "duration": 12.0},
    {"utt_id": "u4", "text": "yes", "speaker": "B", "duration": 30.0},
]
HYPS = [{"utt_id": "u1", "text": "the BAT sat"}, {"utt_id": "u2", "text": "a c d e"},
        {"utt_id": "u4", "text": "YES."}]  # u3 has no hypothesis: scored as empty


def scored():
    refs = {r["utt_id"]: r for r in REFS}
    return score_set(refs, {h["utt_id"]: h["text"] for h in HYPS}, get_normalizer("basic"))


def test_counts_match_hand_computed_edit_distances():
    scores, missing = scored()
    assert missing == ["u3"]
    by = {s.utt_id: s for s in scores}
    # u1: one substitution; u2: b deleted, e inserted; u3: one deletion; u4: correct after normalization
    assert [(by[u].word.cor, by[u].word.sub, by[u].word.dele, by[u].word.ins) for u in ("u1", "u2", "u3", "u4")] == \
        [(2, 1, 0, 0), (3, 0, 1, 1), (0, 0, 1, 0), (1, 0, 0, 0)]
    w = total(scores, "word")
    assert (w.snt, w.wrd, w.err, w.snt_err) == (4, 9, 4, 3)
    assert w.row("test") == "|test|4|9|66.7|11.1|22.2|11.1|44.4|75.0|"
    # characters (spaces count, as jiwer does): 1 + 3 (b c d -> c d e, three substitutions) + 5 + 0 of 26
    c = total(scores, "char")
    assert (c.wrd, c.err) == (26, 9) and c.rate == pytest.approx(100 * 9 / 26)
    assert [op for _, _, op in by["u2"].alignment] == ["C", "D", "C", "C", "I"]


def test_breakdowns_and_speaker_bootstrap():
    scores, _ = scored()
    bd = breakdowns(scores)
    assert {k: (c.wrd, c.err) for k, (c, _) in bd["speaker"].items()} == {"A": (7, 3), "B": (2, 1)}
    assert list(bd["age"]) == ["7", "8"]  # only utterances that have an age
    assert list(bd["duration"]) == ["0-2s", "2-5s", "10-20s", ">=20s"]
    lo, hi = bootstrap_ci(scores, "word")
    # two speakers: resamples give AA 3/7, AB 4/9 or BB 1/2
    assert 100 * 3 / 7 - 1e-9 <= lo <= 100 * 4 / 9 <= hi <= 50.0 + 1e-9
    assert bootstrap_ci(scores[:2], "word") is None  # one speaker: no interval


def test_score_cli_and_gather(tmp_path, capsys):
    data, exp = tmp_path / "test.jsonl", tmp_path / "exp" / "tag"
    write_jsonl(data, REFS)
    for name in ("decode_test_a", "decode_valid_a"):
        out = exp / name
        write_jsonl(out / "hyp.jsonl", HYPS)
        (out / "decode_info.json").write_text(json.dumps({"mode": "joint", "beam": 10, "ctc_weight": 0.3,
                                                          "checkpoint": "model.avg.safetensors", "rtf": 0.0123}))
        score.main([f"--data={data}", f"--hyp={out / 'hyp.jsonl'}", "--normalizer=basic"])
    text = (exp / "decode_test_a" / "result.txt").read_text()
    assert "|decode_test_a|4|9|66.7|11.1|22.2|11.1|44.4|75.0|" in text
    assert "REF:  the CAT sat\nHYP:  the BAT sat\nEval:     S" in text
    assert json.loads((exp / "decode_test_a" / "scores.json").read_text())["wer"] == pytest.approx(400 / 9)
    score.main([f"--gather={exp}"])
    results = (exp / "RESULTS.md").read_text()
    assert results.count("|decode_test_a|4|9|") == 1 and results.count("|decode_valid_a|4|9|") == 1
    assert "Git hash" in results and "|0.0123|" in results and "### CER" in results


def test_score_under_two_normalizers_side_by_side(tmp_path, capsys):
    """The same hypotheses under child (numbers as words) and whisper (digits, American spelling,
    fillers dropped): two tables, two files, and RESULTS.md with a row for each."""
    refs = [{"utt_id": "u1", "text": "i have twenty one red balls", "speaker": "A"},
            {"utt_id": "u2", "text": "the colour is grey", "speaker": "A"}]
    hyps = [{"utt_id": "u1", "text": "um i have twenty one red balls"},   # child: 1 insertion; whisper: 0
            {"utt_id": "u2", "text": "the color is gray"}]                # child: 2 substitutions; whisper: 0
    data, out = tmp_path / "test.jsonl", tmp_path / "exp" / "decode_test_x"
    write_jsonl(data, refs)
    write_jsonl(out / "hyp.jsonl", hyps)
    score.main([f"--data={data}", f"--hyp={out / 'hyp.jsonl'}", "--normalizers=child,whisper"])
    printed = capsys.readouterr().out
    assert "# decode_test_x  (normalizer: child)" in printed and "# decode_test_x  (normalizer: whisper)" in printed
    child, whisper = (json.loads((out / f).read_text()) for f in ("scores.json", "scores_whisper.json"))
    assert (child["normalizer"], whisper["normalizer"]) == ("child", "whisper")
    assert child["word"]["wrd"] == 10 and child["wer"] == pytest.approx(100 * 3 / 10)
    assert whisper["word"]["wrd"] == 9 and whisper["wer"] == 0.0  # "twenty one" -> "21": one word
    assert "REF:  the COLOUR is GREY\nHYP:  the COLOR  is GRAY" in (out / "result.txt").read_text()
    assert "REF:  the color is gray" in (out / "result_whisper.txt").read_text()
    results = score.gather(tmp_path / "exp")
    assert "|decode_test_x|2|10|80.0|20.0|0.0|10.0|30.0|100.0|" in results
    assert "|decode_test_x [whisper]|2|9|100.0|0.0|0.0|0.0|0.0|0.0|" in results
    with pytest.raises(Exception, match="bad --normalizers"):
        score.main([f"--data={data}", f"--hyp={out / 'hyp.jsonl'}", "--normalizers=child,klingon"])
