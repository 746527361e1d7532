"""MyST's filtered test: the rule (WER above max_wer or fewer than min_words reference words, after
the whisper normalizer), zero-shot decoding with a tiny random Whisper that resumes, and egs/myst's
stage 0 flagging what the filter kept."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from asrkit_corpora.bin import prepare_myst
from asrkit.fileio import load_jsonl
from asrkit_corpora.whisper_filter import apply_rule, read_hyps, whisper_filter
from corpora_fixtures import make_fake_myst, myst_utt_id
from conftest import REPO


def test_the_rule():
    records = [{"utt_id": u, "text": t} for u, t in [
        ("good", "the magnet sticks to the metal"), ("half", "one two three four"), ("bad", "it goes around the sun"),
        ("short", "yes it is"), ("shorter", "(( )) yes +um+ it"), ("broken", "a b c d")]]
    hyps = {"good": ("The magnet sticks to the metal.", ""),
            "half": ("one two", ""),             # whisper: "1234" vs "12": 1 substitution of 1 word -> 100%
            "bad": ("it goes a round the son", ""),  # 2 substitutions + 1 insertion of 5 words: 60%
            "short": ("yes it is", ""), "shorter": ("yes it", ""), "broken": ("", "x.flac: cannot read")}
    rows = {r["utt_id"]: r for r in apply_rule(records, hyps, max_wer=50, min_words=3)}
    assert rows["good"]["kept"] and rows["good"]["wer"] == 0.0 and rows["good"]["ref_words"] == 6
    assert rows["half"]["ref_words"] == 1 and not rows["half"]["kept"]  # digits: one number under whisper
    assert rows["half"]["reason"] == "fewer than 3 reference words"
    assert rows["bad"]["wer"] == 60.0 and rows["bad"]["reason"] == "Whisper WER above 50%"
    assert rows["short"]["kept"] and not rows["shorter"]["kept"]  # markup does not count as words
    assert rows["broken"]["reason"] == "not decoded: x.flac: cannot read" and rows["broken"]["wer"] is None
    assert apply_rule(records[2:3], hyps, max_wer=60)[0]["kept"]  # at the threshold: kept


def test_zero_shot_decoding_resumes_and_writes_the_list(tmp_path, tiny_whisper):
    make_fake_myst(tmp_path / "myst")
    prepare_myst.main(["--myst_root", str(tmp_path / "myst"), "--out", str(tmp_path / "local")])
    manifest, out = tmp_path / "local" / "manifest.jsonl", tmp_path / "wf"
    test = [r for r in load_jsonl(manifest) if r["split"] == "test"]
    out.mkdir()
    # a hyp.tsv holding one utterance and a line cut short (kept from an earlier run, or written by hand)
    first = myst_utt_id("000301", 1)
    (out / "hyp.tsv").write_text(f"{first}\tit goes around the sun\t\n{myst_utt_id('000301', 2)}\tye")
    kept = whisper_filter(manifest, str(tiny_whisper), out, max_wer=1000, progress=False)
    hyps = read_hyps(out / "hyp.tsv")
    assert sorted(hyps) == sorted(r["utt_id"] for r in test) and hyps[first] == ("it goes around the sun", "")
    rows = [dict(zip(["utt_id", "ref_words", "wer", "kept", "reason", "hyp"], line.split("\t")))
            for line in (out / "filter.tsv").read_text().splitlines()[1:]]
    assert rows == [{k: (str(v) if k != "wer" else f"{v:.1f}") if k != "kept" else str(int(v)) for k, v in r.items()}
                    for r in apply_rule(test, hyps, max_wer=1000)]
    assert kept == [r["utt_id"] for r in rows if r["kept"] == "1"] == [first, myst_utt_id("000301", 3)]
    assert (out / "test_filtered.ids").read_text().split() == kept
    info = json.loads((out / "filter.json").read_text())
    assert (info["max_wer"], info["min_words"], info["normalizer"], info["split"]) == (1000, 3, "whisper", "test")
    assert info["counts"] == {"utterances": 3, "kept": 2, "dropped: fewer than 3 reference words": 1}


def test_a_batch_that_fails_is_decoded_one_by_one_and_a_failing_utterance_reported(tmp_path, tiny_whisper,
                                                                                    monkeypatch):
    from transformers import WhisperForConditionalGeneration

    make_fake_myst(tmp_path / "myst")
    prepare_myst.main(["--myst_root", str(tmp_path / "myst"), "--out", str(tmp_path / "local")])
    real, calls = WhisperForConditionalGeneration.generate, []

    def flaky(self, input_features, **kw):  # a batch runs out of memory, and so does the 2-window utterance alone
        calls.append(len(input_features))
        if len(input_features) > 1:
            raise RuntimeError("CUDA out of memory (injected)")
        return real(self, input_features, **kw)

    monkeypatch.setattr(WhisperForConditionalGeneration, "generate", flaky)
    whisper_filter(tmp_path / "local" / "manifest.jsonl", str(tiny_whisper), tmp_path / "wf", max_wer=1000,
                   progress=False)
    assert calls == [4, 2, 1, 1]  # the 31 s utterance is two windows, decoded together, first (longest first)
    hyps = read_hyps(tmp_path / "wf" / "hyp.tsv")
    failed = [u for u, (_, err) in hyps.items() if err]
    assert failed == [myst_utt_id("000301", 3)] and hyps[failed[0]][1].startswith("decoding failed: CUDA out of memory")
    info = json.loads((tmp_path / "wf" / "filter.json").read_text())
    assert info["counts"]["dropped: not decoded"] == 1 and len(hyps) == 3


def test_myst_stage0_flags_what_the_whisper_filter_kept(tmp_path, tiny_whisper):
    make_fake_myst(tmp_path / "LDC2021S05")
    p = subprocess.run(["bash", str(REPO / "egs" / "myst" / "run.sh"), "--myst_root", str(tmp_path / "LDC2021S05"),
                        "--whisper_filter", str(tiny_whisper), "--stop_stage", "0", "--datadir", str(tmp_path / "data"),
                        "--expdir", str(tmp_path / "exp")],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "MYST": ""})
    assert p.returncode == 0, p.stdout + p.stderr
    local = tmp_path / "data" / "local"
    verdict = {line.split("\t")[0]: line.split("\t")[4] for line in (local / "whisper_filter" / "filter.tsv")
               .read_text().splitlines()[1:]}
    # the random model's hypotheses normalize to nothing: WER 100% > 50% or too few words, all dropped
    assert set(verdict.values()) == {"Whisper WER above 50%", "fewer than 3 reference words"}
    assert (local / "test_filtered.ids").read_text() == (local / "whisper_filter" / "test_filtered.ids").read_text() == ""
    test = load_jsonl(tmp_path / "data" / "test.jsonl")
    assert len(test) == 3 and not any(r.get("test_filtered") for r in test)


def test_a_filter_whose_every_utterance_fails_stops(tmp_path, tiny_whisper, monkeypatch):
    from transformers import WhisperForConditionalGeneration

    from asrkit.failures import SystematicFailure

    make_fake_myst(tmp_path / "myst")
    prepare_myst.main(["--myst_root", str(tmp_path / "myst"), "--out", str(tmp_path / "local")])

    def broken(self, input_features, **kw):
        raise RuntimeError("mixed dtype (CPU)")

    monkeypatch.setattr(WhisperForConditionalGeneration, "generate", broken)
    with pytest.raises(SystematicFailure, match=r"decoding failed for 3 of the 3 utterances tried; the first, .*: "
                                                r"decoding failed: mixed dtype"):
        whisper_filter(tmp_path / "local" / "manifest.jsonl", str(tiny_whisper), tmp_path / "wf", progress=False)
    assert not (tmp_path / "wf" / "test_filtered.ids").exists()
    monkeypatch.undo()  # the cause fixed, the same command decodes them all
    kept = whisper_filter(tmp_path / "local" / "manifest.jsonl", str(tiny_whisper), tmp_path / "wf", max_wer=1000,
                          progress=False)
    assert len(kept) == 2 and not any(err for _, err in read_hyps(tmp_path / "wf" / "hyp.tsv").values())


@pytest.mark.parametrize("preset", ["tiny", "tiny-en"])
def test_zero_shot_decodes_as_openai_whisper_and_a_change_of_decoding_starts_afresh(preset, tmp_path, tiny_corpus,
                                                                                     monkeypatch):
    """Temperature fallback on repetition and low log-probability (openai-whisper's transcribe, in
    transformers' generate); an English-only checkpoint gets no language or task; hyp.tsv made with
    other options is decoded again."""
    from transformers import WhisperForConditionalGeneration

    from asrkit.random_models import save_random_whisper
    from asrkit_corpora.whisper_filter import FALLBACK, transcribe

    whisper = save_random_whisper(tmp_path / preset, preset)
    records = [dict(r, audio=str(tiny_corpus.parent / r["audio"])) for r in load_jsonl(tiny_corpus)[:3]]
    real, seen = WhisperForConditionalGeneration.generate, []

    def spy(self, input_features, **kw):
        seen.append(kw)
        return real(self, input_features, **kw)

    monkeypatch.setattr(WhisperForConditionalGeneration, "generate", spy)
    hyp_tsv = tmp_path / "zs" / "hyp.tsv"
    first = transcribe(records, str(whisper), hyp_tsv, progress=False)
    assert {k: seen[0][k] for k in FALLBACK} == FALLBACK and seen[0]["num_beams"] == 1
    assert ("language" in seen[0]) == (preset == "tiny")
    assert transcribe(records, str(whisper), hyp_tsv, progress=False) == first and len(seen) == 1  # kept
    transcribe(records, str(whisper), hyp_tsv, progress=False, fallback=False)  # other options: decoded again
    assert len(seen) == 2 and "temperature" not in seen[1]
