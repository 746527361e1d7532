"""Stage 2 token lists: layout, round trips for char/word/bpe, <unk> counting, clear errors."""
from __future__ import annotations

import json

import pytest

from asrkit.bin import make_tokens
from asrkit.errors import DataError
from asrkit.fileio import load_jsonl
from asrkit.tokenizer import SPACE, Tokenizer, build_token_list, sentence_case

TEXTS = ["the cat sat on the mat", "one two three", "i saw a big dog", "my dog's name is rex",
         "we went to the zoo", "she likes green apples", "the end"]


@pytest.fixture
def train_list(tmp_path):
    path = tmp_path / "train.jsonl"
    recs = [{"utt_id": f"u{i}", "text": t} for i, t in enumerate(TEXTS)] + [{"utt_id": "empty", "text": ""}]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    return path


def make(train_list, out, *extra):
    assert make_tokens.main(["--data", str(train_list), "--out", str(out), *extra]) == 0
    return Tokenizer.load(out)


@pytest.mark.parametrize("unit, extra", [("char", []), ("word", []), ("bpe", ["--nbpe", "30"]),
                                         ("bpe", ["--nbpe", "40", "--bpemode", "bpe"])])
def test_layout_and_round_trip(train_list, tmp_path, unit, extra):
    tok = make(train_list, tmp_path / unit, "--token_type", unit, *extra)
    lines = (tmp_path / unit / "tokens.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "<blank>" and lines[1] == "<unk>" and lines[-1] == "<sos/eos>"
    assert len(lines) == len(set(lines)) == tok.vocab_size
    assert (tok.blank, tok.unk, tok.sos, tok.eos) == (0, 1, tok.vocab_size - 1, tok.vocab_size - 1)
    if unit == "bpe":
        assert tok.vocab_size == int(extra[1]) + 2  # sentencepiece's own <unk> is our id 1
        assert (tmp_path / unit / "bpe.model").is_file()
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids and all(1 < i < tok.sos for i in ids)
        assert tok.decode(ids) == text
    assert sum(tok.unk_counts.values()) == 0
    # specials and padding are not text
    assert tok.decode([tok.blank] + tok.encode("the end") + [tok.eos, -1, -1]) == "the end"


def test_char_units_and_frequency_order(train_list, tmp_path):
    tok = make(train_list, tmp_path / "char", "--token_type", "char")
    assert tok.tokens[2] == SPACE  # the most frequent unit comes first, like ESPnet's lists
    assert tok.encode("a b")[1] == tok.token2id[SPACE]
    assert tok.decode(tok.encode("a  b ")) == "a b"  # whitespace collapses to one <space>


@pytest.mark.parametrize("unit, extra", [("char", []), ("word", []), ("bpe", ["--nbpe", "30"])])
def test_unknown_units_map_to_unk_and_are_counted(train_list, tmp_path, unit, extra):
    tok = make(train_list, tmp_path / unit, "--token_type", unit, *extra)
    ids = tok.encode("the cat ate über")
    assert tok.unk in ids
    assert "ü" in "".join(tok.unk_counts)  # the unknown unit itself is recorded
    assert "<unk>" in tok.decode(ids) and tok.decode(ids).startswith("the cat")
    n = sum(tok.unk_counts.values())
    tok.encode("über über")
    assert sum(tok.unk_counts.values()) > n


def test_make_tokens_reports_unknown_training_units(tmp_path, capfd):
    # sentencepiece drops the rarest characters when character_coverage < 1: they become <unk>
    texts = ["aaaa bbbb abab"] * 50 + ["ab q"]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({"utt_id": str(i), "text": t}) + "\n" for i, t in enumerate(texts)))
    make(path, tmp_path / "bpe", "--token_type", "bpe", "--nbpe", "6", "--character_coverage", "0.99")
    err = capfd.readouterr().err
    assert "1 unit(s) of the training text map to <unk>" in err and "'q'" in err


