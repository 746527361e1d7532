"""Token lists (stage 2): char, word and sentencepiece (bpe/unigram) units, or a Whisper checkpoint's own.

A token dir holds `tokens.txt` (one token a line, line number = id: `<blank>`=0, `<unk>`=1,
`<sos/eos>` last), `token_info.json` (the unit and how it was made) and, for bpe, `bpe.model`.
For bpe, our id is sentencepiece's id + 1: sentencepiece's `<unk>` (its id 0) becomes our 1 and
`<blank>` takes 0, so the two vocabularies line up without a lookup table.

For whisper, the checkpoint's byte-level BPE (its `tokenizer.json` and `tokenizer_config.json` are
copied into the dir) with our id = Whisper's id + 2, for its text tokens; `<sos/eos>` is its
<|endoftext|>. No text is unknown to it. This is the unit of a Whisper decoder (docs/INTERNALS.md).
Whisper learnt to write sentences ("I could do with a break."), and stage 0 lowercases transcripts and
drops their punctuation: with `text_style: sentence` a lowercase transcript is trained as a sentence
again (first letter and the pronoun I capitalised, a final full stop), closer to what the decoder
already predicts; the scoring normalizer folds both styles alike. The default, `as_is`, trains the
transcripts as they are (on so762_dev the two give the same WER: docs/PERFORMANCE.md).
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from asrkit.errors import DataError
from asrkit.ssl import load_whisper_tokenizer

BLANK, UNK, SOS_EOS, SPACE = "<blank>", "<unk>", "<sos/eos>", "<space>"
TOKEN_TYPES = ("char", "bpe", "word", "whisper")
INFO_FILE, TOKENS_FILE, BPE_FILE = "token_info.json", "tokens.txt", "bpe.model"
WHISPER_FILES = ("tokenizer.json", "tokenizer_config.json")
WHISPER_OFFSET = 2  # our id of Whisper's token 0
TEXT_STYLES = ("sentence", "as_is")
_PRONOUN_I = re.compile(r"(?<![\w'])i(?=$|[\s'])")


def sentence_case(text: str) -> str:
    """A lowercase transcript written as a sentence: "i'm here" -> "I'm here."; cased text unchanged."""
    if not text or any(c.isupper() for c in text):
        return text
    text = _PRONOUN_I.sub("I", text)
    text = text[0].upper() + text[1:]
    return text + "." if text[-1].isalnum() else text


def _units(text: str, token_type: str) -> list[str]:
    """Split text into char or word units (the bpe split is sentencepiece's)."""
    if token_type == "char":
        return [SPACE if c == " " else c for c in " ".join(text.split())]
    return text.split()


class Tokenizer:
    """Text <-> ids with the special-token layout of docs/INTERNALS.md (file formats)."""

    def __init__(self, tokens: Sequence[str], token_type: str, sp_model: str | None = None,
                 whisper_dir: str | None = None, text_style: str = "as_is"):
        if token_type not in TOKEN_TYPES:
            raise ValueError(f"unknown token_type {token_type!r}; choose one of {TOKEN_TYPES}")
        if len(tokens) < 3 or tokens[0] != BLANK or tokens[1] != UNK or tokens[-1] != SOS_EOS:
            raise DataError(f"a token list must start with {BLANK}, {UNK} and end with {SOS_EOS}",
                            hint="rebuild it with asrkit.bin.make_tokens")
        self.tokens = list(tokens)
        self.token_type = token_type
        self.token2id = {t: i for i, t in enumerate(self.tokens)}
        if len(self.token2id) != len(self.tokens):
            dup = [t for t, n in Counter(self.tokens).items() if n > 1]
            raise DataError(f"duplicate tokens {dup[:5]}", hint="rebuild the token list")
        self.blank, self.unk = 0, 1
        self.sos = self.eos = len(self.tokens) - 1
        self.unk_counts: Counter = Counter()  # unknown units seen by encode(), for reports
        self.sp = None
        if token_type == "bpe":
            import sentencepiece as spm

            self.sp = spm.SentencePieceProcessor(model_file=str(sp_model))
            if self.sp.get_piece_size() + 2 != len(self.tokens):
                raise DataError(f"bpe.model has {self.sp.get_piece_size()} pieces but tokens.txt "
                                f"{len(self.tokens)} tokens", str(sp_model), "rebuild the token list")
        if text_style not in TEXT_STYLES:
            raise ValueError(f"unknown text_style {text_style!r}; choose one of {TEXT_STYLES}")
        self.text_style = text_style
        self.hf = None
        if token_type == "whisper":
            self.hf = load_whisper_tokenizer(whisper_dir)
            if self.hf.eos_token_id + WHISPER_OFFSET + 1 != len(self.tokens):
                raise DataError(f"the Whisper tokenizer has {self.hf.eos_token_id} text tokens but tokens.txt "
                                f"{len(self.tokens)} tokens", str(whisper_dir), "rebuild the token list")

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def load(cls, token_dir: str | Path) -> "Tokenizer":
        token_dir = Path(token_dir)
        info_path = token_dir / INFO_FILE
        if not info_path.is_file():
            raise DataError("no token list here", str(token_dir),
                            "run stage 2 (python -m asrkit.bin.make_tokens) first")
        info = json.loads(info_path.read_text(encoding="utf-8"))
        needed = [TOKENS_FILE] + {"bpe": [BPE_FILE], "whisper": list(WHISPER_FILES)}.get(info["token_type"], [])
        missing = [name for name in needed if not (token_dir / name).is_file()]
        if missing:
            raise DataError(f"incomplete token list: no {', '.join(missing)}", str(token_dir),
                            "rerun stage 2 (python -m asrkit.bin.make_tokens)")
        tokens = [t for t in (token_dir / TOKENS_FILE).read_text(encoding="utf-8").split("\n") if t]
        return cls(tokens, info["token_type"], token_dir / BPE_FILE if BPE_FILE in needed else None, token_dir,
                   info.get("text_style", "as_is"))

    def encode(self, text: str) -> list[int]:
        """Token ids of a text; units outside the list become `<unk>` and are counted."""
        if self.hf is not None:  # a leading space, as Whisper's transcripts have
            if self.text_style == "sentence":
                text = sentence_case(text)
            return [i + WHISPER_OFFSET for i in self.hf.encode(" " + text, add_special_tokens=False)]
        if self.sp is not None:
            pieces = self.sp.encode(text, out_type=str)  # an unknown piece keeps its surface
            ids = [self.sp.piece_to_id(p) + 1 for p in pieces]
            if self.unk in ids:
                self.unk_counts.update(p for p, i in zip(pieces, ids) if i == self.unk)
            return ids
        ids = [self.token2id.get(u, self.unk) for u in _units(text, self.token_type)]
        if self.unk in ids:
            self.unk_counts.update(u for u in _units(text, self.token_type) if u not in self.token2id)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of token ids; `<blank>`, `<sos/eos>` and padding (-1) are dropped."""
        ids = [int(i) for i in ids if 0 < int(i) < self.sos]
        if self.hf is not None:
            return " ".join(self.hf.decode([i - WHISPER_OFFSET for i in ids if i >= WHISPER_OFFSET]).split())
        if self.sp is not None:
            pieces = [self.tokens[i] for i in ids]
            return " ".join("".join(pieces).replace("\u2581", " ").split())
        units = [self.tokens[i] for i in ids]
        if self.token_type == "char":
            return " ".join("".join(" " if u == SPACE else u for u in units).split())
        return " ".join(units)


def build_token_list(texts: Sequence[str], token_type: str, out_dir: str | Path, nbpe: int = 300,
                     bpemode: str = "unigram", character_coverage: float = 1.0,
                     ssl_model: str | None = None, text_style: str = "as_is") -> Tokenizer:
    """Make a token dir from training texts (for whisper: from the tokenizer of the checkpoint
    `ssl_model`, its targets written in `text_style`). The dir is built beside `out_dir` and swapped in whole, so a failure or a kill
    leaves either the previous list or none, never a mix."""
    out_dir = Path(out_dir)
    info = {"token_type": token_type}
    if token_type == "whisper":
        if not ssl_model:
            raise DataError("token_type whisper takes the tokenizer of a Whisper checkpoint", "--ssl_model",
                            "give the checkpoint whose encoder made the features (run.sh: --ssl_model)")
        hf = load_whisper_tokenizer(ssl_model)
        # an empty or blank token would be a blank line in tokens.txt: named by its id instead
        tokens = [BLANK, UNK] + [t if t and t.strip() == t else f"<whisper{i}>"
                                 for i, t in enumerate(hf.convert_ids_to_tokens(range(hf.eos_token_id)))] + [SOS_EOS]
        if text_style not in TEXT_STYLES:
            raise ValueError(f"unknown text_style {text_style!r}; choose one of {TEXT_STYLES}")
        info.update(ssl_model=str(ssl_model), text_style=text_style)
    elif token_type == "bpe":
        model = _train_sentencepiece(texts, nbpe, bpemode, character_coverage)
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_proto=model)
        tokens = [BLANK, UNK] + [sp.id_to_piece(i) for i in range(1, sp.get_piece_size())] + [SOS_EOS]
        info.update(nbpe=nbpe, bpemode=bpemode, character_coverage=character_coverage)
    elif token_type in ("char", "word"):
        counts = Counter(u for t in texts for u in _units(t, token_type))
        reserved = [u for u in (BLANK, UNK, SOS_EOS) if u in counts]
        if reserved:
            raise DataError(f"the text holds the reserved token(s) {reserved}",
                            hint="remove them in data prep (stage 0)")
        # most frequent first, like ESPnet's token lists; ties in a fixed order
        tokens = [BLANK, UNK] + sorted(counts, key=lambda u: (-counts[u], u)) + [SOS_EOS]
    else:
        raise ValueError(f"unknown token_type {token_type!r}; choose one of {TOKEN_TYPES}")
    info["vocab_size"] = len(tokens)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        (tmp / TOKENS_FILE).write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
        if token_type == "bpe":
            (tmp / BPE_FILE).write_bytes(model)
        if token_type == "whisper":
            hf.save_pretrained(tmp)
            for extra in set(os.listdir(tmp)) - set(WHISPER_FILES) - {TOKENS_FILE}:
                os.remove(tmp / extra)  # (only what Tokenizer.load reads travels with a model dir)
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        if out_dir.exists():
            old = tmp.with_suffix(".old")
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Tokenizer.load(out_dir)


def _train_sentencepiece(texts: Sequence[str], nbpe: int, bpemode: str, character_coverage: float) -> bytes:
    """A trained sentencepiece model (serialized); its piece 0 is <unk>, no <s>, </s> or padding."""
    import sentencepiece as spm

    if bpemode not in ("unigram", "bpe"):
        raise ValueError(f"bpemode must be unigram or bpe, not {bpemode!r}")
    chars = {c for t in texts for c in t if not c.isspace()}
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=model, vocab_size=nbpe, model_type=bpemode,
            character_coverage=character_coverage,
            normalization_rule_name="identity",  # text is normalized in stage 0: keep it as is
            unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1, input_sentence_size=100_000_000, minloglevel=2)
    except RuntimeError as e:
        too_many = re.search(r"value <= (\d+)", str(e))
        too_few = re.search(r"required_chars\. \d+ vs (\d+)", str(e))
        if not (too_many or too_few):
            raise
        where = f"--nbpe {nbpe}"
        if too_many:
            raise DataError(f"too large for this text ({len(texts)} sentences)", where,
                            f"set --nbpe {too_many.group(1)} or less") from None
        raise DataError(f"too small for the {len(chars)} distinct characters of this text", where,
                        f"set --nbpe {too_few.group(1)} or more, or --token_type char") from None
    return model.getvalue()