def test_empty_texts_skipped_and_named(train_list, tmp_path, capfd):
    make(train_list, tmp_path / "w", "--token_type", "word")
    err = capfd.readouterr().err
    assert "skipped 1 utterance" in err and "train.jsonl:8 (empty)" in err


def test_nbpe_too_large_or_small_says_what_to_set(train_list, tmp_path):
    out = tmp_path / "tl"
    before = make(train_list, out, "--token_type", "char").tokens
    with pytest.raises(DataError, match=r"--nbpe 5000: too large.*set --nbpe \d+ or less"):
        make_tokens.main(["--data", str(train_list), "--out", str(out), "--token_type", "bpe", "--nbpe", "5000"])
    with pytest.raises(DataError, match=r"--nbpe 5: too small.*set --nbpe \d+ or more"):
        make_tokens.main(["--data", str(train_list), "--out", str(out), "--token_type", "bpe", "--nbpe", "5"])
    # a failed run leaves the previous list whole and no temporary files
    assert Tokenizer.load(out).tokens == before
    assert sorted(p.name for p in out.iterdir()) == ["token_info.json", "tokens.txt"]
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == ["tl"]


def test_rebuild_replaces_the_whole_dir(train_list, tmp_path):
    out = tmp_path / "lists" / "tl"
    make(train_list, out, "--token_type", "bpe", "--nbpe", "30")
    tok = make(train_list, out, "--token_type", "char")  # no stale bpe.model may survive
    assert tok.token_type == "char" and sorted(p.name for p in out.iterdir()) == ["token_info.json", "tokens.txt"]
    assert [p.name for p in out.parent.iterdir()] == ["tl"]


def test_errors_are_clear(tmp_path):
    with pytest.raises(DataError, match="run stage 2"):
        Tokenizer.load(tmp_path / "missing")
    build_token_list(["a b"], "bpe", tmp_path / "tl", nbpe=4)
    (tmp_path / "tl" / "bpe.model").unlink()
    with pytest.raises(DataError, match="incomplete token list: no bpe.model"):
        Tokenizer.load(tmp_path / "tl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"utt_id": "x", "text": "a <unk> b"}) + "\n")
    with pytest.raises(DataError, match="reserved"):
        make_tokens.main(["--data", str(bad), "--out", str(tmp_path / "o"), "--token_type", "word"])
    none = tmp_path / "none.jsonl"
    none.write_text(json.dumps({"utt_id": "x"}) + "\n")
    with pytest.raises(DataError, match="no utterance has a non-empty 'text'"):
        make_tokens.main(["--data", str(none), "--out", str(tmp_path / "o"), "--token_type", "char"])


def test_fsdd_round_trip(fsdd, tmp_path):
    texts = [r["text"] for r in load_jsonl(fsdd / "manifest.jsonl")]
    tok = make(fsdd / "manifest.jsonl", tmp_path / "bpe", "--token_type", "bpe", "--nbpe", "20")
    assert all(tok.decode(tok.encode(t)) == t for t in texts)
    assert sum(tok.unk_counts.values()) == 0


def test_whisper_tokens_are_the_checkpoints_own(train_list, tmp_path, tiny_whisper):
    from transformers import WhisperTokenizer

    with pytest.raises(DataError, match="--ssl_model"):
        make(train_list, tmp_path / "none", "--token_type", "whisper")
    tok = make(train_list, tmp_path / "whisper", "--token_type", "whisper", "--ssl_model", str(tiny_whisper))
    hf = WhisperTokenizer.from_pretrained(str(tiny_whisper))
    lines = (tmp_path / "whisper" / "tokens.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(set(lines)) == tok.vocab_size == hf.eos_token_id + 3  # text tokens, <blank> <unk> <sos/eos>
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == [i + 2 for i in hf.encode(" " + text, add_special_tokens=False)]
        assert tok.decode(ids + [tok.eos]) == text
    assert not tok.unk_counts
    copy = tmp_path / "copy"  # a model dir keeps only the token dir's files: they are enough
    copy.mkdir()
    for f in (tmp_path / "whisper").iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    assert Tokenizer.load(copy).encode("rex") == tok.encode("rex")


def test_whisper_targets_can_be_written_as_sentences(train_list, tmp_path, tiny_whisper):
    """--text_style sentence: stage 0's lowercase transcripts train a Whisper decoder in its own style;
    a list without the key (made before it) keeps them as they are."""
    assert sentence_case("i'm sure i will") == "I'm sure I will."
    assert sentence_case("is it in") == "Is it in."  # only the pronoun: no "i" inside a word
    assert sentence_case("what is it?") == "What is it?"
    assert sentence_case("NASA said so") == "NASA said so"  # a cased transcript is left alone
    tok = make(train_list, tmp_path / "whisper", "--token_type", "whisper", "--ssl_model", str(tiny_whisper),
               "--text_style", "sentence")
    info = tmp_path / "whisper" / "token_info.json"
    assert json.loads(info.read_text())["text_style"] == "sentence"
    assert tok.decode(tok.encode("i saw rex")) == "I saw rex."
    info.write_text(json.dumps({k: v for k, v in json.loads(info.read_text()).items() if k != "text_style"}))
    old = Tokenizer.load(tmp_path / "whisper")
    assert old.decode(old.encode("i saw rex")) == "i saw rex"


def test_a_whisper_tokenizer_that_lost_its_first_merge_is_repaired(fsdd, tmp_path):
    """The shared Whisper-base's tokenizer.json lacks merge 0 ("Ġ t"), so that "two" is written "Ġ", "two":
    asrkit puts the merge back (token 256 + r is made by merge r again), its token lists keep the repair,
    and the repaired spelling is the one the pretrained Whisper predicts from the recording."""
    import torch
    from transformers import WhisperTokenizer

    from asrkit.audio import load_audio
    from asrkit.ssl import load_whisper, load_whisper_processor, restore_missing_merges

    base = fsdd.parent.parent / "models" / "whisper-base"
    if not (base / "tokenizer.json").is_file():
        pytest.skip(f"no Whisper-base at {base}")
    raw = WhisperTokenizer.from_pretrained(str(base))
    lost = raw.encode(" two", add_special_tokens=False)
    assert raw.convert_ids_to_tokens(lost) == ["Ġ", "two"]
    assert restore_missing_merges(raw) == [("Ġ", "t")]
    model = json.loads(raw.backend_tokenizer.to_str())["model"]
    assert [model["vocab"]["".join(m)] for m in model["merges"]] == list(range(256, 256 + len(model["merges"])))
    assert restore_missing_merges(raw) == []  # a sound tokenizer is left as it is

    tok = make(fsdd / "manifest.jsonl", tmp_path / "whisper", "--token_type", "whisper", "--ssl_model", str(base))
    fixed = [i - 2 for i in tok.encode("two")]
    assert raw.convert_ids_to_tokens(fixed) == ["Ġtwo"]
    assert WhisperTokenizer.from_pretrained(str(tmp_path / "whisper")).encode(" two", add_special_tokens=False) == fixed

    processor, whisper = load_whisper_processor(str(base)), load_whisper(str(base)).eval()
    rec = next(r for r in load_jsonl(fsdd / "manifest.jsonl") if r["text"] == "two")
    feats = processor.feature_extractor(load_audio(str(fsdd / rec["audio"])), sampling_rate=16000,
                                        return_tensors="pt").input_features
    prompt = raw.convert_tokens_to_ids(["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"])

    def log_prob(ids):
        seq = torch.tensor([prompt + ids])
        with torch.no_grad():
            logp = whisper(input_features=feats, decoder_input_ids=seq[:, :-1]).logits.log_softmax(-1)
        return logp[0, len(prompt) - 1:].gather(-1, seq[0, len(prompt):, None]).sum().item()

    assert log_prob(fixed) > log_prob(lost) + 5  # the lost merge's spelling is one Whisper never writes
